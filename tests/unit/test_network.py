"""network: each provider's rendering against the kernel's and the backend's rules.

Rendered keyfiles are parsed back with configparser (as NetworkManager's GKeyFile sees them), netplan
files with a YAML loader (as netplan's libyaml sees them), and compared field by field. The values are
the lab's (inventories/lab): node1's bond with a VLAN, and two RoCE rails.
"""

import configparser
import ipaddress
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.hpc_datapath import network
from ansible.module_utils.hpc_datapath.network import (
    UUID_NAMESPACE,
    Netplan,
    NetworkManager,
    check_model,
    drift,
    parse_keyfile,
    rail_interfaces,
    unmanaged_conf,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NM_DIR = "/etc/NetworkManager/system-connections"


def bond_model():
    """node1's bond as bond_inspect's network_of describes it (inventories/lab)."""
    return [
        {
            "name": "bond0",
            "kind": "bond",
            "mtu": 9000,
            "members": ["enp0s3", "enp0s4"],
            "bond": {"mode": "802.3ad", "miimon": 100, "lacp_rate": "fast", "xmit_hash_policy": "layer3+4"},
            "addresses": ["10.10.0.1/24", "fd00:10::1/64"],
            "routes": [{"to": "10.200.0.0/16", "via": "10.10.0.254", "metric": 100}],
            "ipv6": "manual",
        },
        {
            "name": "bond0.100",
            "kind": "vlan",
            "mtu": 9000,
            "vlan": {"id": 100, "link": "bond0"},
            "addresses": ["10.100.0.1/24"],
            "routes": [],
            "ipv6": "manual",
        },
    ]


def plan_rails(source_routing=True):
    """Two rails as roce.plan_rails plans them: the second one with a gateway."""
    return [
        {
            "device": "rxe_rail0",
            "netdev": "enp0s8",
            "address": "10.30.0.1",
            "prefix": 24,
            "network": "10.30.0.0/24",
            "gateway": None,
            "source_routing": source_routing,
            "table": 100,
            "rule_priority": 1000,
        },
        {
            "device": "rxe_rail1",
            "netdev": "enp0s9",
            "address": "10.30.1.1",
            "prefix": 24,
            "network": "10.30.1.0/24",
            "gateway": "10.30.1.254",
            "source_routing": source_routing,
            "table": 101,
            "rule_priority": 1001,
        },
        # An Ascend NPU port: hccn_tool keeps it, no netdev, not in the model.
        {"device": "npu0", "netdev": None, "address": "10.40.0.1", "prefix": 24, "source_routing": False},
    ]


def keyfile(text):
    """A keyfile as GKeyFile reads it: sections of keys, case kept, no interpolation, no duplicates."""
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


def nm_files(owner, interfaces):
    return {Path(path).name: keyfile(text) for path, text in NetworkManager().files(owner, interfaces).items()}


def netplan_files(owner, interfaces):
    """The netplan documents by the interface each file is of (file names: test_netplan_file_names)."""
    provider = Netplan()
    return {provider.read(text)["name"]: yaml.safe_load(text) for text in provider.files(owner, interfaces).values()}


def uuid_of(profile):
    return str(uuid.uuid5(UUID_NAMESPACE, profile))


# --- NetworkManager keyfiles ---------------------------------------------------------------------


def test_nm_writes_one_profile_per_interface_and_per_bond_port():
    files = NetworkManager().files("bond", bond_model())
    assert sorted(files) == sorted(
        f"{NM_DIR}/hpc-bond-{device}.nmconnection" for device in ("bond0", "enp0s3", "enp0s4", "bond0.100")
    )


def test_nm_bond_profile_field_by_field():
    profile = nm_files("bond", bond_model())["hpc-bond-bond0.nmconnection"]
    assert profile == {
        "connection": {
            "id": "hpc-bond-bond0",
            "uuid": uuid_of("hpc-bond-bond0"),
            "type": "bond",
            "interface-name": "bond0",
            "autoconnect": "true",
            "autoconnect-slaves": "1",
        },
        "ethernet": {"mtu": "9000"},
        "bond": {"mode": "802.3ad", "miimon": "100", "lacp_rate": "fast", "xmit_hash_policy": "layer3+4"},
        "ipv4": {"method": "manual", "address1": "10.10.0.1/24", "route1": "10.200.0.0/16,10.10.0.254,100"},
        "ipv6": {"method": "manual", "address1": "fd00:10::1/64"},
    }


def test_nm_bond_ports_name_their_bond_and_win_over_made_up_profiles():
    files = nm_files("bond", bond_model())
    for port in ("enp0s3", "enp0s4"):
        assert files[f"hpc-bond-{port}.nmconnection"] == {
            "connection": {
                "id": f"hpc-bond-{port}",
                "uuid": uuid_of(f"hpc-bond-{port}"),
                "type": "ethernet",
                "interface-name": port,
                "autoconnect": "true",
                "autoconnect-priority": "100",
                "master": "bond0",
                "slave-type": "bond",
            },
            "ethernet": {"mtu": "9000"},
        }


def test_nm_vlan_profile_field_by_field():
    profile = nm_files("bond", bond_model())["hpc-bond-bond0.100.nmconnection"]
    assert profile == {
        "connection": {
            "id": "hpc-bond-bond0.100",
            "uuid": uuid_of("hpc-bond-bond0.100"),
            "type": "vlan",
            "interface-name": "bond0.100",
            "autoconnect": "true",
        },
        "ethernet": {"mtu": "9000"},
        "vlan": {"id": "100", "parent": "bond0"},
        "ipv4": {"method": "manual", "address1": "10.100.0.1/24"},
        # No IPv6 address and ipv6 manual: no IPv6 at all (not the kernel's SLAAC).
        "ipv6": {"method": "disabled"},
    }


def test_nm_rail_with_source_routing_has_its_own_table_and_rule():
    files = nm_files("roce", rail_interfaces(plan_rails(), 9000))
    assert sorted(files) == ["hpc-roce-enp0s8.nmconnection", "hpc-roce-enp0s9.nmconnection"]
    assert files["hpc-roce-enp0s9.nmconnection"] == {
        "connection": {
            "id": "hpc-roce-enp0s9",
            "uuid": uuid_of("hpc-roce-enp0s9"),
            "type": "ethernet",
            "interface-name": "enp0s9",
            "autoconnect": "true",
            "autoconnect-priority": "100",
        },
        "ethernet": {"mtu": "9000"},
        "ipv4": {
            "method": "manual",
            "address1": "10.30.1.1/24",
            "never-default": "true",
            "route1": "10.30.1.0/24",
            "route1_options": "table=101,src=10.30.1.1",
            "route2": "0.0.0.0/0,10.30.1.254",
            "route2_options": "table=101",
            "routing-rule1": "priority 1001 from 10.30.1.1/32 table 101",
        },
        "ipv6": {"method": "ignore"},
    }
    ipv4 = files["hpc-roce-enp0s8.nmconnection"]["ipv4"]
    assert (ipv4["route1"], ipv4["route1_options"]) == ("10.30.0.0/24", "table=100,src=10.30.0.1")
    assert ipv4["routing-rule1"] == "priority 1000 from 10.30.0.1/32 table 100"
    assert "route2" not in ipv4  # no gateway on this rail


def test_nm_rail_without_source_routing_has_the_address_only():
    files = nm_files("roce", rail_interfaces(plan_rails(source_routing=False), 9000))
    assert files["hpc-roce-enp0s8.nmconnection"]["ipv4"] == {
        "method": "manual",
        "address1": "10.30.0.1/24",
        "never-default": "true",
    }
    assert files["hpc-roce-enp0s8.nmconnection"]["ipv6"] == {"method": "ignore"}


def test_nm_bond_without_addresses_has_ip_disabled_and_no_routes():
    bond = {**bond_model()[0], "addresses": [], "routes": []}
    profile = nm_files("bond", [bond])["hpc-bond-bond0.nmconnection"]
    assert profile["ipv4"] == {"method": "disabled"}
    assert profile["ipv6"] == {"method": "disabled"}


def test_nm_bond_option_none_is_left_to_the_kernel():
    bond = {**bond_model()[0], "bond": {"mode": "active-backup", "miimon": 100, "lacp_rate": None}}
    bond["bond"]["xmit_hash_policy"] = None
    profile = nm_files("bond", [bond])["hpc-bond-bond0.nmconnection"]
    assert profile["bond"] == {"mode": "active-backup", "miimon": "100"}


def test_nm_uuids_are_stable_across_calls_and_distinct_per_profile():
    first = nm_files("bond", bond_model())
    again = nm_files("bond", bond_model())
    rails = nm_files("roce", rail_interfaces(plan_rails(), 9000))
    uuids = [p["connection"]["uuid"] for p in [*first.values(), *rails.values()]]
    assert [p["connection"]["uuid"] for p in first.values()] == [p["connection"]["uuid"] for p in again.values()]
    assert len(set(uuids)) == len(uuids)
    assert all(uuid.UUID(u).version == 5 for u in uuids)
    # The same device under two owners is two profiles.
    assert uuid_of("hpc-bond-enp0s8") != uuid_of("hpc-roce-enp0s8")


def test_nm_activates_the_top_level_profiles_in_order():
    assert NetworkManager().activations("bond", bond_model()) == ["hpc-bond-bond0", "hpc-bond-bond0.100"]
    assert Netplan().activations("bond", bond_model()) == []


def test_nm_ipv6_routes_and_rules_go_to_the_ipv6_section():
    interface = {
        "name": "eth1",
        "kind": "ethernet",
        "mtu": 1500,
        "addresses": ["10.0.0.2/24", "fd00::2/64"],
        "routes": [{"to": "::/0", "via": "fd00::1", "metric": 5}, {"to": "0.0.0.0/0", "via": "10.0.0.1"}],
        "rules": [{"from": "fd00::2/128", "table": 7, "priority": 70}],
        "ipv6": "manual",
    }
    profile = nm_files("x", [interface])["hpc-x-eth1.nmconnection"]
    assert profile["ipv4"] == {"method": "manual", "address1": "10.0.0.2/24", "route1": "0.0.0.0/0,10.0.0.1"}
    assert profile["ipv6"] == {
        "method": "manual",
        "address1": "fd00::2/64",
        "route1": "::/0,fd00::1,5",
        "routing-rule1": "priority 70 from fd00::2/128 table 7",
    }


def test_nm_route_with_a_metric_and_no_gateway_keeps_the_gateway_field_empty():
    interface = {
        "name": "eth1",
        "kind": "ethernet",
        "mtu": 1500,
        "addresses": ["10.0.0.2/24"],
        "routes": [{"to": "10.9.0.0/16", "metric": 50, "scope": "link"}],
    }
    route = nm_files("x", [interface])["hpc-x-eth1.nmconnection"]["ipv4"]["route1"]
    to, gateway, metric = route.split(",")
    # NetworkManager's own writer puts the unspecified address there; the reader also takes nothing.
    assert (to, gateway in ("", str(ipaddress.IPv4Address(0))), metric) == ("10.9.0.0/16", True, "50")


def test_nm_read_gives_back_what_the_profile_configures():
    provider = NetworkManager()
    rails = rail_interfaces(plan_rails(), 9000)
    found = provider.read(provider.profile("roce", rails[1]))
    assert found == {
        "name": "enp0s9",
        "kind": "ethernet",
        "addresses": ["10.30.1.1/24"],
        "rules": [{"priority": 1001, "from": "10.30.1.1/32", "table": 101}],
        "tables": [101, 101],
        # The routes of its own table, what a removal takes away (never the whole table).
        "table_routes": [["10.30.1.0/24", 101], ["0.0.0.0/0", 101]],
    }
    bond = provider.read(provider.profile("bond", bond_model()[0]))
    assert (bond["name"], bond["kind"], sorted(bond["addresses"])) == (
        "bond0",
        "bond",
        ["10.10.0.1/24", "fd00:10::1/64"],
    )
    port = provider.read(provider.port("bond", bond_model()[0], "enp0s3"))
    assert (port["name"], port["kind"], port["addresses"]) == ("enp0s3", "ethernet", [])


@pytest.mark.parametrize("provider", [NetworkManager, Netplan])
def test_owned_finds_the_owners_files_by_name_only(provider, tmp_path):
    """owned() under a root: this owner's files, not another owner's, not a longer owner's name."""
    mine = provider(root=str(tmp_path)).files("bond", bond_model())
    others = {
        **provider(root=str(tmp_path)).files("roce", rail_interfaces(plan_rails(), 9000)),
        **provider(root=str(tmp_path)).files("bondx", bond_model()),
    }
    for path, text in {**mine, **others}.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    assert all(path.startswith(str(tmp_path) + "/etc/") for path in mine)
    assert provider(root=str(tmp_path)).owned("bond") == sorted(mine)


def test_parse_keyfile_agrees_with_configparser():
    for text in NetworkManager().files("bond", bond_model()).values():
        assert parse_keyfile(text) == keyfile(text)


# --- netplan -------------------------------------------------------------------------------------


def test_netplan_writes_one_file_per_top_level_interface_that_yaml_reads():
    files = Netplan().files("bond", bond_model())
    # 60-hpc-<owner>-<device>.yaml; the two digits may order kinds (see the VLAN's link below).
    assert sorted(re.sub(r"/\d\d-hpc-", "/NN-hpc-", path) for path in files) == [
        "/etc/netplan/NN-hpc-bond-bond0.100.yaml",
        "/etc/netplan/NN-hpc-bond-bond0.yaml",
    ]
    for text in files.values():
        # JSON is YAML: the loader netplan uses and json agree on every value.
        assert yaml.safe_load(text) == json.loads(text.split("\n", 1)[1])


def test_netplan_bond_field_by_field():
    document = netplan_files("bond", bond_model())["bond0"]
    plain = {"mtu": 9000, "dhcp4": False, "dhcp6": False, "accept-ra": False}
    assert document == {
        "network": {
            "version": 2,
            "renderer": "networkd",
            "ethernets": {"enp0s3": plain, "enp0s4": plain},
            "bonds": {
                "bond0": {
                    **plain,
                    "interfaces": ["enp0s3", "enp0s4"],
                    "parameters": {
                        "mode": "802.3ad",
                        "mii-monitor-interval": 100,
                        "lacp-rate": "fast",
                        "transmit-hash-policy": "layer3+4",
                    },
                    "addresses": ["10.10.0.1/24", "fd00:10::1/64"],
                    "routes": [{"to": "10.200.0.0/16", "via": "10.10.0.254", "metric": 100}],
                }
            },
        }
    }


def test_netplan_vlan_field_by_field():
    document = netplan_files("bond", bond_model())["bond0.100"]
    assert document == {
        "network": {
            "version": 2,
            "renderer": "networkd",
            "vlans": {
                "bond0.100": {
                    "mtu": 9000,
                    "dhcp4": False,
                    "dhcp6": False,
                    "accept-ra": False,
                    "id": 100,
                    "link": "bond0",
                    "addresses": ["10.100.0.1/24"],
                }
            },
        }
    }


def netplan_load_order(paths):
    """The order netplan reads files in: by file name (strcmp), whatever the directory (netplan(5))."""
    return sorted(paths, key=lambda path: Path(path).name.encode())


def test_netplan_reads_a_vlans_link_before_the_vlan():
    """netplan resolves a VLAN's link only from the files read before the VLAN's own, file by file (parse.c
    process_document: "bond0.100: interface 'bond0' is not defined" on networkd); by name, bond0.100.yaml
    would sort before bond0.yaml ('1' < 'y')."""
    files = Netplan().files("bond", bond_model())
    defined = set()
    for path in netplan_load_order(files):
        network_ = json.loads(files[path].split("\n", 1)[1])["network"]
        for vlan in network_.get("vlans", {}).values():
            assert vlan["link"] in defined | set(network_.get("bonds", {})) | set(network_.get("ethernets", {}))
        for section in ("ethernets", "bonds", "vlans"):
            defined |= set(network_.get(section, {}))


def test_netplan_rails_with_source_routing():
    files = netplan_files("roce", rail_interfaces(plan_rails(), 9000))
    assert sorted(files) == ["enp0s8", "enp0s9"]
    assert files["enp0s9"] == {
        "network": {
            "version": 2,
            "renderer": "networkd",
            "ethernets": {
                "enp0s9": {
                    "mtu": 9000,
                    "dhcp4": False,
                    "dhcp6": False,
                    "accept-ra": False,
                    "link-local": [],  # ipv6: ignore
                    "addresses": ["10.30.1.1/24"],
                    "routes": [
                        {"to": "10.30.1.0/24", "from": "10.30.1.1", "scope": "link", "table": 101},
                        {"to": "0.0.0.0/0", "via": "10.30.1.254", "table": 101},
                    ],
                    "routing-policy": [{"from": "10.30.1.1/32", "table": 101, "priority": 1001}],
                }
            },
        }
    }


def test_netplan_rail_without_source_routing_has_neither_routes_nor_policy():
    rail = netplan_files("roce", rail_interfaces(plan_rails(source_routing=False), 9000))["enp0s8"]
    assert rail["network"]["ethernets"]["enp0s8"] == {
        "mtu": 9000,
        "dhcp4": False,
        "dhcp6": False,
        "accept-ra": False,
        "link-local": [],
        "addresses": ["10.30.0.1/24"],
    }


def test_netplan_bond_without_addresses_and_a_none_option():
    bond = {**bond_model()[0], "addresses": [], "routes": []}
    bond["bond"] = {"mode": "active-backup", "miimon": 100, "lacp_rate": None, "xmit_hash_policy": None}
    settings_ = netplan_files("bond", [bond])["bond0"]["network"]["bonds"]["bond0"]
    assert "addresses" not in settings_
    assert "routes" not in settings_
    assert "link-local" not in settings_  # ipv6 manual: netplan's default link-local
    assert settings_["parameters"] == {"mode": "active-backup", "mii-monitor-interval": 100}


def test_netplan_read_gives_back_what_the_file_configures():
    provider = Netplan()
    bond, vlan = bond_model()
    assert provider.read(provider.render(bond)) == {
        "name": "bond0",
        "kind": "bond",
        "members": ["enp0s3", "enp0s4"],
        "addresses": ["10.10.0.1/24", "fd00:10::1/64"],
        "rules": [],
        "tables": [],
        "table_routes": [],
    }
    assert provider.read(provider.render(vlan))["kind"] == "vlan"
    rail = rail_interfaces(plan_rails(), 9000)[1]
    assert provider.read(provider.render(rail)) == {
        "name": "enp0s9",
        "kind": "ethernet",
        "members": [],
        "addresses": ["10.30.1.1/24"],
        "rules": [{"from": "10.30.1.1/32", "table": 101, "priority": 1001}],
        "tables": [101, 101],
        "table_routes": [["10.30.1.0/24", 101], ["0.0.0.0/0", 101]],
    }


# tools/setup.sh installs netplan.io; /usr/sbin is not on every user's PATH.
NETPLAN_COMMAND = shutil.which("netplan") or shutil.which("netplan", path="/usr/sbin")


@pytest.mark.skipif(NETPLAN_COMMAND is None, reason="the netplan command is not installed (tools/setup.sh installs it)")
def test_netplan_generate_renders_systemd_networkd_files(tmp_path):
    netplan_dir = tmp_path / "etc" / "netplan"
    netplan_dir.mkdir(parents=True)
    for owner, model in (("bond", bond_model()), ("roce", rail_interfaces(plan_rails(), 9000))):
        for path, text in Netplan().files(owner, model).items():
            target = netplan_dir / Path(path).name
            target.write_text(text)
            target.chmod(0o600)
    subprocess.run([NETPLAN_COMMAND, "generate", "--root-dir", str(tmp_path)], check=True, capture_output=True)
    networkd = tmp_path / "run" / "systemd" / "network"
    bond = (networkd / "10-netplan-bond0.netdev").read_text()
    assert "Kind=bond" in bond
    assert "Mode=802.3ad" in bond
    assert "LACPTransmitRate=fast" in bond
    assert "TransmitHashPolicy=layer3+4" in bond
    # The VLAN on the bond, from its own file read after the bond's (61- after 60-).
    vlan = (networkd / "10-netplan-bond0.100.netdev").read_text()
    assert "Kind=vlan" in vlan
    assert "Id=100" in vlan
    rail = (networkd / "10-netplan-enp0s9.network").read_text()
    assert "Address=10.30.1.1/24" in rail
    assert "Table=101" in rail
    assert "Priority=1001" in rail


# --- the kernel's rules and check_model ----------------------------------------------------------


def test_check_model_accepts_the_lab():
    assert check_model("bond", bond_model()) == []
    assert check_model("roce", rail_interfaces(plan_rails(), 9000)) == []


@pytest.mark.parametrize("name", ["e" * 15, "bond0.100", "enp65s0f0np0", "a-b_c"])
def test_check_model_accepts_kernel_names(name):
    assert check_model("x", [{"name": name, "kind": "ethernet", "mtu": 1500}]) == []


@pytest.mark.parametrize(
    "name",
    ["e" * 16, "", ".", "..", "../x", "a/b", "eth0\n", "eth\n0", "eth 0", "eth:0"],
    ids=["16-chars", "empty", "dot", "dotdot", "traversal", "slash", "newline-end", "newline", "space", "colon"],
)
def test_check_model_refuses_names_the_kernel_or_a_path_refuses(name):
    problems = check_model("x", [{"name": name, "kind": "ethernet", "mtu": 1500}])
    assert problems == [f"interface name {name!r} is not a valid interface name"]


@pytest.mark.parametrize("name", [None, 5])
def test_check_model_refuses_names_that_are_not_strings(name):
    assert check_model("x", [{"name": name, "kind": "ethernet", "mtu": 1500}]) != []
    bond = {**bond_model()[0], "members": ["enp0s3", name]}
    assert check_model("x", [bond]) != []


@pytest.mark.parametrize("owner", ["Bond", "bond-x", "", "1bond", "b" * 17, "../x", "bond\n", None])
def test_check_model_refuses_owners_that_are_not_a_word(owner):
    assert check_model(owner, []) == [f"owner {owner!r} is not a lower-case word of at most 16 characters"]


def test_check_model_refuses_a_member_twice_and_bad_members():
    bond = bond_model()[0]
    other = {**bond, "name": "bond1", "members": ["enp0s4", "enp0s5"]}
    assert check_model("bond", [bond, other]) == ["interfaces configured twice: enp0s4"]
    assert check_model("bond", [{**bond, "members": ["enp0s3", "enp0s3"]}]) == ["interfaces configured twice: enp0s3"]
    assert check_model("bond", [{**bond, "members": ["ok", "../etc"]}]) == [
        "bond0: member '../etc' is not a valid interface name"
    ]


@pytest.mark.parametrize(
    ("key", "value"), [("mode", "802.3ad\nmiimon=1"), ("xmit_hash_policy", "layer3 4"), ("lacp_rate", "fast;x")]
)
def test_check_model_refuses_bond_options_that_would_break_the_file(key, value):
    bond = bond_model()[0]
    bond = {**bond, "bond": {**bond["bond"], key: value}}
    assert check_model("bond", [bond]) == [f"bond0: bond option {key}={value!r} cannot be written"]


def test_check_model_refuses_an_unknown_bond_option():
    bond = bond_model()[0]
    assert check_model("bond", [{**bond, "bond": {"arp_interval": 1}}]) == [
        "bond0: bond option arp_interval=1 cannot be written"
    ]


def test_check_model_refuses_numbers_that_are_not_numbers():
    rail = rail_interfaces(plan_rails(), 9000)[1]
    routes = [{**rail["routes"][0], "table": "101"}]
    assert check_model("roce", [{**rail, "routes": routes}]) == ["enp0s9: route table '101' is not a number"]
    routes = [{**rail["routes"][1], "metric": 1.5}]
    assert check_model("roce", [{**rail, "routes": routes}]) == ["enp0s9: route metric 1.5 is not a number"]
    rules = [{**rail["rules"][0], "table": "101"}]
    assert check_model("roce", [{**rail, "rules": rules}])[0].startswith("enp0s9: rule ")
    assert check_model("roce", [{**rail, "mtu": "9000"}]) == ["enp0s9: mtu '9000' is not a number"]
    assert check_model("roce", [{**rail, "mtu": True}]) == ["enp0s9: mtu True is not a number"]


def test_check_model_refuses_bad_addresses_kinds_and_vlan_links():
    rail = rail_interfaces(plan_rails(), 9000)[0]
    assert len(check_model("roce", [{**rail, "addresses": ["10.30.0.1/33"]}])) == 1
    assert len(check_model("roce", [{**rail, "routes": [{"to": "10.30.0.1/24"}]}])) == 1  # host bits set
    assert len(check_model("roce", [{**rail, "routes": [{"to": "0.0.0.0/0", "via": "gw\n"}]}])) == 1
    assert check_model("roce", [{**rail, "kind": "bridge"}]) == [
        "enp0s8: kind 'bridge' is not one of ethernet, bond, vlan"
    ]
    vlan = bond_model()[1]
    assert check_model("bond", [{**vlan, "vlan": {"id": 100, "link": "../bond0"}}]) == [
        "bond0.100: the VLAN has no valid link"
    ]


@pytest.mark.parametrize("vid", ["100\n[ipv4]\nmethod=auto", 4095, -1, None])
def test_check_model_refuses_a_vlan_id_outside_the_kernels_range(vid):
    vlan = bond_model()[1]
    assert check_model("bond", [{**vlan, "vlan": {"id": vid, "link": "bond0"}}]) != []


def test_rail_interfaces_leave_npu_ports_to_hccn_tool():
    assert [i["name"] for i in rail_interfaces(plan_rails(), 4200)] == ["enp0s8", "enp0s9"]
    assert {i["mtu"] for i in rail_interfaces(plan_rails(), 4200)} == {4200}


# --- the unmanaged list --------------------------------------------------------------------------


def test_unmanaged_conf_is_one_sorted_list():
    conf = unmanaged_conf({"enp0s9", "bond0", "enp0s3", "bond0.100"})
    assert keyfile(conf) == {
        "keyfile": {
            "unmanaged-devices": "interface-name:bond0;interface-name:bond0.100;interface-name:enp0s3;"
            "interface-name:enp0s9"
        }
    }
    assert unmanaged_conf(set()) is None


# --- drift ---------------------------------------------------------------------------------------


def address(local, prefixlen, scope="global"):
    family = "inet6" if ":" in local else "inet"
    return {"family": family, "local": local, "prefixlen": prefixlen, "scope": scope}


def running_links():
    """`ip -j addr show` of node1 as the model wants it: the bond, its ports, the VLAN and the rails."""
    return [
        {"ifname": "lo", "mtu": 65536, "addr_info": [address("127.0.0.1", 8, "host")]},
        {"ifname": "enp0s3", "mtu": 9000, "master": "bond0", "addr_info": []},
        {"ifname": "enp0s4", "mtu": 9000, "master": "bond0", "addr_info": []},
        {
            "ifname": "bond0",
            "mtu": 9000,
            "addr_info": [address("10.10.0.1", 24), address("fd00:10::1", 64), address("fe80::1", 64, "link")],
        },
        {"ifname": "bond0.100", "mtu": 9000, "addr_info": [address("10.100.0.1", 24)]},
        {"ifname": "enp0s8", "mtu": 9000, "addr_info": [address("10.30.0.1", 24)]},
        {"ifname": "enp0s9", "mtu": 9000, "addr_info": [address("10.30.1.1", 24)]},
    ]


def running_rules():
    """`ip -j -4 rule show`: the kernel's rules and the rails' own."""
    return [
        {"priority": 0, "src": "all", "table": "local"},
        {"priority": 1000, "src": "10.30.0.1", "table": "100"},
        {"priority": 1001, "src": "10.30.1.1", "table": "101"},
        {"priority": 32766, "src": "all", "table": "main"},
        {"priority": 32767, "src": "all", "table": "default"},
    ]


def node_model():
    return bond_model() + rail_interfaces(plan_rails(), 9000)


def test_drift_none_when_the_node_runs_the_model():
    assert drift(node_model(), running_links(), running_rules()) == []


def test_drift_a_missing_link():
    links = [link for link in running_links() if link["ifname"] != "bond0.100"]
    assert drift(node_model(), links, running_rules()) == ["bond0.100 does not exist"]


def test_drift_an_mtu_differing():
    links = running_links()
    links[5]["mtu"] = 1500
    assert drift(node_model(), links, running_rules()) == ["enp0s8 has MTU 1500, not 9000"]


def test_drift_an_extra_address():
    links = running_links()
    links[3]["addr_info"].append(address("10.10.0.99", 24))
    assert drift(node_model(), links, running_rules()) == [
        "bond0 has addresses ['10.10.0.1/24', '10.10.0.99/24', 'fd00:10::1/64'], not ['10.10.0.1/24', 'fd00:10::1/64']"
    ]


def test_drift_a_missing_rule():
    rules = [rule for rule in running_rules() if rule["priority"] != 1001]
    assert drift(node_model(), running_links(), rules) == ["enp0s9 lacks the rule from 10.30.1.1/32 table 101"]


def test_drift_reads_rules_as_iproute2_prints_them():
    # A rule of another prefix length is another rule; "from all" rules are no source at all.
    rules = [dict(rule, srclen=16) if rule["priority"] == 1001 else rule for rule in running_rules()]
    rules.append({"priority": 0, "src": "all", "table": "255"})
    assert drift(node_model(), running_links(), rules) == ["enp0s9 lacks the rule from 10.30.1.1/32 table 101"]
    # An explicit host length is the same rule as none.
    rules = [dict(rule, srclen=32) for rule in running_rules()]
    assert drift(node_model(), running_links(), rules) == []


def test_drift_a_bond_with_a_missing_port():
    links = running_links()
    del links[2]["master"]
    assert drift(node_model(), links, running_rules()) == ["bond0 has ports ['enp0s3'], not ['enp0s3', 'enp0s4']"]


def test_drift_ignores_ipv6_global_addresses_on_an_ipv6_ignore_rail():
    links = running_links()
    links[5]["addr_info"] += [address("fd00:30::5054:ff:fe00:1", 64), address("fe80::5054:ff:fe00:1", 64, "link")]
    assert drift(node_model(), links, running_rules()) == []
    # On an interface with ipv6 manual the same address is drift.
    links[3]["addr_info"].append(address("fd00:30::5054:ff:fe00:1", 64))
    assert drift(node_model(), links, running_rules()) == [
        "bond0 has addresses ['10.10.0.1/24', 'fd00:10::1/64', 'fd00:30::5054:ff:fe00:1/64'], "
        "not ['10.10.0.1/24', 'fd00:10::1/64']"
    ]


# --- properties ----------------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True)


@st.composite
def interfaces(draw):
    """Valid models: ethernets with addresses, routes (own tables) and source rules; bonds with ports."""
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    model = []
    for index, name in enumerate(names):
        v4 = draw(st.lists(st.ip_addresses(v=4), max_size=3, unique=True))
        v6 = draw(st.lists(st.ip_addresses(v=6), max_size=2, unique=True))
        addresses = [f"{a}/{draw(st.integers(8, 32))}" for a in v4] + [f"{a}/{draw(st.integers(48, 128))}" for a in v6]
        routes, rules = [], []
        for a in v4:
            table = draw(st.integers(1, 252))
            routes.append(
                {
                    "to": str(ipaddress.ip_interface(f"{a}/24").network),
                    "from": str(a),
                    "scope": "link",
                    "table": table,
                }
            )
            rules.append({"from": f"{a}/32", "table": table, "priority": draw(st.integers(1, 32765))})
        for a in v6:
            rules.append({"from": f"{a}/128", "table": draw(st.integers(1, 252)), "priority": draw(st.integers(1, 99))})
        interface = {
            "name": name,
            "kind": "ethernet",
            "mtu": draw(st.integers(68, 9216)),
            "addresses": addresses,
            "routes": routes,
            "rules": rules,
            "ipv6": "manual",
            "never_default": draw(st.booleans()),
        }
        if draw(st.booleans()):
            interface["kind"] = "bond"
            interface["members"] = [f"p{index}n{m}" for m in range(draw(st.integers(1, 3)))]
            interface["bond"] = {"mode": "802.3ad", "miimon": 100, "lacp_rate": None, "xmit_hash_policy": None}
        model.append(interface)
    return model


def normalized(addresses):
    return sorted(str(ipaddress.ip_interface(a)) for a in addresses)


def rule_set(rules):
    return sorted((r["priority"], r["from"], r["table"]) for r in rules)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interfaces())
