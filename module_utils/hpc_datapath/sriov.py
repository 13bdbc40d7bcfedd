# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SR-IOV virtual functions of a node: the checks of the wanted state, and applying it.

One implementation for two callers, like roce.py: the `sriov_vfs` module, and the node's boot
unit (`hpc-sriov.service` runs this file as a script on the JSON plan the role wrote, before the
network backends start), so that the VFs that come back after a reboot are the ones the role
made. Standard library only, Python 3.8 or newer, no import of Ansible: it runs on the targets.

What a plan holds per physical function (PF), each read first and changed only where it differs:
- the VF count (`sriov_numvfs`). A count change tears every VF of the PF down; while one of them
  is in use (in another network namespace, bound to vfio-pci or another non-network driver,
  carrying addresses, enslaved) it is refused unless the PF is opted in;
- per VF: MAC, trust, spoofchk, VLAN and link state (`ip link set PF vf N ...`, the PF's driver
  keeps them) and the driver: the kernel's netdev driver, or vfio-pci (driver_override);
- predictable names, <PF><prefix><index>: the role's udev rule names a VF when it appears, by its
  PCI address, which the PF's sriov_offset and sriov_stride give before it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

SYS = "/sys"
DRIVERS = ("netdev", "vfio-pci")
LINK_STATES = ("auto", "enable", "disable")
# What the kernel takes as a netdev name, narrowed as roce.py does: the names reach paths, udev
# rules and command lines. \Z, not $, which would let a trailing newline through.
NETDEV_NAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,15}\Z")
NAME_PREFIX = re.compile(r"[A-Za-z0-9_]{0,8}\Z")
PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
VF_SETTINGS = ("mac", "trust", "spoofchk", "vlan", "link_state", "driver")
# A VF's netdev appears once its driver probed it, and is renamed by udev right after.
NETDEV_WAIT_SECONDS = 15
# A VF driver that probes while its PF is still resetting (igb resets the PF as VFs are created)
# gets no MAC from it, takes a random one and, trusted, hands it to the PF (igbvf). Each VF is read
# back after its probe and probed again, a second later each time, up to this many times.
MAC_PROBES = 5


class ApplyError(Exception):
    """A step that failed, in a sentence."""


# --- reading the node ------------------------------------------------------------------------


def _read(path, default=None):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def _read_int(path):
    value = _read(path)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _link_name(path):
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def pci_device(address, sys_root=SYS):
    return os.path.join(sys_root, "bus/pci/devices", address)


def physical_functions(sys_root=SYS):
    """Every netdev of this namespace on a PCI function: name, PCI address, MAC, VF counts (a total
    of None: not SR-IOV capable, as a ConnectX port is until its firmware has SRIOV_EN)."""
    found = []
    for name in _listdir(os.path.join(sys_root, "class/net")):
        device = os.path.join(sys_root, "class/net", name, "device")
        if not PCI_ADDRESS.match(os.path.basename(os.path.realpath(device))):
            continue
        total = _read_int(os.path.join(device, "sriov_totalvfs"))
        base = os.path.join(sys_root, "class/net", name)
        found.append(
            {
                "name": name,
                "pci_address": os.path.basename(os.path.realpath(device)),
                "mac": (_read(os.path.join(base, "bonding_slave/perm_hwaddr")) or _read(os.path.join(base, "address"))),
                "total_vfs": total,
                "num_vfs": _read_int(os.path.join(device, "sriov_numvfs")) or 0,
            }
        )
    return found


def vf_address(pf_address, offset, stride, index):
    """The PCI address VF index of a PF gets: routing ID = the PF's + offset + index * stride."""
    domain, bus, slot_function = pf_address.split(":")
    slot, function = slot_function.split(".")
    routing_id = (int(bus, 16) << 8 | int(slot, 16) << 3 | int(function)) + offset + index * stride
    return f"{domain}:{routing_id >> 8:02x}:{routing_id >> 3 & 0x1F:02x}.{routing_id & 7}"


def vf_state(vf_pci, sys_root=SYS):
    """What holds one existing VF: its driver, its netdev here (None where it is elsewhere)."""
    device = pci_device(vf_pci, sys_root)
    netdevs = _listdir(os.path.join(device, "net"))
    return {
        "pci_address": vf_pci,
        "driver": _link_name(os.path.join(device, "driver")),
        "driver_override": _read(os.path.join(device, "driver_override"), "(null)"),
        # The net directory lists the netdevs of the reader's namespace only; a driver that makes
        # no netdev (uio, pci-stub) makes no net directory either.
        "netdev": netdevs[0] if netdevs else None,
        "net_elsewhere": not netdevs and os.path.isdir(os.path.join(device, "net")),
    }


