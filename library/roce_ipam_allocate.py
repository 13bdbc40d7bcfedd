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
  - File ledger, hosts added and nothing else. When the ledger's exact bytes, the pools and the code match what an
    earlier run checked in full (a cache under C($XDG_CACHE_HOME/hpc-datapath/ipam/), keyed by sha256), only the new
    ports are allocated and their lines spliced in, the same bytes the full path writes. Anything else, or a cache
    that is absent, unreadable or of another key, takes the full path; the cache never changes a result and is safe
    to delete (roles/roce_ipam/README.md).
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
    description: >-
      The ledger file on the controller; a relative path is relative to the project (the directory
      of C(ansible.cfg) and C(action_plugins/)), never to the inventory or the current directory.
      A symbolic link is followed: the file it names is locked and replaced, keeping its mode.
      An existing ledger that is not exactly what the IPAM writes stops the run (C(roce_ipam_ledger)).
    type: str
    required: true
  ledger_init:
    description: Start a new ledger when the file does not exist; without it a missing ledger stops the run.
    type: bool
    default: false
  mode:
    description: >-
      C(allocate) writes the ledger; C(verify) writes nothing and fails, listing every address it
      would take or free, when allocation would change any; otherwise it publishes the addresses.
    type: str
    choices: [allocate, verify]
    default: allocate
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
    description: >-
      What to free: a list of C({host}), C({host, device}), C(host) or C(host/device), or one
      string of names separated by commas, spaces or new lines (an AWX survey's answer).
    type: raw
    default: []
  release_hold:
    description: Days a released address is held back from anyone else (listed under C(released)).
    type: int
    default: 0
  backend:
    description: >-
      C(file) (I(ledger_path)) or C(postgresql), the shared store of C(ipam_postgresql): one
      transaction that locks the tables (allocators run one after the other), reads the rows, runs
      the filter and writes the difference; check mode and verify mode write nothing. The
      connection string is read from the variable C(roce_ipam_postgresql_dsn) (Vault) or libpq's
      environment, never passed as an argument.
    type: str
    choices: [file, postgresql]
    default: file
  job_slice_count:
    description: C(awx_job_slice_count); above 1 the run is refused, since a slice sees part of the inventory.
    type: int
    default: 1
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
    ledger_path: inventories/prod/ipam/roce-ledger.yml
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
