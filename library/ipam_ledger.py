#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the RoCE IPAM ledger on the controller, atomically and without losing a concurrent update."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ipam_ledger
short_description: Write the RoCE IPAM ledger file atomically, refusing to overwrite a newer one
description:
  - Writes the ledger computed by the C(roce_ipam_assign) filter to a YAML file on the machine it
    runs on, the controller, through C(delegate_to=localhost).
  - Holds an exclusive C(flock) on the ledger's directory, checks that the file still holds the
    ledger the allocation was computed from (I(base)), writes a temporary file, flushes it to disk
    and renames it over the ledger. Two runs at once therefore never lose an allocation; the later
    one fails and is rerun against the new ledger.
  - One allocation per line, sorted as the filter sorts them, so that a change reads well in git.
  - In check mode nothing is written; with C(--diff) the change is shown.
options:
  path:
    description: The ledger file.
    type: path
    required: true
  ledger:
    description: "The new ledger, C({version: 1, allocations: [...]})."
    type: dict
    required: true
  base:
    description: >-
      The ledger as read before the allocation was computed; C(null) when there was no file.
      The write is refused when the file no longer holds it.
    type: dict
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Write the ledger
  ipam_ledger:
    path: "{{ playbook_dir }}/../inventories/prod/ipam/roce-ledger.yml"
    base: "{{ __ledger_as_read }}"
    ledger: "{{ __ipam.ledger }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
path:
  description: The ledger file.
  returned: always
  type: str
allocations:
  description: Number of allocations in the ledger written.
  returned: always
  type: int
added:
  description: Allocations in the new ledger that the file did not hold, as C(pool host device ip) lines.
  returned: always
  type: list
  elements: str
removed:
  description: Allocations the file held that the new ledger frees, as C(pool host device ip) lines.
  returned: always
  type: list
  elements: str
