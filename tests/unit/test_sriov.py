"""SR-IOV VFs: the plan against a fake sysfs tree, applying it with a fake `ip`, the boot program, the module."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest
from ansible.module_utils.hpc_datapath import sriov
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load
from fake_sysfs import link, write
from hypothesis import given
from hypothesis import strategies as st

sriov_vfs = _load("sriov_vfs", ROOT / "library" / "sriov_vfs.py")

PF1, PF2 = "0000:01:00.0", "0000:02:00.0"  # ens1f0: VFs at offset 128, stride 2; ens2f0: offset 2, stride 1
MAC0 = "52:54:00:10:00:00"
RANDOM_MAC = "3a:ca:a0:95:aa:55"  # what igbvf took on a probe while its PF was resetting
# One VF in `ip -j -d link show` of iproute2 6.1, as a fresh mlx5 VF is.
VFINFO = {
    "link_type": "ether",
    "address": "00:00:00:00:00:00",
    "broadcast": "ff:ff:ff:ff:ff:ff",
    "vlan_list": [{}],
    "rate": {"max_tx": 0, "min_tx": 0},
    "spoofchk": True,
    "link_state": "auto",
    "trust": False,
    "query_rss_en": False,
}


class Node:
    """A fake node: a sysfs tree of SR-IOV NICs under root/sys, and the commands the applier runs.

    The tree holds the VFs a test declares whatever sriov_numvfs says (writing it creates nothing);
    `ip -j -d link show dev PF` lists those below the PF's sriov_numvfs, as the kernel would.
    """

    def __init__(self, root):
        self.sys = root / "sys"
        self.vfinfo = {}  # PF netdev -> {index: vfinfo}
        self.up = set()  # the netdevs that are up
        self.answers = {}  # argv tuple -> (rc, out, err), ahead of what the tree says
        self.calls = []
        # PCI address -> how many more probes of that VF come while its PF resets: igbvf then gets
        # no MAC from the PF, takes a random one and, the VF trusted, hands it to the PF.
        self.probes_in_reset = {}
        self.links = []  # what `ip -j addr show` lists
        (self.sys / "bus" / "pci" / "drivers").mkdir(parents=True)
        write(self.sys / "class" / "net" / "eno1" / "address", "52:54:00:00:00:01")  # no SR-IOV

    def device(self, address):
        return self.sys / "bus" / "pci" / "devices" / address

    def pf(self, name, address, *, mac, total=8, offset=128, stride=2):
        for attribute, value in [
            ("sriov_totalvfs", total),
            ("sriov_numvfs", 0),
            ("sriov_offset", offset),
            ("sriov_stride", stride),
            ("sriov_drivers_autoprobe", 1),
        ]:
            write(self.device(address) / attribute, str(value))
        (self.device(address) / "net" / name).mkdir(parents=True)
        link(self.sys / "class" / "net" / name / "device", f"../../../bus/pci/devices/{address}")
        write(self.sys / "class" / "net" / name / "address", mac)
        self.up.add(name)
        self.vfinfo[name] = {}

    def pf_address(self, pf):
        return os.path.basename(os.path.realpath(self.sys / "class" / "net" / pf / "device"))

    def vf(self, pf, index, *, driver="mlx5_core", netdev=None, elsewhere=False, override="(null)", **info):
        """VF index of pf, (re)made: bound to driver (None: unbound), its netdev here (None: none), and
        its vfinfo: VFINFO with info over it, a key given None left out (a driver that hides it).
        elsewhere: its netdev is in another namespace (the net directory is there, empty)."""
        pf_device = self.device(self.pf_address(pf))
        read = {name: int((pf_device / f"sriov_{name}").read_text()) for name in ("offset", "stride")}
        address = sriov.vf_address(self.pf_address(pf), read["offset"], read["stride"], index)
        shutil.rmtree(self.device(address), ignore_errors=True)
        write(self.device(address) / "driver_override", override)
        if driver:
            (self.sys / "bus" / "pci" / "drivers" / driver).mkdir(exist_ok=True)
            link(self.device(address) / "driver", f"../../drivers/{driver}")
        if not (pf_device / f"virtfn{index}").is_symlink():
            link(pf_device / f"virtfn{index}", f"../{address}")
        self.vfinfo[pf][index] = {"vf": index} | {k: v for k, v in (VFINFO | info).items() if v is not None}
        if netdev:
            self.netdev(pf, index, netdev)
        if elsewhere:
            (self.device(address) / "net").mkdir(parents=True)
        return address

    def netdev(self, pf, index, name):
        """The netdev a VF driver makes on its probe, with the MAC the PF gives it (see probes_in_reset)."""
        address = os.path.basename(os.readlink(self.device(self.pf_address(pf)) / f"virtfn{index}"))
        mac = self.vfinfo[pf][index].get("address", "00:00:00:00:00:00").lower()
        if self.probes_in_reset.get(address):
            self.probes_in_reset[address] -= 1
            mac = self.vfinfo[pf][index]["address"] = RANDOM_MAC
        write(self.device(address) / "net" / name / "address", mac)

    def made(self, pf, count, **info):
        """count VFs of pf as the role leaves them: sriov_numvfs, each bound to mlx5_core, named <pf>v<i>."""
        write(self.device(self.pf_address(pf)) / "sriov_numvfs", str(count))
        for index in range(count):
            self.vf(pf, index, netdev=f"{pf}v{index}", **info)

    def read(self, path):
        return (self.sys / "bus" / "pci" / "devices" / path).read_text()

    def __call__(self, argv):
        """The applier's commands: `ip` answers from the tree, anything else succeeds."""
        self.calls.append(argv)
        if tuple(argv) in self.answers:
            return self.answers[tuple(argv)]
        match argv:
            case ["ip", "-j", "-d", "link", "show", "dev", pf]:
                count = int(self.read(f"{self.pf_address(pf)}/sriov_numvfs"))
                vfs = [info for index, info in sorted(self.vfinfo[pf].items()) if index < count]
                return 0, json.dumps([{"ifname": pf, "flags": self.flags(pf), "vfinfo_list": vfs}]), ""
            case ["ip", "-j", "addr", "show"]:
                return 0, json.dumps(self.links), ""
            case ["ip", "-j", "link", "show", "dev", netdev]:
                return 0, json.dumps([{"ifname": netdev, "flags": self.flags(netdev)}]), ""
            case ["ip", "link", "set", "dev", pf, "vf", index, *settings] if pf in self.vfinfo:
                info = self.vfinfo[pf][int(index)]
                for key, value in zip(settings[::2], settings[1::2], strict=True):
                    match key:
                        case "mac":
                            info["address"] = value
                        case "trust" | "spoofchk":
                            info[key] = value == "on"
                        case "vlan":
                            info["vlan_list"] = [{"vlan": int(value)}]
                        case "state":
                            info["link_state"] = value
        return 0, "", ""

    def flags(self, netdev):
        return ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"] if netdev in self.up else ["BROADCAST", "MULTICAST"]

    def kernel(self, path, value):
        """What the kernel does after a sysfs write of the applier: a probe binds a VF (through its
        driver_override, or its default driver where its PF has autoprobe on) and udev names its
        netdev as the role's rule does; an unbind takes driver and netdev away."""
        relative = os.path.relpath(path, self.sys)
        if relative == "bus/pci/drivers_probe":
            address = str(value)
            device = self.device(address)
            if (device / "driver").is_symlink():
                return
            override = (device / "driver_override").read_text().strip() if (device / "driver_override").exists() else ""
            pf, index = next(
                (pf, int(entry.name[6:]))
                for pf in self.vfinfo
                for entry in self.device(self.pf_address(pf)).iterdir()
                if entry.name.startswith("virtfn") and os.path.basename(os.readlink(entry)) == address
            )
            autoprobe = self.read(f"{self.pf_address(pf)}/sriov_drivers_autoprobe").strip() == "1"
            if override not in ("", "(null)"):
                self.bind(address, override)
            elif autoprobe:
                self.bind(address, "mlx5_core")
                self.netdev(pf, index, f"{pf}v{index}")
        elif relative.startswith("bus/pci/devices/") and relative.endswith("/driver/unbind"):
            device = self.device(str(value))
            (device / "driver").unlink()
            shutil.rmtree(device / "net", ignore_errors=True)

    def bind(self, address, driver):
        (self.sys / "bus" / "pci" / "drivers" / driver).mkdir(exist_ok=True)
        link(self.device(address) / "driver", f"../../drivers/{driver}")

    def settings_made(self):
        return [" ".join(argv) for argv in self.calls if argv[:2] != ["ip", "-j"]]

    def shown(self, change):
        """A change as a shell would make it: the command, or `echo VALUE > PATH` (PATH under bus/pci)."""
        if "command" in change:
            return " ".join(change["command"])
        path = os.path.relpath(change["write"], self.sys / "bus" / "pci").removeprefix("devices/")
        return " ".join(filter(None, ["echo", change["value"], ">", path]))


