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

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
import types
from datetime import UTC, datetime
from pathlib import Path

from ansible.errors import AnsibleActionFail, AnsibleFilterError
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import filter_loader, module_loader
from ansible.utils.display import Display

display = Display()

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


def _requests(args, task_vars):
    return _filter("roce_ipam_requests")(task_vars["hostvars"], args["hosts"], args["rails_variable"])


def _options(args):
    """roce_ipam_assign's options for this run, its clock included."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"release": args["release"], "aligned": args["aligned"], "hold_days": args["release_hold"], "now": now}


def _assigner(args, task_vars):
    """roce_ipam_assign bound to this run's requests, options and clock: the same for both backends."""
    requests, options = _requests(args, task_vars), _options(args)
    return lambda base: _filter("roce_ipam_assign")(base, args["pools"], requests, **options)


def _ipam():
    """The filter file's functions the file backend calls (roce_ipam_ledger, roce_ipam_assign, and
    for the cache ledger_state and roce_ipam_assign_added), as the loader loaded them."""
    functions = _filter("roce_ipam_assign").__globals__
    return types.SimpleNamespace(**{name: functions[name] for name in IPAM_FUNCTIONS})


IPAM_FUNCTIONS = ("roce_ipam_ledger", "roce_ipam_assign", "roce_ipam_assign_added", "ledger_state")


def _module_python(name):
    """A module of the project's library, imported as Python (as its unit tests do)."""
    path = module_loader.find_plugin(name)
    if path is None:
        raise AnsibleActionFail(f"roce_ipam_allocate needs the module {name} (library/{name}.py)")
    spec = importlib.util.spec_from_file_location(f"hpc_datapath_library_{name}", path)
    python = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(python)
    return python


def read_ledger_bytes(path):
    """The ledger file's bytes, or None when there is no file; anything else unreadable fails."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise AnsibleActionFail(f"cannot read the ledger {path}: {error.strerror}") from error


def ledger_text(path, data):
    """The ledger file's bytes as text: UTF-8, or the run fails."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AnsibleActionFail(
            f"the ledger {path} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from error


def read_ledger_text(path):
    """The ledger file's text, or None when there is no file; anything else unreadable fails."""
    data = read_ledger_bytes(path)
    return None if data is None else ledger_text(path, data)


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
        ledger_file_module = _module_python("ipam_ledger")
        try:
            allocated, written = allocate_file(
                path,
                args["pools"],
                _requests(args, task_vars),
                _options(args),
                ipam=_ipam(),
                ledger_module=ledger_file_module,
                init=args["ledger_init"],
                verify=verify,
                check_mode=bool(self._task.check_mode),
                diff=bool(self._task.diff),
                cache=cache_directory(),
            )
        except AnsibleFilterError as error:
            raise AnsibleActionFail(str(error)) from error
        if "entries" in allocated:
            display.vv(f"roce_ipam_allocate: {path} as checked before (cache): only new keys were allocated")
        else:
            display.vv(f"roce_ipam_allocate: {path} checked in full")
        if verify:
            return self._verify(result, path, allocated)
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
            store.allocate(dsn, compute, write=write, lock=not verify)
        except AnsibleFilterError as error:
            raise AnsibleActionFail(str(error)) from error
        except store.StoreError as error:
            raise AnsibleActionFail(str(error)) from None
        allocated = outcome["allocated"]
        where = "the IPAM database"
        if verify:
            return self._verify(result, where, allocated)
        result.update(
            changed=allocated["changed"],
            path=where,
            allocations=len(allocated["ledger"]["allocations"]),
            added=allocated["taken"],
            removed=allocated["freed"],
            ansible_facts=published(allocated["allocations"], allocated["taken"], allocated["freed"]),
        )
        return result

    def _verify(self, result, path, allocated):
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


def read_ledger(path, text, reader=None):
    """The ledger's data, checked to the letter; anything else fails naming the file and what is wrong."""
    try:
        return (reader or _filter("roce_ipam_ledger"))(text)
    except AnsibleFilterError as error:
        reason = getattr(error, "reason", None) or str(error)
        raise AnsibleActionFail(
            f"the ledger {path} {reason}. Stopping: a ledger that cannot be read exactly is never taken as empty, "
            "and nothing was written. Restore it (git) and rerun"
        ) from error


# --- the file backend, and the cache of the ledger it checked ---------------------------------------
#
# Reading and checking a ledger of 80,000 allocations, then handing roce_ipam_assign and the
# writer 80,000 entries in and out, is most of a run that adds one host. After each run that
# writes (or finds unchanged) the ledger, the action keeps a picture of the ledger as written
# (roce_ipam.ledger_state) under a key: sha256 over the file's bytes, the settings its checks
# depend on (pools, reservations among them, the hold, aligned) and the code (this file, the
# filter file, the ipam_ledger module). A later run whose key is the same byte for byte, that
# only adds keys (roce_ipam_assign_added), splices their lines into the text (ipam_ledger.spliced:
# the bytes render would write) and writes it the same way. Anything else, and any trouble with
# the cache (absent, unreadable, corrupt, another key, a directory it cannot write), is the full
# path as before: the cache can make a run faster, never change its result.