"""

import contextlib
import fcntl
import gc
import os
import re
import stat
import tempfile
from functools import wraps
from operator import itemgetter

import yaml
from ansible.module_utils.basic import AnsibleModule

HEADER = (
    "---\n# RoCE IPAM ledger: every address handed out, one line each. Written by playbooks/ipam.yml\n"
    "# (roce_ipam_assign + ipam_ledger); addresses here never move. Free one only through\n"
    "# roce_ipam_release, never by editing this file. Released addresses are listed under\n"
    "# released: while they are held back from anyone else (roce_ipam_release_hold).\n"
    "# Its last line counts the entries: without it, or with other counts, the file was cut short.\n"
)
# The line of HEADER by which a reader knows that the file must end with end_line() (the filter
# roce_ipam_ledger checks it; its copy of the text is END_MARK there).
END_MARK = "# Its last line counts the entries"


def end_line(allocations, released):
    """The last line of the file: how many entries it holds, so that a file cut short is refused."""
    return f"# end of ledger: {allocations} allocations, {released} released\n"


class LedgerConflict(Exception):
    """The file changed between reading it and writing the new ledger."""


FIELDS = ("pool", "host", "device", "ip")
RELEASED_FIELDS = (*FIELDS, "released_at")
# A string YAML writes bare in a flow mapping when its resolver reads it back as a string (checked
# below): no quote, space, colon, comma, bracket or '#', and not starting with '-' or '.'.
_BARE = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_./-]*\Z")
_STRING_TAG = "tag:yaml.org,2002:str"
# Written bare without asking YAML's resolver (80,000 addresses cost it 0.2 s): a word starting
# with a letter, '_' or '/' that is not a YAML 1.1 boolean or null, or digits with two dots or
# more (no int, float or time has them). The property tests compare the text with yaml.safe_dump.
_PLAIN_STRING = re.compile(r"(?:[A-Za-z_/][A-Za-z0-9_./-]*|[0-9]+(?:\.[0-9]+){2,})\Z")
_YAML_WORDS = frozenset(
    [
        "y",
        "Y",
        "yes",
        "Yes",
        "YES",
        "n",
        "N",
        "no",
        "No",
        "NO",
        "true",
        "True",
        "TRUE",
        "false",
        "False",
        "FALSE",
        "on",
        "On",
        "ON",
        "off",
        "Off",
        "OFF",
        "null",
        "Null",
        "NULL",
    ]
)
# _PLAIN_STRING over a column of values joined by new lines: one match a line when each is one.
_PLAIN_COLUMN = re.compile(_PLAIN_STRING.pattern.removesuffix("\\Z").join(("^(?:", ")$")), re.MULTILINE)
_LONGEST_BARE_LINE = 4096  # far below the dump width, so that YAML would not fold the line either
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")  # written quoted, as YAML would


def render(ledger):
    """The ledger file's text, exactly as yaml.safe_dump writes each entry, in linear time.

    yaml.safe_dump takes 10 s for 80,000 allocations; here an entry whose values YAML writes bare
    is written directly, any other through yaml.safe_dump as before. The released section is
    written only when an address is held back; the end line counts both. The text is the
    concatenation of each entry's line (entry_writer), which spliced relies on.
    """
    released = ledger.get("released") or []
    lines = [
        HEADER,
        f"version: {int(ledger['version'])}\n",
        "allocations:\n" if ledger["allocations"] else "allocations: []\n",
    ]
    entry_line = entry_writer()
    lines += _plain_lines(ledger["allocations"]) or [entry_line(entry, FIELDS) for entry in ledger["allocations"]]
    if released:
        lines.append("released:\n")
        lines += [entry_line(entry, RELEASED_FIELDS) for entry in released]
    lines.append(end_line(len(ledger["allocations"]), len(released)))
    return "".join(lines)


def entry_writer():
    """entry_line(entry, fields): an entry's line of the ledger file, as yaml.safe_dump writes it."""
    resolver, bare = yaml.resolver.Resolver(), {}

    def is_bare(value):
        if _PLAIN_STRING.match(value) and value not in _YAML_WORDS:
            return True
        known = bare.get(value)
        if known is None:
            known = bare[value] = bool(_BARE.match(value)) and (
                resolver.resolve(yaml.ScalarNode, value, (True, False)) == _STRING_TAG
            )
        return known

    def entry_line(entry, fields):
        values = [str(entry[key]) for key in FIELDS]
        if all(is_bare(value) for value in values) and sum(map(len, values)) < _LONGEST_BARE_LINE:
            pool, host, device, ip = values
            line = f"  - {{pool: {pool}, host: {host}, device: {device}, ip: {ip}"
            if len(fields) == len(FIELDS):
                return line + "}\n"
            if _TIME.match(str(entry["released_at"])):
                return line + f", released_at: '{entry['released_at']}'}}\n"
        mapping = {key: str(entry[key]) for key in fields}
        return "  - " + yaml.safe_dump(mapping, default_flow_style=True, sort_keys=False, width=1 << 16)

    return entry_line


def spliced(text, entries, allocations):
    """What render writes for the ledger `text` holds plus new allocations, without reading it: the
    text with each new entry's line put in before the allocation line it is given (entries:
    [(line, entry)], in order; 0 the first allocation line, `allocations` the end), the end line
    counting them too. `text` must be what render wrote for `allocations` allocations and no
    released entry (roce_ipam_allocate's cache vouches for it); None when it plainly is not.
    """
    opening = f"{HEADER}version: 1\nallocations:\n"
    closing = end_line(allocations, 0)
    if not text.startswith(opening) or not text.endswith(closing) or not allocations:
        return None
    lines = text[len(opening) : len(text) - len(closing)].split("\n")
    if len(lines) != allocations + 1 or lines[-1]:
        return None
    entry_line = entry_writer()
    out, previous = [], 0
    for line, entry in entries:
        if not previous <= line <= allocations:
            return None
        out += lines[previous:line]
        out.append(entry_line(entry, FIELDS).removesuffix("\n"))
        previous = line
    out += lines[previous:allocations]
    body = "\n".join(out)
    return f"{opening}{body}\n{end_line(len(out), 0)}"