@pytest.fixture
def node(tmp_path, monkeypatch):
    node = Node(tmp_path)
    write_for_real = sriov.Runner.write

    def write_then_kernel(runner, path, value, why):
        write_for_real(runner, path, value, why)
        if not runner.check_mode:
            node.kernel(path, value)

    monkeypatch.setattr(sriov.Runner, "write", write_then_kernel)
    node.pf("ens1f0", PF1, mac="52:54:00:00:01:00")
    node.pf("ens2f0", PF2, mac="52:54:00:00:02:00", offset=2, stride=1)
    return node


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    """No netdev ever appears here: a wait for one is recorded on a fake clock, never slept."""
    slept = []
    monkeypatch.setattr(sriov, "time", types.SimpleNamespace(monotonic=lambda: sum(slept), sleep=slept.append))
    return slept


def plan(node, pfs, facts=None):
    return sriov.plan(pfs, facts or {}, str(node.sys))


def problems(node, pfs, facts=None):
    return plan(node, pfs, facts)[1]


# --- the plan -------------------------------------------------------------------------------------

SPEC = {"num_vfs": 2, "vf_defaults": {"trust": True, "spoofchk": False}, "vfs": [{"index": 0, "mac": MAC0}]}


@pytest.mark.parametrize(
    "selector",
    [{"name": "ens1f0"}, {"pci_address": PF1}, {"mac": "52:54:00:00:01:00"}, {"mac": "52:54:00:00:01:00".upper()}],
    ids=["name", "pci_address", "mac", "MAC"],
)
def test_the_plan_finds_the_pf_and_places_and_names_every_vf(node, selector):
    assert plan(node, [selector | SPEC]) == (
        {
            "pfs": [
                {
                    "name": "ens1f0",
                    "pci_address": PF1,
                    "num_vfs": 2,
                    "total_vfs": 8,
                    "allow_count_change_in_use": False,
                    "vfs": [
                        {"index": 0, "pci_address": "0000:01:10.0", "name": "ens1f0v0", "mac": MAC0}
                        | {"trust": True, "spoofchk": False, "vlan": None, "link_state": None, "driver": "netdev"},
                        {"index": 1, "pci_address": "0000:01:10.2", "name": "ens1f0v1", "mac": None}
                        | {"trust": True, "spoofchk": False, "vlan": None, "link_state": None, "driver": "netdev"},
                    ],
                }
            ]
        },
        [],
    )


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"num_vfs": 2}, "sriov_pfs[0]: name the physical function by exactly one of name, pci_address or mac"),
        (
            {"name": "ens1f0", "mac": "52:54:00:00:01:00", "num_vfs": 2},
            "sriov_pfs[0]: name the physical function by exactly one of name, pci_address or mac",
        ),
        (
            {"name": "ens9", "num_vfs": 2},
            "sriov_pfs[0].name: no SR-IOV capable NIC ens9 on this node (SR-IOV capable: "
            "ens1f0 (0000:01:00.0, 52:54:00:00:01:00), ens2f0 (0000:02:00.0, 52:54:00:00:02:00))",
        ),
        ({"name": "eno1", "num_vfs": 2}, "sriov_pfs[0].name: no SR-IOV capable NIC eno1 on this node"),
        ({"pci_address": "01:00.0", "num_vfs": 2}, "sriov_pfs[0].pci_address: '01:00.0' is not a valid pci address"),
        ({"name": "ens1f0/../x", "num_vfs": 2}, "sriov_pfs[0].name: 'ens1f0/../x' is not a valid name"),
        ("ens1f0", "sriov_pfs[0]: must be a mapping with name, pci_address or mac, and num_vfs"),
    ],
)
def test_a_pf_is_named_by_one_selector_that_the_node_has(node, spec, problem):
    found = problems(node, [spec])
    assert len(found) == 1
    assert found[0].startswith(problem), found


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"num_vfs": 9}, "sriov_pfs[0].num_vfs: 9 is more than ens1f0 can hold (sriov_totalvfs 8)"),
        ({"num_vfs": -1}, "sriov_pfs[0].num_vfs: -1 is not a VF count (0 or more)"),
        ({"num_vfs": True}, "sriov_pfs[0].num_vfs: True is not a VF count (0 or more)"),
        ({"num_vfs": "2"}, "sriov_pfs[0].num_vfs: '2' is not a VF count (0 or more)"),
        ({"numvfs": 2}, "sriov_pfs[0]: unknown keys numvfs"),
        ({"name_prefix": "-v"}, "sriov_pfs[0].name_prefix: '-v' must be up to 8 letters, digits or _"),
        (
            {"allow_count_change_in_use": "yes"},
            "sriov_pfs[0].allow_count_change_in_use: 'yes' is not true or false",
        ),
        ({"vf_defaults": {"trust": "yes"}}, "sriov_pfs[0].vf_defaults.trust: 'yes' is not true or false"),
        (
            {"vf_defaults": {"trusted": True}},
            "sriov_pfs[0].vf_defaults: unknown settings trusted "
            "(known: mac, trust, spoofchk, vlan, link_state, driver)",
        ),
        ({"vfs": [{"index": 2}]}, "sriov_pfs[0].vfs[0].index: VF 2 does not exist with num_vfs 2"),
        ({"vfs": [{"index": 1}, {"index": 1}]}, "sriov_pfs[0].vfs[1].index: VF 1 is listed twice"),
        ({"vfs": [{"mac": MAC0}]}, "sriov_pfs[0].vfs[0].index: None is not a VF index"),
        ({"vfs": [{"index": True}]}, "sriov_pfs[0].vfs[0].index: True is not a VF index"),
    ]
    + [
        ({"vfs": [{"index": 0, "mac": mac}]}, f"sriov_pfs[0].vfs[0].mac: {mac!r} is not a unicast MAC address")
        for mac in (
            "01:00:5e:00:00:01",
            "33:33:00:00:00:01",
            "00:00:00:00:00:00",
            "52:54:00:10:00",
            "52-54-00-10-00-00",
        )
    ]
    + [
        ({"vfs": [{"index": 0, "vlan": vlan}]}, f"sriov_pfs[0].vfs[0].vlan: {vlan!r} is not a VLAN id (0 to 4094")
        for vlan in (4095, -1, True, "100")
    ]
    + [
        ({"vfs": [{"index": 0, "link_state": "up"}]}, "sriov_pfs[0].vfs[0].link_state: 'up' is not one of auto"),
        (
            {"vfs": [{"index": 0, "driver": "mlx5_core"}]},
            "sriov_pfs[0].vfs[0].driver: 'mlx5_core' is not one of netdev, vfio-pci",
        ),
    ],
)
def test_bad_pf_settings_are_named(node, change, problem):
    found = problems(node, [{"name": "ens1f0", "num_vfs": 2} | change])
    assert len(found) == 1
    assert found[0].startswith(problem), found