def existing_vfs(pf_pci, sys_root=SYS):
    """{index: PCI address} of the VFs a PF has now (its virtfnN links)."""
    device = pci_device(pf_pci, sys_root)
    found = {}
    for entry in _listdir(device):
        if entry.startswith("virtfn") and entry[6:].isdigit():
            found[int(entry[6:])] = _link_name(os.path.join(device, entry))
    return found


def netdev_facts(run):
    """name -> {addresses (global), master}: what makes a VF's netdev 'in use', from `ip -j addr
    show`; fails where it cannot be read (then no VF can be told free)."""
    rc, out, err = run(["ip", "-j", "addr", "show"])
    try:
        if rc != 0:
            raise ValueError((err or "").strip())
        return {
            link["ifname"]: {
                "addresses": sorted(
                    f"{info['local']}/{info['prefixlen']}"
                    for info in link.get("addr_info", [])
                    if info.get("scope") == "global"
                ),
                "master": link.get("master"),
            }
            for link in json.loads(out)
        }
    except (ValueError, KeyError, TypeError) as error:
        raise ApplyError(f"ip -j addr show cannot be read, so the VFs in use cannot be told: {error}") from error


def in_use(vf, netdev_facts):
    """Why a VF is in use, or None. netdev_facts: name -> {'addresses': [...], 'master': str|None}."""
    facts = netdev_facts.get(vf["netdev"]) or {} if vf["netdev"] else {}
    reasons = [
        (vf["driver"] == "vfio-pci", "bound to vfio-pci"),
        (vf.get("net_elsewhere"), "its netdev is in another network namespace"),
        (vf["driver"] and not vf["netdev"], f"bound to {vf['driver']}, which makes no netdev"),
        (facts.get("addresses"), f"{vf['netdev']} carries {', '.join(facts.get('addresses') or [])}"),
        (facts.get("master"), f"{vf['netdev']} is a port of {facts.get('master')}"),
    ]
    return next((reason for applies, reason in reasons if applies), None)


# --- the plan: checks against the node, before anything is touched ----------------------------


def _flag(where, value, problems):
    if value is not None and not isinstance(value, bool):
        problems.append(f"{where}: {value!r} is not true or false")


def _find_pf(where, spec, pfs, problems):
    keys = [key for key in ("name", "pci_address", "mac") if spec.get(key) not in (None, "")]
    if len(keys) != 1:
        problems.append(f"{where}: name the physical function by exactly one of name, pci_address or mac")
        return None
    key = keys[0]
    value = str(spec[key]).lower() if key != "name" else str(spec[key])
    pattern = {"name": NETDEV_NAME, "pci_address": PCI_ADDRESS, "mac": MAC}[key]
    if not pattern.match(value):
        problems.append(f"{where}.{key}: {spec[key]!r} is not a valid {key.replace('_', ' ')}")
        return None
    matches = [pf for pf in pfs if pf[key] == value]
    if not matches:
        capable = [pf for pf in pfs if pf["total_vfs"] is not None]
        known = ", ".join(f"{pf['name']} ({pf['pci_address']}, {pf['mac']})" for pf in capable) or "none"
        problems.append(f"{where}.{key}: no SR-IOV capable NIC {value} on this node (SR-IOV capable: {known})")
        return None
    return matches[0]


