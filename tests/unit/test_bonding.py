"""Bond configuration checks, the bond's sysfs state, and the ethtool output parsers."""

import re
from pathlib import Path

import pytest
from ansible.module_utils.hpc_datapath.bonding import bond_status, check_config
from ansible.module_utils.hpc_datapath.netbackend import choose_backend
from conftest import ROOT, _load
from fake_sysfs import link, write

ethtool = _load("ethtool_settings", ROOT / "library" / "ethtool_settings.py")
inspect = _load("bond_inspect", ROOT / "library" / "bond_inspect.py")

NICS = [
    {"name": "enp65s0f0", "perm_mac": "b8:ce:f6:00:00:10", "pci_address": "0000:41:00.0"},
    {"name": "enp65s0f1", "perm_mac": "b8:ce:f6:00:00:11", "pci_address": "0000:41:00.1"},
    {"name": "eno1", "perm_mac": "3c:ec:ef:00:00:01", "pci_address": "0000:03:00.0"},
]


def config(**fields):
    return {
        "name": "bond0",
        "mode": "802.3ad",
        "members": ["enp65s0f0", "enp65s0f1"],
        "mtu": 9000,
        "lacp_rate": "fast",
        "xmit_hash_policy": "layer3+4",
        "miimon": 100,
        "addresses": ["10.10.0.1/24", "fd00:10::1/64"],
        "routes": [{"to": "default", "via": "10.10.0.254"}],
        "vlans": [],
        "check_targets": ["10.10.0.254"],
        **fields,
    }


def test_members_by_name_mac_and_pci_resolve_in_order():
    members, problems = check_config(config(members=[{"pci": "0000:41:00.1"}, {"mac": "B8-CE-F6-00-00-10"}]), NICS)
    assert problems == []
    assert [m["name"] for m in members] == ["enp65s0f1", "enp65s0f0"]


