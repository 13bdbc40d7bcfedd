# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roce_ipam_allocate: the whole IPAM run for the inventory, as one task on the controller.

Documented in library/roce_ipam_allocate.py. The work is the project's own pieces, called as
Python in this process: the filters roce_ipam_requests, roce_ipam_ledger and roce_ipam_assign,
and update_ledger of the ipam_ledger module (locked, checked against the file as read, atomic).
Done as template expressions, task arguments and a module run, the same work makes Ansible
template, copy, validate, log and serialise 80,000 allocations several times over (10,000 hosts
with 8 rails: about a minute); here they never become Ansible variables or arguments.
"""

from __future__ import annotations

import importlib.util
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from ansible.errors import AnsibleActionFail, AnsibleFilterError
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import filter_loader, module_loader

# Where the result is published: the controller's own inventory entry, through delegate_facts.
# lookup_plugins/roce_ipam_addresses.py reads it there.
ADDRESSES_FACT = "__roce_ipam_addresses_by_host"
CHANGE_FACT = "__roce_ipam_change"

ARGUMENT_SPEC = {
    "pools": {"type": "list", "elements": "dict", "required": True},
    "ledger_path": {"type": "str", "required": True},
    "ledger_init": {"type": "bool", "default": False},
    "mode": {"type": "str", "choices": ["allocate", "verify"], "default": "allocate"},
    "hosts": {"type": "list", "elements": "str", "required": True},
    "rails_variable": {"type": "str", "default": "roce_rails"},
    "aligned": {"type": "bool", "default": False},
    # A list of {host[, device]} or 'host[/device]', or one string of names (an AWX survey).
    "release": {"type": "raw", "default": []},
    "release_hold": {"type": "int", "default": 0},
    "job_slice_count": {"type": "int", "default": 1},
    "backend": {"type": "str", "choices": ["file", "postgresql"], "default": "file"},
}
# The PostgreSQL credentials are read from this variable (Vault) or libpq's environment, never
# passed as an argument, so that no task argument, result or log line holds them.
DSN_VARIABLE = "roce_ipam_postgresql_dsn"

# A relative ledger path names a file of the project (the directory holding ansible.cfg,
# playbooks/ and inventories/, this plugin's parent), never one under the inventory's directory
# or the current one: under AWX the inventory is a copy elsewhere.
PROJECT = Path(__file__).resolve().parents[1]


def ledger_file(path):
    """The ledger's path as configured, made absolute against the project; '' is refused."""
    if not path:
        raise AnsibleActionFail(
            "roce_ipam_ledger_path is not set: the inventory names its ledger "
            "(inventories/<env>/ipam/roce-ledger.yml, relative to the project; roles/roce_ipam/README.md)"
        )
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else str(PROJECT / path)


def _filter(name):
    """A filter of the project's filter_plugins, as the Python function it is."""
    plugin = filter_loader.get(name)
    if plugin is None:
        raise AnsibleActionFail(f"roce_ipam_allocate needs the filter {name} (filter_plugins/roce_ipam.py)")
    return plugin.j2_function


def _assigner(args, task_vars):
    """roce_ipam_assign bound to this run's requests, options and clock: the same for both backends."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    requests = _filter("roce_ipam_requests")(task_vars["hostvars"], args["hosts"], args["rails_variable"])
    options = {"release": args["release"], "aligned": args["aligned"], "hold_days": args["release_hold"], "now": now}
    return lambda base: _filter("roce_ipam_assign")(base, args["pools"], requests, **options)


def _module_python(name):
    """A module of the project's library, imported as Python (as its unit tests do)."""
    path = module_loader.find_plugin(name)
    if path is None:
        raise AnsibleActionFail(f"roce_ipam_allocate needs the module {name} (library/{name}.py)")
    spec = importlib.util.spec_from_file_location(f"hpc_datapath_library_{name}", path)
    python = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(python)
    return python