def _vf_settings(where, settings, problems):
    """One VF's settings, checked; unknown keys are refused (a typo must not pass as 'unset')."""
    unknown = sorted(set(settings) - set(VF_SETTINGS) - {"index"})
    if unknown:
        problems.append(f"{where}: unknown settings {', '.join(unknown)} (known: {', '.join(VF_SETTINGS)})")
    result = {key: settings.get(key) for key in VF_SETTINGS}
    mac = result["mac"]
    if mac is not None:
        mac = str(mac).lower()
        if not MAC.match(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            problems.append(f"{where}.mac: {settings['mac']!r} is not a unicast MAC address")
        result["mac"] = mac
    for key in ("trust", "spoofchk"):
        _flag(f"{where}.{key}", result[key], problems)
    vlan = result["vlan"]
    if vlan is not None and (isinstance(vlan, bool) or not isinstance(vlan, int) or not 0 <= vlan <= 4094):
        problems.append(f"{where}.vlan: {vlan!r} is not a VLAN id (0 to 4094, 0 for none)")
    if result["link_state"] is not None and result["link_state"] not in LINK_STATES:
        problems.append(f"{where}.link_state: {result['link_state']!r} is not one of {', '.join(LINK_STATES)}")
    if result["driver"] is not None and result["driver"] not in DRIVERS:
        problems.append(f"{where}.driver: {result['driver']!r} is not one of {', '.join(DRIVERS)}")
    return result


def _vf_overrides(where, entries, count, defaults, problems):
    """{index: settings} of the VFs listed in vfs[], each on top of vf_defaults."""
    overrides = {}
    for position, settings in enumerate(entries):
        at = f"{where}.vfs[{position}]"
        vf_index = settings.get("index") if isinstance(settings, dict) else None
        if isinstance(vf_index, bool) or not isinstance(vf_index, int) or vf_index < 0:
            problems.append(f"{at}.index: {vf_index!r} is not a VF index")
            continue
        if count is not None and vf_index >= count:
            problems.append(f"{at}.index: VF {vf_index} does not exist with num_vfs {count}")
        if vf_index in overrides:
            problems.append(f"{at}.index: VF {vf_index} is listed twice")
        # Each value is checked where it is written: vf_defaults once, a VF's own here.
        given = {key: value for key, value in _vf_settings(at, settings, problems).items() if value is not None}
        overrides[vf_index] = {**defaults, **given}
    return overrides


def pci_key(address):
    """A PCI address as sysfs spells it (domain, lower case), or None where it is not one."""
    text = str(address).lower()
    text = text if text.count(":") == 2 else f"0000:{text}"
    return text if PCI_ADDRESS.match(text) else None


def _count_problem(where, pf, count, firmware):
    """(problem, deferred) of a VF count against what the PF holds now and what its firmware will."""
    total = pf["total_vfs"]
    if total is not None and count <= total:
        return None, None
    after_reset = firmware.get(pf["pci_address"])
    if after_reset is not None and after_reset >= count:
        return None, f"waits for the firmware's NUM_OF_VFS {after_reset} (sriov_firmware), which a reboot brings"
    if total is None:
        return (
            f"{where}: {pf['name']} is not SR-IOV capable now (no sriov_totalvfs); a ConnectX port gets it "
            "through sriov_firmware (SRIOV_EN, NUM_OF_VFS) and a reboot"
        ), None
    return f"{where}.num_vfs: {count} is more than {pf['name']} can hold (sriov_totalvfs {total})", None


def _vf_addresses(where, pf, count, sys_root):
    """(addresses of VF 0..count-1, problem): from sriov_offset and sriov_stride, each either free
    or already this PF's VF of that index; never the PF itself or another device."""
    device = pci_device(pf["pci_address"], sys_root)
    offset, stride = _read_int(os.path.join(device, "sriov_offset")), _read_int(os.path.join(device, "sriov_stride"))
    if not count:
        return [], None
    if not offset or stride is None:
        return (
            [],
            f"{where}: {pf['name']} does not say where its VFs sit (sriov_offset {offset}, sriov_stride {stride})",
        )
    existing = existing_vfs(pf["pci_address"], sys_root)
    addresses = [vf_address(pf["pci_address"], offset, stride, index) for index in range(count)]
    for index, address in enumerate(addresses):
        if os.path.exists(pci_device(address, sys_root)) and existing.get(index) != address:
            return [], f"{where}: VF {index} of {pf['name']} would sit at {address}, which is another PCI device"
    return addresses, None


def plan_pf(index, spec, pfs, sys_root=SYS, firmware=None):
    """(plan of one PF or None, problems). spec is one entry of sriov_pfs; firmware: PCI address ->
    the NUM_OF_VFS sriov_firmware gives it."""
    where = f"sriov_pfs[{index}]"
    problems = []
    if not isinstance(spec, dict):
        return None, [f"{where}: must be a mapping with name, pci_address or mac, and num_vfs"]
    unknown = sorted(
        set(spec)
        - {"name", "pci_address", "mac", "num_vfs", "vf_defaults", "vfs", "name_prefix", "allow_count_change_in_use"}
    )
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(unknown)}")
    pf = _find_pf(where, spec, pfs, problems)
    if pf is not None and not NETDEV_NAME.match(pf["name"]):
        problems.append(f"{where}: the PF's name {pf['name']!r} has characters this role does not write into files")
    count = spec.get("num_vfs")
    deferred = None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        problems.append(f"{where}.num_vfs: {count!r} is not a VF count (0 or more)")
        count = None
    elif pf is not None:
        problem, deferred = _count_problem(where, pf, count, firmware or {})
        problems += [problem] if problem else []
    prefix = spec.get("name_prefix", "v")
    if not isinstance(prefix, str) or not NAME_PREFIX.match(prefix):
        problems.append(f"{where}.name_prefix: {prefix!r} must be up to 8 letters, digits or _")
        prefix = "v"
    opted_in = spec.get("allow_count_change_in_use", False)
    _flag(f"{where}.allow_count_change_in_use", opted_in, problems)
    defaults = _vf_settings(f"{where}.vf_defaults", spec.get("vf_defaults") or {}, problems)
    defaults["driver"] = defaults["driver"] or "netdev"
    overrides = _vf_overrides(where, spec.get("vfs") or [], count, defaults, problems)
    if pf is None or count is None or problems:
        return None, problems
    plan = {
        "name": pf["name"],
        "pci_address": pf["pci_address"],
        "num_vfs": count,
        "total_vfs": pf["total_vfs"],
        "allow_count_change_in_use": bool(opted_in),
        "vfs": [],
    }
    if deferred:
        return {**plan, "deferred": deferred}, []
    addresses, problem = _vf_addresses(where, pf, count, sys_root)
    if problem:
        return None, [problem]
    for vf_index, address in enumerate(addresses):
        settings = overrides.get(vf_index, defaults)
        name = f"{pf['name']}{prefix}{vf_index}"
        if not NETDEV_NAME.match(name) and settings["driver"] == "netdev":
            return None, [
                f"{where}.name_prefix: the VF name {name} is longer than the kernel's 15 characters; "
                "choose a shorter name_prefix"
            ]
        plan["vfs"].append({"index": vf_index, "pci_address": address, "name": name, **settings})
    return plan, []


