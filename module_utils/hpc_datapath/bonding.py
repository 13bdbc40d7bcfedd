# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a bond's configuration against the node, and read a bond's state from sysfs.

Problems are sentences that start with the variable they are about ("bond_mtu: ..."); the role
puts the host name in front, so every message names host, variable and reason.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ansible.module_utils.hpc_datapath.sysfs import SYS, read, read_int

MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb")
HASH_POLICIES = ("layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4", "vlan+srcmac")
LACP_RATES = ("slow", "fast")
MTU_RANGE = (1280, 9216)  # IPv6 minimum .. the largest jumbo frame data-centre switches take
MAX_METRIC = 2**32 - 1  # the kernel's route priority is a u32
IFNAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,15}\Z")  # \Z: $ would pass a trailing newline
MEMBER_KEYS = ("name", "mac", "pci")


def _normal_mac(mac):
    return mac.lower().replace("-", ":") if isinstance(mac, str) else mac


def resolve_members(specs, nics):
    """Map member selectors (a name, or a dict with exactly one of name, mac, pci) to NICs."""
    problems, members = [], []
    by_key = {
        "name": {nic["name"]: nic for nic in nics},
        "mac": {_normal_mac(nic["perm_mac"]): nic for nic in nics},
        "pci": {nic["pci_address"]: nic for nic in nics if nic["pci_address"]},
    }
    known = ", ".join(f"{nic['name']} ({nic['perm_mac']}, {nic['pci_address']})" for nic in nics) or "none"
    for spec in specs:
        selector = {"name": spec} if isinstance(spec, str) else dict(spec or {})
        given = [key for key in MEMBER_KEYS if selector.get(key)]
        if len(given) != 1 or set(selector) - set(MEMBER_KEYS):
            problems.append(f"bond_members: {spec!r} must be a NIC name or a dict with exactly one of name, mac, pci")
            continue
        key = given[0]
        value = _normal_mac(selector[key]) if key == "mac" else selector[key]
        nic = by_key[key].get(value)
        if nic is None:
            problems.append(f"bond_members: no NIC on this node has {key} {selector[key]} (NICs: {known})")
        elif any(member["name"] == nic["name"] for member in members):
            problems.append(f"bond_members: {nic['name']} is selected twice")
        else:
            members.append(nic)
    return members, problems


def _interfaces(variable, addresses, problems):
    """Parse 'address/prefix' strings, each with its prefix length; None when any is wrong."""
    parsed = []
    for text in addresses:
        if "/" not in str(text):
            problems.append(f"{variable}: {text!r} has no prefix length (write it as address/prefix, e.g. 10.0.0.1/24)")
            continue
        try:
            interface = ipaddress.ip_interface(str(text))
        except ValueError as error:
            problems.append(f"{variable}: {text!r} is not an IP address with prefix: {error}")
            continue
        net = interface.network
        if net.num_addresses > 2 and interface.ip in (net.network_address, net.broadcast_address):
            problems.append(f"{variable}: {text} is the network or broadcast address of {net}, not a host address")
            continue
        parsed.append(interface)
    return parsed if len(parsed) == len(addresses) else None


def _routes(variable, routes, interfaces, problems):
    for route in routes:
        to, via, metric = route.get("to"), route.get("via"), route.get("metric")
        # The metric is written into keyfiles and netplan as is: only a number may get there.
        if metric is not None and (type(metric) is not int or not 0 <= metric <= MAX_METRIC):
            problems.append(f"{variable}: route to {to}: metric {metric!r} is not a number in 0..{MAX_METRIC}")
            continue
        try:
            network = ipaddress.ip_network("0.0.0.0/0" if to == "default" else str(to))
            gateway = ipaddress.ip_address(str(via)) if via is not None else None
        except ValueError as error:
            problems.append(f"{variable}: route {route!r}: {error}")
            continue
        if gateway is None or interfaces is None:
            continue  # no gateway, or addresses too broken to judge it against
        if gateway.version != network.version:
            problems.append(f"{variable}: route to {to} via {via} mixes IPv{network.version} and IPv{gateway.version}")
        elif not any(gateway in interface.network for interface in interfaces):
            problems.append(f"{variable}: gateway {via} of the route to {to} is in no subnet of the addresses")