def read_ledger_text(path):
    """The ledger file's text, or None when there is no file; anything else unreadable fails."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise AnsibleActionFail(f"cannot read the ledger {path}: {error.strerror}") from error
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AnsibleActionFail(
            f"the ledger {path} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from error


# Change lines the task's output lists; a first run on 10,000 hosts takes 80,000 addresses.
CHANGE_LINES_SHOWN = 100


def published(allocations, added=(), removed=()):
    """The facts for the controller entry: each host's addresses as one JSON text, and the change.

    One text per host keeps what Ansible copies and serialises at one string a host (10,000),
    not one value per address field (320,000); the lookup decodes only the host it is asked for.
    The change lists at most CHANGE_LINES_SHOWN lines each of what was taken and freed.
    """
    by_host = {
        host: json.dumps(devices, sort_keys=True, separators=(",", ":")) for host, devices in allocations.items()
    }
    return {ADDRESSES_FACT: by_host, CHANGE_FACT: {"taken": _shown(added), "freed": _shown(removed)}}


def _shown(lines):
    if len(lines) <= CHANGE_LINES_SHOWN:
        return list(lines)
    more = len(lines) - CHANGE_LINES_SHOWN
    return [*lines[:CHANGE_LINES_SHOWN], f"... and {more} more (the task's result and the ledger's diff list them all)"]


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        if args["job_slice_count"] > 1:
            raise AnsibleActionFail(
                f"the IPAM play refuses a sliced job (awx_job_slice_count={args['job_slice_count']}): each slice "
                "sees part of the inventory, and an allocation from a part moves addresses. Set the job "
                "template's job slicing to 1 (docs/awx.md)"
            )
        if not args["pools"]:  # IPAM is not used here: every host reads no addresses
            result.update(changed=False, allocations=0, ansible_facts=published({}))
            return result

        verify = args["mode"] == "verify"
        if args["backend"] == "postgresql":
            return self._postgresql(result, args, task_vars, verify)
        path = ledger_file(args["ledger_path"])
        try:
            assign = _assigner(args, task_vars)
            text = read_ledger_text(path)
            if text is None and (verify or not args["ledger_init"]):
                raise AnsibleActionFail(missing_ledger(path, verify))
            base = None if text is None else read_ledger(path, text)
            allocated = assign(base)
        except AnsibleFilterError as error:
            raise AnsibleActionFail(str(error)) from error

        ledger_file_module = _module_python("ipam_ledger")
        if verify:
            return self._verify(result, path, base, allocated, ledger_file_module)
        try:
            written = ledger_file_module.update_ledger(
                path,
                allocated["ledger"],
                base,
                bool(self._task.check_mode),
                bool(self._task.diff),
                base_text=text,
                changes=(allocated["taken"], allocated["freed"]),
            )
        except ledger_file_module.LedgerError as error:
            raise AnsibleActionFail(str(error)) from error
        result.update(
            changed=written["changed"],
            path=written["path"],
            allocations=written["allocations"],
            added=written["added"],
            removed=written["removed"],
            ansible_facts=published(allocated["allocations"], written["added"], written["removed"]),
        )
        if "diff" in written:
            result["diff"] = written["diff"]
        return result

    def _postgresql(self, result, args, task_vars, verify):
        """The same allocation against the shared store: one transaction, allocators serialised."""
        store = _module_python("ipam_postgresql")
        dsn = self._templar.template(task_vars.get(DSN_VARIABLE, "")) or ""
        assign = _assigner(args, task_vars)
        outcome = {}

        def compute(base):
            if not base["allocations"] and not base.get("released") and (verify or not args["ledger_init"]):
                raise store.StoreError(
                    "the IPAM database holds no allocation, and pools are defined: stopping rather than starting "
                    "from an empty ledger. Import the ledger (ansible-doc ipam_postgresql), or for the very first "
                    "run pass -e roce_ipam_ledger_init=true"
                )
            outcome["allocated"] = assign(base)
            return outcome["allocated"]["ledger"]

        write = not verify and not self._task.check_mode
        try:
            base, _, _ = store.allocate(dsn, compute, write=write, lock=not verify)
        except AnsibleFilterError as error:
            raise AnsibleActionFail(str(error)) from error
        except store.StoreError as error:
            raise AnsibleActionFail(str(error)) from None
        allocated = outcome["allocated"]
        where = "the IPAM database"
        if verify:
            return self._verify(result, where, base, allocated, None)
        result.update(
            changed=allocated["changed"],
            path=where,
            allocations=len(allocated["ledger"]["allocations"]),
            added=allocated["taken"],
            removed=allocated["freed"],
            ansible_facts=published(allocated["allocations"], allocated["taken"], allocated["freed"]),
        )
        return result

    def _verify(self, result, path, base, allocated, ledger_file_module):
        """Verify mode: nothing is written; any address the run would take or free fails it."""
        added, removed = sorted(allocated["taken"]), sorted(allocated["freed"])
        if added or removed:
            lines = [f"take {line}" for line in _shown(added)] + [f"free {line}" for line in _shown(removed)]
            raise AnsibleActionFail(
                f"verify mode: the ledger {path} is not up to date: allocation would take {len(added)} and free "
                f"{len(removed)} address(es). Allocate where the ledger is written (roce_ipam_mode: allocate), "
                "commit it, and run again. Would change:\n" + "\n".join(lines),
                result={"added": added, "removed": removed},
            )
        result.update(
            changed=False,
            path=path,
            allocations=len(allocated["ledger"]["allocations"]),
            added=[],
            removed=[],
            ansible_facts=published(allocated["allocations"]),
        )
        return result


def missing_ledger(path, verify):
    if verify:
        return (
            f"verify mode: the ledger {path} does not exist; nothing to verify against (it is written and "
            "committed where allocation runs)"
        )
    return (
        f"the ledger {path} does not exist, and pools are defined: stopping rather than starting from an empty "
        "ledger, which would hand out addresses live hosts hold. Check roce_ipam_ledger_path; for the very first "
        "run of a new inventory, pass -e roce_ipam_ledger_init=true"
    )


def read_ledger(path, text):
    """The ledger's data, checked to the letter; anything else fails naming the file and what is wrong."""
    try:
        return _filter("roce_ipam_ledger")(text)
    except AnsibleFilterError as error:
        reason = getattr(error, "reason", None) or str(error)
        raise AnsibleActionFail(
            f"the ledger {path} {reason}. Stopping: a ledger that cannot be read exactly is never taken as empty, "
            "and nothing was written. Restore it (git) and rerun"
        ) from error