CACHE_FORMAT = "hpc-datapath roce_ipam_allocate cache 1"


def cache_directory(environ=None):
    """$XDG_CACHE_HOME/hpc-datapath/ipam, or ~/.cache/hpc-datapath/ipam; None without a home."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpc-datapath", "ipam") if os.path.isabs(base) else None


def cache_file(path, directory):
    """The cache file of a ledger: named by the sha256 of the ledger's real path."""
    real = os.path.realpath(path).encode("utf-8", "surrogateescape")
    return os.path.join(directory, hashlib.sha256(real).hexdigest() + ".json")


def cache_key(data, pools, options, sources):
    """sha256 over the ledger's bytes, the settings its checks and allocation depend on, and the
    code's sources; None when the settings cannot be written as JSON."""
    try:
        settings = json.dumps(
            {"pools": pools, "release_hold": options["hold_days"], "aligned": options["aligned"]},
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )
        code = hashlib.sha256()
        for source in sources:
            code.update(hashlib.sha256(Path(source).read_bytes()).digest())
    except (TypeError, ValueError, OSError):
        return None
    digest = hashlib.sha256(f"{CACHE_FORMAT}\0{code.hexdigest()}\0{settings}\0".encode())
    digest.update(data)
    return digest.hexdigest()


def load_state(file, key):
    """The picture kept under exactly this key, or None: no file, another key, a body that is not
    what was written (its sha256 is in the first line), anything unreadable."""
    if key is None:
        return None
    try:
        with open(file, "rb") as handle:
            head = handle.readline(512)
            if head[:-1].split(b" ")[-2:-1] != [key.encode()]:
                return None
            body = handle.read()
        if head != f"{CACHE_FORMAT} {key} {hashlib.sha256(body).hexdigest()}\n".encode():
            return None
        state = json.loads(body)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def save_state(file, key, state):
    """Keep the picture under the key (a temporary file renamed); False when it could not be kept."""
    if key is None or state is None:
        return False
    temporary = None
    try:
        body = json.dumps(state, separators=(",", ":")).encode()
        directory = os.path.dirname(file)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".ipam-cache.", dir=directory)
        with os.fdopen(handle, "wb") as out:
            out.write(f"{CACHE_FORMAT} {key} {hashlib.sha256(body).hexdigest()}\n".encode())
            out.write(body)
        os.replace(temporary, file)
    except (OSError, TypeError, ValueError):
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        return False
    return True


def allocate_file(path, pools, requests, options, *, ipam, ledger_module, cache=None, **mode):
    """The file backend's run: (what roce_ipam_assign returned, what the ledger writer returned;
    None in verify mode). mode: init, verify, check_mode, diff (all False unless given); cache:
    the cache directory, None for none."""
    init, verify, check_mode, diff = (bool(mode.get(name)) for name in ("init", "verify", "check_mode", "diff"))
    data = read_ledger_bytes(path)
    if data is None and (verify or not init):
        raise AnsibleActionFail(missing_ledger(path, verify))
    text = None if data is None else ledger_text(path, data)
    sources = (__file__, ipam.roce_ipam_assign.__code__.co_filename, ledger_module.__file__)
    kept = cache_file(path, cache) if cache is not None else None
    state = None  # the picture kept for exactly this text and these settings
    if kept and text is not None and not (init or verify or check_mode) and options.get("release") in (None, "", []):
        state = load_state(kept, cache_key(data, pools, options, sources))
        added = state and ipam.roce_ipam_assign_added(state, pools, requests, options["aligned"])
        after = added and ledger_module.spliced(text, added["entries"], state["allocations"])
        if after:
            try:
                written = ledger_module.update_ledger_text(
                    path,
                    after,
                    base_text=text,
                    allocations=added["state"]["allocations"],
                    changes=(added["taken"], added["freed"]),
                    diff=diff,
                )
            except ledger_module.LedgerError as error:
                raise AnsibleActionFail(str(error)) from error
            if after != text:  # else the cache holds this picture already
                save_state(kept, cache_key(after.encode(), pools, options, sources), added["state"])
            return added, written

    base = None if text is None else read_ledger(path, text, ipam.roce_ipam_ledger)
    try:
        allocated = ipam.roce_ipam_assign(base, pools, requests, **options)
    except AnsibleFilterError as error:
        raise AnsibleActionFail(str(error)) from error
    if verify:
        return allocated, None
    try:
        written = ledger_module.update_ledger(
            path,
            allocated["ledger"],
            base,
            check_mode,
            diff,
            base_text=text,
            changes=(allocated["taken"], allocated["freed"]),
            keep_text=True,
        )
    except ledger_module.LedgerError as error:
        raise AnsibleActionFail(str(error)) from error
    after = written.pop("text")
    if kept and not check_mode and not (state and after == text):  # (the picture of this text is kept already)
        save_state(kept, cache_key(after.encode(), pools, options, sources), _picture(ipam, allocated["ledger"], pools))
    return allocated, written


def _picture(ipam, ledger, pools):
    """ledger_state, or None: the cache never fails a run."""
    try:
        return ipam.ledger_state(ledger, pools)
    except (AnsibleFilterError, LookupError, TypeError, ValueError, AttributeError):
        return None
