#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a bond configuration against the node and report the bond's state."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bond_inspect
short_description: Validate a bond configuration on a node and report the bond as the kernel sees it
description:
  - Changes nothing, so it runs the same in check mode.
  - Resolves members given by name, permanent MAC or PCI address to interface names, checks every
    option and returns the problems found as sentences that start with the role variable they
    are about. It does not fail on them; the caller decides (and names the host).
  - Reports the bond's state from sysfs and C(ip), and whether it matches the configuration.
options:
  name: {description: Bond interface name., type: str, required: true}
  mode: {description: Bonding mode (kernel name)., type: str, required: true}
  members:
    description: NIC names, or dicts with exactly one of C(name), C(mac) (permanent MAC), C(pci).
    type: list
    elements: raw
    required: true
  mtu: {description: MTU of the bond and its members., type: int, required: true}
  lacp_rate: {description: "LACP rate, only for mode 802.3ad.", type: str}
  xmit_hash_policy: {description: Transmit hash policy., type: str}
  miimon: {description: MII link monitoring interval in ms., type: int, default: 100}
  addresses: {description: Addresses with prefix length., type: list, elements: str, default: []}
  routes: {description: "Routes (C(to), C(via), C(metric)).", type: list, elements: dict, default: []}
  vlans: {description: "VLANs (C(id), C(addresses), C(routes), C(mtu)).", type: list, elements: dict, default: []}
  check_targets: {description: Addresses the node must reach after a change., type: list, elements: str, default: []}
  backend:
    description: C(auto) picks NetworkManager when it runs, netplan when it is installed.
    type: str
    choices: [auto, networkmanager, netplan]
    default: auto
  sysfs_root: {description: Root of sysfs; only tests change it., type: path, default: /sys}
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Check the bond configuration
  bond_inspect:
    name: bond0
    mode: 802.3ad
    members: [enp0s3, {pci: "0000:00:04.0"}]
    mtu: 9000
    lacp_rate: fast
    addresses: [10.10.0.1/24]
  register: bond_check
"""

RETURN = r"""
problems:
  description: What is wrong with the configuration on this node; empty when it can be applied.
  returned: always
  type: list
  elements: str
members:
  description: The member NICs (name, perm_mac, pci_address, speed_mbps, driver ...), in the given order.
  returned: always
  type: list
  elements: dict
backend:
  description: The network backend that will carry the configuration, or null where none fits.
  returned: always
  type: str
status:
  description: >-
    The bond as the kernel sees it (mode, xmit_hash_policy, lacp_rate, miimon, mtu, members,
    active_aggregator, aggregator_members, partner_mac, speed_mbps, addresses, vlans), or null.
  returned: always
  type: dict
nm_installed:
  description: Whether NetworkManager is installed (the netplan backend then keeps it off the bond).
  returned: always
  type: bool
devices:
  description: The software devices of the configuration, the bond and its VLANs (C(bond0.100)).
  returned: always
  type: list
  elements: str
nm_running:
  description: Whether NetworkManager runs.
  returned: always
  type: bool
interfaces:
  description: >-
    Per interface (the bond and each VLAN), C(ipv4) and C(ipv6), each with C(addresses) in normal
    form and C(routes) ({to, via, metric}, C(default) spelled out as 0.0.0.0/0 or ::/0).
  returned: always
  type: dict
network:
  description: The bond and its VLANs in the network layer's model (module_utils/hpc_datapath/network.py).
  returned: always
  type: list
  elements: dict
drift:
  description: Where the running bond differs from the configuration; empty when in sync.
  returned: always
  type: list
  elements: str
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.bonding import bond_status, check_config
from ansible.module_utils.hpc_datapath.iproute import addresses_of, ip_json
from ansible.module_utils.hpc_datapath.netbackend import detect
from ansible.module_utils.hpc_datapath.sysfs import nics


def routes_of(module, device):
    """(destination, gateway) of the routes through a device that have a gateway."""
    found = set()
    for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        for route in ip_json(module, [family, "route", "show", "dev", device]) or []:
            if route.get("gateway"):
                found.add((default if route.get("dst") == "default" else route.get("dst"), route["gateway"]))
    return found


def ip_settings(addresses, routes):
    """Addresses and routes of one interface split by IP version, in normal form, for the templates."""
    result = {"ipv4": {"addresses": [], "routes": []}, "ipv6": {"addresses": [], "routes": []}}
    for address in addresses:
        interface = ipaddress.ip_interface(address)
        result[f"ipv{interface.version}"]["addresses"].append(str(interface))
    for route in routes:
        if route.get("via") is None:
            continue
        via = ipaddress.ip_address(str(route["via"]))
        to = ("0.0.0.0/0" if via.version == 4 else "::/0") if route["to"] == "default" else route["to"]
        entry = {"to": str(ipaddress.ip_network(str(to))), "via": str(via), "metric": route.get("metric")}
        result[f"ipv{via.version}"]["routes"].append(entry)
    return result