def test_property_rendered_profiles_read_back_to_the_model(model):
    assert check_model("prop", model) == []
    for provider in (NetworkManager(), Netplan()):
        read = {}
        for text in provider.files("prop", model).values():
            found = provider.read(text)
            read.setdefault(found["name"], found)
        for interface in model:
            found = read[interface["name"]]
            assert found["kind"] == interface["kind"]
            assert normalized(found["addresses"]) == normalized(interface["addresses"])
            assert rule_set(found["rules"]) == rule_set(interface["rules"])
            assert sorted(found["tables"]) == sorted(r["table"] for r in interface["routes"])


@settings(max_examples=60, deadline=None)
@given(interfaces(), interfaces())
def test_property_profile_uuids_and_paths_are_unique_and_stable(first, second):
    provider = NetworkManager()
    files = {**provider.files("one", first), **provider.files("two", second)}
    profiles = [keyfile(text)["connection"] for text in files.values()]
    assert len({p["uuid"] for p in profiles}) == len(profiles) == len(files)
    assert len({p["id"] for p in profiles}) == len(profiles)
    assert provider.files("one", first) == provider.files("one", first)
    for path, profile in zip(files, profiles, strict=True):
        assert Path(path).name == f"{profile['id']}.nmconnection"
        assert profile["uuid"] == uuid_of(profile["id"])