def test_a_pf_is_listed_once_by_whatever_selector(node):
    assert problems(node, [{"name": "ens1f0", "num_vfs": 2}, {"pci_address": PF1, "num_vfs": 4}]) == [
        "sriov_pfs[1]: ens1f0 is already sriov_pfs[0]"
    ]


def test_a_vf_mac_is_unique_across_pfs_whatever_its_case(node):
    assert problems(
        node,
        [
            {"name": "ens1f0", "num_vfs": 1, "vfs": [{"index": 0, "mac": MAC0}]},
            {"name": "ens2f0", "num_vfs": 1, "vfs": [{"index": 0, "mac": MAC0.upper()}]},
        ],
    ) == [f"sriov_pfs[1]: VF 0 has MAC {MAC0}, as ens1f0 VF 0 has"]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"num_vfs": 10}, None),  # enp129s0f0np0v9: 15 characters
        (
            {"num_vfs": 11},
            "sriov_pfs[0].name_prefix: the VF name enp129s0f0np0v10 is longer than the kernel's 15 characters; "
            "choose a shorter name_prefix",
        ),
        ({"num_vfs": 11, "vfs": [{"index": 10, "driver": "vfio-pci"}]}, None),  # no netdev, no name
        (
            {"num_vfs": 1, "name_prefix": "vf"},
            "sriov_pfs[0].name_prefix: the VF name enp129s0f0np0vf0 is longer than the kernel's 15 characters; "
            "choose a shorter name_prefix",
        ),
    ],
)
def test_vf_names_fit_the_kernels_15_characters(node, spec, problem):
    node.pf("enp129s0f0np0", "0000:81:00.0", mac="52:54:00:00:81:00", total=16)
    found = problems(node, [{"name": "enp129s0f0np0"} | spec])
    assert found == ([] if problem is None else [problem])


@pytest.mark.parametrize(
    ("pf", "offset", "stride", "addresses"),
    [
        (PF1, 128, 2, ["0000:01:10.0", "0000:01:10.2", "0000:01:10.4"]),
        ("0000:3b:00.1", 7, 1, ["0000:3b:01.0", "0000:3b:01.1", "0000:3b:01.2"]),
        ("0000:05:00.0", 254, 1, ["0000:05:1f.6", "0000:05:1f.7", "0000:06:00.0"]),  # across a bus
        ("0001:af:00.0", 255, 256, ["0001:af:1f.7", "0001:b0:1f.7", "0001:b1:1f.7"]),  # domain kept
    ],
)
def test_vfs_sit_at_the_pfs_offset_and_stride(node, pf, offset, stride, addresses):
    node.pf("ens9f0", pf, mac="52:54:00:00:09:00", offset=offset, stride=stride)
    the_plan, found = plan(node, [{"name": "ens9f0", "num_vfs": 3, "name_prefix": "_"}])
    assert found == []
    assert [(vf["name"], vf["pci_address"]) for vf in the_plan["pfs"][0]["vfs"]] == [
        ("ens9f0_0", addresses[0]),
        ("ens9f0_1", addresses[1]),
        ("ens9f0_2", addresses[2]),
    ]


@st.composite
def vfs_within_the_routing_ids(draw):
    """A PF's routing ID, First VF Offset, VF Stride and two VF indexes that stay within 16 bits."""
    pf = draw(st.integers(0, 0xFFFE))
    offset = draw(st.integers(1, 0xFFFF - pf))
    stride = draw(st.integers(1, 0xFFFF))
    last = (0xFFFF - pf - offset) // stride
    first, second = draw(st.integers(0, last)), draw(st.integers(0, last))
    return draw(st.integers(0, 0xFFFF)), pf, offset, stride, first, second


