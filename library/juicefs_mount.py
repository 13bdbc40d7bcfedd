#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JuiceFS mounts as systemd services: checked first, the secret kept root-only, remounted unless held."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: juicefs_mount
short_description: JuiceFS volumes with a local NVMe cache, one systemd service each, remounted when they change
description:
  - Checks every wanted mount before anything changes, on the node - the volume name (as C(juicefs format) takes
    it), the mount point (the NFS rules of M(shared_mount)), the metadata engine URL (its form only; it is never
    shown), the cache directory (on a local disk file system that is mounted now, not the root file system - the
    NVMe volume), the cache size (and that it fits that file system), every extra C(juicefs mount) flag against
    the ones this module passes on. It returns the problems as sentences that start with the variable they are
    about, and changes nothing then.
  - Checks the pinned client (O(binary) and its C(juicefs version)) and C(fusermount); where either is missing it
    changes nothing and says so (C(missing)), for the role to install them first.
  - Writes per mount C(/etc/systemd/system/hpc-juicefs-<path escaped>.service), running C(juicefs mount) in the
    foreground after the network and the cache's mount (C(RequiresMountsFor)), enabled for C(remote-fs.target)
    and ordered before nothing the boot waits for; and C(<env_dir>/<name>.env), root 0600, with the metadata
    engine URL (without its password) and the password (C(META_PASSWORD)). The unit refers to the URL as
    C(${HPC_JUICEFS_META_URL}), so neither unit nor command line holds the password.
  - Reads what is mounted from C(/proc/self/mountinfo) (C(fuse.juicefs), source C(JuiceFS:<name>)); a path that
    shows another volume, or a changed unit or environment file, is unmounted and its service restarted, unless a
    process (open file, working or root directory, mapped file) or a mount below holds it; then it is reported as
    pending with the holders named, and done by a later run or the next boot.
  - O(mounts[].state=absent) unmounts (when nothing holds it), stops and removes the service and its environment file.
  - Supports check mode and diff; the diff shows the unit files, never an environment file's contents.