@settings(max_examples=40, deadline=None)
@given(interfaces())
def test_property_netplan_files_are_yaml_and_json_alike(model):
    for text in Netplan().files("prop", model).values():
        assert yaml.safe_load(text) == json.loads(text.split("\n", 1)[1])


def test_module_constants_are_absolute_paths():
    assert all(p.startswith("/etc/") for p in (network.NM_PROFILES, network.NM_CONF, network.NETPLAN))


def test_check_model_refuses_an_autoconnect_priority_that_is_not_a_number():
    rail = rail_interfaces(plan_rails(), 9000)[0]
    assert check_model("roce", [{**rail, "autoconnect_priority": "100\nmaster=bond0\nslave-type=bond"}]) != []


# --- against what the role templates rendered before the network layer ---------------------------
# roles/bond/templates/{nm-bond,nm-port,nm-vlan}.nmconnection.j2 and netplan.yaml.j2, and
# roles/roce/templates/nm-rail.nmconnection.j2 and netplan.yaml.j2, rendered for the lab's values.

OLD_NM = {
    "bond0": """[connection]
id=hpc-bond0
uuid=99c75dd8-0070-518a-a93d-9ea103974e39
type=bond
interface-name=bond0
autoconnect=true
autoconnect-slaves=1

[ethernet]
mtu=9000

[bond]
mode=802.3ad
miimon=100
lacp_rate=fast
xmit_hash_policy=layer3+4

[ipv4]
method=manual
address1=10.10.0.1/24
route1=10.200.0.0/16,10.10.0.254,100

[ipv6]
method=manual
address1=fd00:10::1/64
""",
    "enp0s3": """[connection]
id=hpc-bond0-port-enp0s3
uuid=dd0598ef-65f0-570b-8fc5-0baf1eb58a00
type=ethernet
interface-name=enp0s3
master=bond0
slave-type=bond
autoconnect=true
autoconnect-priority=100

[ethernet]
mtu=9000
""",
    "bond0.100": """[connection]
id=hpc-bond0.100
uuid=2661acd8-6a10-5c27-bdaa-495dbb7d8cb7
type=vlan
interface-name=bond0.100
autoconnect=true

[ethernet]
mtu=9000

[vlan]
id=100
parent=bond0

[ipv4]
method=manual
address1=10.100.0.1/24

[ipv6]
method=disabled
""",
    "enp0s9": """[connection]
id=hpc-roce-enp0s9
uuid=eb457964-b71a-5981-9ec5-1c26ea6d1518
type=ethernet
interface-name=enp0s9
autoconnect=true
autoconnect-priority=100

[ethernet]
mtu=9000

[ipv4]
method=manual
address1=10.30.1.1/24
never-default=true
route1=10.30.1.0/24
route1_options=table=101,src=10.30.1.1
route2=0.0.0.0/0,10.30.1.254
route2_options=table=101
routing-rule1=priority 1001 from 10.30.1.1/32 table 101

[ipv6]
method=ignore
""",
}