def routing_id(address):
    _domain, bus, slot_function = address.split(":")
    slot, function = slot_function.split(".")
    return int(bus, 16) << 8 | int(slot, 16) << 3 | int(function)


@given(vfs_within_the_routing_ids())
def test_a_vf_address_is_the_pfs_routing_id_plus_offset_and_stride(case):
    domain, pf, offset, stride, first, second = case
    pf_address = f"{domain:04x}:{pf >> 8:02x}:{pf >> 3 & 0x1F:02x}.{pf & 7}"
    address = sriov.vf_address(pf_address, offset, stride, first)
    assert sriov.PCI_ADDRESS.match(address)
    assert address.startswith(f"{domain:04x}:")
    assert routing_id(address) == pf + offset + first * stride
    if second != first:
        assert sriov.vf_address(pf_address, offset, stride, second) != address


def test_a_vf_on_a_driver_that_makes_no_netdev_is_in_use():
    vf = {"driver": "uio_pci_generic", "netdev": None, "net_elsewhere": False}
    assert sriov.in_use(vf, {}) == "bound to uio_pci_generic, which makes no netdev"


FACTS = {"ens1f0v2": {"addresses": ["10.0.0.2/24"], "master": None}, "ens1f0v3": {"addresses": [], "master": "bond0"}}
IN_USE = (
    "sriov_pfs[0].num_vfs: changing the VF count of ens1f0 from 5 to {wanted} tears down every VF, and these are "
    "in use: VF 0 (0000:01:10.0): its netdev is in another network namespace; VF 1 (0000:01:10.2): bound to "
    "vfio-pci; VF 2 (0000:01:10.4): ens1f0v2 carries 10.0.0.2/24; VF 3 (0000:01:10.6): ens1f0v3 is a port of "
    "bond0. Set sriov_pfs[0].allow_count_change_in_use: true to do it anyway"
)


@pytest.mark.parametrize(
    ("current", "wanted", "opted_in", "problem"),
    [
        (5, 8, False, IN_USE.format(wanted=8)),
        (5, 0, False, IN_USE.format(wanted=0)),
        (5, 8, True, None),
        (5, 5, False, None),  # unchanged
        (0, 8, False, None),  # nothing to tear down
    ],
)
def test_a_count_change_tearing_down_vfs_in_use_needs_the_opt_in(node, current, wanted, opted_in, problem):
    node.made("ens1f0", 5)  # VF 4 stays as made: bound, named, no address, not in use
    node.vf("ens1f0", 0, elsewhere=True)  # bound, its netdev moved to another namespace
    node.vf("ens1f0", 1, driver="vfio-pci")
    write(node.device(PF1) / "sriov_numvfs", str(current))
    spec = {"name": "ens1f0", "num_vfs": wanted, "allow_count_change_in_use": opted_in}
    assert problems(node, [spec], FACTS) == ([] if problem is None else [problem])


# --- applying -------------------------------------------------------------------------------------


@dataclass
class Applied:
    changes: list  # each as Node.shown writes it
    error: str | None
    pending: tuple = ()  # what VFs in use keep until they are free


def apply(node, pfs, facts=None, check_mode=False):
    """sriov.apply_plan of the plan for pfs (made as state=plan made it, before), with the node's facts now."""
    the_plan, found = plan(node, pfs)
    assert found == []
    runner = sriov.Runner(node, check_mode=check_mode)
    try:
        sriov.apply_plan(the_plan, runner, facts or {}, str(node.sys))
    except sriov.ApplyError as error:
        return Applied([node.shown(change) for change in runner.changes], str(error), tuple(runner.pending))
    return Applied([node.shown(change) for change in runner.changes], None, tuple(runner.pending))


# The kernel probes a VF of a PF without autoprobe only through driver_override: the netdev VFs
# are probed once autoprobe is back on.
NEW_VFS = [
    "echo 0 > 0000:01:00.0/sriov_drivers_autoprobe",
    "echo 2 > 0000:01:00.0/sriov_numvfs",
    f"ip link set dev ens1f0 vf 0 mac {MAC0} trust on spoofchk off",
    "ip link set dev ens1f0 vf 1 trust on spoofchk off",
    "echo 1 > 0000:01:00.0/sriov_drivers_autoprobe",
    "echo 0000:01:10.0 > drivers_probe",
    "echo 0000:01:10.2 > drivers_probe",
]


def test_new_vfs_get_their_settings_before_their_driver_probes_them(node, waits):
    for index in (0, 1):
        node.vf("ens1f0", index, driver=None)
    assert apply(node, [{"name": "ens1f0"} | SPEC]) == Applied(NEW_VFS, None)
    assert node.settings_made() == [change for change in NEW_VFS if not change.startswith("echo")]
    assert (node.read(f"{PF1}/sriov_numvfs"), node.read(f"{PF1}/sriov_drivers_autoprobe")) == ("2\n", "1\n")
    assert [sriov.vf_state(address, str(node.sys))["netdev"] for address in ("0000:01:10.0", "0000:01:10.2")] == [
        "ens1f0v0",
        "ens1f0v1",
    ]


# VF 0 carries an address: a MAC it should take waits, reported, until it is free.
IN_USE_WOULD_TAKE_MAC0 = (
    {"ens1f0v0": {"addresses": ["10.0.0.5/24"], "master": None}},
    Applied(
        [],
        None,
        (f"ens1f0: VF 0 is in use (ens1f0v0 carries 10.0.0.5/24) and keeps its settings; it would take mac {MAC0}",),
    ),
)


def test_a_vf_probed_while_its_pf_resets_gets_its_mac_again_and_a_second_probe(node, waits):
    for index in (0, 1):
        node.vf("ens1f0", index, driver=None)
    node.probes_in_reset["0000:01:10.0"] = 2
    assert apply(node, [{"name": "ens1f0"} | SPEC]) == Applied(
        NEW_VFS
        + [
            f"ip link set dev ens1f0 vf 0 mac {MAC0}",
            "echo 0000:01:10.0 > 0000:01:10.0/driver/unbind",
            "echo 0000:01:10.0 > drivers_probe",
        ]
        * 2,
        None,
    )
    assert node.vfinfo["ens1f0"][0]["address"] == MAC0
    assert node.read("0000:01:10.0/net/ens1f0v0/address") == f"{MAC0}\n"
    assert waits == [1, 2]  # a second, then two, for the PF to finish its reset