def _option_problems(config):
    problems = []
    name, mode, lacp_rate, policy = config["name"], config["mode"], config["lacp_rate"], config["xmit_hash_policy"]
    if not IFNAME.match(name or ""):
        problems.append(f"bond_name: {name!r} is not a valid interface name (1 to 15 of A-Z a-z 0-9 _ . -)")
    if mode not in MODES:
        problems.append(f"bond_mode: {mode!r} is not one of {', '.join(MODES)}")
    if lacp_rate is not None and lacp_rate not in LACP_RATES:
        problems.append(f"bond_lacp_rate: {lacp_rate!r} is not one of slow, fast")
    elif lacp_rate is not None and mode in MODES and mode != "802.3ad":
        problems.append(
            f"bond_lacp_rate: LACP options only apply to mode 802.3ad, not {mode}; set bond_lacp_rate to null"
        )
    if policy is not None and policy not in HASH_POLICIES:
        problems.append(f"bond_xmit_hash_policy: {policy!r} is not one of {', '.join(HASH_POLICIES)}")
    if config["miimon"] < 0:
        problems.append(f"bond_miimon: {config['miimon']} is negative")
    low, high = MTU_RANGE
    if not low <= config["mtu"] <= high:
        problems.append(f"bond_mtu: {config['mtu']} is out of range {low}..{high}")
    return problems


def _vlan_problems(config):
    problems, seen = [], set()
    for vlan in config["vlans"]:
        vlan_id = vlan.get("id")
        label = f"bond_vlans: VLAN {vlan_id}"
        if not isinstance(vlan_id, int) or not 1 <= vlan_id <= 4094:
            problems.append(f"bond_vlans: VLAN id {vlan_id!r} is out of range 1..4094")
        elif vlan_id in seen:
            problems.append(f"{label} is listed twice")
        elif len(f"{config['name']}.{vlan_id}") > 15:
            problems.append(f"{label}: {config['name']}.{vlan_id} is longer than 15 characters, the kernel's limit")
        seen.add(vlan_id)
        vlan_mtu = config["mtu"] if vlan.get("mtu") is None else vlan["mtu"]
        if type(vlan_mtu) is not int or vlan_mtu < MTU_RANGE[0]:
            problems.append(f"{label}: mtu {vlan_mtu!r} is not a number of at least {MTU_RANGE[0]}")
        elif vlan_mtu > config["mtu"]:
            problems.append(f"{label}: mtu {vlan_mtu} is larger than bond_mtu {config['mtu']}")
        _routes(label, vlan.get("routes") or [], _interfaces(label, vlan.get("addresses") or [], problems), problems)
    return problems


def check_config(config, nics):
    """Every problem of a bond configuration on this node, and its resolved members."""
    problems = _option_problems(config)
    members, member_problems = resolve_members(config["members"], nics)
    problems += member_problems
    if not config["members"]:
        problems.append("bond_members: a bond needs at least one member")
    _routes("bond_routes", config["routes"], _interfaces("bond_addresses", config["addresses"], problems), problems)
    problems += _vlan_problems(config)
    for target in config["check_targets"]:
        try:
            ipaddress.ip_address(str(target))
        except ValueError:
            problems.append(f"bond_check_targets: {target!r} is not an IP address")
    return members, problems


def bond_status(name, sys_root=SYS):
    """The kernel's view of a bond (None where it does not exist), from sysfs."""
    base = os.path.join(sys_root, "class/net", name)
    bonding = os.path.join(base, "bonding")
    if not os.path.isdir(bonding):
        return None

    def option(attr):
        value = read(os.path.join(bonding, attr))
        return value.split()[0] if value else None  # "802.3ad 4" -> "802.3ad"

    member_names = (read(os.path.join(bonding, "slaves")) or "").split()
    members = []
    for member in member_names:
        slave = os.path.join(sys_root, "class/net", member, "bonding_slave")
        speed = read_int(os.path.join(sys_root, "class/net", member, "speed"))
        members.append(
            {
                "name": member,
                "perm_mac": read(os.path.join(slave, "perm_hwaddr")),
                "mii_status": read(os.path.join(slave, "mii_status")),
                "aggregator_id": read_int(os.path.join(slave, "ad_aggregator_id")),
                "speed_mbps": speed if speed is not None and speed > 0 else None,
            }
        )
    aggregator = read_int(os.path.join(bonding, "ad_aggregator"))
    in_aggregator = [m for m in members if aggregator is not None and m["aggregator_id"] == aggregator]
    partner = read(os.path.join(bonding, "ad_partner_mac"))
    carrying = in_aggregator if aggregator is not None else members
    return {
        "name": name,
        "mode": option("mode"),
        "xmit_hash_policy": option("xmit_hash_policy"),
        "lacp_rate": option("lacp_rate"),
        "miimon": read_int(os.path.join(bonding, "miimon")),
        "mtu": read_int(os.path.join(base, "mtu")),
        "operstate": read(os.path.join(base, "operstate")),
        "mac": read(os.path.join(base, "address")),
        "members": members,
        "active_aggregator": aggregator,
        "aggregator_members": [m["name"] for m in in_aggregator],
        "partner_mac": None if partner in (None, "00:00:00:00:00:00") else partner,
        # What the bond can carry: the members that pass traffic (the aggregator's, under LACP).
        "speed_mbps": sum(m["speed_mbps"] or 0 for m in carrying if m["mii_status"] == "up"),
    }