def network_of(config, members, interfaces):
    """The bond and its VLANs in the network layer's model (module_utils/hpc_datapath/network.py)."""
    hashes = config["mode"] in ("802.3ad", "balance-xor", "balance-tlb")
    bond = {
        "mode": config["mode"],
        "miimon": config["miimon"],
        "lacp_rate": config["lacp_rate"],
        "xmit_hash_policy": config["xmit_hash_policy"] if hashes else None,
    }

    def ip(device):
        families = (interfaces[device]["ipv4"], interfaces[device]["ipv6"])
        return {
            "addresses": [a for f in families for a in f["addresses"]],
            "routes": [r for f in families for r in f["routes"]],
            "ipv6": "manual",
        }

    network = [
        {
            "name": config["name"],
            "kind": "bond",
            "mtu": config["mtu"],
            "members": [m["name"] for m in members],
            "bond": bond,
            **ip(config["name"]),
        }
    ]
    for vlan in config["vlans"]:
        device = f"{config['name']}.{vlan['id']}"
        mtu = config["mtu"] if vlan.get("mtu") is None else vlan["mtu"]
        network.append(
            {
                "name": device,
                "kind": "vlan",
                "mtu": mtu,
                "vlan": {"id": vlan["id"], "link": config["name"]},
                **ip(device),
            }
        )
    return network


def drift_of(module, config, members, status, interfaces):
    """Where the running bond differs from the configuration; interfaces: ip_settings by device."""
    if status is None:
        return [f"{config['name']} does not exist"]
    drift = []
    for key in ("mode", "mtu", "miimon", "lacp_rate", "xmit_hash_policy"):
        if config[key] is not None and status[key] != config[key]:
            drift.append(f"{key} is {status[key]}, not {config[key]}")
    running = sorted(m["name"] for m in status["members"])
    if running != sorted(m["name"] for m in members):
        drift.append(f"members are {running}")
    for device, settings in interfaces.items():
        families = (settings["ipv4"], settings["ipv6"])
        if sorted(status["addresses"].get(device) or []) != sorted(a for f in families for a in f["addresses"]):
            drift.append(f"{device} has addresses {status['addresses'].get(device)}")
        missing = {(r["to"], r["via"]) for f in families for r in f["routes"]} - routes_of(module, device)
        if missing:
            drift.append(f"{device} lacks routes {sorted(missing)}")
    return drift


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "mode": {"type": "str", "required": True},
            "members": {"type": "list", "elements": "raw", "required": True},
            "mtu": {"type": "int", "required": True},
            "lacp_rate": {"type": "str"},
            "xmit_hash_policy": {"type": "str"},
            "miimon": {"type": "int", "default": 100},
            "addresses": {"type": "list", "elements": "str", "default": []},
            "routes": {"type": "list", "elements": "dict", "default": []},
            "vlans": {"type": "list", "elements": "dict", "default": []},
            "check_targets": {"type": "list", "elements": "str", "default": []},
            "backend": {"type": "str", "choices": ["auto", "networkmanager", "netplan"], "default": "auto"},
            "sysfs_root": {"type": "path", "default": "/sys"},
        },
        supports_check_mode=True,
    )
    config = module.params
    root = config["sysfs_root"]
    members, problems = check_config(config, nics(root))
    backend, backend_problem, nm_installed, nm_running = detect(module, "bond_backend", config["backend"])
    if backend_problem:
        problems.append(backend_problem)

    devices = [config["name"]] + [f"{config['name']}.{vlan.get('id')}" for vlan in config["vlans"]]
    status = bond_status(config["name"], root)
    if status is not None:
        status["addresses"] = {device: addresses_of(module, device) for device in devices}
    drift, interfaces, network = [], {}, []
    if not problems:
        interfaces = {config["name"]: ip_settings(config["addresses"], config["routes"])}
        for device, vlan in zip(devices[1:], config["vlans"], strict=True):
            interfaces[device] = ip_settings(vlan.get("addresses") or [], vlan.get("routes") or [])
        drift = drift_of(module, config, members, status, interfaces)
        network = network_of(config, members, interfaces)
    module.exit_json(
        changed=False,
        problems=problems,
        members=members,
        backend=backend,
        nm_installed=nm_installed,
        nm_running=nm_running,
        devices=devices,
        interfaces=interfaces,
        network=network,
        status=status,
        drift=drift,
    )


if __name__ == "__main__":
    main()