def count_change_problem(index, pf_plan, netdev_facts, sys_root=SYS):
    """The sentence refusing a VF count change of a PF whose VFs are in use, or None.

    index: the PF's place in sriov_pfs, which the sentence names; None where it is not known (a plan
    applied, at boot): the sentence names the PF and the key alone.
    """
    current = _read_int(os.path.join(pci_device(pf_plan["pci_address"], sys_root), "sriov_numvfs")) or 0
    if current in (0, pf_plan["num_vfs"]) or pf_plan["allow_count_change_in_use"]:
        return None
    busy = []
    for vf_index, address in sorted(existing_vfs(pf_plan["pci_address"], sys_root).items()):
        reason = in_use(vf_state(address, sys_root), netdev_facts)
        if reason:
            busy.append(f"VF {vf_index} ({address}): {reason}")
    if not busy:
        return None
    where = "" if index is None else f"sriov_pfs[{index}]."
    return (
        f"{where and where + 'num_vfs: '}changing the VF count of {pf_plan['name']} from {current} to "
        f"{pf_plan['num_vfs']} tears down every VF, and these are in use: {'; '.join(busy)}. "
        f"Set {where}allow_count_change_in_use: true to do it anyway"
    )


def _name_problems(index, pf_plan, planned, sys_root):
    """VF names that another netdev of the node, or another planned VF, has already."""
    problems = []
    for vf in pf_plan["vfs"]:
        if vf["driver"] != "netdev":
            continue
        here = os.path.exists(os.path.join(sys_root, "class/net", vf["name"]))
        own = (
            os.path.exists(pci_device(vf["pci_address"], sys_root)) and vf_state(vf["pci_address"], sys_root)["netdev"]
        )
        holder = planned.get(vf["name"]) or (f"the netdev {vf['name']}" if here and own != vf["name"] else None)
        if holder:
            problems.append(
                f"sriov_pfs[{index}]: VF {vf['index']} of {pf_plan['name']} would be named {vf['name']}, "
                f"as {holder} is; choose another name_prefix"
            )
        planned[vf["name"]] = f"VF {vf['index']} of {pf_plan['name']}"
    return problems


def plan(pfs_wanted, netdev_facts, sys_root=None, firmware=None):
    """(plan, problems): every PF of sriov_pfs checked against the node, nothing touched.

    sys_root: where sysfs is; SYS as it is at the call. firmware: sriov_firmware's entries.
    """
    sys_root = sys_root or SYS
    pfs = physical_functions(sys_root)
    after_reset = {
        pci_key(entry.get("device")): entry.get("num_vfs") for entry in firmware or [] if isinstance(entry, dict)
    }
    after_reset = {key: count for key, count in after_reset.items() if key and isinstance(count, int)}
    plans, problems, seen, macs, names = [], [], {}, {}, {}
    for index, spec in enumerate(pfs_wanted):
        pf_plan, found = plan_pf(index, spec, pfs, sys_root, after_reset)
        problems += found
        if pf_plan is None:
            continue
        if pf_plan["pci_address"] in seen:
            problems.append(
                f"sriov_pfs[{index}]: {pf_plan['name']} is already sriov_pfs[{seen[pf_plan['pci_address']]}]"
            )
            continue
        seen[pf_plan["pci_address"]] = index
        for vf in pf_plan["vfs"]:
            if vf["mac"] and vf["mac"] in macs:
                problems.append(f"sriov_pfs[{index}]: VF {vf['index']} has MAC {vf['mac']}, as {macs[vf['mac']]} has")
            elif vf["mac"]:
                macs[vf["mac"]] = f"{pf_plan['name']} VF {vf['index']}"
        problems += _name_problems(index, pf_plan, names, sys_root)
        refusal = None if pf_plan.get("deferred") else count_change_problem(index, pf_plan, netdev_facts, sys_root)
        if refusal:
            problems.append(refusal)
        plans.append(pf_plan)
    return {"pfs": plans}, problems