def _plain_lines(allocations):
    """The allocation lines when every value is a string YAML writes bare, else None (write each entry).

    What entry_line writes for such entries, with the checks done a column at a time (80,000
    allocations: 0.05 s instead of 0.2 s): every value of a column is a string matched by
    _PLAIN_STRING as a whole (its distinct values joined by new lines: exactly one match a line)
    and none is a YAML word; the longest line stays below _LONGEST_BARE_LINE.
    """
    if not allocations:
        return None
    try:
        columns = [list(map(itemgetter(key), allocations)) for key in FIELDS]
        distinct = [set(column) for column in columns]
        joined = ["\n".join(values) for values in distinct]
    except (KeyError, TypeError):  # a field missing (entry_line says which), a value not a string
        return None
    for values, text in zip(distinct, joined, strict=True):
        if text.count("\n") != len(values) - 1 or len(_PLAIN_COLUMN.findall(text)) != len(values):
            return None
        if not _YAML_WORDS.isdisjoint(values):
            return None
    if sum(max(map(len, values)) for values in distinct) >= _LONGEST_BARE_LINE:
        return None
    return [
        f"  - {{pool: {pool}, host: {host}, device: {device}, ip: {ip}}}\n"
        for pool, host, device, ip in zip(*columns, strict=True)
    ]


def holds(text, ledger, rendered=None):
    """Whether the file's text (None: there is no file) holds this ledger (None: no ledger).

    The text ipam_ledger wrote for a ledger is render(ledger) (pass it as rendered when it is at
    hand): compared as text, at once. Any other text, edited by hand say, is read by YAML and
    compared as data.
    """
    if text is None:
        return ledger is None
    if _is_written_form(ledger) and text == (render(ledger) if rendered is None else rendered):
        return True
    return yaml.safe_load(text) == ledger


def _is_written_form(ledger):
    """Whether the ledger has only what render writes: version 1, allocations (and released) of strings."""
    if not isinstance(ledger, dict) or not {"version", "allocations"} <= ledger.keys() <= {
        "version",
        "allocations",
        "released",
    }:
        return False
    if type(ledger["version"]) is not int or ledger["version"] != 1 or not isinstance(ledger["allocations"], list):
        return False
    if "released" in ledger and not (isinstance(ledger["released"], list) and ledger["released"]):
        return False
    return all(
        type(entry) is dict and entry.keys() == set(fields) and all(type(entry[key]) is str for key in fields)
        for key, fields in (("allocations", FIELDS), ("released", RELEASED_FIELDS))
        for entry in ledger.get(key, ())
    )


def entry_lines(ledger):
    """The ledger's allocations as a set of 'pool host device ip' lines."""
    entries = (ledger or {}).get("allocations") or []
    return {" ".join(str(entry[key]) for key in FIELDS) for entry in entries}


