#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan, apply and report the RoCE rails of a node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: roce_fabric
short_description: Plan the RoCE rails of a node, apply their runtime settings, report their state
description:
  - C(state=plan) changes nothing. It checks the rails of the hardware profile against the IPAM
    addresses and the node, resolves C(qos.tool=auto) and the network backend, and returns the plan
    (per rail address, netmask, network, routing table) and the problems found, as sentences that
    start with the role variable they are about. It does not fail on them.
  - C(state=apply) brings Soft-RoCE devices, the rdma_cm defaults (RoCE mode, ToS), lossless QoS
    (C(mlnx_qos) or C(dcb), mlx5 ECN sysfs) and Ascend NPU ports (C(hccn_tool)) to the plan, reading
    every value first and changing only what differs. Supports check mode. Returns the state of
    every rail.
  - The same code (module_utils C(hpc_datapath.roce)) runs at boot as C(hpc-roce.service).
  - C(state=install) writes that code to O(boot_program), the text of module_utils
    C(hpc_datapath/roce.py) as this run of the module carries it (in AnsiballZ's zip, or as mitogen
    shipped it), so that no role copies it from the project by path. It writes only where the
    node's file differs in content, in mode (0755) or, run as root, in owner (root), and only into
    a directory that exists. Supports check mode and diff.
options:
  state:
    description: What to do.
    type: str
    choices: [plan, apply, install]
    default: plan
  boot_program:
    description: For C(state=install), where the boot program goes (the path C(hpc-roce.service) runs).
    type: path
  rails:
    description: The hardware profile's rails, each C(device), C(netdev), C(pool), optional C(soft_roce).
    type: list
    elements: dict
    default: []
  addresses:
    description: The IPAM facts, device to C(address), C(prefix), C(pool), C(gateway).
    type: dict
    default: {}
  mtu:
    description: Ethernet MTU of the rail netdevs.
    type: int
    default: 9000
  rdma_mtu:
    description: RDMA MTU the rails must carry.
    type: int
    default: 4096
  mode:
    description: Default RoCE mode of rdma_cm.
    type: str
    default: RoCE v2
  tos:
    description: Default ToS of rdma_cm.
    type: int
    default: 106
  qos:
    description: >-
      Lossless QoS, keys C(tool), C(trust), C(pfc_priorities), C(dscp), C(ecn), C(cnp_dscp),
      C(cnp_priority); missing keys take the defaults of the roce role.
    type: dict
    default: {}
  source_routing:
    description: Per-port source routing; C(auto) where rails share a subnet.
    type: str
    choices: [auto, always, never]
    default: auto
  table_base:
    description: Routing table of the first rail; the next rails count up.
    type: int
    default: 100
  rule_priority_base:
    description: Priority of the first rail's source rule; the next rails count up.
    type: int
    default: 1000
  hccn_netdetect:
    description: Netdetect address of the NPU ports; empty takes the pool gateway.
    type: str
    default: ""
  sysctl_file:
    description: The role's sysctl.d file of per-port ARP settings; lines of netdevs no longer rails are reported.
    type: path
    default: /etc/sysctl.d/90-hpc-roce.conf
  backend:
    description: Network backend for the rail addresses.
    type: str
    choices: [auto, networkmanager, netplan]
    default: auto
  plan:
    description: For C(state=apply), the plan that C(state=plan) returned.
    type: dict
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Plan the rails
  roce_fabric:
    rails: [{device: mlx5_0, netdev: ens108np0, pool: a800-rail0}]
    addresses: "{{ lookup('roce_ipam_addresses', inventory_hostname) }}"
    qos: {tool: auto, trust: dscp, pfc_priorities: [3], dscp: 26, ecn: true, cnp_dscp: 48, cnp_priority: 6}
  register: roce_plan

- name: Apply it
  roce_fabric:
    state: apply
    plan: "{{ roce_plan.plan }}"

- name: Install the boot program that re-applies it (hpc-roce.service runs it on the plan)
  roce_fabric:
    state: install
    boot_program: /usr/local/lib/hpc-datapath/roce.py
