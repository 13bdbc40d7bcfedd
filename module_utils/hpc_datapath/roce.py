# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RoCE rails: validation of the wanted state, and the runtime settings that no network backend keeps.

One implementation for two callers: the `roce_fabric` module, and the node's boot unit
(`hpc-roce.service` runs this file as a script on the JSON plan the role wrote), so that what
the role applies and what comes back after a reboot cannot drift apart. The module installs this
file on the node itself (`roce_fabric` state=install), from the copy it was shipped with, so the
boot program is always the code of the module that applied the plan. Standard library only,
Python 3.8 or newer, no import of Ansible: it runs on the targets, without Ansible.

Runtime settings, each read first and changed only where it differs:
- Soft-RoCE (`rdma_rxe`) devices on their netdevs, where a rail asks for them (the lab);
- rdma_cm defaults in configfs: RoCE mode and ToS per port;
- lossless QoS: trust and PFC through `mlnx_qos` (ConnectX) or `dcb` (iproute2), ECN and CNP
  through the mlx5 sysfs where the driver has it;
- Ascend NPU ports through `hccn_tool`: address, netmask, gateway, netdetect address.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys

SYS = "/sys"
CONFIGFS = "/sys/kernel/config"
ROCE_MODES = ("RoCE v2", "IB/RoCE v1")
RDMA_MTUS = (256, 512, 1024, 2048, 4096)
# GRH 40 + BTH 12 + the largest extended headers 32 + ICRC 4: the kernel's iboe_get_mtu().
ROCE_HEADER_BYTES = 88
NPU_DEVICE = re.compile(r"npu(\d+)\Z")
# What the kernel takes as a name (dev_valid_name; RDMA devices the same, up to 63 bytes): these
# names become paths in sysfs, configfs and /proc/sys, so nothing else may reach them.
# Narrower than the kernel allows: each name also goes into sysctl keys (where = splits a line),
# profile files and command lines. \Z, not $, which would let a trailing newline through.
NETDEV_NAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,15}\Z")
RDMA_DEVICE_NAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,63}\Z")
# Routing tables 253-255 are the kernel's default, main and local; rule priorities 0, 32766 and
# 32767 hold its local, main and default rules.
TABLES = range(1, 253)
RULE_PRIORITIES = range(1, 32766)


# --- validation ----------------------------------------------------------------------------


def rdma_mtu_fits(netdev_mtu, rdma_mtu):
    return netdev_mtu - ROCE_HEADER_BYTES >= rdma_mtu


def check_settings(settings):
    """Problems with the fabric-wide settings, as `variable: reason` sentences."""
    problems = []
    if settings["rdma_mtu"] not in RDMA_MTUS:
        problems.append(f"roce_rdma_mtu: {settings['rdma_mtu']} is not an RDMA MTU ({', '.join(map(str, RDMA_MTUS))})")
    elif not rdma_mtu_fits(settings["mtu"], settings["rdma_mtu"]):
        problems.append(
            f"roce_mtu: {settings['mtu']} is below what RDMA MTU {settings['rdma_mtu']} needs: at least "
            f"{settings['rdma_mtu'] + ROCE_HEADER_BYTES} ({ROCE_HEADER_BYTES} bytes of RoCE headers)"
        )
    if settings["mtu"] > 9216:
        problems.append(f"roce_mtu: {settings['mtu']} is above 9216, the largest jumbo frame switches carry")
    if settings["mode"] not in ROCE_MODES:
        problems.append(f"roce_mode: {settings['mode']!r} is not one of {', '.join(ROCE_MODES)}")
    if not 0 <= settings["tos"] <= 255:
        problems.append(f"roce_tos: {settings['tos']} is out of 0..255")
    qos = settings["qos"]
    priorities = qos["pfc_priorities"]
    for priority in priorities:
        if not isinstance(priority, int) or not 0 <= priority <= 7:
            problems.append(f"roce_pfc_priorities: {priority!r} is out of 0..7")
    if not 0 <= qos["cnp_priority"] <= 7:
        problems.append(f"roce_cnp_priority: {qos['cnp_priority']} is out of 0..7")
    for name in ("dscp", "cnp_dscp"):
        if not 0 <= qos[name] <= 63:
            problems.append(f"roce_{name}: {qos[name]} is out of 0..63")
    if qos["tool"] != "none" and qos["dscp"] >> 3 not in [p for p in priorities if isinstance(p, int)]:
        problems.append(
            f"roce_dscp: {qos['dscp']} maps to priority {qos['dscp'] >> 3}, which is not lossless "
            f"(roce_pfc_priorities {priorities})"
        )
    return problems