@contextlib.contextmanager
def locked_directory(directory):
    """An exclusive flock on the directory: the file itself is replaced, so it cannot hold a lock."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


_UNREAD = object()


def write_ledger(path, ledger, base, check_mode=False, *, base_text=_UNREAD, after=None):
    """(changed, before text, after text); raises LedgerConflict when the file is no longer base.

    A symbolic link is followed: the lock is taken on the directory of the file it names, and
    that file is replaced, so that two writers through two links to one file still exclude each
    other. The file keeps its mode (and owner, where this process may set it). When base_text is
    given (the exact text the allocation read, None for no file), the file must still hold that
    very text; otherwise it must hold base as data. `after`, when given, is the text to write,
    render(ledger) computed elsewhere (spliced).
    """
    real = os.path.realpath(path)
    directory = os.path.dirname(real)
    if not check_mode:
        os.makedirs(directory, exist_ok=True)
    if after is None:
        after = render(ledger)
    if not os.path.isdir(directory):  # check mode, nothing there yet
        return True, "", after
    with locked_directory(directory) as directory_fd:
        if os.path.realpath(path) != real:  # a link was moved while we waited for the lock
            raise LedgerConflict(path)
        try:
            with open(real) as handle:
                before = handle.read()
        except FileNotFoundError:
            before = None
        if base_text is not _UNREAD:
            if before != base_text:
                raise LedgerConflict(path)
        else:
            try:
                same = holds(before, base, after if base == ledger else None)
            except yaml.YAMLError:
                same = False
            if not same:
                raise LedgerConflict(path)
        if before == after:
            return False, before, after
        if not check_mode:
            _replace(real, directory, directory_fd, after)
        return True, before or "", after


def _replace(path, directory, directory_fd, text):
    """Write text to a temporary file beside path, flush it, give it path's mode and owner, rename it."""
    try:
        kept = os.stat(path)
    except FileNotFoundError:
        kept = None
    handle, temporary = tempfile.mkstemp(prefix=".roce-ledger.", dir=directory)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), 0o644 if kept is None else stat.S_IMODE(kept.st_mode))
            if kept is not None and (kept.st_uid, kept.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(out.fileno(), kept.st_uid, kept.st_gid)
            os.fsync(out.fileno())
        os.replace(temporary, path)
        os.fsync(directory_fd)  # make the rename itself durable
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


class LedgerError(Exception):
    """The ledger was not written; the message says why, and what to do."""


def _collector_paused(function):
    """Run the function with Python's cyclic garbage collector paused (as it was, afterwards): the
    80,000 lines and columns render makes hold no cycle, and full collections would walk them."""

    @wraps(function)
    def paused(*args, **kwargs):
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()

    return paused


@_collector_paused
def update_ledger(
    path, ledger, base, check_mode=False, diff=False, *, base_text=_UNREAD, changes=None, keep_text=False
):
    """The module's whole job as a function: write the ledger and return the module's result.

    The roce_ipam_allocate action calls it in the controller's own process: as module arguments,
    80,000 allocations (twice: ledger and base) cost Ansible 15 s of copies, checks and logging.
    keep_text: the result also holds the text the file holds now under 'text' (for the action's
    cache key; never part of the module's result).
    """
    if not isinstance(ledger, dict) or not isinstance(ledger.get("allocations"), list) or ledger.get("version") != 1:
        raise LedgerError("ledger must be {version: 1, allocations: [...]}, as roce_ipam_assign returns it")
    if changes is None:
        old, new = (set(), set()) if base == ledger else (entry_lines(base), entry_lines(ledger))
        changes = (new - old, old - new)
    result = _written(path, (ledger, base, check_mode), base_text, None, len(ledger["allocations"]), changes, diff)
    if not keep_text:
        del result["text"]
    return result


def update_ledger_text(path, after, *, base_text, allocations, changes, diff=False):
    """update_ledger for a text made elsewhere, the ledger as read plus new lines (spliced): written
    the same way, under the same lock, only while the file still holds base_text."""
    result = _written(path, (None, None, False), base_text, after, allocations, changes, diff)
    del result["text"]
    return result


def _written(path, computed, base_text, after, *counts):
    """write_ledger's result as the module's; computed: (ledger, base, check_mode)."""
    allocations, changes, diff = counts
    try:
        changed, before, after = write_ledger(path, *computed, base_text=base_text, after=after)
    except LedgerConflict:
        raise LedgerError(
            f"{path} changed after it was read (another run wrote it); nothing was written. "
            "Rerun to allocate against the new ledger."
        ) from None
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise LedgerError(f"cannot write the ledger {path}: {error}") from error
    result = {
        "changed": changed,
        "path": path,
        "allocations": allocations,
        "added": sorted(changes[0]),
        "removed": sorted(changes[1]),
        "text": after,
    }
    if diff and changed:
        result["diff"] = {"before": before, "after": after, "before_header": path, "after_header": path}
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "ledger": {"type": "dict", "required": True},
            "base": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    try:
        result = update_ledger(
            module.params["path"], module.params["ledger"], module.params["base"], module.check_mode, module._diff
        )
    except LedgerError as error:
        module.fail_json(msg=str(error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