# --- applying ---------------------------------------------------------------------------------


class Runner:
    """Runs commands and writes sysfs for real or, in check mode, records what it would do."""

    def __init__(self, run, check_mode=False):
        self._run = run
        self.check_mode = check_mode
        self.changes = []
        self.pending = []  # what a VF in use keeps until it is free, in sentences

    def query(self, argv):
        return self._run(argv)

    def change(self, argv, why):
        self.changes.append({"why": why, "command": argv})
        if self.check_mode:
            return
        rc, out, err = self._run(argv)
        if rc != 0:
            raise ApplyError(f"{' '.join(argv)} failed (rc {rc}): {(err or out).strip()}")

    def write(self, path, value, why):
        self.changes.append({"why": why, "write": path, "value": str(value)})
        if self.check_mode:
            return
        try:
            with open(path, "w") as handle:
                handle.write(f"{value}\n")
        except OSError as error:
            raise ApplyError(f"writing {value!r} to {path} failed: {error.strerror}") from error


def vf_info(runner, pf):
    """{index: vfinfo} of a PF as `ip -j -d link show` reports it; fails where it cannot be read."""
    rc, out, err = runner.query(["ip", "-j", "-d", "link", "show", "dev", pf])
    try:
        if rc != 0:
            raise ValueError(err.strip())
        links = json.loads(out)
        return {vf["vf"]: vf for vf in links[0].get("vfinfo_list", [])}
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise ApplyError(f"cannot read the VFs of {pf} from ip -d link: {error}") from error


def _vlan_of(info):
    vlans = info.get("vlan_list")
    if vlans:
        return vlans[0].get("vlan", 0)
    return info.get("vlan", 0)


def _attribute_changes(pf, vf, info):
    """The `ip link set dev PF vf N ...` arguments a VF needs; fails where the driver hides a value."""
    wanted = {
        "mac": vf["mac"],
        "trust": None if vf["trust"] is None else ("on" if vf["trust"] else "off"),
        "spoofchk": None if vf["spoofchk"] is None else ("on" if vf["spoofchk"] else "off"),
        "vlan": vf["vlan"],
        "state": vf["link_state"],
    }
    current = {
        "mac": (info.get("address") or "").lower() or None,
        "trust": None if "trust" not in info else ("on" if info["trust"] else "off"),
        "spoofchk": None if "spoofchk" not in info else ("on" if info["spoofchk"] else "off"),
        "vlan": _vlan_of(info),
        "state": info.get("link_state"),
    }
    arguments = []
    for key, value in wanted.items():
        if value is None or value == current[key]:
            continue
        if current[key] is None and key in ("trust", "spoofchk", "state"):
            raise ApplyError(f"{pf}: its driver does not report {key} for VF {vf['index']}, so it cannot be kept")
        arguments += [key, str(value)]
    return arguments


def _wait_for_netdev(vf, sys_root, wait):
    """The VF's state once its netdev has its name. wait: only just after a probe; a VF bound all
    along with its netdev in another namespace would cost the whole wait at every run."""
    if not wait:
        return vf_state(vf["pci_address"], sys_root)
    deadline = time.monotonic() + NETDEV_WAIT_SECONDS
    while True:
        state = vf_state(vf["pci_address"], sys_root)
        if state["netdev"] == vf["name"] or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def _prepare_driver(runner, vf, state, sys_root):
    """Ready a VF for the wanted driver class (vfio-pci through driver_override, else the kernel's):
    unbound from a wrong one. True where it must be probed."""
    device = pci_device(vf["pci_address"], sys_root)
    wants_vfio = vf["driver"] == "vfio-pci"
    override = "vfio-pci" if wants_vfio else "(null)"
    bound_right = (state["driver"] == "vfio-pci") == wants_vfio and state["driver"] is not None
    if state["driver_override"] == override and bound_right:
        return False
    if wants_vfio:
        runner.change(["modprobe", "vfio-pci"], "vfio-pci takes VFs for DPDK and VMs")
    if state["driver_override"] != override:
        runner.write(
            os.path.join(device, "driver_override"),
            "vfio-pci" if wants_vfio else "",
            f"VF {vf['pci_address']}: {vf['driver']}",
        )
    if state["driver"] is not None and not bound_right:
        runner.write(
            os.path.join(device, "driver/unbind"),
            vf["pci_address"],
            f"unbind {vf['pci_address']} from {state['driver']}",
        )
    return not bound_right


