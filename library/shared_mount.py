#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared NFS mounts as systemd units: checked first, remounted on option change, never while held."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: shared_mount
short_description: NFS mounts (TCP, RDMA, session trunking) as systemd units, remounted when their options change
description:
  - Checks every wanted mount before anything changes, on the node - the mount point (absolute, plain,
    made of C(A-Z a-z 0-9 . _ -), not inside a directory of the system, not a local file system there, not
    also in C(/etc/fstab)), the server (a host name or address that resolves on the node; several for
    NFSv4.1 session trunking, at most 16), the export, the version (3, 4.1, 4.2), the protocol (C(tcp), or
    C(rdma) where the node has an RDMA device), the numbers (nconnect 1..16, rsize and wsize powers of two
    up to 1 MiB), every extra option against what nfs(5) and mount(8) know for NFS, and that mounts reaching
    the same server agree on nconnect and max_connect (the kernel shares those between them). It returns
    the problems as sentences that start with the variable they are about, and changes nothing then.
  - Makes each mount a native systemd mount unit in C(/etc/systemd/system) (plus an automount unit where
    asked), with C(nofail) so that boot never waits for it, and a mount timeout; every extra server address
    is one more mount unit under C(/run/hpc_shared_mounts/trunk), bound to the first, which the kernel adds
    to the first address's session as a trunked transport. NFS over RDMA loads C(rpcrdma) now and at every
    boot (C(/etc/modules-load.d/hpc-shared-mounts.conf)).
  - Reads what is mounted from C(/proc/self/mountinfo), the options the kernel shows, and remounts (unmount,
    mount) a mount whose options differ from the wanted ones or whose unit changed - unless a process (open
    file, working or root directory, mapped file) or a mount below holds it, or, for nconnect and
    max_connect, another mount keeps the same server connections; then the remount is reported as pending,
    with the holders named, and done by a later run or the next boot.
  - O(nfs[].state=absent) unmounts (when nothing holds it) and removes the units.
  - Where C(mount.nfs) is missing it changes nothing and says so (C(missing)), for the role to install
    the client first; in check mode it shows what it would do once the client is there.
  - Supports check mode and diff.