def test_a_vf_that_never_takes_its_mac_fails_the_run_naming_it_after_the_others_got_theirs(node, waits):
    for index in (0, 1):
        node.vf("ens1f0", index, driver=None)
    node.probes_in_reset["0000:01:10.0"] = sriov.MAC_PROBES
    node.probes_in_reset["0000:01:10.2"] = 1
    mac1 = "52:54:00:10:00:01"
    applied = apply(node, [{"name": "ens1f0"} | SPEC | {"vfs": [{"index": 0, "mac": MAC0}, {"index": 1, "mac": mac1}]}])
    assert applied.error == (
        f"ens1f0: VF 0 (0000:01:10.0) shows MAC {RANDOM_MAC}, not {MAC0}, after {sriov.MAC_PROBES} probes; "
        "the kernel log says why (dmesg | grep -e 0000:01:10.0)"
    )
    assert applied.changes.count("echo 0000:01:10.0 > drivers_probe") == sriov.MAC_PROBES
    assert applied.changes.count("echo 0000:01:10.2 > drivers_probe") == 2
    assert (node.vfinfo["ens1f0"][1]["address"], node.read("0000:01:10.2/net/ens1f0v1/address")) == (mac1, f"{mac1}\n")
    assert node.read(f"{PF1}/sriov_drivers_autoprobe") == "1\n"


def test_a_vf_the_pf_no_longer_lists_after_its_probe_fails_at_once(node, waits, monkeypatch):
    for index in (0, 1):
        node.vf("ens1f0", index, driver=None)
    real, reads = sriov.vf_info, []

    def listed_before_the_probe_only(runner, pf):
        reads.append(pf)
        return real(runner, pf) if len(reads) == 1 else {}

    monkeypatch.setattr(sriov, "vf_info", listed_before_the_probe_only)
    applied = apply(node, [{"name": "ens1f0"} | SPEC])
    assert applied.error == "ens1f0: ip -d link no longer lists VF 0 (0000:01:10.0)"
    assert waits == []


@pytest.mark.parametrize(
    ("facts", "applied"),
    [
        (
            {},
            Applied(["echo 0000:01:10.0 > 0000:01:10.0/driver/unbind", "echo 0000:01:10.0 > drivers_probe"], None),
        ),
        IN_USE_WOULD_TAKE_MAC0,
    ],
    ids=["idle", "in-use"],
)
def test_a_bound_vf_whose_netdev_missed_its_mac_is_reloaded_unless_in_use(node, facts, applied):
    """The PF has the plan's MAC, the VF's driver another: it probed while the PF was resetting."""
    node.made("ens1f0", 2, trust=True, spoofchk=False)
    node.vf("ens1f0", 0, netdev="ens1f0v0", trust=True, spoofchk=False, address=MAC0)
    write(node.device("0000:01:10.0") / "net" / "ens1f0v0" / "address", RANDOM_MAC)
    assert apply(node, [{"name": "ens1f0"} | SPEC], facts) == applied
    if not facts:
        assert node.read("0000:01:10.0/net/ens1f0v0/address") == f"{MAC0}\n"


def test_a_vf_whose_own_mac_cannot_be_read_is_left_alone(node):
    """Unreadable is unknown: a netdev moved away between the listing and the read is not reloaded."""
    node.made("ens1f0", 2, trust=True, spoofchk=False)
    node.vf("ens1f0", 0, netdev="ens1f0v0", trust=True, spoofchk=False, address=MAC0)
    (node.device("0000:01:10.0") / "net" / "ens1f0v0" / "address").unlink()
    assert apply(node, [{"name": "ens1f0"} | SPEC]) == Applied([], None)


def test_a_vf_that_is_a_bond_port_is_judged_by_its_own_mac_not_the_bonds(node):
    node.made("ens1f0", 2, trust=True, spoofchk=False)
    node.vf("ens1f0", 0, netdev="ens1f0v0", trust=True, spoofchk=False, address=MAC0)
    netdev = node.device("0000:01:10.0") / "net" / "ens1f0v0"
    write(netdev / "address", "52:54:00:99:99:99")  # the bond's
    write(netdev / "bonding_slave" / "perm_hwaddr", MAC0)
    facts = {"ens1f0v0": {"addresses": [], "master": "bond0"}}
    assert apply(node, [{"name": "ens1f0"} | SPEC], facts) == Applied([], None)


def test_the_boot_program_started_on_a_running_node_leaves_a_vf_in_use_alone(node, tmp_path, capsys, monkeypatch):
    """A restart of the unit, or a run that starts it after it failed at boot, tells VFs in use."""
    node.made("ens1f0", 2, trust=True, spoofchk=False)
    node.vf("ens1f0", 0, netdev="ens1f0v0", trust=True, spoofchk=False, address=MAC0)
    write(node.device("0000:01:10.0") / "net" / "ens1f0v0" / "address", RANDOM_MAC)
    node.links = [{"ifname": "ens1f0v0", "addr_info": [{"local": "10.0.0.5", "prefixlen": 24, "scope": "global"}]}]
    the_plan, _ = plan(node, [{"name": "ens1f0"} | SPEC])
    (tmp_path / "sriov.json").write_text(json.dumps(the_plan))
    monkeypatch.setattr(sriov, "_run", node)
    assert sriov.main(["sriov.py", "--sysfs", str(node.sys), str(tmp_path / "sriov.json")]) == 0
    assert capsys.readouterr() == ("", "")
    assert node.settings_made() == []


def test_the_boot_program_changes_nothing_where_it_cannot_tell_the_vfs_in_use(node, tmp_path, capsys, monkeypatch):
    node.made("ens1f0", 2)
    node.answers["ip", "-j", "addr", "show"] = (1, "", "Cannot open netlink socket\n")
    the_plan, _ = plan(node, [{"name": "ens1f0"} | SPEC])
    (tmp_path / "sriov.json").write_text(json.dumps(the_plan))
    monkeypatch.setattr(sriov, "_run", node)
    assert sriov.main(["sriov.py", "--sysfs", str(node.sys), str(tmp_path / "sriov.json")]) == 1
    assert capsys.readouterr().err == (
        "hpc-sriov: ip -j addr show cannot be read, so the VFs in use cannot be told: Cannot open netlink socket\n"
    )
    assert node.settings_made() == []