def _rename(runner, vf, state):
    current = state["netdev"]
    if current is None or current == vf["name"]:
        return
    # Unreadable counts as up: never rename what might carry traffic.
    if _is_up(runner, current, unreadable=True):
        raise ApplyError(
            f"VF {vf['index']} ({vf['pci_address']}) is {current}, up; it should be {vf['name']}: set it down first"
        )
    runner.change(["ip", "link", "set", "dev", current, "name", vf["name"]], f"name VF {vf['index']} {vf['name']}")


def _is_up(runner, netdev, unreadable):
    rc, out, _err = runner.query(["ip", "-j", "link", "show", "dev", netdev])
    try:
        return rc == 0 and "UP" in json.loads(out)[0].get("flags", [])
    except (ValueError, IndexError, TypeError, KeyError):
        return unreadable


def _set_count(runner, pf, pf_plan, current, *, sys_root):
    """Write the VF count, the old VFs gone first; new VFs wait unprobed for their settings."""
    device = pci_device(pf_plan["pci_address"], sys_root)
    wanted = pf_plan["num_vfs"]
    if current:
        runner.write(os.path.join(device, "sriov_numvfs"), 0, f"{pf}: {current} VFs go before the count changes")
    if wanted:
        # A VF driver reads its MAC when it probes: new VFs probe once MAC and driver are set.
        runner.write(os.path.join(device, "sriov_drivers_autoprobe"), 0, f"{pf}: new VFs wait for their settings")
        runner.write(os.path.join(device, "sriov_numvfs"), wanted, f"{pf}: {wanted} VFs")


def _driver_wrong(vf, state):
    bound_right = (state["driver"] == "vfio-pci") == (vf["driver"] == "vfio-pci") and state["driver"] is not None
    return not bound_right or state["driver_override"] != ("vfio-pci" if vf["driver"] == "vfio-pci" else "(null)")


def _apply_vf(runner, pf, vf, info, netdev_facts, *, sys_root):
    """One VF's attributes through the PF, and its driver readied. True where it must be probed.

    A VF in use (a pod's, a VM's, one carrying addresses) is left as it is: the SR-IOV CNI sets
    VLAN, trust and spoofchk of a pod's VF from its network, and a driver reload cuts it off. What
    it would take is reported as pending.
    """
    arguments = _attribute_changes(pf, vf, info)
    state = vf_state(vf["pci_address"], sys_root)
    # A bound netdev driver took its MAC when it probed: it must probe again, for a new MAC or for
    # the one it missed (a probe while the PF was resetting).
    own = _own_mac(vf, state, sys_root) if vf["driver"] == "netdev" and vf["mac"] and state["netdev"] else None
    missed = own is not None and own != vf["mac"]  # unreadable: unknown, so nothing is reloaded for it
    reload = ("mac" in arguments or missed) and state["driver"] not in (None, "vfio-pci")
    busy = in_use(state, netdev_facts) if arguments or reload or _driver_wrong(vf, state) else None
    if busy:
        wanted = " ".join(arguments) or (f"mac {vf['mac']}" if missed else f"driver {vf['driver']}")
        runner.pending.append(
            f"{pf}: VF {vf['index']} is in use ({busy}) and keeps its settings; it would take {wanted}"
        )
        return False
    if arguments:
        runner.change(
            ["ip", "link", "set", "dev", pf, "vf", str(vf["index"]), *arguments],
            f"VF {vf['index']}: {' '.join(arguments)}",
        )
    if reload:
        _unbind_for_mac(runner, vf, sys_root)
        state = {**state, "driver": None}
    return _prepare_driver(runner, vf, state, sys_root)


def _pf_netdev(runner, pf_plan, sys_root):
    """The PF's netdev here, up: VFs pass traffic only while their PF is up."""
    netdevs = _listdir(os.path.join(pci_device(pf_plan["pci_address"], sys_root), "net"))
    if not netdevs:
        raise ApplyError(f"the PF {pf_plan['pci_address']} ({pf_plan['name']}) has no netdev here")
    if not _is_up(runner, netdevs[0], unreadable=False):
        runner.change(
            ["ip", "link", "set", "dev", netdevs[0], "up"], f"{netdevs[0]}: VFs pass traffic only while their PF is up"
        )
    return netdevs[0]