def _name_problem(index, device, netdev):
    if not RDMA_DEVICE_NAME.match(device):
        return f"roce_rails[{index}]: device {device!r} is not a valid RDMA device name (1 to 63 of A-Z a-z 0-9 _ . -)"
    if netdev and not NETDEV_NAME.match(str(netdev)):
        return (
            f"roce_rails[{index}] ({device}): netdev {netdev!r} is not a valid interface name "
            "(1 to 15 of A-Z a-z 0-9 _ . -)"
        )
    return None


def _allocation_problem(where, pool, allocation):
    if not pool:
        return f"{where}: has no pool, so IPAM cannot give it an address"
    if not allocation:
        return f"{where}: IPAM holds no address for it (run playbooks/ipam.yml; is pool {pool} defined?)"
    if allocation.get("pool") != pool:
        return f"{where}: its address comes from pool {allocation.get('pool')}, not {pool}"
    if ipaddress.ip_address(allocation["address"]).version != 4:
        return f"{where}: pool {pool} is IPv6; the roce role configures IPv4 rails only"
    return None


def _range_problem(variable, base, count, allowed, reserved):
    last = base + count - 1
    if count and not (base in allowed and last in allowed):
        return f"{variable}: {base} gives {base}..{last}, outside {allowed.start}..{allowed.stop - 1} ({reserved})"
    return None


def plan_rails(rails, addresses, *, netdevs, default_route_netdevs, source_routing, table_base, rule_priority_base):
    """The rails with their addresses and routing, and the problems that stop the run.

    rails: the hardware profile's [{device, netdev, pool}]; addresses: the IPAM facts
    {device: {address, prefix, pool, gateway}}; netdevs: the node's netdev names.
    """
    problems, planned = [], []
    seen_devices, seen_netdevs = set(), set()
    for index, rail in enumerate(rails):
        if not isinstance(rail, dict) or not rail.get("device"):
            problems.append(f"roce_rails[{index}]: needs a device")
            continue
        device, netdev, pool = str(rail["device"]), rail.get("netdev"), rail.get("pool")
        where = f"roce_rails[{index}] ({device})"
        problem = _name_problem(index, device, netdev)
        if problem:
            problems.append(problem)
            continue
        if device in seen_devices:
            problems.append(f"{where}: device listed twice")
        seen_devices.add(device)
        allocation = addresses.get(device)
        problem = _allocation_problem(where, pool, allocation)
        if problem:
            problems.append(problem)
            continue
        npu = NPU_DEVICE.match(device)
        if netdev:
            if netdev in seen_netdevs:
                problems.append(f"{where}: netdev {netdev} carries another rail already")
            seen_netdevs.add(netdev)
            if netdev not in netdevs:
                problems.append(f"{where}: netdev {netdev} does not exist on this node")
            elif netdev in default_route_netdevs:
                problems.append(
                    f"{where}: netdev {netdev} carries the node's default route; "
                    "a RoCE rail must not be the management path"
                )
        elif not npu:
            problems.append(f"{where}: needs a netdev, or must be an Ascend NPU port named npu<N>")
        interface = ipaddress.ip_interface(f"{allocation['address']}/{allocation['prefix']}")
        planned.append(
            {
                "device": device,
                "netdev": netdev or None,
                "npu": int(npu.group(1)) if npu and not netdev else None,
                "pool": pool,
                "address": allocation["address"],
                "prefix": int(allocation["prefix"]),
                "netmask": str(interface.netmask),
                "network": str(interface.network),
                "gateway": allocation.get("gateway") or None,
                "soft_roce": bool(rail.get("soft_roce", False)),
            }
        )
    # Ports that share a subnet answer ARP only for their own address and send from their own
    # port (source routing); a rail alone in its subnet needs none of it unless asked.
    linux = [rail for rail in planned if rail["netdev"]]
    # Every rail gets a table and a rule of its own, counted up from the bases.
    problems += filter(
        None,
        (
            _range_problem(
                "roce_route_table_base", table_base, len(linux), TABLES, "253-255 are the kernel's default, main, local"
            ),
            _range_problem(
                "roce_rule_priority_base", rule_priority_base, len(linux), RULE_PRIORITIES, "the kernel's own rules"
            ),
        ),
    )
    for position, rail in enumerate(linux):
        shared = sum(1 for other in linux if other["network"] == rail["network"]) > 1
        rail["source_routing"] = shared if source_routing == "auto" else source_routing == "always"
        rail["table"] = table_base + position
        rail["rule_priority"] = rule_priority_base + position
    return planned, problems


