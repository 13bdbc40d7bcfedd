# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Alibaba CPFS mounts: check them, turn NFS-endpoint mounts into NFS mounts, check the POSIX client.

Used by the `shared_mount` module (the mounts) and the `cpfs_client_check` module (the pinned client
version against what the site's mirror offers). Pure functions: the unit tests run them without a
node. Standard library and mounts.py only, Python 3.8 or newer: it runs on the targets.

What Alibaba documents, and where (the role's README names the pages):
- The NFS endpoint of a CPFS protocol service (an export directory) is NFSv3 only; the options
  Alibaba recommends are vers=3,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport
  (alibaba/alibabacloud-nas-utils README, "mount.cpfs-nfs"). Those are the values an NFS-path
  mount gets here, mounted by the kernel's NFS client through the shared_mount machinery.
- The POSIX client: the package `cpfs-client`, whose kernel modules are built for the running
  kernel (`service cpfs-client rebuild`), and which mounts what `/etc/cpfs/cpfs-mounts.conf` lists,
  one `<server>@tcp[:<server>@tcp]:/<fs_id> <path>` a line, when the `cpfs-client` service starts
  (AlibabaCloudDocs/nas, "Use CPFS", the CPFS 1.x user guide).
"""

from __future__ import annotations

import re

from ansible.module_utils.hpc_datapath.mounts import check_path, duplicate_paths

CLIENTS = ("nfs", "posix")
STATES = ("present", "absent")
# The NFS endpoint: NFSv3 only, and the options Alibaba recommends (alinas-utils README).
NFS_DEFAULTS = {
    "version": "3",
    "proto": "tcp",
    "nconnect": 1,  # not among Alibaba's options: the kernel's default, one connection
    "rsize": 1048576,
    "wsize": 1048576,
    "hard": True,
    "timeo": 600,
    "retrans": 2,
    "options": ["noresvport"],
    "automount": False,
    "mount_timeout": 60,
    "idle_timeout": 0,
}
NFS_FIELDS = ("path", "client", "server", "export", "options", "automount", "mount_timeout", "state")
POSIX_FIELDS = ("path", "client", "server", "fs_id", "state")
# The POSIX client's configuration, read by its service at start (CPFS 1.x user guide).
POSIX_CONFIG = "/etc/cpfs/cpfs-mounts.conf"
# A server of cpfs-mounts.conf (before "@tcp"): a host name or IPv4 address, nothing that breaks the line.
_SERVER = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
_FS_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+:~_-]{0,99}\Z")
VERSION_VARIABLE = "shared_mounts_cpfs_client_version"


def _where(variable, index, item):
    path = item.get("path") if isinstance(item, dict) else None
    return f"{variable}[{index}]" + (f" ({path})" if isinstance(path, str) and path else "")


def check_cpfs(items, variable="shared_mounts_cpfs"):
    """(nfs, posix, problems).

    nfs: the NFS-endpoint mounts as items of shared_mount's `nfs` list, each with `index` (its place
    in the variable) beside it in a pair (index, item); posix: the POSIX-client mounts, normalised
    ({where, path, servers, fs_id, state}); problems: sentences naming the variable and the reason.
    The NFS items' own checks (server resolution, options, paths) are shared_mount's, made later.
    """
    if not isinstance(items, list):
        return [], [], [f"{variable}: is not a list of mounts"]
    nfs, posix, problems = [], [], []
    for index, item in enumerate(items):
        where = _where(variable, index, item)
        if not isinstance(item, dict):
            problems.append(f"{where}: is not a mapping with path, client and server")
            continue
        client = item.get("client")
        if client not in CLIENTS:
            problems.append(f"{where}: client {client!r} is not nfs (the NFS endpoint) or posix (the CPFS client)")
            continue
        fields = NFS_FIELDS if client == "nfs" else POSIX_FIELDS
        unknown = sorted(map(str, set(item) - set(fields)))
        if unknown:
            problems.append(
                f"{where}: unknown field {', '.join(unknown)} for client {client} (known: {', '.join(fields)})"
                + (
                    "; the NFS endpoint takes Alibaba's options (vers=3, rsize/wsize 1 MiB, hard, timeo=600, "
                    "retrans=2, noresvport), set here once"
                    if client == "nfs"
                    else ""
                )
            )
            continue
        if client == "nfs":
            nfs.append((index, {k: v for k, v in item.items() if k != "client"}))
            continue
        found = _check_posix(item, where)
        if isinstance(found, str):
            problems.append(f"{where}: {found}")
        else:
            posix.append(found)
    return nfs, posix, problems + duplicate_paths(posix)


def _check_posix(item, where):
    """The normalised POSIX mount, or the reason it is refused."""
    path, state = item.get("path"), item.get("state", "present")
    reason = check_path(path) or (None if state in STATES else f"state {state!r} is not present or absent")
    mount = {"where": where, "path": path, "state": state, "servers": [], "fs_id": None}
    if reason or state == "absent":
        return reason or mount
    servers = item.get("server")
    servers = [servers] if isinstance(servers, str) else servers
    fs_id = item.get("fs_id")
    reason = _servers_problem(servers)
    if not reason and (not isinstance(fs_id, str) or not _FS_ID.match(fs_id)):
        reason = f"fs_id {fs_id!r} is not the file system's name (letters, digits, _ and -, at most 64)"
    mount.update(servers=servers, fs_id=fs_id)
    return reason or mount


def _servers_problem(servers):
    if not isinstance(servers, list) or not servers:
        return "server is missing: the POSIX mount target's address or name (or a list of them)"
    bad = [s for s in servers if not isinstance(s, str) or not _SERVER.match(s)]
    if bad:
        return (
            f"server {bad[0]!r} is not a host name or IPv4 address: {POSIX_CONFIG} joins servers with "
            "'@tcp:', so a colon, blank or '@' would break its line"
        )
    if len(set(servers)) != len(servers):
        return "server lists an address twice"
    return None


def nfs_items(pairs):
    """The NFS-endpoint mounts as they go to shared_mount: Alibaba's options as the defaults."""
    return [item for _, item in pairs]


def renumber(problems, pairs, variable="shared_mounts_cpfs"):
    """shared_mount numbers the NFS items it checks from 0; put each back at its place in the variable."""
    places = [index for index, _ in pairs]

    def place(match):
        number = int(match.group(1))
        return f"{variable}[{places[number] if number < len(places) else number}]"

    pattern = re.compile(re.escape(variable) + r"\[(\d+)\]")
    return [pattern.sub(place, problem, count=1) for problem in problems]


def posix_config(posix):
    """The text of cpfs-mounts.conf for the present POSIX mounts, in the order given."""
    lines = ["# Written by the shared_mounts role (hpc-datapath): CPFS POSIX mounts, one a line."]
    for mount in posix:
        if mount["state"] == "present":
            source = ":".join(f"{server}@tcp" for server in mount["servers"])
            lines.append(f"{source}:/{mount['fs_id']}\t{mount['path']}")
    return "\n".join(lines) + "\n"


def client_version_problems(version, posix, package="the CPFS client package", variable=VERSION_VARIABLE):
    """Why the pinned client version cannot be written into the apt pin, where a present POSIX mount needs
    the client: none given, or not one word of a package version's characters (a newline would add a
    line to the pin file). Checked by shared_mount's first call, before any file or mount changes."""
    if not any(mount["state"] == "present" for mount in posix):
        return []
    if not version:
        return [f"{variable}: the CPFS POSIX client installs only at a pinned version of {package}; set it"]
    if not isinstance(version, str) or not _VERSION.match(version):
        return [
            f"{variable}: {version!r} is not a package version (one word of A-Z a-z 0-9 . + : ~ _ -, starting with "
            "a digit)"
        ]
    return []


def version_problems(package, version, available, variable=VERSION_VARIABLE):
    """Why the pinned client version cannot install: none given, not one word, or not in the mirror."""
    found = client_version_problems(version, [{"state": "present"}], package, variable)
    if found:
        return found
    if version not in available:
        return [
            f"{variable}: {package} {version} is not in the configured repository "
            f"(it offers: {', '.join(available) or 'nothing'})"
        ]
    return []


def reboot_report(package, version, changed, loaded_modules):
    """What to tell when the client changed: its kernel modules are built for the running kernel by
    the new package, and the old ones stay loaded until the client is stopped and the modules are
    unloaded - which unmounts every CPFS POSIX mount - so the role leaves it to a planned reboot."""
    if not changed:
        return None
    loaded = ", ".join(loaded_modules) if loaded_modules else "none loaded now"
    return (
        f"{package} {version} installed; its kernel modules take effect at the next boot "
        f"(modules of the client: {loaded}); the role neither restarts the client nor reloads modules"
    )