def apply_pf(runner, pf_plan, netdev_facts, sys_root=SYS):
    """Bring one PF's VFs to the plan. Returns nothing; the runner holds the changes."""
    if pf_plan.get("deferred"):
        runner.pending.append(f"{pf_plan['name']}: {pf_plan['num_vfs']} VFs {pf_plan['deferred']}")
        return
    device = pci_device(pf_plan["pci_address"], sys_root)
    pf = _pf_netdev(runner, pf_plan, sys_root)
    current = _read_int(os.path.join(device, "sriov_numvfs"))
    if current is None:
        raise ApplyError(f"{pf}: sriov_numvfs cannot be read")
    wanted = pf_plan["num_vfs"]
    created = current != wanted
    refusal = count_change_problem(None, pf_plan, netdev_facts, sys_root) if created else None
    if refusal:
        raise ApplyError(refusal)
    # Off, with the count already right: a run stopped half-way. Nothing probes the VFs until it is on.
    repair = not created and wanted and _read(os.path.join(device, "sriov_drivers_autoprobe")) == "0"
    to_probe = []
    try:
        if created:
            _set_count(runner, pf, pf_plan, current, sys_root=sys_root)
            if runner.check_mode:
                return  # the VFs do not exist yet: everything else would be done to new ones
        info = vf_info(runner, pf)
        made = existing_vfs(pf_plan["pci_address"], sys_root)
        for vf in pf_plan["vfs"]:
            if vf["index"] not in info or made.get(vf["index"]) != vf["pci_address"]:
                raise ApplyError(
                    f"{pf}: VF {vf['index']} should sit at {vf['pci_address']}, the kernel has "
                    f"{made.get(vf['index'])} (ip -d link {'lists' if vf['index'] in info else 'lacks'} it)"
                )
            if _apply_vf(runner, pf, vf, info[vf["index"]], netdev_facts, sys_root=sys_root):
                to_probe.append(vf)
    finally:
        # The kernel probes a VF of a PF without autoprobe only through driver_override.
        if (created and wanted) or repair:
            runner.write(os.path.join(device, "sriov_drivers_autoprobe"), 1, f"{pf}: VFs probe by themselves again")
    _probe_and_name(runner, pf, pf_plan["vfs"], to_probe, sys_root)


def _probe_and_name(runner, pf, vfs, to_probe, sys_root):
    """Probe the VFs readied for their driver, check that each took it and its MAC, name each
    netdev VF. A VF that never takes its MAC keeps neither the others from theirs nor their names."""
    for vf in to_probe:
        _probe(runner, vf, sys_root)
    if runner.check_mode:
        return
    missed = {vf["pci_address"]: problem for vf in to_probe if (problem := _until_its_mac(runner, pf, vf, sys_root))}
    for vf in vfs:
        if vf["driver"] == "netdev":
            _rename(runner, vf, vf_state(vf["pci_address"], sys_root))
    if missed:
        raise ApplyError(
            f"{pf}: {'; '.join(missed.values())}; the kernel log says why (dmesg | grep -e {' -e '.join(missed)})"
        )


def _until_its_mac(runner, pf, vf, sys_root):
    """Probe a VF just probed again until it shows its planned MAC; None, or what it shows after
    the last probe, in a sentence."""
    state = _probed(vf, sys_root)
    for attempt in range(1, MAC_PROBES + 1):
        shown = _mac_shown(runner, pf, vf, state, sys_root)
        if shown is None:
            return None
        if attempt == MAC_PROBES:
            return (
                f"VF {vf['index']} ({vf['pci_address']}) shows MAC {shown}, not {vf['mac']}, after {MAC_PROBES} probes"
            )
        time.sleep(attempt)  # the PF finishes its reset meanwhile
        runner.change(
            ["ip", "link", "set", "dev", pf, "vf", str(vf["index"]), "mac", vf["mac"]],
            f"VF {vf['index']} came up with MAC {shown}: set {vf['mac']} again and probe it again",
        )
        _unbind_for_mac(runner, vf, sys_root)
        _probe(runner, vf, sys_root)
        state = _probed(vf, sys_root)
    return None


def _unbind_for_mac(runner, vf, sys_root):
    unbind = os.path.join(pci_device(vf["pci_address"], sys_root), "driver/unbind")
    runner.write(unbind, vf["pci_address"], f"VF {vf['index']}: reload for its MAC")


def _probe(runner, vf, sys_root):
    runner.write(os.path.join(sys_root, "bus/pci/drivers_probe"), vf["pci_address"], f"probe {vf['pci_address']}")


def _probed(vf, sys_root):
    """The state of a VF just probed; fails where it did not take the driver it should have."""
    state = _wait_for_netdev(vf, sys_root, vf["driver"] == "netdev")
    if vf["driver"] == "vfio-pci" and state["driver"] != "vfio-pci":
        raise ApplyError(
            f"VF {vf['index']} ({vf['pci_address']}) did not bind to vfio-pci (driver: {state['driver']}); "
            "is the IOMMU on (sriov_iommu)?"
        )
    if vf["driver"] == "netdev" and (state["driver"] in (None, "vfio-pci") or not state["netdev"]):
        raise ApplyError(
            f"VF {vf['index']} ({vf['pci_address']}) has no netdev after its probe (driver: {state['driver']})"
        )
    return state