options:
  mounts:
    description:
      - The mounts without their secret, each C(name), C(path), C(cache_dir) and optional C(cache_size_mib),
        C(options) (a list of C(juicefs mount) flags), C(state) (present, absent). An item that is not a
        mapping is refused as a problem that names its place.
    type: list
    elements: raw
    default: []
  meta_urls:
    description: The metadata engine URL of each mount, by position in O(mounts) (empty for an absent one).
    type: list
    elements: str
    default: []
  defaults:
    description: >-
      Values for the fields a mount leaves out, C(cache_size_mib) and C(options) (put before each mount's own).
    type: dict
    default: {}
  binary:
    description: The pinned client, a versioned path such as C(/usr/local/lib/hpc-juicefs/1.4.2/juicefs).
    type: path
    required: true
  version:
    description: The version O(binary) must report (C(juicefs version)).
    type: str
    required: true
  elsewhere:
    description:
      - The mounts of the other lists this node has (the role's C(shared_mounts_nfs), C(shared_mounts_cpfs)), as
        a mapping of each variable to its C([path, state]) pairs. A present JuiceFS path equal to one of them, or
        nested in either direction, is refused before anything changes, as are nested JuiceFS paths.
    type: dict
    default: {}
  variable:
    description: The variable the mounts come from, as problems name it.
    type: str
    default: shared_mounts_juicefs
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Mount the shared volume with its cache on the NVMe scratch volume
  juicefs_mount:
    mounts:
      - {name: datasets, path: /shared/jfs, cache_dir: /scratch/juicefs, options: [--writeback]}
    meta_urls: ["{{ vault_juicefs_meta_url }}"]
    defaults: {cache_size_mib: 102400, options: []}
    binary: /usr/local/lib/hpc-juicefs/1.4.2/juicefs
    version: "1.4.2"
  register: juicefs
"""

RETURN = r"""
problems:
  description: Why the wanted mounts cannot be made on this node; when not empty, nothing was changed.
  returned: always
  type: list
  elements: str
missing:
  description: >-
    What the node lacks (C(juicefs <version>), with what it found, and C(fusermount)); when not empty, nothing was
    changed (check mode still plans as if they were there).
  returned: always
  type: list
  elements: str
installed:
  description: The version O(binary) reports, or null where it is missing or does not run.
  returned: always
  type: str
mounts:
  description: >-
    Per mount its path, name, state, unit, what the kernel shows there (C(kernel)) and why it remounts (C(drift)).
  returned: always
  type: list
  elements: dict
pending:
  description: Remounts and unmounts left for later, each with path, why (the holders named) and holders.
  returned: always
  type: list
  elements: dict
notes:
  description: >-
    Units (C(hpc-juicefs-*.service)) and environment files (C(<env_dir>/*.env)) of this module that no listed mount
    owns, as when a volume moved or was renamed without its old entry set absent; reported, never removed or
    stopped (list the old path or name with C(state=absent) for that).
  returned: always
  type: list
  elements: str
actions:
  description: What was done (in check mode, what would be done), in order.
  returned: always
  type: list
  elements: str
ansible_facts:
  description: C(shared_mounts_juicefs_pending), the same list as C(pending).
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.juicefs import (
    Applier,
    ApplyError,
    JuicePaths,
    Node,
    actions,
    changes,
    check_mounts,
    diffs,
    fstab_paths,
    parse_version,
    plan,
    verify,
)
from ansible.module_utils.hpc_datapath.mounts import elsewhere_mounts, finish, overlap_problems


def space(path):
    """The size in bytes of the local file system that holds path (its nearest existing directory)."""
    while not os.path.isdir(path) and path != "/":
        path = os.path.dirname(path)
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_blocks * info.f_frsize


def installed_version(module, binary):
    """The version the client reports, or None where it is missing or cannot run. A binary of another
    architecture or a truncated one makes exec fail (ENOEXEC): that is a client to replace, which the role
    does on `missing`, not a failed run (run_command would fail_json on the OSError)."""
    if not os.path.isfile(binary):
        return None
    try:
        rc, out, _ = module.run_command([binary, "version"], handle_exceptions=False)
    except OSError:
        return None
    return parse_version(out) if rc == 0 else None


def run(module, paths, result, statvfs=space):
    """The whole run; fills result (what was done so far, also when it raises StateError or ApplyError)."""
    params = module.params
    node = Node(paths)
    mounts, problems = check_mounts(
        params["mounts"],
        params["meta_urls"],
        params["defaults"],
        node.mountinfo,
        variable=params["variable"],
        fstab_paths=fstab_paths(paths),
        space=statvfs,
    )
    mine = [(m["where"], m["path"]) for m in mounts if m["state"] == "present"]
    problems += overlap_problems(
        [(params["variable"], mine), *elsewhere_mounts(params.get("elsewhere"))], involving=params["variable"]
    )
    if problems:
        result["problems"] = problems
        return
    planned = plan(mounts, node, params["binary"])
    result.update(
        mounts=planned["mounts"], pending=planned["pending"], actions=actions(planned), notes=planned["notes"]
    )
    if any(m["state"] == "present" for m in mounts):
        result["installed"] = installed_version(module, params["binary"])
        if result["installed"] != params["version"]:
            found = f"it reports {result['installed']}" if result["installed"] else "it is missing or does not run"
            result["missing"].append(f"juicefs {params['version']} at {params['binary']} ({found})")
        if not (module.get_bin_path("fusermount3") or module.get_bin_path("fusermount")):
            result["missing"].append("fusermount (fuse3)")
        if result["missing"] and not module.check_mode:
            result["actions"] = []  # nothing is done without the client
    if planned["problems"]:
        result["problems"] = planned["problems"]
    elif module.check_mode:
        result["changed"] = changes(planned) or bool(result["missing"])
        result["diff"] = diffs(planned)
    elif not result["missing"]:
        applier = Applier(module.run_command, paths)
        try:
            applier.apply(planned)
        finally:
            result.update(actions=applier.done, changed=bool(applier.done))
            result["pending"] = planned["pending"] + applier.pending
            result["diff"] = diffs(planned) if applier.done else []
        drift = verify(mounts, paths, result["pending"])
        if drift:
            raise ApplyError("; ".join(drift))


def main():
    module = AnsibleModule(
        argument_spec={
            # Any element: one that is not a mapping is refused by check_mounts with its place named.
            "mounts": {"type": "list", "elements": "raw", "default": []},
            # The secret: masked in the invocation and in anything the module returns.
            "meta_urls": {"type": "list", "elements": "str", "default": [], "no_log": True},
            "defaults": {"type": "dict", "default": {}},
            "binary": {"type": "path", "required": True},
            "version": {"type": "str", "required": True},
            "variable": {"type": "str", "default": "shared_mounts_juicefs"},
            "elsewhere": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    result = {
        "changed": False,
        "problems": [],
        "missing": [],
        "installed": None,
        "mounts": [],
        "pending": [],
        "actions": [],
        "notes": [],
    }
    finish(module, run, JuicePaths(), result, "shared_mounts_juicefs_pending")


if __name__ == "__main__":
    main()
