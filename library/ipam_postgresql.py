#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The RoCE IPAM ledger in PostgreSQL: the shared store for teams and several controllers."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ipam_postgresql
short_description: List the RoCE IPAM ledger kept in PostgreSQL
description:
  - The RoCE IPAM ledger kept in PostgreSQL (C(roce_ipam_backend=postgresql)) instead of a file. The
    C(roce_ipam_allocate) action allocates against it in one transaction that takes an advisory
    lock and C(LOCK TABLE ... IN EXCLUSIVE MODE), so allocators run one after the other; the tables
    hold C(UNIQUE(pool, ip)) and C(UNIQUE(pool, host, device)), so the database itself refuses an
    address handed out twice.
  - This module lists the store's ledger (C(command=list)), as the file backend's file is read.
    C(tools/ipam_store.py import|export FILE) moves a ledger file into an empty store and back
    (the same text the file backend writes, so that a file moved in and out again is identical).
  - Runs on the controller (C(delegate_to=localhost)). Credentials come from I(dsn) (keep it in
    Ansible Vault) or from libpq's environment (C(PGHOST), C(PGUSER), C(PGPASSWORD), ...); I(dsn) is
    never logged.
options:
  command:
    description: What to do.
    type: str
    choices: [list]
    required: true
  dsn:
    description: A libpq connection string; empty takes everything from the environment.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: List the shared store's ledger
  ipam_postgresql:
    command: list
    dsn: "{{ vault_roce_ipam_postgresql_dsn }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
allocations:
  description: Number of allocations in the store.
  returned: always
  type: int
ledger:
  description: >-
    The store's ledger, C({version: 1, allocations: [...]}), with C(released) while addresses
    are held back.
  returned: always
  type: dict