@pytest.mark.parametrize("count", [2, 4])
def test_netdev_vfs_are_probed_only_once_autoprobe_is_back_on(node, waits, count):
    for index in range(count):
        node.vf("ens1f0", index, driver=None)
    changes = apply(node, [{"name": "ens1f0", "num_vfs": count}]).changes
    back_on = changes.index("echo 1 > 0000:01:00.0/sriov_drivers_autoprobe")
    probes = [position for position, change in enumerate(changes) if change.endswith("> drivers_probe")]
    assert len(probes) == count
    assert min(probes) > back_on


def test_check_mode_records_the_new_vfs_and_changes_nothing(node):
    assert apply(node, [{"name": "ens1f0"} | SPEC], check_mode=True) == Applied(
        [NEW_VFS[0], NEW_VFS[1], NEW_VFS[4]], None
    )
    assert node.settings_made() == []
    assert (node.read(f"{PF1}/sriov_numvfs"), node.read(f"{PF1}/sriov_drivers_autoprobe")) == ("0\n", "1\n")


def test_check_mode_records_the_settings_of_existing_vfs_and_runs_nothing(node):
    node.made("ens1f0", 2)
    assert apply(node, [{"name": "ens1f0", "num_vfs": 2, "vf_defaults": {"trust": True}}], check_mode=True) == (
        Applied(["ip link set dev ens1f0 vf 0 trust on", "ip link set dev ens1f0 vf 1 trust on"], None)
    )
    assert node.settings_made() == []


def test_a_count_change_removes_the_old_vfs_first(node):
    node.made("ens1f0", 2)
    for index in (2, 3):
        node.vf("ens1f0", index, driver=None)
    assert apply(node, [{"name": "ens1f0", "num_vfs": 4}]) == Applied(
        [
            "echo 0 > 0000:01:00.0/sriov_numvfs",
            "echo 0 > 0000:01:00.0/sriov_drivers_autoprobe",
            "echo 4 > 0000:01:00.0/sriov_numvfs",
            "echo 1 > 0000:01:00.0/sriov_drivers_autoprobe",
            "echo 0000:01:10.4 > drivers_probe",
            "echo 0000:01:10.6 > drivers_probe",
        ],
        None,
    )


def test_vfs_as_planned_are_left_alone(node, waits):
    node.made("ens1f0", 2, trust=True, spoofchk=False)
    node.vf("ens1f0", 0, netdev="ens1f0v0", trust=True, spoofchk=False, address=MAC0.upper())
    assert apply(node, [{"name": "ens1f0"} | SPEC]) == Applied([], None)
    assert node.settings_made() == []
    assert waits == []


def test_a_down_pf_is_brought_up(node):
    node.made("ens1f0", 2)
    node.up.discard("ens1f0")
    assert apply(node, [{"name": "ens1f0", "num_vfs": 2}]) == Applied(["ip link set dev ens1f0 up"], None)


@pytest.mark.parametrize(
    "shown",
    [{"vlan_list": [{"vlan": 100, "qos": 3}]}, {"vlan_list": None, "vlan": 100}],
    ids=["vlan_list", "vlan"],
)
@pytest.mark.parametrize(("wanted", "changes"), [(100, []), (200, ["ip link set dev ens1f0 vf 0 vlan 200"])])
def test_the_vlan_is_read_in_either_shape_ip_prints(node, shown, wanted, changes):
    node.made("ens1f0", 1, **shown)
    assert apply(node, [{"name": "ens1f0", "num_vfs": 1, "vfs": [{"index": 0, "vlan": wanted}]}]) == Applied(
        changes, None
    )


def test_a_bound_vf_whose_netdev_is_elsewhere_is_not_waited_for(node, waits):
    node.made("ens1f0", 2)
    node.vf("ens1f0", 1)  # in a pod's namespace
    assert apply(node, [{"name": "ens1f0", "num_vfs": 2}]) == Applied([], None)
    assert waits == []


@pytest.mark.parametrize(
    ("facts", "applied"),
    [
        (
            {},
            Applied(
                [
                    f"ip link set dev ens1f0 vf 0 mac {MAC0}",
                    "echo 0000:01:10.0 > 0000:01:10.0/driver/unbind",
                    "echo 0000:01:10.0 > drivers_probe",
                ],
                None,
            ),
        ),
        IN_USE_WOULD_TAKE_MAC0,
    ],
    ids=["idle", "in-use"],
)
def test_a_bound_vf_takes_a_new_mac_by_reloading_its_driver_unless_in_use_then_it_waits(node, facts, applied):
    node.made("ens1f0", 2)
    assert apply(node, [{"name": "ens1f0", "num_vfs": 2, "vfs": [{"index": 0, "mac": MAC0}]}], facts) == applied
    assert node.settings_made() == [change for change in applied.changes if not change.startswith("echo")]


def test_a_vf_moves_to_vfio_pci_through_driver_override(node):
    node.made("ens1f0", 2)
    assert apply(node, [{"name": "ens1f0", "num_vfs": 2, "vfs": [{"index": 1, "driver": "vfio-pci"}]}]) == Applied(
        [
            "modprobe vfio-pci",
            "echo vfio-pci > 0000:01:10.2/driver_override",
            "echo 0000:01:10.2 > 0000:01:10.2/driver/unbind",
            "echo 0000:01:10.2 > drivers_probe",
        ],
        None,
    )
    assert node.read("0000:01:10.2/driver_override") == "vfio-pci\n"
    assert (node.sys / "bus" / "pci" / "drivers" / "mlx5_core" / "unbind").read_text() == "0000:01:10.2\n"


def test_a_vf_in_use_keeps_its_driver(node):
    node.made("ens1f0", 2)
    facts = {"ens1f0v1": {"addresses": ["10.0.0.2/24"], "master": None}}
    pfs = [{"name": "ens1f0", "num_vfs": 2, "vfs": [{"index": 1, "driver": "vfio-pci"}]}]
    assert apply(node, pfs, facts) == Applied(
        [],
        None,
        (
            "ens1f0: VF 1 is in use (ens1f0v1 carries 10.0.0.2/24) and keeps its settings; "
            "it would take driver vfio-pci",
        ),
    )


def test_a_bad_default_is_reported_once_not_for_every_vf_listed(node):
    pfs = [{"name": "ens1f0", "num_vfs": 2, "vf_defaults": {"vlan": 5000}, "vfs": [{"index": 0}, {"index": 1}]}]
    assert [problem for problem in problems(node, pfs) if "vlan" in problem] == [
        "sriov_pfs[0].vf_defaults.vlan: 5000 is not a VLAN id (0 to 4094, 0 for none)"
    ]


