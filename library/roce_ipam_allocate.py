#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the roce_ipam_allocate action (action_plugins/roce_ipam_allocate.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: roce_ipam_allocate
short_description: Allocate every RoCE port of the inventory an address, write the ledger, keep the result once
description:
  - An action that runs on the controller, once for the whole inventory (C(run_once), C(delegate_to=localhost),
    C(delegate_facts=true)); the task of the C(roce_ipam) role.
  - Reads the rails of every host in I(hosts) (C(roce_ipam_requests); a variable that no host sets for itself is
    read once per set of groups), reads the ledger (C(roce_ipam_ledger)), allocates (C(roce_ipam_assign)) and
    writes the ledger with C(ipam_ledger) (locked, refused when the file changed since it was read, atomic).
  - Keeps the result once, as facts of the controller's entry, C(localhost); the C(roce_ipam_addresses)
    lookup reads one host's addresses from there.
  - With I(pools) empty it reads and writes nothing, and every host has no addresses.
  - In check mode nothing is written; the result is what the run would allocate. With C(--diff) the ledger's change
    is shown.
options:
  pools:
    description: The IPAM pools, as C(roce_ipam_assign) takes them.
    type: list
    elements: dict
    required: true
  ledger_path:
    description: The ledger file on the controller.
    type: path
    required: true
  hosts:
    description: Every host to allocate for, C(groups['all']), so that C(--limit) changes nothing.
    type: list
    elements: str
    required: true
  rails_variable:
    description: The host variable that lists a host's rails, each C({device, netdev, pool}).
    type: str
    default: roce_rails
  aligned:
    description: Give a host the same offset from the network address on every pool it uses.
    type: bool
    default: false
  release:
    description: Keys whose addresses are freed, each C({host}) or C({host, device}).
    type: list
    elements: dict
    default: []
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Allocate every RoCE port of the inventory, once, on the controller
  roce_ipam_allocate:
    pools: "{{ roce_ipam_pools }}"
    ledger_path: "{{ inventory_dir }}/ipam/roce-ledger.yml"
    hosts: "{{ groups['all'] }}"
  run_once: true
  delegate_to: localhost
  delegate_facts: true
"""

RETURN = r"""
path:
  description: The ledger file.
  returned: when pools are given
  type: str
allocations:
  description: Number of allocations in the ledger.
  returned: always
  type: int
added:
  description: Allocations the ledger did not hold, as C(pool host device ip) lines.
  returned: when pools are given
  type: list
  elements: str
removed:
  description: Allocations freed, as C(pool host device ip) lines.
  returned: when pools are given
  type: list
  elements: str
"""