OLD_NETPLAN_BOND = """network:
  version: 2
  renderer: networkd
  ethernets:
    enp0s3: {mtu: 9000, dhcp4: false, dhcp6: false, accept-ra: false}
    enp0s4: {mtu: 9000, dhcp4: false, dhcp6: false, accept-ra: false}
  bonds:
    bond0:
      interfaces: ["enp0s3", "enp0s4"]
      mtu: 9000
      dhcp4: false
      dhcp6: false
      accept-ra: false
      addresses: ["10.10.0.1/24", "fd00:10::1/64"]
      routes:
        - {to: "10.200.0.0/16", via: "10.10.0.254", metric: 100}
      parameters:
        mode: 802.3ad
        mii-monitor-interval: 100
        lacp-rate: fast
        transmit-hash-policy: layer3+4
  vlans:
    bond0.100:
      id: 100
      link: bond0
      mtu: 9000
      dhcp4: false
      dhcp6: false
      accept-ra: false
      addresses: ["10.100.0.1/24"]
"""

OLD_NETPLAN_ROCE = """network:
  version: 2
  renderer: networkd
  ethernets:
    enp0s8:
      mtu: 9000
      dhcp4: false
      dhcp6: false
      accept-ra: false
      link-local: []
      addresses: ["10.30.0.1/24"]
      routes:
        - {to: "10.30.0.0/24", scope: link, from: "10.30.0.1", table: 100}
      routing-policy:
        - {from: "10.30.0.1/32", table: 100, priority: 1000}
    enp0s9:
      mtu: 9000
      dhcp4: false
      dhcp6: false
      accept-ra: false
      link-local: []
      addresses: ["10.30.1.1/24"]
      routes:
        - {to: "10.30.1.0/24", scope: link, from: "10.30.1.1", table: 101}
        - {to: default, via: "10.30.1.254", table: 101}
      routing-policy:
        - {from: "10.30.1.1/32", table: 101, priority: 1001}
"""