def test_a_count_change_of_vfs_in_use_is_refused_again_when_applied(node):
    node.made("ens1f0", 2)
    facts = {"ens1f0v0": {"addresses": ["10.0.0.5/24"], "master": None}}
    # ens1f0 is sriov_pfs[1]: the sentence names no variable it cannot know at apply.
    assert apply(node, [{"name": "ens2f0", "num_vfs": 0}, {"name": "ens1f0", "num_vfs": 4}], facts) == Applied(
        [],
        "changing the VF count of ens1f0 from 2 to 4 tears down every VF, and these are in use: "
        "VF 0 (0000:01:10.0): ens1f0v0 carries 10.0.0.5/24. Set allow_count_change_in_use: true to do it anyway",
    )
    assert node.read(f"{PF1}/sriov_numvfs") == "2\n"


@pytest.mark.parametrize(
    ("hidden", "setting"),
    [("trust", {"trust": True}), ("spoofchk", {"spoofchk": False}), ("link_state", {"link_state": "enable"})],
)
def test_a_setting_the_driver_does_not_report_fails_closed(node, hidden, setting):
    node.made("ens1f0", 1, **{hidden: None})
    key = "state" if hidden == "link_state" else hidden
    assert apply(node, [{"name": "ens1f0", "num_vfs": 1, "vf_defaults": setting}]) == Applied(
        [], f"ens1f0: its driver does not report {key} for VF 0, so it cannot be kept"
    )


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ((1, "", 'Device "ens1f0" does not exist.\n'), 'Device "ens1f0" does not exist.'),
        ((0, "", ""), "Expecting value: line 1 column 1 (char 0)"),
        ((0, "[]", ""), "list index out of range"),
        ((0, json.dumps([{"vfinfo_list": [{"address": MAC0}]}]), ""), "'vf'"),
    ],
    ids=["rc", "empty", "no-link", "no-vf-index"],
)
def test_unreadable_vf_info_fails_closed(node, answer, why):
    node.made("ens1f0", 2)
    node.answers["ip", "-j", "-d", "link", "show", "dev", "ens1f0"] = answer
    assert apply(node, [{"name": "ens1f0", "num_vfs": 2}]) == Applied(
        [], f"cannot read the VFs of ens1f0 from ip -d link: {why}"
    )


@pytest.mark.parametrize(
    ("up", "applied"),
    [
        (False, Applied(["ip link set dev eth5 name ens1f0v0"], None)),
        (True, Applied([], "VF 0 (0000:01:10.0) is eth5, up; it should be ens1f0v0: set it down first")),
    ],
    ids=["down", "up"],
)
def test_a_vf_netdev_is_renamed_only_while_down(node, up, applied):
    node.made("ens1f0", 2)
    node.vf("ens1f0", 0, netdev="eth5")
    if up:
        node.up.add("eth5")
    assert apply(node, [{"name": "ens1f0", "num_vfs": 2}]) == applied


@pytest.fixture
def refused(monkeypatch):
    """refused(name): sysfs files called name refuse every write, as the kernel does with ENOMEM."""

    def refuse(name):
        def open_(path, mode="r", *args, **kwargs):
            if "w" in mode and os.path.basename(path) == name:
                raise OSError(12, "Cannot allocate memory")
            return open(path, mode, *args, **kwargs)

        monkeypatch.setattr(sriov, "open", open_, raising=False)

    return refuse


@pytest.mark.parametrize("failing", ["sriov_numvfs", "vf command"])
def test_autoprobe_is_back_on_whatever_fails_after_it_went_off(node, refused, failing):
    for index in (0, 1):
        node.vf("ens1f0", index, driver=None)
    if failing == "sriov_numvfs":
        refused("sriov_numvfs")
        error = f"writing 2 to {node.device(PF1)}/sriov_numvfs failed: Cannot allocate memory"
    else:
        node.answers["ip", "link", "set", "dev", "ens1f0", "vf", "0", "mac", MAC0, "trust", "on", "spoofchk", "off"] = (
            2,
            "",
            "RTNETLINK answers: Operation not permitted\n",
        )
        error = f"{NEW_VFS[2]} failed (rc 2): RTNETLINK answers: Operation not permitted"
    applied = apply(node, [{"name": "ens1f0"} | SPEC])
    assert applied.error == error
    assert applied.changes[-1] == "echo 1 > 0000:01:00.0/sriov_drivers_autoprobe"
    assert node.read(f"{PF1}/sriov_drivers_autoprobe") == "1\n"


def test_status_reports_each_vf_as_the_node_has_it(node):
    node.made("ens1f0", 2)
    node.vf("ens1f0", 1, driver="vfio-pci", address=MAC0, trust=True, vlan_list=[{"vlan": 100}])
    the_plan, _ = plan(node, [{"name": "ens1f0", "num_vfs": 2}])
    vf = {"trust": False, "spoofchk": True, "vlan": 0, "link_state": "auto"}
    assert sriov.status(the_plan, sriov.Runner(node), str(node.sys)) == {
        "ens1f0": {
            "num_vfs": 2,
            "vfs": [
                vf
                | {"index": 0, "pci_address": "0000:01:10.0", "netdev": "ens1f0v0", "driver": "mlx5_core"}
                | {"mac": "00:00:00:00:00:00"},
                vf
                | {"index": 1, "pci_address": "0000:01:10.2", "netdev": None, "driver": "vfio-pci"}
                | {"mac": MAC0, "trust": True, "vlan": 100},
            ],
        }
    }


# --- the boot program: sriov.py PLAN.json, as hpc-sriov.service runs it ------------------------------