def _own_mac(vf, state, sys_root):
    """The MAC of a VF's netdev here as its driver took it (a bond port's own, not the bond's), or
    None where it cannot be read."""
    netdev = os.path.join(pci_device(vf["pci_address"], sys_root), "net", state["netdev"])
    own = _read(os.path.join(netdev, "bonding_slave/perm_hwaddr")) or _read(os.path.join(netdev, "address"))
    return own.lower() if own else None


def _mac_shown(runner, pf, vf, state, sys_root):
    """The MAC a netdev VF with a planned one shows instead of it, through its PF or its own netdev
    ("unreadable" where its netdev's cannot be read), or None where both show the plan's."""
    if vf["driver"] != "netdev" or not vf["mac"]:
        return None
    info = vf_info(runner, pf)
    if vf["index"] not in info:
        raise ApplyError(f"{pf}: ip -d link no longer lists VF {vf['index']} ({vf['pci_address']})")
    for shown in ((info[vf["index"]].get("address") or "").lower(), _own_mac(vf, state, sys_root)):
        if shown != vf["mac"]:
            return shown or "unreadable"
    return None


def apply_plan(the_plan, runner, netdev_facts=None, sys_root=None):
    sys_root = sys_root or SYS
    for pf_plan in the_plan["pfs"]:
        apply_pf(runner, pf_plan, netdev_facts or {}, sys_root)
    return runner.changes


def status(the_plan, runner, sys_root=None):
    """Per PF: the VF count and each VF as the node has it now."""
    sys_root = sys_root or SYS
    result = {}
    for pf_plan in the_plan["pfs"]:
        device = pci_device(pf_plan["pci_address"], sys_root)
        netdevs = _listdir(os.path.join(device, "net"))
        info = vf_info(runner, netdevs[0]) if netdevs else {}
        vfs = []
        for index, address in sorted(existing_vfs(pf_plan["pci_address"], sys_root).items()):
            state = vf_state(address, sys_root)
            entry = info.get(index, {})
            vfs.append(
                {
                    "index": index,
                    "pci_address": address,
                    "netdev": state["netdev"],
                    "driver": state["driver"],
                    "mac": entry.get("address"),
                    "trust": entry.get("trust"),
                    "spoofchk": entry.get("spoofchk"),
                    "vlan": _vlan_of(entry),
                    "link_state": entry.get("link_state"),
                }
            )
        result[pf_plan["name"]] = {"num_vfs": _read_int(os.path.join(device, "sriov_numvfs")), "vfs": vfs}
    return result


# --- the boot program --------------------------------------------------------------------------


def _run(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as error:
        return 127, "", str(error)
    return done.returncode, done.stdout, done.stderr


def main(argv):
    """sriov.py [--sysfs DIR] PLAN.json: re-create the VFs of a plan at boot (hpc-sriov.service)."""
    parser = argparse.ArgumentParser(prog=os.path.basename(argv[0]), description="Re-create the SR-IOV VFs of a plan.")
    parser.add_argument("--sysfs", default=SYS, help=f"where sysfs is (default {SYS})")
    parser.add_argument("plan", help="the JSON plan the sriov role wrote (/etc/hpc-datapath/sriov.json)")
    options = parser.parse_args(argv[1:])
    try:
        with open(options.plan) as handle:
            the_plan = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"hpc-sriov: reading the plan {options.plan}: {error}", file=sys.stderr)
        return 1
    pfs = the_plan.get("pfs") if isinstance(the_plan, dict) else None
    if not isinstance(pfs, list):
        print(f"hpc-sriov: the plan {options.plan} holds no list of PFs", file=sys.stderr)
        return 1
    try:
        # Started on a running node (a restart, or a run that starts the failed unit), it must tell
        # the VFs in use as the module does.
        facts = netdev_facts(_run)
    except ApplyError as error:
        print(f"hpc-sriov: {error}", file=sys.stderr)
        return 1
    failed = 0
    # One PF that fails does not keep the others' VFs from coming back.
    for pf_plan in pfs:
        runner = Runner(_run)
        try:
            apply_pf(runner, pf_plan, facts, options.sysfs)
        except ApplyError as error:
            print(f"hpc-sriov: {error}", file=sys.stderr)
            failed = 1
        except (KeyError, TypeError, ValueError, OSError) as error:
            print(f"hpc-sriov: a PF of the plan {options.plan} cannot be applied: {error!r}", file=sys.stderr)
            failed = 1
        for change in runner.changes:
            print(f"hpc-sriov: {change['why']}")
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv))