def test_nm_profiles_match_the_old_templates_but_for_ids_and_uuids():
    new = {**nm_files("bond", bond_model()), **nm_files("roce", rail_interfaces(plan_rails(), 9000))}
    for device, text in OLD_NM.items():
        old = keyfile(text)
        profile = dict(new[f"hpc-{'roce' if device == 'enp0s9' else 'bond'}-{device}.nmconnection"])
        old_connection, new_connection = old.pop("connection"), dict(profile.pop("connection"))
        assert profile == old, device
        # The bond's profiles are renamed hpc-bond-<device> (the old files are retired); the rails keep
        # their ids and file names, but their UUIDs move from Ansible's to_uuid namespace to the layer's.
        for key in ("id", "uuid"):
            old_connection.pop(key)
            new_connection.pop(key)
        assert new_connection == old_connection, device
    assert new["hpc-roce-enp0s9.nmconnection"]["connection"]["id"] == "hpc-roce-enp0s9"
    assert new["hpc-roce-enp0s9.nmconnection"]["connection"]["uuid"] != "eb457964-b71a-5981-9ec5-1c26ea6d1518"


def merged(documents):
    """What netplan makes of several files: the network mappings merged, later files amending."""
    network_ = {}
    for document in documents:
        for key, value in document["network"].items():
            network_[key] = {**network_.get(key, {}), **value} if isinstance(value, dict) else value
    return {"network": network_}


def test_netplan_files_merge_to_what_the_old_templates_wrote():
    bond = merged(netplan_files("bond", bond_model()).values())
    assert bond == yaml.safe_load(OLD_NETPLAN_BOND)
    roce = merged(netplan_files("roce", rail_interfaces(plan_rails(), 9000)).values())
    old = yaml.safe_load(OLD_NETPLAN_ROCE)
    # The one difference: the gateway route's `to` is 0.0.0.0/0 instead of netplan's `default`.
    old["network"]["ethernets"]["enp0s9"]["routes"][1]["to"] = "0.0.0.0/0"
    assert roce == old