"""

import importlib.util
import os
import re
import sys

from ansible.module_utils.basic import AnsibleModule

SCHEMA = """
CREATE TABLE IF NOT EXISTS roce_ipam_allocation (
    pool text NOT NULL CHECK (pool <> ''),
    host text NOT NULL CHECK (host <> ''),
    device text NOT NULL CHECK (device <> ''),
    ip text NOT NULL CHECK (ip <> ''),
    UNIQUE (pool, ip),
    UNIQUE (pool, host, device),
    UNIQUE (host, device)
);
CREATE TABLE IF NOT EXISTS roce_ipam_released (
    pool text NOT NULL,
    host text NOT NULL,
    device text NOT NULL,
    ip text NOT NULL,
    released_at text NOT NULL CHECK (released_at ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$'),
    UNIQUE (pool, ip)
);
"""
# Every allocator takes this first (the tables may not exist yet), then locks the tables.
SERIALISE = "SELECT pg_advisory_xact_lock(hashtext('hpc-datapath roce_ipam'))"
LOCK = "LOCK TABLE roce_ipam_allocation, roce_ipam_released IN EXCLUSIVE MODE"
ALLOCATION_FIELDS = ("pool", "host", "device", "ip")
RELEASED_FIELDS = ("pool", "host", "device", "ip", "released_at")


class StoreError(Exception):
    """The store cannot be used; the message says why (never the credentials)."""


def connect(dsn):
    """A connection (psycopg 3), autocommit off: every use is one transaction."""
    try:
        import psycopg  # noqa: PLC0415  (only the PostgreSQL backend needs it)
    except ImportError as error:
        raise StoreError("the PostgreSQL backend needs psycopg 3 (requirements.txt: psycopg[binary])") from error
    try:
        return psycopg.connect(dsn or "", connect_timeout=10, autocommit=True)
    except psycopg.Error as error:
        # The message of a failed connection names host and user, never the password.
        raise StoreError(f"cannot connect to the IPAM database: {str(error).strip()}") from None


def read(connection):
    """The store's ledger as the file backend reads a file: sorted by pool, then address."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pool, host, device, ip FROM roce_ipam_allocation")
        allocations = [dict(zip(ALLOCATION_FIELDS, row, strict=True)) for row in cursor.fetchall()]
        cursor.execute("SELECT pool, host, device, ip, released_at FROM roce_ipam_released")
        released = [dict(zip(RELEASED_FIELDS, row, strict=True)) for row in cursor.fetchall()]
    ledger = {"version": 1, "allocations": sorted(allocations, key=_by_pool_and_address)}
    if released:
        ledger["released"] = sorted(released, key=_released_order)
    return ledger


def _natural(text):
    """'node2' before 'node10', as the filter's natural_key orders them."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)), text


def _released_order(entry):
    """The filter's order of released entries (roce_ipam_assign), so that an export is the file's text."""
    return entry["pool"], entry["released_at"], _natural(entry["host"]), _natural(entry["device"])


def _by_pool_and_address(entry):
    import ipaddress  # noqa: PLC0415

    return entry["pool"], ipaddress.ip_address(entry["ip"]).version, int(ipaddress.ip_address(entry["ip"]))


def write_difference(connection, base, ledger):
    """Delete what base holds and ledger does not, insert the reverse, in the open transaction."""
    changes = {}
    for key, fields, table in (
        ("allocations", ALLOCATION_FIELDS, "roce_ipam_allocation"),
        ("released", RELEASED_FIELDS, "roce_ipam_released"),
    ):
        old = {tuple(entry[f] for f in fields) for entry in (base or {}).get(key, ())}
        new = {tuple(entry[f] for f in fields) for entry in ledger.get(key, ())}
        gone, added = sorted(old - new), sorted(new - old)
        condition = " AND ".join(f"{field} = %s" for field in fields)
        with connection.cursor() as cursor:
            if gone:
                cursor.executemany(f"DELETE FROM {table} WHERE {condition}", gone)  # noqa: S608 (names are ours)
            if added:
                columns = ", ".join(fields)
                places = ", ".join(["%s"] * len(fields))
                cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({places})", added)  # noqa: S608
        changes[key] = (added, gone)
    return changes


def allocate(dsn, compute, write=True, lock=True):
    """One transaction: lock, read, compute(base) -> new ledger (or None), write the difference.

    compute runs the pure filter. write=False (check mode, verify mode) writes nothing: the
    transaction is rolled back. Returns (base, new ledger, changes).
    """
    import psycopg  # noqa: PLC0415

    connection = connect(dsn)
    try:
        with connection.transaction() as transaction:
            if lock:
                connection.execute(SERIALISE)
            connection.execute(SCHEMA)
            if lock:
                connection.execute(LOCK)
            base = read(connection)
            ledger = compute(base)
            changes = write_difference(connection, base, ledger) if write else {}
            if not write:
                raise psycopg.Rollback(transaction)
        return base, ledger, changes
    except psycopg.Error as error:
        raise StoreError(f"the IPAM database refused the change, nothing was written: {str(error).strip()}") from None
    finally:
        connection.close()


def _ledger_file_module():
    """library/ipam_ledger.py, to write a ledger file exactly as the file backend does."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ipam_ledger.py")
    spec = importlib.util.spec_from_file_location("hpc_datapath_ipam_ledger", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _filters():
    """filter_plugins/roce_ipam.py, to read a ledger file exactly as the file backend does."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "filter_plugins", "roce_ipam.py")
    spec = importlib.util.spec_from_file_location("hpc_datapath_roce_ipam", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def import_file(dsn, path):
    """Move a ledger file into an empty store; anything already there is refused."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    ledger = _filters().roce_ipam_ledger(text)

    def into_empty(base):
        if base["allocations"] or base.get("released"):
            raise StoreError(f"the IPAM database already holds {len(base['allocations'])} allocations; import refused")
        return ledger

    _, _, _ = allocate(dsn, into_empty)
    return len(ledger["allocations"])


def export_file(dsn, path):
    """Write the store's ledger to a file, as the file backend writes one."""
    _, ledger, _ = allocate(dsn, lambda base: base, write=False, lock=False)
    files = _ledger_file_module()
    try:
        with open(path, encoding="utf-8") as handle:
            before = handle.read()
    except FileNotFoundError:
        before = None
    base = None if before is None else _filters().roce_ipam_ledger(before)
    files.update_ledger(path, dict(ledger), base, base_text=before)
    return len(ledger["allocations"])


def main():
    module = AnsibleModule(
        argument_spec={
            "command": {"type": "str", "choices": ["list"], "required": True},
            "dsn": {"type": "str", "default": "", "no_log": True},
        },
        supports_check_mode=True,
    )
    try:
        _, ledger, _ = allocate(module.params["dsn"], lambda base: base, write=False, lock=False)
    except StoreError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=False, allocations=len(ledger["allocations"]), ledger=ledger)


if __name__ == "__main__":
    main()
