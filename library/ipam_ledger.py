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
    path: "{{ inventory_dir }}/ipam/roce-ledger.yml"
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
import os
import tempfile

import yaml
from ansible.module_utils.basic import AnsibleModule

HEADER = (
    "---\n# RoCE IPAM ledger: every address handed out, one line each. Written by playbooks/ipam.yml\n"
    "# (roce_ipam_assign + ipam_ledger); addresses here never move. Free one only through\n"
    "# roce_ipam_release, never by editing this file.\n"
)


class LedgerConflict(Exception):
    """The file changed between reading it and writing the new ledger."""


def render(ledger):
    lines = [
        HEADER,
        f"version: {int(ledger['version'])}\n",
        "allocations:\n" if ledger["allocations"] else "allocations: []\n",
    ]
    for entry in ledger["allocations"]:
        fields = {key: str(entry[key]) for key in ("pool", "host", "device", "ip")}
        lines.append("  - " + yaml.safe_dump(fields, default_flow_style=True, sort_keys=False, width=1 << 16))
    return "".join(lines)


def entry_lines(ledger):
    """The ledger's allocations as a set of 'pool host device ip' lines."""
    entries = (ledger or {}).get("allocations") or []
    return {" ".join(str(entry[key]) for key in ("pool", "host", "device", "ip")) for entry in entries}


@contextlib.contextmanager
def locked_directory(directory):
    """An exclusive flock on the directory: the file itself is replaced, so it cannot hold a lock."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def write_ledger(path, ledger, base, check_mode=False):
    """(changed, before text, after text); raises LedgerConflict when the file is no longer base."""
    directory = os.path.dirname(os.path.abspath(path))
    if not check_mode:
        os.makedirs(directory, exist_ok=True)
    after = render(ledger)
    if not os.path.isdir(directory):  # check mode, nothing there yet
        return True, "", after
    with locked_directory(directory) as directory_fd:
        try:
            with open(path) as handle:
                before = handle.read()
        except FileNotFoundError:
            before = None
        current = yaml.safe_load(before) if before is not None else None
        if current != base:
            raise LedgerConflict(path)
        if before == after:
            return False, before, after
        if not check_mode:
            handle, temporary = tempfile.mkstemp(prefix=".roce-ledger.", dir=directory)
            try:
                with os.fdopen(handle, "w") as out:
                    out.write(after)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(temporary, 0o644)
                os.replace(temporary, path)
                os.fsync(directory_fd)  # make the rename itself durable
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
        return True, before or "", after


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "ledger": {"type": "dict", "required": True},
            "base": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    path, ledger = module.params["path"], module.params["ledger"]
    if not isinstance(ledger.get("allocations"), list) or ledger.get("version") != 1:
        module.fail_json(msg="ledger must be {version: 1, allocations: [...]}, as roce_ipam_assign returns it")
    try:
        changed, before, after = write_ledger(path, ledger, module.params["base"], module.check_mode)
    except LedgerConflict:
        module.fail_json(
            msg=f"{path} changed after it was read (another run wrote it); nothing was written. "
            "Rerun to allocate against the new ledger."
        )
    except (OSError, KeyError, TypeError, ValueError) as error:
        module.fail_json(msg=f"cannot write the ledger {path}: {error}")
    old, new = entry_lines(module.params["base"]), entry_lines(ledger)
    result = {
        "changed": changed,
        "path": path,
        "allocations": len(ledger["allocations"]),
        "added": sorted(new - old),
        "removed": sorted(old - new),
    }
    if module._diff and changed:
        result["diff"] = {"before": before, "after": after, "before_header": path, "after_header": path}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