# --- reading the node ------------------------------------------------------------------------


def read(path, default=None):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def ipv4_gid(address):
    """The GID a RoCE port carries for an IPv4 address: ::ffff:a.b.c.d, as sysfs prints it."""
    packed = ipaddress.IPv6Address(f"::ffff:{address}").packed.hex()
    return ":".join(packed[i : i + 4] for i in range(0, 32, 4))


def rdma_ports(device, sys_root=SYS):
    return [int(port) for port in listdir(f"{sys_root}/class/infiniband/{device}/ports") if port.isdigit()]


def gid_table(device, port, sys_root=SYS):
    """The valid GID entries of a port: [{index, gid, type, netdev}]."""
    base = f"{sys_root}/class/infiniband/{device}/ports/{port}"
    entries = []
    for name in listdir(f"{base}/gids"):
        gid = read(f"{base}/gids/{name}")
        if not name.isdigit() or not gid or gid.strip("0:") == "":
            continue
        entries.append(
            {
                "index": int(name),
                "gid": gid,
                "type": read(f"{base}/gid_attrs/types/{name}"),
                "netdev": read(f"{base}/gid_attrs/ndevs/{name}"),
            }
        )
    return sorted(entries, key=lambda entry: entry["index"])


def port_status(device, sys_root=SYS):
    ports = {}
    for port in rdma_ports(device, sys_root):
        base = f"{sys_root}/class/infiniband/{device}/ports/{port}"
        ports[port] = {
            "state": (read(f"{base}/state") or "").partition(": ")[2] or None,
            "phys_state": (read(f"{base}/phys_state") or "").partition(": ")[2] or None,
            "link_layer": read(f"{base}/link_layer"),
            "gids": gid_table(device, port, sys_root),
        }
    return ports


# --- tools -------------------------------------------------------------------------------


class Runner:
    """Runs commands for real or, in check mode, records the setting commands it would run."""

    def __init__(self, run, check_mode=False):
        self._run = run
        self.check_mode = check_mode
        self.changes = []

    def query(self, argv):
        """A command that only reads: always runs. (rc, stdout, stderr)."""
        return self._run(argv)

    def change(self, argv, why):
        self.changes.append({"why": why, "command": argv})
        if self.check_mode:
            return 0, "", ""
        rc, out, err = self._run(argv)
        if rc != 0:
            raise ApplyError(f"{' '.join(argv)} failed (rc {rc}): {(err or out).strip()}")
        return rc, out, err

    def write(self, path, value, why):
        self.changes.append({"why": why, "write": path, "value": str(value)})
        if not self.check_mode:
            try:
                with open(path, "w") as handle:
                    handle.write(f"{value}\n")
            except OSError as error:
                raise ApplyError(f"writing {value} to {path} failed: {error.strerror}") from error

    def mkdir(self, path, why):
        self.changes.append({"why": why, "mkdir": path})
        if not self.check_mode:
            try:
                os.mkdir(path)
            except OSError as error:
                raise ApplyError(f"creating {path} failed: {error.strerror}") from error


class ApplyError(Exception):
    pass


