# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roce_ipam_addresses: a host's RoCE addresses, from the IPAM allocation of this run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: roce_ipam_addresses
short_description: The RoCE addresses of a host, as the IPAM run of this playbook run allocated them
description:
  - "The one way to read RoCE addresses (the C(roce) role, and any role that needs a port's
    address). Returns C({device: {address, prefix, pool, gateway}}) for the host named, C({}) for a
    host without rails."
  - The C(roce_ipam) role (C(playbooks/ipam.yml)) allocates the whole inventory once, on the
    controller, and keeps the result once, on the controller's inventory entry (C(localhost));
    this lookup reads the one host asked for from there. Its cost does not grow with the fleet.
  - Reads the allocation of the current C(ansible-playbook) run, so in C(--check) mode it returns
    what the run would allocate, and C(--limit) changes nothing about it. It fails, naming what
    to do, when no IPAM run happened earlier in this C(ansible-playbook) run, and for a name that
    is not an inventory host.
  - Call it in a task, not in a variable read through C(hostvars[...]); Ansible templates those
    without C(hostvars), where the allocation is kept.
options:
  _terms:
    description: Inventory host names, usually C(inventory_hostname).
    type: list
    elements: str
    required: true
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Plan the rails with this host's addresses
  roce_fabric:
    rails: "{{ roce_rails }}"
    addresses: "{{ lookup('roce_ipam_addresses', inventory_hostname) }}"

- name: The address of node2's first rail, from any host
  ansible.builtin.debug:
    msg: "{{ lookup('roce_ipam_addresses', 'node2').mlx5_0.address }}"
"""

RETURN = r"""
_raw:
  description: "One C({device: {address, prefix, pool, gateway}}) per host named."
  type: list
  elements: dict
"""

import json

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

# Written by action_plugins/roce_ipam_allocate.py through delegate_to/delegate_facts.
CONTROLLER = "localhost"
ADDRESSES_FACT = "__roce_ipam_addresses_by_host"


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        hostvars = (variables or {}).get("hostvars")
        if hostvars is None:
            raise AnsibleLookupError(
                "roce_ipam_addresses reads the allocation through hostvars, which Ansible does not give to a "
                "variable read as hostvars[host].<variable>: call lookup('roce_ipam_addresses', host) in the task"
            )
        # raw_get: the controller's variables as stored, without templating them. Through
        # hostvars['localhost'] Ansible would wrap the whole allocation (every host) on each read.
        controller = hostvars.raw_get(CONTROLLER)
        by_host = controller.get(ADDRESSES_FACT) if hasattr(controller, "get") else None
        if by_host is None:
            raise AnsibleLookupError(
                "no RoCE addresses were allocated in this run: the roce_ipam role (playbooks/ipam.yml) must run "
                "earlier in the same ansible-playbook run"
            )
        addresses = []
        for host in terms:
            if not isinstance(host, str) or host not in hostvars:
                raise AnsibleLookupError(f"roce_ipam_addresses: {host!r} is not a host of the inventory")
            addresses.append(json.loads(by_host[host]) if host in by_host else {})
        return addresses