"""

RETURN = r"""
problems:
  description: What stops the plan on this node; empty when it can be applied.
  returned: state=plan
  type: list
plan:
  description: Rails with address, netmask, network and table; mode, ToS and the resolved QoS.
  returned: state=plan
  type: dict
backend:
  description: The network backend for the rail addresses.
  returned: state=plan
  type: str
network:
  description: The rails with a netdev in the network layer's model (module_utils/hpc_datapath/network.py).
  returned: always
  type: list
  elements: dict
stale_sysctls:
  description: ARP lines of the sysctl file of netdevs no longer source-routed rails ({key, netdev, default}).
  returned: always
  type: list
  elements: dict
stale_addresses:
  description: Per netdev, the IPv4 addresses on a rail that the plan does not name.
  returned: state=plan
  type: dict
nm_installed:
  description: Whether NetworkManager is installed.
  returned: state=plan
  type: bool
nm_running:
  description: Whether NetworkManager runs.
  returned: state=plan
  type: bool
changes:
  description: Settings changed (in check mode, due), each with the command or file it took.
  returned: state=apply
  type: list
status:
  description: Per rail port state, GIDs, the RoCE v2 GID of the address, MTU, rdma_cm defaults, QoS.
  returned: state=apply
  type: dict
boot_program:
  description: The path of the boot program.
  returned: state=install
  type: str
sha256:
  description: SHA-256 of the boot program as installed (in check mode, as it would be).
  returned: state=install
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath import roce as roce_utils
from ansible.module_utils.hpc_datapath.boot_program import install as install_boot_program
from ansible.module_utils.hpc_datapath.iproute import addresses_of, default_route_netdevs
from ansible.module_utils.hpc_datapath.netbackend import detect
from ansible.module_utils.hpc_datapath.network import rail_interfaces, stale_netdev_sysctls
from ansible.module_utils.hpc_datapath.roce import (
    ApplyError,
    Runner,
    apply_plan,
    check_settings,
    plan_rails,
    rail_status,
)
from ansible.module_utils.hpc_datapath.sysfs import link_name

QOS_DEFAULTS = {
    "tool": "auto",
    "trust": "dscp",
    "pfc_priorities": [3],
    "dscp": 26,
    "ecn": True,
    "cnp_dscp": 48,
    "cnp_priority": 6,
}


def resolve_qos_tool(module, wanted, netdevs):
    """The QoS tool for these netdevs, or (None, problem)."""
    if wanted in ("none", "dcb") or not netdevs:
        return wanted, None
    has_mlnx_qos = bool(module.get_bin_path("mlnx_qos"))
    if wanted == "mlnx_qos":
        return (
            ("mlnx_qos", None)
            if has_mlnx_qos
            else (None, "roce_qos_tool: mlnx_qos is asked for, but it is not installed")
        )
    drivers = {link_name(f"/sys/class/net/{n}/device/driver") or "none" for n in netdevs}
    if has_mlnx_qos and drivers == {"mlx5_core"}:
        return "mlnx_qos", None
    if all(module.run_command(["dcb", "pfc", "show", "dev", n])[0] == 0 for n in netdevs):
        return "dcb", None
    return None, (
        f"roce_qos_tool: auto finds neither mlnx_qos for mlx5 ports nor DCB support on {', '.join(sorted(netdevs))} "
        f"(drivers {', '.join(sorted(drivers))}); set roce_qos_tool: none to run these rails without lossless QoS"
    )


# The per-port ARP settings of source-routed rails (roles/roce/vars/main.yml).
ARP_SYSCTLS = ("arp_ignore", "arp_announce", "rp_filter")