def soft_roce_links(runner):
    """{rdma device: netdev} of the node's rdma links (`rdma -j link show`)."""
    rc, out, _err = runner.query(["rdma", "-j", "link", "show"])
    if rc != 0:
        return {}
    # ifname is "rxe0/1" (device/port) in some iproute2 versions, "rxe0" in others
    return {link["ifname"].split("/")[0]: link.get("netdev") for link in json.loads(out or "[]") if "ifname" in link}


def apply_soft_roce(runner, rail, links):
    device, netdev = rail["device"], rail["netdev"]
    if device not in links:
        runner.change(
            ["rdma", "link", "add", device, "type", "rxe", "netdev", netdev], f"{device}: Soft-RoCE on {netdev}"
        )
    elif links[device] != netdev:
        raise ApplyError(f"{device} is an RDMA device on {links[device]}, not on {netdev}")


def apply_cm_defaults(runner, device, mode, tos, *, sys_root=SYS, configfs=CONFIGFS):
    """RoCE mode and ToS for connections rdma_cm makes: configfs, per port."""
    base = f"{configfs}/rdma_cm"
    if not os.path.isdir(base):
        raise ApplyError(f"{base} is missing: is configfs mounted and the rdma_cm module loaded?")
    if not os.path.isdir(f"{base}/{device}"):
        runner.mkdir(f"{base}/{device}", f"{device}: rdma_cm defaults")
    for port in rdma_ports(device, sys_root):
        attrs = f"{base}/{device}/ports/{port}"
        if read(f"{attrs}/default_roce_mode") != mode:
            runner.write(f"{attrs}/default_roce_mode", mode, f"{device} port {port}: default RoCE mode {mode}")
        if read(f"{attrs}/default_roce_tos") != str(tos):
            runner.write(f"{attrs}/default_roce_tos", tos, f"{device} port {port}: default ToS {tos}")


def cm_defaults(device, sys_root=SYS, configfs=CONFIGFS):
    return {
        port: {
            "mode": read(f"{configfs}/rdma_cm/{device}/ports/{port}/default_roce_mode"),
            "tos": read(f"{configfs}/rdma_cm/{device}/ports/{port}/default_roce_tos"),
        }
        for port in rdma_ports(device, sys_root)
    }


def pfc_vector(priorities):
    return [1 if priority in priorities else 0 for priority in range(8)]


def parse_mlnx_qos(text):
    """Trust state and the PFC enabled vector from `mlnx_qos -i <netdev>` output."""
    trust = re.search(r"^Priority trust state:\s*(\S+)", text, re.MULTILINE)
    enabled = re.search(r"PFC configuration:.*?^\s*enabled\s+([\d\s]+?)\s*$", text, re.MULTILINE | re.DOTALL)
    return {
        "trust": trust.group(1) if trust else None,
        "pfc": [int(flag) for flag in enabled.group(1).split()] if enabled else None,
    }


def apply_mlnx_qos(runner, netdev, qos):
    rc, out, err = runner.query(["mlnx_qos", "-i", netdev])
    if rc != 0:
        raise ApplyError(f"mlnx_qos -i {netdev} failed (rc {rc}): {(err or out).strip()}")
    current, wanted = parse_mlnx_qos(out), pfc_vector(qos["pfc_priorities"])
    argv = ["mlnx_qos", "-i", netdev]
    if current["trust"] != qos["trust"]:
        argv += ["--trust", qos["trust"]]
    if current["pfc"] != wanted:
        argv += ["--pfc", ",".join(map(str, wanted))]
    if len(argv) > 3:
        runner.change(argv, f"{netdev}: trust {qos['trust']}, PFC on priorities {qos['pfc_priorities']}")


def parse_dcb_map(text, key):
    """`dcb ... show dev X <key>` prints `<key> 0:off 3:on` or `<key> 26:3`: as a dict."""
    found = re.search(rf"^{re.escape(key)}\s+(.*)$", text, re.MULTILINE)
    pairs = (item.split(":", 1) for item in (found.group(1).split() if found else []))
    return {k: v for k, v in pairs}