def test_a_good_configuration_has_no_problems():
    vlans = [{"id": 100, "addresses": ["10.100.0.1/24"], "mtu": 1500}]
    assert check_config(config(vlans=vlans), NICS)[1] == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"members": ["enp9s0"]}, r"bond_members: no NIC on this node has name enp9s0 \(NICs: enp65s0f0 "),
        ({"members": [{"mac": "00:00:00:00:00:01"}]}, "bond_members: no NIC on this node has mac 00:00:00:00:00:01"),
        ({"members": ["eno1", {"pci": "0000:03:00.0"}]}, "bond_members: eno1 is selected twice"),
        ({"members": [{"name": "eno1", "pci": "0000:03:00.0"}]}, "must be a NIC name or a dict with exactly one of"),
        ({"members": [{"serial": "x"}]}, "must be a NIC name or a dict with exactly one of"),
        ({"members": []}, "bond_members: a bond needs at least one member"),
        ({"mtu": 9217}, r"bond_mtu: 9217 is out of range 1280\.\.9216"),
        ({"mtu": 576}, r"bond_mtu: 576 is out of range 1280\.\.9216"),
        ({"mode": "active-backup"}, "bond_lacp_rate: LACP options only apply to mode 802.3ad, not active-backup"),
        ({"lacp_rate": "turbo"}, "bond_lacp_rate: 'turbo' is not one of slow, fast"),
        ({"mode": "lacp"}, "bond_mode: 'lacp' is not one of balance-rr, active-backup"),
        ({"xmit_hash_policy": "layer4"}, "bond_xmit_hash_policy: 'layer4' is not one of"),
        ({"name": "bond-with-a-long-name"}, "bond_name: 'bond-with-a-long-name' is not a valid interface name"),
        # A trailing newline passed the old $-anchored name check, into keyfile names and netplan.
        ({"name": "bond0\n"}, r"bond_name: 'bond0\\n' is not a valid interface name"),
        ({"addresses": ["10.10.0.1"]}, "bond_addresses: '10.10.0.1' has no prefix length"),
        ({"addresses": ["10.10.0.0/24"]}, "bond_addresses: 10.10.0.0/24 is the network or broadcast address"),
        ({"addresses": ["10.10.0.300/24"]}, "bond_addresses: '10.10.0.300/24' is not an IP address with prefix"),
        (
            {"routes": [{"to": "default", "via": "10.20.0.1"}]},
            "bond_routes: gateway 10.20.0.1 of the route to default is in no subnet",
        ),
        ({"routes": [{"to": "::/0", "via": "10.10.0.254"}]}, "bond_routes: route to ::/0 via 10.10.0.254 mixes IPv6"),
        ({"vlans": [{"id": 4095}]}, r"bond_vlans: VLAN id 4095 is out of range 1\.\.4094"),
        ({"vlans": [{"id": 7}, {"id": 7}]}, "bond_vlans: VLAN 7 is listed twice"),
        ({"vlans": [{"id": 7, "mtu": 9216}]}, "bond_vlans: VLAN 7: mtu 9216 is larger than bond_mtu 9000"),
        ({"vlans": [{"id": 7, "addresses": ["10.7.0.1"]}]}, "bond_vlans: VLAN 7: '10.7.0.1' has no prefix length"),
        ({"check_targets": ["peer"]}, "bond_check_targets: 'peer' is not an IP address"),
        # A newline in a metric wrote a [connection] section into the keyfile and a route into netplan.
        (
            {"routes": [{"to": "10.200.0.0/16", "via": "10.10.0.254", "metric": "100\n[connection]"}]},
            r"bond_routes: route to 10.200.0.0/16: metric '100\\n\[connection\]' is not a number in 0\.\.4294967295",
        ),
        ({"routes": [{"to": "10.200.0.0/16", "metric": -1}]}, "bond_routes: route to 10.200.0.0/16: metric -1 is not"),
        ({"vlans": [{"id": 7, "mtu": "9000"}]}, "bond_vlans: VLAN 7: mtu '9000' is not a number of at least 1280"),
        ({"vlans": [{"id": 7, "mtu": 68}]}, "bond_vlans: VLAN 7: mtu 68 is not a number of at least 1280"),
    ],
)
def test_each_bad_input_is_named(fields, message):
    problems = check_config(config(**fields), NICS)[1]
    assert len(problems) == 1, problems
    assert re.search(message, problems[0]), problems[0]


def test_lacp_rate_null_allows_other_modes():
    assert check_config(config(mode="active-backup", lacp_rate=None), NICS)[1] == []


def add_member(root: Path, name: str, perm: str, aggregator: int, *, speed: str = "25000", mii: str = "up"):
    net = root / "devices/pci0000:00" / name / "net" / name
    write(net / "speed", speed)
    write(net / "bonding_slave/perm_hwaddr", perm)
    write(net / "bonding_slave/ad_aggregator_id", str(aggregator))
    write(net / "bonding_slave/mii_status", mii)
    link(root / "class/net" / name, f"../../devices/pci0000:00/{name}/net/{name}")


@pytest.fixture
def sys_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    bond = root / "devices/virtual/net/bond0"
    attrs = {
        "bonding/mode": "802.3ad 4",
        "bonding/xmit_hash_policy": "layer3+4 1",
        "bonding/lacp_rate": "fast 1",
        "bonding/miimon": "100",
        "bonding/slaves": "enp0s3 enp0s4 enp0s5",
        "bonding/ad_aggregator": "2",
        "bonding/ad_partner_mac": "52:54:00:10:02:02",
        "mtu": "9000",
        "operstate": "up",
        "address": "52:54:00:10:01:02",
    }
    for attr, value in attrs.items():
        write(bond / attr, value)
    link(root / "class/net/bond0", "../../devices/virtual/net/bond0")
    add_member(root, "enp0s3", "52:54:00:10:01:02", 2)
    add_member(root, "enp0s4", "52:54:00:10:01:03", 2)
    add_member(root, "enp0s5", "52:54:00:10:01:04", 3)  # left out of the active aggregator
    return root