options:
  nfs:
    description:
      - The mounts, each C(path), C(server) (one address or name, or a list), C(export); optional C(version),
        C(proto), C(port), C(nconnect), C(rsize), C(wsize), C(hard), C(timeo), C(retrans), C(options) (a
        list of extra options), C(automount), C(mount_timeout), C(idle_timeout), C(state) (present, absent).
      - A field a mount leaves out takes its value from O(defaults).
    type: list
    elements: dict
    default: []
  defaults:
    description:
      - Values for the fields a mount leaves out, C(version), C(proto), C(nconnect) (TCP only), C(rsize),
        C(wsize), C(hard), C(timeo), C(retrans), C(options) (put before each mount's own), C(automount),
        C(mount_timeout), C(idle_timeout).
    type: dict
    default: {}
  cpfs:
    description:
      - Alibaba CPFS mounts (the role's C(shared_mounts_cpfs)), each C(path), C(client) (C(nfs) or C(posix)),
        C(state). C(nfs) - the NFS endpoint of an export directory, C(server) and C(export), optional
        C(options), C(automount), C(mount_timeout) - is mounted as an NFS mount with what Alibaba documents for
        that endpoint (NFSv3, rsize and wsize 1 MiB, hard, timeo 600, retrans 2, noresvport), checked and
        applied with the O(nfs) mounts. C(posix) - C(server) (one or a list) and C(fs_id) - is checked and
        returned in RV(cpfs_posix) for the role, which installs the CPFS client; this module does not mount it.
      - Problems name C(shared_mounts_cpfs[i] (path)).
    type: list
    elements: dict
    default: []
  cpfs_client_version:
    description:
      - The CPFS POSIX client's pinned version (the role's C(shared_mounts_cpfs_client_version)). Where O(cpfs)
        has a present POSIX mount, it must be given, one word of a package version's characters (it goes into an
        apt pin file), or the call refuses before anything changes. Not checked when left out.
    type: raw
  elsewhere:
    description:
      - The mounts of other lists this node has (the role's C(shared_mounts_juicefs)), as
        a mapping of each variable to its C([path, state]) pairs - paths only, never a secret. A present path
        of O(nfs) or O(cpfs) equal to one of them, or nested in either direction, is refused before anything changes, as
        are such paths between O(nfs) and O(cpfs) and within each.
    type: dict
    default: {}
  variable:
    description: The variable the mounts come from, as problems name it (C(<variable>[i] (path)), C(<variable>_<field>))
    type: str
    default: shared_mounts_nfs
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Mount the training data over both bond members, and checkpoints over RDMA
  shared_mount:
    nfs:
      - {path: /shared/datasets, server: nas1.example.com, export: /datasets}
      - {path: /shared/ckpt, server: [10.30.0.2, 10.30.1.2], export: /ckpt, proto: rdma}
    defaults: {version: "4.1", proto: tcp, nconnect: 8, rsize: 1048576, wsize: 1048576, hard: true,
               timeo: 600, retrans: 2, options: [], automount: false, mount_timeout: 60, idle_timeout: 0}
  register: shared
"""

RETURN = r"""
problems:
  description: Why the wanted mounts cannot be made on this node; when not empty, nothing was changed.
  returned: always
  type: list
  elements: str
missing:
  description: >-
    Commands the mounts need and the node lacks (C(mount.nfs)); when not empty, nothing was changed (check
    mode still plans as if the client were there).
  returned: always
  type: list
  elements: str
mounts:
  description: >-
    Per mount its path, state, unit, what the kernel shows (C(kernel) - source, type, options, addr; null when
    not mounted), the wanted source and options, C(drift) (options the kernel shows otherwise) and C(notes)
    (differences no remount changes, such as a server that limits rsize).
  returned: always
  type: list
  elements: dict
cpfs_posix:
  description: >-
    The CPFS POSIX-client mounts, checked ({where, path, state, servers, fs_id}), and RV(cpfs_config), the
    client's C(/etc/cpfs/cpfs-mounts.conf) that lists the present ones.
  returned: always
  type: list
  elements: dict
cpfs_config:
  description: The text of C(/etc/cpfs/cpfs-mounts.conf) for the POSIX mounts.
  returned: always
  type: str
pending:
  description: Remounts and unmounts left for later, each with path, why (the holders named) and holders.
  returned: always
  type: list
  elements: dict
trunks:
  description: Per extra server address, whether the kernel session-trunked it with the first (C(trunked)) and why not.
  returned: always
  type: list
  elements: dict
actions:
  description: What was done (in check mode, what would be done), in order.
  returned: always
  type: list
  elements: str
ansible_facts:
  description: C(shared_mounts_pending), the same list as C(pending).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.cpfs import (
    NFS_DEFAULTS,
    check_cpfs,
    client_version_problems,
    nfs_items,
    posix_config,
    renumber,
)
from ansible.module_utils.hpc_datapath.mounts import (
    Applier,
    ApplyError,
    Node,
    Paths,
    _check_shared_clients,
    actions,
    changes,
    check_mounts,
    elsewhere_mounts,
    finish,
    fstab_mount_points,
    overlap_problems,
    plan,
    rdma_devices,
    resolve,
    verify,
)


def diffs(planned):
    """Each file as before and after, then the commands in order (what check mode would do)."""
    files = [
        {
            "before_header": change["path"],
            "after_header": change["path"],
            "before": change["before"] or "",
            "after": change["after"] or "",
        }
        for change in planned["files"]
    ]
    lines = actions(planned)
    return files + ([{"prepared": "\n".join(lines) + "\n"}] if lines else [])


def cross_problems(nfs, cpfs_nfs, cpfs_posix, elsewhere=None):
    """Paths of the lists (and of the JuiceFS mounts, `elsewhere`) that are equal or nested, and servers
    whose NFS and CPFS mounts disagree on what the kernel shares between them (each list alone was checked
    already). Checked on every call, before anything changes."""
    groups = [
        (group, [(m["where"], m["path"]) for m in mounts if m["state"] == "present"])
        for group, mounts in (("nfs", nfs), ("cpfs_nfs", cpfs_nfs), ("cpfs_posix", cpfs_posix))
    ]
    problems = overlap_problems(groups + elsewhere_mounts(elsewhere))
    alone = set(_check_shared_clients([m for m in nfs if m["state"] == "present"]))
    alone |= set(_check_shared_clients([m for m in cpfs_nfs if m["state"] == "present"]))
    together = _check_shared_clients([m for m in [*nfs, *cpfs_nfs] if m["state"] == "present"])
    return problems + [p for p in together if p not in alone]


def run(module, paths, result, resolver=resolve):
    """The whole run; fills result (what was done so far, also when it raises StateError or ApplyError)."""
    params = module.params
    rdma, fstab = rdma_devices(paths.infiniband), fstab_mount_points(paths.fstab)
    mounts, problems = check_mounts(
        params["nfs"], params["defaults"], variable=params["variable"], resolver=resolver, rdma=rdma, fstab_paths=fstab
    )
    cpfs_nfs, cpfs_posix, cpfs_problems = check_cpfs(params["cpfs"])
    if params.get("cpfs_client_version") is not None:  # the role always gives it
        cpfs_problems += client_version_problems(params["cpfs_client_version"], cpfs_posix)
    result.update(cpfs_posix=cpfs_posix, cpfs_config=posix_config(cpfs_posix))
    if cpfs_nfs:
        more, found = check_mounts(
            nfs_items(cpfs_nfs),
            NFS_DEFAULTS,
            variable="shared_mounts_cpfs",
            resolver=resolver,
            rdma=rdma,
            fstab_paths=fstab,
        )
        cpfs_problems += renumber(found, cpfs_nfs)
        for mount in more:  # numbered from 0 by check_mounts: put back at their place in shared_mounts_cpfs
            mount["where"] = renumber([mount["where"]], cpfs_nfs)[0]
    else:
        more = []
    problems += cross_problems(mounts, more, cpfs_posix, params.get("elsewhere"))
    mounts = mounts + more
    problems += cpfs_problems
    if problems:
        result["problems"] = problems
        return
    planned = plan(mounts, Node(paths))
    result.update(mounts=planned["mounts"], pending=planned["pending"], actions=actions(planned))
    present = [m for m in mounts if m["state"] == "present"]
    if present and not module.get_bin_path("mount.nfs", opt_dirs=["/sbin", "/usr/sbin"]):
        result["missing"] = ["mount.nfs"]
        result["actions"] = result["actions"] if module.check_mode else []  # nothing is done without the client
    if planned["problems"]:
        result["problems"] = planned["problems"]
    elif module.check_mode:  # what a run would do once the client is there
        result["changed"] = changes(planned) or bool(result["missing"])
        result["diff"] = diffs(planned)
    elif not result["missing"]:
        applier = Applier(module.run_command, paths)
        try:
            applier.apply(planned)
        finally:
            result.update(actions=applier.done, changed=bool(applier.done))
            for warning in applier.warnings:  # a trunk that did not mount: the mount is up on its first address
                module.warn(warning)
            result["pending"] = planned["pending"] + applier.pending
            result["diff"] = diffs(planned) if applier.done else []
        drift, result["trunks"] = verify(mounts, paths, result["pending"])
        if drift:
            raise ApplyError("; ".join(drift))


def main():
    module = AnsibleModule(
        argument_spec={
            "nfs": {"type": "list", "elements": "dict", "default": []},
            "defaults": {"type": "dict", "default": {}},
            "cpfs": {"type": "list", "elements": "dict", "default": []},
            "variable": {"type": "str", "default": "shared_mounts_nfs"},
            "elsewhere": {"type": "dict", "default": {}},
            "cpfs_client_version": {"type": "raw"},
        },
        supports_check_mode=True,
    )
    result = {
        "changed": False,
        "problems": [],
        "missing": [],
        "mounts": [],
        "pending": [],
        "trunks": [],
        "actions": [],
        "cpfs_posix": [],
        "cpfs_config": "",
    }
    finish(module, run, Paths(), result, "shared_mounts_pending")


if __name__ == "__main__":
    main()