@pytest.mark.parametrize("text", [None, "{"], ids=["missing", "not-json"])
def test_the_boot_program_says_why_it_cannot_read_its_plan(tmp_path, capsys, text):
    plan_file = tmp_path / "sriov.json"
    if text is not None:
        plan_file.write_text(text)
    assert sriov.main(["sriov.py", str(plan_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"hpc-sriov: reading the plan {plan_file}: ") and err.count("\n") == 1, err


def test_the_boot_program_runs_with_the_standard_library_alone(tmp_path):
    program = ROOT / "module_utils" / "hpc_datapath" / "sriov.py"
    done = subprocess.run(
        [sys.executable, "-I", "-S", program, tmp_path / "sriov.json"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"hpc-sriov: reading the plan {tmp_path}/sriov.json: [Errno 2]"), done.stderr


def test_the_boot_program_goes_on_to_the_next_pf_after_one_fails(node, tmp_path, capsys, monkeypatch):
    for pf in ("ens1f0", "ens2f0"):
        for index in (0, 1):
            node.vf(pf, index, driver=None)
    node.answers["ip", "link", "set", "dev", "ens1f0", "vf", "0", "trust", "on"] = (
        2,
        "",
        "RTNETLINK answers: Operation not supported\n",
    )
    spec = {"num_vfs": 2, "vf_defaults": {"trust": True}}
    the_plan, _ = plan(node, [{"name": "ens1f0"} | spec, {"name": "ens2f0"} | spec])
    (tmp_path / "sriov.json").write_text(json.dumps(the_plan))
    monkeypatch.setattr(sriov, "_run", node)
    assert sriov.main(["sriov.py", "--sysfs", str(node.sys), str(tmp_path / "sriov.json")]) == 1
    out, err = capsys.readouterr()
    assert (
        err
        == "hpc-sriov: ip link set dev ens1f0 vf 0 trust on failed (rc 2): RTNETLINK answers: Operation not supported\n"
    )
    assert out.splitlines() == [
        "hpc-sriov: ens1f0: new VFs wait for their settings",
        "hpc-sriov: ens1f0: 2 VFs",
        "hpc-sriov: VF 0: trust on",  # the command that failed
        "hpc-sriov: ens1f0: VFs probe by themselves again",
        "hpc-sriov: ens2f0: new VFs wait for their settings",
        "hpc-sriov: ens2f0: 2 VFs",
        "hpc-sriov: VF 0: trust on",
        "hpc-sriov: VF 1: trust on",
        "hpc-sriov: ens2f0: VFs probe by themselves again",
        "hpc-sriov: probe 0000:02:00.2",
        "hpc-sriov: probe 0000:02:00.3",
    ]
    assert [node.read(f"{pf}/sriov_numvfs") for pf in (PF1, PF2)] == ["2\n", "2\n"]
    assert [node.read(f"{pf}/sriov_drivers_autoprobe") for pf in (PF1, PF2)] == ["1\n", "1\n"]
    assert (node.sys / "bus" / "pci" / "drivers_probe").read_text() == "0000:02:00.3\n"


# --- the module -----------------------------------------------------------------------------------

FAKE_IP = f"""#!{sys.executable} -IS
import os, sys
if sys.argv[1:] != ["-j", "addr", "show"]:
    sys.exit(f"fake ip: {{sys.argv[1:]}} not expected")
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "addr.json")) as answer:
    sys.stdout.write(answer.read())
"""
# `ip -j addr show` of iproute2 6.1, cut to what matters: ens1f0v0 carries an address, ens1f0v1 is a bond port.
ADDR_SHOW = [
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "addr_info": [
        {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host", "label": "lo"}]},
    {"ifindex": 7, "ifname": "ens1f0v0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"], "addr_info": [
        {"family": "inet", "local": "10.0.0.5", "prefixlen": 24, "scope": "global", "label": "ens1f0v0"},
        {"family": "inet6", "local": "fe80::5054:ff:fe10:5", "prefixlen": 64, "scope": "link"}]},
    {"ifindex": 8, "ifname": "ens1f0v1", "flags": ["BROADCAST", "MULTICAST", "SLAVE", "UP", "LOWER_UP"],
     "master": "bond0", "addr_info": [{"family": "inet6", "local": "fe80::5054:ff:fe10:6", "prefixlen": 64,
     "scope": "link"}]},
]  # fmt: skip


def run_sriov_vfs(capsys, args):
    """sriov_vfs's main() on these arguments: (exit code, its JSON result)."""
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        sriov_vfs.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


@pytest.fixture
def module_node(node, tmp_path, monkeypatch):
    """The node as the module sees it: sriov.SYS is its tree, and `ip -j addr show` says ADDR_SHOW."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text(FAKE_IP)
    (bin_dir / "ip").chmod(0o755)
    (bin_dir / "addr.json").write_text(json.dumps(ADDR_SHOW))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(sriov, "SYS", str(node.sys))
    return node


def test_the_module_plan_returns_problems_rather_than_failing(module_node, capsys):
    code, result = run_sriov_vfs(capsys, {"pfs": [{"name": "ens1f0", "num_vfs": 9}]})
    assert (code, result["changed"], result.get("failed", False)) == (0, False, False)
    assert (result["plan"], result["problems"]) == (
        {"pfs": []},
        ["sriov_pfs[0].num_vfs: 9 is more than ens1f0 can hold (sriov_totalvfs 8)"],
    )


@pytest.mark.parametrize(("vfs", "vfio"), [([], False), ([{"index": 1, "driver": "vfio-pci"}], True)])
def test_the_module_plan_says_whether_vfio_is_needed(module_node, capsys, vfs, vfio):
    code, result = run_sriov_vfs(capsys, {"pfs": [{"pci_address": PF1, "num_vfs": 2, "vfs": vfs}]})
    assert (code, result["problems"], result["vfio_needed"]) == (0, [], vfio)
    assert [vf["name"] for vf in result["plan"]["pfs"][0]["vfs"]] == ["ens1f0v0", "ens1f0v1"]


def test_the_module_plan_tells_vfs_in_use_from_ip_addr(module_node, capsys):
    module_node.made("ens1f0", 2)
    _code, result = run_sriov_vfs(capsys, {"pfs": [{"name": "ens1f0", "num_vfs": 4}]})
    assert result["problems"] == [
        "sriov_pfs[0].num_vfs: changing the VF count of ens1f0 from 2 to 4 tears down every VF, and these are in "
        "use: VF 0 (0000:01:10.0): ens1f0v0 carries 10.0.0.5/24; VF 1 (0000:01:10.2): ens1f0v1 is a port of bond0. "
        "Set sriov_pfs[0].allow_count_change_in_use: true to do it anyway"
    ]


def test_the_module_installs_sriov_py_as_the_boot_program(tmp_path, capsys):
    # boot_program.install itself is tested through roce_fabric in test_roce.py.
    program = tmp_path / "sriov.py"
    code, result = run_sriov_vfs(capsys, {"state": "install", "boot_program": str(program)})
    source = (ROOT / "module_utils" / "hpc_datapath" / "sriov.py").read_bytes()
    assert (code, result["changed"], result["sha256"]) == (0, True, hashlib.sha256(source).hexdigest())
    assert (program.read_bytes(), program.stat().st_mode & 0o7777) == (source, 0o755)