def apply_dcb(runner, netdev, qos):
    rc, out, err = runner.query(["dcb", "pfc", "show", "dev", netdev, "prio-pfc"])
    if rc != 0:
        raise ApplyError(
            f"dcb pfc show dev {netdev} failed (rc {rc}): {(err or out).strip()} (does the driver do DCB?)"
        )
    wanted = {str(p): "on" if p in qos["pfc_priorities"] else "off" for p in range(8)}
    if parse_dcb_map(out, "prio-pfc") != wanted:
        runner.change(
            ["dcb", "pfc", "set", "dev", netdev, "prio-pfc", *(f"{p}:{wanted[str(p)]}" for p in range(8))],
            f"{netdev}: PFC on priorities {qos['pfc_priorities']}",
        )
    _rc, out, _err = runner.query(["dcb", "app", "show", "dev", netdev, "dscp-prio"])
    entry = f"{qos['dscp']}:{qos['dscp'] >> 3}"
    if parse_dcb_map(out, "dscp-prio").get(str(qos["dscp"])) != str(qos["dscp"] >> 3):
        runner.change(["dcb", "app", "replace", "dev", netdev, "dscp-prio", entry], f"{netdev}: DSCP {entry}")
    rc, out, _err = runner.query(["dcb", "apptrust", "show", "dev", netdev])
    if rc == 0 and not re.search(rf"order\s+{qos['trust']}\b", out):
        runner.change(
            ["dcb", "apptrust", "set", "dev", netdev, "order", qos["trust"]], f"{netdev}: trust {qos['trust']}"
        )


def apply_ecn(runner, netdev, qos, sys_root=SYS):
    """ECN for the lossless priorities and the CNP marking, through the mlx5 sysfs where present."""
    base = f"{sys_root}/class/net/{netdev}/ecn"
    if not os.path.isdir(base):
        return False
    for priority in qos["pfc_priorities"]:
        for side in ("roce_np", "roce_rp"):
            path = f"{base}/{side}/enable/{priority}"
            if read(path) != "1":
                runner.write(path, 1, f"{netdev}: ECN {side} on priority {priority}")
    for name, value in (("cnp_dscp", qos["cnp_dscp"]), ("cnp_802p_prio", qos["cnp_priority"])):
        path = f"{base}/roce_np/{name}"
        if read(path) != str(value):
            runner.write(path, value, f"{netdev}: {name} {value}")
    return True