def test_bond_status_reads_lacp_state(sys_root):
    status = bond_status("bond0", str(sys_root))
    assert {k: status[k] for k in ("mode", "xmit_hash_policy", "lacp_rate", "miimon", "mtu")} == {
        "mode": "802.3ad",
        "xmit_hash_policy": "layer3+4",
        "lacp_rate": "fast",
        "miimon": 100,
        "mtu": 9000,
    }
    assert status["active_aggregator"] == 2
    assert status["aggregator_members"] == ["enp0s3", "enp0s4"]
    assert status["partner_mac"] == "52:54:00:10:02:02"
    assert status["speed_mbps"] == 50000  # only the aggregator's members carry traffic
    assert [m["perm_mac"] for m in status["members"]] == ["52:54:00:10:01:02", "52:54:00:10:01:03", "52:54:00:10:01:04"]


def test_a_member_down_leaves_the_speed(sys_root):
    write(sys_root / "devices/pci0000:00/enp0s4/net/enp0s4/bonding_slave/mii_status", "down")
    assert bond_status("bond0", str(sys_root))["speed_mbps"] == 25000


def test_no_partner_and_no_bond(sys_root):
    write(sys_root / "devices/virtual/net/bond0/bonding/ad_partner_mac", "00:00:00:00:00:00")
    assert bond_status("bond0", str(sys_root))["partner_mac"] is None
    assert bond_status("bond1", str(sys_root)) is None


def test_ip_settings_split_by_version_and_spell_out_default():
    settings = inspect.ip_settings(
        ["10.10.0.1/24", "fd00:10::1/64"],
        [{"to": "default", "via": "fd00:10::fe"}, {"to": "10.200.0.0/16", "via": "10.10.0.254", "metric": 100}],
    )
    assert settings == {
        "ipv4": {
            "addresses": ["10.10.0.1/24"],
            "routes": [{"to": "10.200.0.0/16", "via": "10.10.0.254", "metric": 100}],
        },
        "ipv6": {"addresses": ["fd00:10::1/64"], "routes": [{"to": "::/0", "via": "fd00:10::fe", "metric": None}]},
    }


RINGS = """Ring parameters for enp65s0f0:
Pre-set maximums:
RX:\t\t8192
RX Mini:\tn/a
RX Jumbo:\tn/a
TX:\t\t8192
Current hardware settings:
RX:\t\t1024
RX Mini:\tn/a
RX Jumbo:\tn/a
TX:\t\t1024
RX Buf Len:\t\tn/a
"""

FEATURES = """Features for enp65s0f0:
rx-checksumming: on
tx-checksumming: on
\ttx-checksum-ipv4: off [fixed]
scatter-gather: on
generic-receive-offload: on
large-receive-offload: off [fixed]
"""


def test_parse_rings():
    assert ethtool.parse_rings(RINGS) == {"max": {"rx": 8192, "tx": 8192}, "current": {"rx": 1024, "tx": 1024}}


def test_parse_features():
    features = ethtool.parse_features(FEATURES)
    assert features["generic-receive-offload"] == {"on": True, "fixed": False}
    assert features["large-receive-offload"] == {"on": False, "fixed": True}
    assert features["tx-checksum-ipv4"] == {"on": False, "fixed": True}


@pytest.mark.parametrize(
    ("wanted", "nm_running", "has_netplan", "backend", "problem"),
    [
        ("auto", True, True, "networkmanager", None),
        ("auto", False, True, "netplan", None),
        ("auto", False, False, None, "bond_backend: neither NetworkManager runs nor netplan is installed"),
        ("netplan", True, True, "netplan", None),
        ("netplan", True, False, None, "bond_backend: netplan is asked for, but the netplan command is not installed"),
        ("networkmanager", False, True, None, "bond_backend: networkmanager is asked for, but NetworkManager is not"),
    ],
)
def test_choose_backend(wanted, nm_running, has_netplan, backend, problem):
    chosen, why = choose_backend("bond_backend", wanted, nm_running, has_netplan)
    assert chosen == backend
    assert (why or "").startswith(problem or "")
    assert (why is None) == (problem is None)