def stale_sysctls(path, rails):
    """The ARP lines in the role's sysctl file of netdevs that are no longer source-routed rails."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    kept = {rail["netdev"] for rail in rails if rail["netdev"] and rail["source_routing"]}

    def default_of(name):
        with open(f"/proc/sys/net/ipv4/conf/default/{name}", encoding="utf-8") as handle:
            return int(handle.read())

    return stale_netdev_sysctls(text, kept, ARP_SYSCTLS, default_of)


def plan(module):
    params = module.params
    qos = dict(QOS_DEFAULTS, **(params["qos"] or {}))
    settings = {
        "mtu": params["mtu"],
        "rdma_mtu": params["rdma_mtu"],
        "mode": params["mode"],
        "tos": params["tos"],
        "qos": qos,
    }
    problems = check_settings(settings)
    rails, rail_problems = plan_rails(
        params["rails"],
        params["addresses"],
        netdevs=set(os.listdir("/sys/class/net")),
        default_route_netdevs=default_route_netdevs(module),
        source_routing=params["source_routing"],
        table_base=params["table_base"],
        rule_priority_base=params["rule_priority_base"],
    )
    problems += rail_problems
    netdevs = {rail["netdev"] for rail in rails if rail["netdev"]}
    qos["tool"], qos_problem = resolve_qos_tool(module, qos["tool"], netdevs)
    if qos_problem:
        problems.append(qos_problem)
    if any(rail["npu"] is not None for rail in rails) and not module.get_bin_path("hccn_tool"):
        problems.append("roce_rails: Ascend NPU ports are listed, but hccn_tool is not installed (Ascend driver)")
    backend, backend_problem, nm_installed, nm_running = detect(module, "roce_backend", params["backend"])
    if backend_problem and netdevs:
        problems.append(backend_problem)
    stale = {}
    for rail in rails:
        if rail["netdev"]:
            found = [a for a in addresses_of(module, rail["netdev"], ("-4",)) if a.split("/")[0] != rail["address"]]
            if found:
                stale[rail["netdev"]] = found
    module.exit_json(
        changed=False,
        problems=problems,
        stale_addresses=stale,
        network=rail_interfaces(rails, params["mtu"]),
        stale_sysctls=stale_sysctls(params["sysctl_file"], rails),
        backend=backend,
        nm_installed=nm_installed,
        nm_running=nm_running,
        plan={
            "rails": rails,
            "mtu": params["mtu"],
            "mode": params["mode"],
            "tos": params["tos"],
            "qos": qos,
            "hccn_netdetect": params["hccn_netdetect"] or None,
        },
    )


def install(module):
    """state=install: the boot program is this run's module_utils/hpc_datapath/roce.py."""
    install_boot_program(module, roce_utils, "roce_fabric", module.params["boot_program"])


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["plan", "apply", "install"], "default": "plan"},
            "boot_program": {"type": "path"},
            "rails": {"type": "list", "elements": "dict", "default": []},
            "sysctl_file": {"type": "path", "default": "/etc/sysctl.d/90-hpc-roce.conf"},
            "addresses": {"type": "dict", "default": {}},
            "mtu": {"type": "int", "default": 9000},
            "rdma_mtu": {"type": "int", "default": 4096},
            "mode": {"type": "str", "default": "RoCE v2"},
            "tos": {"type": "int", "default": 106},
            "qos": {"type": "dict", "default": {}},
            "source_routing": {"type": "str", "choices": ["auto", "always", "never"], "default": "auto"},
            "table_base": {"type": "int", "default": 100},
            "rule_priority_base": {"type": "int", "default": 1000},
            "hccn_netdetect": {"type": "str", "default": ""},
            "backend": {"type": "str", "choices": ["auto", "networkmanager", "netplan"], "default": "auto"},
            "plan": {"type": "dict"},
        },
        required_if=[("state", "apply", ["plan"]), ("state", "install", ["boot_program"])],
        supports_check_mode=True,
    )
    if module.params["state"] == "plan":
        plan(module)
    if module.params["state"] == "install":
        install(module)
    runner = Runner(module.run_command, check_mode=module.check_mode)
    try:
        changes = apply_plan(module.params["plan"], runner)
        status = rail_status(module.params["plan"], runner)
    except ApplyError as error:
        module.fail_json(msg=str(error), changes=runner.changes)
    module.exit_json(changed=bool(changes), changes=changes, status=status)


if __name__ == "__main__":
    main()