def parse_hccn(text):
    """The key:value lines of `hccn_tool ... -g` ('ipaddr:10.0.0.1', 'default gateway:10.0.0.254, Iface:eth0')."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip().lower()] = value.split(",")[0].strip()
    return values


def hccn_state(runner, npu):
    state = {}
    for what in ("ip", "gateway", "netdetect"):
        rc, out, err = runner.query(["hccn_tool", "-i", str(npu), f"-{what}", "-g"])
        if rc != 0:
            raise ApplyError(f"hccn_tool -i {npu} -{what} -g failed (rc {rc}): {(err or out).strip()}")
        state.update(parse_hccn(out))
    return {
        "address": state.get("ipaddr"),
        "netmask": state.get("netmask"),
        "gateway": state.get("default gateway") or state.get("gateway"),
        "netdetect": state.get("netdetect address") or state.get("netdetect"),
    }


def apply_hccn(runner, rail, netdetect):
    npu = str(rail["npu"])
    current = hccn_state(runner, rail["npu"])
    if (current["address"], current["netmask"]) != (rail["address"], rail["netmask"]):
        runner.change(
            ["hccn_tool", "-i", npu, "-ip", "-s", "address", rail["address"], "netmask", rail["netmask"]],
            f"{rail['device']}: address {rail['address']}/{rail['prefix']}",
        )
    if rail["gateway"] and current["gateway"] != rail["gateway"]:
        runner.change(
            ["hccn_tool", "-i", npu, "-gateway", "-s", "gateway", rail["gateway"]], f"{rail['device']}: gateway"
        )
    if netdetect and current["netdetect"] != netdetect:
        runner.change(
            ["hccn_tool", "-i", npu, "-netdetect", "-s", "address", netdetect], f"{rail['device']}: netdetect"
        )


# --- the whole plan ------------------------------------------------------------------------


def apply_plan(plan, runner, sys_root=None, configfs=None):
    """Bring the runtime state to the plan. Returns the changes (made or, in check mode, due).

    sys_root, configfs: where sysfs and configfs are; SYS and CONFIGFS as they are at the call.
    """
    sys_root, configfs = sys_root or SYS, configfs or CONFIGFS
    links = soft_roce_links(runner) if any(rail.get("soft_roce") for rail in plan["rails"]) else {}
    qos = plan["qos"]
    for rail in plan["rails"]:
        if rail["npu"] is not None:
            apply_hccn(runner, rail, plan["hccn_netdetect"] or rail["gateway"])
            continue
        if rail["soft_roce"]:
            apply_soft_roce(runner, rail, links)
        if runner.check_mode and not os.path.isdir(f"{sys_root}/class/infiniband/{rail['device']}"):
            continue  # created by the real run; nothing to compare against yet
        apply_cm_defaults(runner, rail["device"], plan["mode"], plan["tos"], sys_root=sys_root, configfs=configfs)
        if qos["tool"] == "mlnx_qos":
            apply_mlnx_qos(runner, rail["netdev"], qos)
        elif qos["tool"] == "dcb":
            apply_dcb(runner, rail["netdev"], qos)
        if qos["tool"] != "none" and qos["ecn"]:
            apply_ecn(runner, rail["netdev"], qos, sys_root)
    return runner.changes


def rail_status(plan, runner, sys_root=None, configfs=None):
    """What the rails look like now: the verification facts."""
    sys_root, configfs = sys_root or SYS, configfs or CONFIGFS
    status = {}
    for rail in plan["rails"]:
        if rail["npu"] is not None:
            status[rail["device"]] = {"npu": rail["npu"], "hccn": hccn_state(runner, rail["npu"])}
            continue
        netdev, device = rail["netdev"], rail["device"]
        ports = port_status(device, sys_root)
        gid = ipv4_gid(rail["address"])
        entry = {
            "netdev": netdev,
            "operstate": read(f"{sys_root}/class/net/{netdev}/operstate"),
            "mtu": int(read(f"{sys_root}/class/net/{netdev}/mtu", "0")),
            "ports": ports,
            "roce_v2_gid": any(
                g["gid"] == gid and g["type"] == "RoCE v2" and g["netdev"] == netdev
                for port in ports.values()
                for g in port["gids"]
            ),
            "cm_defaults": cm_defaults(device, sys_root, configfs),
            "qos": None,
        }
        if plan["qos"]["tool"] == "mlnx_qos":
            entry["qos"] = parse_mlnx_qos(runner.query(["mlnx_qos", "-i", netdev])[1])
        elif plan["qos"]["tool"] == "dcb":
            entry["qos"] = {
                "pfc": parse_dcb_map(runner.query(["dcb", "pfc", "show", "dev", netdev, "prio-pfc"])[1], "prio-pfc")
            }
        status[device] = entry
    return status


def _run(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as error:
        return 127, "", str(error)
    return done.returncode, done.stdout, done.stderr


def main(argv):
    """roce.py [--sysfs DIR] [--configfs DIR] PLAN.json: re-apply the runtime settings at boot.

    hpc-roce.service runs it on the plan the roce role wrote. --sysfs and --configfs point it at
    other trees than /sys and /sys/kernel/config (the tests' fakes).
    """
    parser = argparse.ArgumentParser(
        prog=os.path.basename(argv[0]), description="Re-apply the RoCE runtime settings of a plan."
    )
    parser.add_argument("--sysfs", default=SYS, help=f"where sysfs is (default {SYS})")
    parser.add_argument("--configfs", default=CONFIGFS, help=f"where configfs is (default {CONFIGFS})")
    parser.add_argument("plan", help="the JSON plan the roce role wrote (/etc/hpc-datapath/roce.json)")
    options = parser.parse_args(argv[1:])
    try:
        with open(options.plan) as handle:
            plan = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"hpc-roce: reading the plan {options.plan}: {error}", file=sys.stderr)
        return 1
    try:
        for change in apply_plan(plan, Runner(_run), sys_root=options.sysfs, configfs=options.configfs):
            print(f"hpc-roce: {change['why']}")
    except ApplyError as error:
        print(f"hpc-roce: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
