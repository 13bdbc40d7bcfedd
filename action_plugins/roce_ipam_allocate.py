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

from ansible.errors import AnsibleActionFail, AnsibleFilterError
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import filter_loader, module_loader

# Where the result is published: the controller's own inventory entry, through delegate_facts.
# lookup_plugins/roce_ipam_addresses.py reads it there.
ADDRESSES_FACT = "__roce_ipam_addresses_by_host"
CHANGE_FACT = "__roce_ipam_change"

ARGUMENT_SPEC = {
    "pools": {"type": "list", "elements": "dict", "required": True},
    "ledger_path": {"type": "path", "required": True},
    "hosts": {"type": "list", "elements": "str", "required": True},
    "rails_variable": {"type": "str", "default": "roce_rails"},
    "aligned": {"type": "bool", "default": False},
    "release": {"type": "list", "elements": "dict", "default": []},
}


def _filter(name):
    """A filter of the project's filter_plugins, as the Python function it is."""
    plugin = filter_loader.get(name)
    if plugin is None:
        raise AnsibleActionFail(f"roce_ipam_allocate needs the filter {name} (filter_plugins/roce_ipam.py)")
    return plugin.j2_function


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
        if not args["pools"]:  # IPAM is not used here: every host reads no addresses
            result.update(changed=False, allocations=0, ansible_facts=published({}))
            return result

        try:
            requests = _filter("roce_ipam_requests")(task_vars["hostvars"], args["hosts"], args["rails_variable"])
            text = read_ledger_text(args["ledger_path"])
            base = None if text is None else _filter("roce_ipam_ledger")(text)
            allocated = _filter("roce_ipam_assign")(
                base, args["pools"], requests, release=args["release"], aligned=args["aligned"]
            )
        except AnsibleFilterError as error:
            raise AnsibleActionFail(str(error)) from error

        ledger_file = _module_python("ipam_ledger")
        try:
            written = ledger_file.update_ledger(
                args["ledger_path"], allocated["ledger"], base, bool(self._task.check_mode), bool(self._task.diff)
            )
        except ledger_file.LedgerError as error:
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
