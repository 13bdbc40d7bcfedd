# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared NFS mounts: check the wanted mounts, read what the kernel has, plan, apply.

Used by the `shared_mount` module. Every mount is a native systemd mount unit (and an automount
unit where asked), one file each, owned by this code; what is mounted is read from
/proc/self/mountinfo, the options the kernel shows for the superblock, never only from a file.

Plan, then act, in one pass: `plan()` reads the node (mountinfo, unit files, holders in /proc)
and returns a plain value, the list of what it would do; `apply()` carries it out. Paths, the
command runner and name resolution are injectable, so the unit tests run both against a fake
tree. Targets: Python 3.8 or newer, standard library only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket

# --- what the kernel and nfs(5) accept ---------------------------------------------------------

NFS_PORT = 2049
NFS_RDMA_PORT = 20049  # the IANA port of NFS over RDMA (RFC 5667), the one knfsd's rdma listener takes
# nconnect: fs/nfs/internal.h NFS_MAX_CONNECTIONS; the mount refuses more.
NFS_MAX_CONNECTIONS = 16
# max_connect: include/linux/nfs_fs.h NFS_MAX_TRANSPORTS, the limit of session-trunked addresses.
NFS_MAX_TRANSPORTS = 16
# The Linux client's largest read and write size (NFS_MAX_FILE_IO_SIZE); it rounds a smaller one
# down to a power of two and shows that, so only powers of two compare cleanly with mountinfo.
IO_SIZE_MIN = 4096
IO_SIZE_MAX = 1048576
VERSIONS = ("3", "4.1", "4.2")
PROTOS = ("tcp", "rdma")
STATES = ("present", "absent")
NFS_FSTYPES = ("nfs", "nfs4")

FIELDS = (
    "path",
    "server",
    "export",
    "version",
    "proto",
    "port",
    "nconnect",
    "rsize",
    "wsize",
    "hard",
    "timeo",
    "retrans",
    "options",
    "automount",
    "mount_timeout",
    "idle_timeout",
    "state",
)
# The fields that take a role-wide default (shared_mounts_nfs_<field>).
DEFAULTED = (
    "version",
    "proto",
    "nconnect",
    "rsize",
    "wsize",
    "hard",
    "timeo",
    "retrans",
    "options",
    "automount",
    "mount_timeout",
    "idle_timeout",
)

# Options a field sets: given in `options` they would be said twice, and drift would have two sources.
MANAGED_OPTIONS = {
    "vers": "version",
    "nfsvers": "version",
    "minorversion": "version",
    "v2": "version",
    "v3": "version",
    "v4": "version",
    "v4.0": "version",
    "v4.1": "version",
    "v4.2": "version",
    "proto": "proto",
    "tcp": "proto",
    "udp": "proto",
    "rdma": "proto",
    "port": "port",
    "nconnect": "nconnect",
    "max_connect": "server (one address per session-trunked transport)",
    "rsize": "rsize",
    "wsize": "wsize",
    "hard": "hard",
    "soft": "hard",
    "softerr": "hard",
    "timeo": "timeo",
    "retrans": "retrans",
    "addr": "server",
}
# Options that make no sense for a mount the system makes at boot, each with the reason.
REFUSED_OPTIONS = {
    "noauto": "the mount would not come back after a reboot; use state: absent to remove a mount",
    "bg": "mount.nfs would retry in the background, outside the unit systemd waits for; use automount",
    "user": "a mount the system makes at boot is no user's",
    "users": "a mount the system makes at boot is no user's",
    "owner": "a mount the system makes at boot is no user's",
    "group": "a mount the system makes at boot is no user's",
    "sloppy": "it makes mount.nfs ignore options it does not know, so a typing error would pass unseen",
}
# Added to every mount anyway (nofail, _netdev) or meaning nothing next to other options (defaults, fg).
IMPLIED_OPTIONS = ("defaults", "_netdev", "nofail", "auto", "fg")

_UINT = re.compile(r"[0-9]{1,9}\Z")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?\Z")
_SEC_FLAVOURS = ("sys", "krb5", "krb5i", "krb5p", "none")
_SELINUX_CONTEXT = re.compile(r"[A-Za-z0-9_.:\-]{1,200}\Z")


def _uint(value):
    return bool(_UINT.match(value or ""))


def _sec(value):
    return bool(value) and all(flavour in _SEC_FLAVOURS for flavour in value.split(":"))


def _ip(value):
    try:
        ipaddress.ip_address(value or "")
    except ValueError:
        return False
    return True


def _host(value):
    return _ip(value) or bool(_HOSTNAME.match(value or ""))


def _choice(*allowed):
    return lambda value: value in allowed


# The options nfs(5) (nfs-utils 2.6) and mount(8) document for NFS, beyond the managed ones:
# name -> (kind, check of the value, versions it belongs to or None for every version, what it takes).
# kind: "flag" takes no value; "negatable" takes none either and has a no<name> form; "value" needs one.
_V3 = ("3",)
_V4 = ("4.1", "4.2")
KNOWN_OPTIONS = {
    # mount(8): every file system
    "ro": ("flag", None, None, ""),
    "rw": ("flag", None, None, ""),
    "sync": ("flag", None, None, ""),
    "async": ("flag", None, None, ""),
    "atime": ("negatable", None, None, ""),
    "diratime": ("negatable", None, None, ""),
    "relatime": ("negatable", None, None, ""),
    "strictatime": ("negatable", None, None, ""),
    "lazytime": ("negatable", None, None, ""),
    "suid": ("negatable", None, None, ""),
    "dev": ("negatable", None, None, ""),
    "exec": ("negatable", None, None, ""),
    "context": ("value", _SELINUX_CONTEXT.match, None, "an SELinux context without commas"),
    "fscontext": ("value", _SELINUX_CONTEXT.match, None, "an SELinux context without commas"),
    "defcontext": ("value", _SELINUX_CONTEXT.match, None, "an SELinux context without commas"),
    "rootcontext": ("value", _SELINUX_CONTEXT.match, None, "an SELinux context without commas"),
    # nfs(5): every version
    "intr": ("negatable", None, None, ""),  # ignored by kernels since 2.6.25, still accepted
    "softreval": ("negatable", None, None, ""),
    "ac": ("negatable", None, None, ""),
    "acregmin": ("value", _uint, None, "seconds"),
    "acregmax": ("value", _uint, None, "seconds"),
    "acdirmin": ("value", _uint, None, "seconds"),
    "acdirmax": ("value", _uint, None, "seconds"),
    "actimeo": ("value", _uint, None, "seconds"),
    "retry": ("value", _uint, None, "minutes"),
    "sec": ("value", _sec, None, "one or more of sys, krb5, krb5i, krb5p, none, joined by ':'"),
    "sharecache": ("negatable", None, None, ""),
    "resvport": ("negatable", None, None, ""),
    "lookupcache": ("value", _choice("all", "none", "pos", "positive"), None, "all, none, pos or positive"),
    "fsc": ("negatable", None, None, ""),
    "rdirplus": ("negatable", None, None, ""),
    "cto": ("negatable", None, None, ""),
    "local_lock": ("value", _choice("none", "all", "flock", "posix"), None, "none, all, flock or posix"),
    "xprtsec": ("value", _choice("none", "tls", "mtls"), None, "none, tls or mtls"),
    # nfs(5): NFS versions 2 and 3
    "mountport": ("value", _uint, _V3, "a port number"),
    "mountproto": ("value", _choice("tcp", "udp", "tcp6", "udp6"), _V3, "tcp, udp, tcp6 or udp6"),
    "mounthost": ("value", _host, _V3, "a host name or address"),
    "mountvers": ("value", _uint, _V3, "a version number"),
    "namlen": ("value", _uint, _V3, "a length"),
    "lock": ("negatable", None, _V3, ""),
    "acl": ("negatable", None, _V3, ""),
    # nfs(5): NFS version 4
    "clientaddr": ("value", _ip, _V4, "an IP address of this node"),
    "migration": ("negatable", None, _V4, ""),
    "trunkdiscovery": ("negatable", None, _V4, ""),
}
# Options the kernel shows in mountinfo as they were given (flags where set, values as given), so
# that drift in them can be told from the kernel's view: the per-mount flags (field 6) and the NFS
# superblock flags of nfs_show_mount_options (fs/nfs/super.c).
SHOWN_MOUNT_FLAGS = ("nosuid", "nodev", "noexec", "noatime", "nodiratime")
SHOWN_SUPER_FLAGS = ("softreval", "nocto", "noac", "nolock", "noacl", "nordirplus", "nosharecache", "noresvport")
SHOWN_SUPER_VALUES = ("sec", "local_lock", "lookupcache")

# A path component: what fstab, a unit name and a command line all take as it is.
_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+\Z")
_EXPORT = re.compile(r"/[A-Za-z0-9_./+@=-]*\Z")
# Where a network file system would hide what the system runs on, or be cleaned away
# (systemd-tmpfiles empties /tmp and /var/tmp): these trees and everything below them.
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",  # noqa: S108 (a path refused, not used)
    "/usr",
    "/var",
)
# Directories that are fine to mount below, never on: a mount on them hides what other users and
# tools keep there (/mnt/x, /home/x, /opt/x are fine).
SYSTEM_DIRECTORIES = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/srv")
UNIT_NAME_MAX = 255

# --- files of this code on the node --------------------------------------------------------------

MARKER = "# Written by hpc-datapath (role shared_mounts); changes here are overwritten."
# Extra session-trunked transports are mounts of their own (the Linux client adds a transport when a
# second mount of the same server arrives from another address); they live here, root-only.
TRUNK_ROOT = "/run/hpc_shared_mounts/trunk"
MODULES = ("rpcrdma",)  # NFS over RDMA: the client (xprtrdma) and the server (svcrdma) transports


class Paths:
    """Every place the code reads or writes, injectable for tests."""

    def __init__(
        self,
        *,
        proc="/proc",
        mountinfo=None,
        unit_dir="/etc/systemd/system",
        fstab="/etc/fstab",
        infiniband="/sys/class/infiniband",
        sys_module="/sys/module",
        modules_load="/etc/modules-load.d/hpc-shared-mounts.conf",
        pending_dir="/run/hpc_shared_mounts/pending",
    ):
        self.proc = proc
        self.mountinfo = mountinfo or os.path.join(proc, "self", "mountinfo")
        self.unit_dir = unit_dir
        self.fstab = fstab
        self.infiniband = infiniband
        self.sys_module = sys_module
        self.modules_load = modules_load
        self.pending_dir = pending_dir


class StateError(Exception):
    """The node's state cannot be read exactly as expected: the run stops (fail closed)."""


class ApplyError(Exception):
    """A command or write failed while applying the plan."""


# --- mount options and mountinfo ---------------------------------------------------------------


def parse_options(text):
    """'a,b=c' -> {'a': None, 'b': 'c'} in order; a later repetition wins, as in the kernel."""
    options = {}
    for item in (text or "").split(","):
        if item:
            key, sep, value = item.partition("=")
            options[key] = value if sep else None
    return options


def render_options(pairs):
    return ",".join(key if value is None else f"{key}={value}" for key, value in pairs)


def _unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal.group(1), 8)), field)


def parse_mountinfo(text):
    """Every line of /proc/<pid>/mountinfo as a dict; a line that is not the kernel's stops the run."""
    mounts = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            mounts.append(
                {
                    "id": int(fields[0]),
                    "parent": int(fields[1]),
                    "devno": fields[2],
                    "root": _unescape(fields[3]),
                    "path": _unescape(fields[4]),
                    "mount_options": parse_options(fields[5]),
                    "fstype": fields[dash + 1],
                    "source": _unescape(fields[dash + 2]),
                    "super_options": parse_options(fields[dash + 3]) if len(fields) > dash + 3 else {},
                }
            )
        except (ValueError, IndexError):
            raise StateError(f"mountinfo line {number} is not in the kernel's format: {line!r}") from None
    return mounts


# --- systemd unit names ------------------------------------------------------------------------


def escape_path(path):
    """systemd-escape --path: the unit name stem of a path (/shared/my-data -> shared-my\\x2ddata)."""
    stem = path.strip("/")
    if not stem:
        return "-"
    out = []
    for position, char in enumerate(stem):
        if char == "/":
            out.append("-")
        elif (char.isascii() and char.isalnum()) or char in ":_" or (char == "." and position > 0):
            out.append(char)
        else:
            out.append("".join(f"\\x{byte:02x}" for byte in char.encode()))
    return "".join(out)


def unit_name(path, suffix="mount"):
    return f"{escape_path(path)}.{suffix}"


def trunk_path(path, index):
    """Where the transport to the index-th server address of a mount is mounted (index 1, 2, ...)."""
    return f"{TRUNK_ROOT}{path}/{index}"


# --- the wanted mounts -------------------------------------------------------------------------


def resolve(name):
    """The addresses a server name resolves to on this node, as the mount will see them."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos})


def _int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _UINT.match(value):
        return int(value)
    return None


def _version(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def check_path(path):
    """Why a mount point cannot be used, or None."""
    if not isinstance(path, str) or not path.startswith("/"):
        return f"path {path!r} is not an absolute path"
    plain = "/" + os.path.normpath(path).lstrip("/")
    tree = next((t for t in SYSTEM_TREES if _under(path, t)), None)
    bad = [part for part in path.split("/")[1:] if not _COMPONENT.match(part)]
    reason = None
    if plain != path:
        reason = f"path {path!r} is not in its plain form (no //, /./, /../ or trailing /); write {plain!r}"
    elif path in SYSTEM_DIRECTORIES:
        reason = (
            f"path {path} is a directory of the system: a mount there hides what is kept in it; mount in a "
            f"dedicated directory below it ({path.rstrip('/')}/<name>)"
        )
    elif tree:
        reason = (
            f"path {path} is inside {tree}, which belongs to the system: a network file system there would hide, "
            "or be cleaned with, what the system keeps there; use a dedicated directory such as /shared/<name>"
        )
    elif bad:
        reason = (
            f"path {path!r}: {bad[0]!r} holds characters that would break a unit name, fstab or a command line "
            "(spaces, commas, #, quotes, control characters, ...); a path is made of A-Z a-z 0-9 . _ - and /"
        )
    elif len(unit_name(trunk_path(path, NFS_MAX_TRANSPORTS))) > UNIT_NAME_MAX:
        reason = f"path {path} is too long for a systemd unit name ({UNIT_NAME_MAX} characters)"
    return reason


def check_option(text, version):
    """(key, value) of an extra option, or raise ValueError with the reason (starting with the option)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not an option (a non-empty string)")
    if re.search(r"[\s,#\\\"']", text) or not text.isprintable():
        raise ValueError(
            f"{text!r} holds a blank, comma, #, quote, backslash or control character; give one option per item"
        )
    key, sep, value = text.partition("=")
    value = value if sep else None
    base = _option_base(key)
    if key in MANAGED_OPTIONS or base in MANAGED_OPTIONS:
        raise ValueError(f"{text!r} is set by the field {MANAGED_OPTIONS.get(key) or MANAGED_OPTIONS[base]}")
    if key.startswith("x-"):
        raise ValueError(
            f"{text!r}: these mounts are systemd units of their own, not fstab lines; use the fields automount, "
            "mount_timeout and idle_timeout"
        )
    if key in REFUSED_OPTIONS:
        raise ValueError(f"{text!r} is refused: {REFUSED_OPTIONS[key]}")
    if key in IMPLIED_OPTIONS:
        if value is not None:
            raise ValueError(f"{text!r}: {key} takes no value")
        return key, None
    if base not in KNOWN_OPTIONS:
        raise ValueError(f"{text!r} is not an option nfs(5) or mount(8) knows for NFS")
    kind, valid, versions, takes = KNOWN_OPTIONS[base]
    if kind == "value" and (value is None or not valid(value)):
        raise ValueError(f"{text!r}: {base} takes {takes}")
    if kind != "value" and value is not None:
        raise ValueError(f"{text!r}: {key} takes no value")
    if versions is not None and version not in versions:
        wanted = "NFSv3" if versions == _V3 else "NFSv4.1 and 4.2"
        raise ValueError(f"{text!r} is an option of {wanted} (nfs(5)), and this mount is NFS {version}")
    return key, value


def _option_base(key):
    """The option a no<name> form negates (noac -> ac), where nfs(5) knows that form."""
    if key.startswith("no") and KNOWN_OPTIONS.get(key[2:], ("",))[0] == "negatable":
        return key[2:]
    return key


# Whole-number fields: (lowest, highest, what a value outside says). rsize and wsize: powers of two.
LIMITS = {
    "nconnect": (1, NFS_MAX_CONNECTIONS, f"outside 1..{NFS_MAX_CONNECTIONS}, the kernel's limit"),
    "timeo": (1, 6000, "outside 1..6000 tenths of a second"),
    "retrans": (0, 100, "outside 0..100"),
    "mount_timeout": (1, 86400, "outside 1..86400 seconds"),
    "idle_timeout": (0, 86400, "outside 0..86400 seconds (0: an idle automount stays mounted)"),
    "port": (1, 65535, "not a port number"),
    "rsize": (IO_SIZE_MIN, IO_SIZE_MAX, ""),
    "wsize": (IO_SIZE_MIN, IO_SIZE_MAX, ""),
}


class _Entry:
    """One item of the variable being checked: its values (the item's, else the role-wide default),
    where each came from, and the problems found, each a sentence naming the variable."""

    def __init__(self, item, defaults, variable, index):
        self.item = item
        self.defaults = defaults
        self.variable = variable
        self.index = index
        self.problems = []

    def where(self):
        path = self.item.get("path")
        return f"{self.variable}[{self.index}]" + (f" ({path})" if isinstance(path, str) and path else "")

    def value(self, field):
        return self.item[field] if field in self.item else self.defaults.get(field)

    def origin(self, field):
        """The variable a value came from: the item's field, or the role-wide default."""
        if field in self.item or field not in DEFAULTED:
            return f"{self.where()}: {field}"
        return f"{self.where()}: {field} (from {self.variable}_{field})"

    def problem(self, text):
        self.problems.append(f"{self.where()}: {text}")

    def version_and_proto(self, rdma):
        version = _version(self.value("version"))
        if version in ("4", "4.0"):
            self.problems.append(
                f"{self.origin('version')}: {version} is NFSv4.0, which has no sessions (no session trunking); "
                "use 4.1 or 4.2"
            )
        elif version not in VERSIONS:
            self.problems.append(f"{self.origin('version')}: {version!r} is not one of {', '.join(VERSIONS)}")
        proto = self.value("proto")
        if proto not in PROTOS:
            self.problems.append(f"{self.origin('proto')}: {proto!r} is not one of {', '.join(PROTOS)}")
        elif proto == "rdma" and not rdma:
            self.problems.append(
                f"{self.origin('proto')}: rdma needs an RDMA device, and this node has none (/sys/class/infiniband "
                "is empty): load the RDMA stack (role rdma_stack; Soft-RoCE: rdma_rxe) or use proto: tcp"
            )
        return version, proto

    def servers(self, version, resolver):
        """(names, addresses of each) of the server field, resolved on this node."""
        servers = self.item.get("server")
        servers = [servers] if isinstance(servers, str) else servers
        if not isinstance(servers, list) or not servers or not all(isinstance(s, str) and s for s in servers):
            self.problem("server is missing; give a host name or address, or a list of them")
            return [], []
        if len(servers) > NFS_MAX_TRANSPORTS:
            self.problem(f"server lists {len(servers)} addresses; the kernel trunks at most {NFS_MAX_TRANSPORTS}")
        elif len(servers) > 1 and version == "3":
            self.problem(
                f"server lists {len(servers)} addresses, and session trunking needs NFSv4.1 or 4.2 (NFSv3 has no "
                "sessions); give one server, or version 4.1"
            )
        addresses = [self.resolve(server, resolver) for server in servers]
        for first in range(len(servers)):
            for second in range(first + 1, len(servers)):
                shared = set(addresses[first]) & set(addresses[second])
                if shared:
                    self.problem(
                        f"servers {servers[first]} and {servers[second]} both resolve to {', '.join(sorted(shared))}; "
                        "each trunked transport needs an address of its own"
                    )
        return servers, addresses

    def resolve(self, server, resolver):
        if not _host(server):
            self.problem(f"server {server!r} is not a host name, an IPv4 or an IPv6 address (IPv6 without brackets)")
            return []
        try:
            found = resolver(server)
        except (OSError, UnicodeError) as error:
            self.problem(f"server {server} does not resolve on this node ({getattr(error, 'strerror', None) or error})")
            return []
        if not found:
            self.problem(f"server {server} resolves to no address on this node")
        return sorted({_address(address) for address in found})

    def export(self):
        export = self.item.get("export")
        if not isinstance(export, str) or not _EXPORT.match(export) or "//" in export or "/../" in f"{export}/":
            self.problem(
                f"export {export!r} is not an absolute path of A-Z a-z 0-9 . _ / + @ = - (the path the server "
                "exports; / for an NFSv4 pseudo root)"
            )
        return export

    def numbers(self, proto):
        numbers = {}
        for field, (low, high, outside) in LIMITS.items():
            raw = self.value(field)
            if field == "nconnect" and "nconnect" not in self.item and proto == "rdma":
                raw = None  # the role-wide default is for TCP; RDMA takes one only where the mount asks
            if raw is None and field in ("nconnect", "port"):
                numbers[field] = None
                continue
            value = _int(raw)
            if value is None:
                self.problems.append(f"{self.origin(field)}: {raw!r} is not a whole number")
            elif field in ("rsize", "wsize") and (value & (value - 1) or not low <= value <= high):
                self.problems.append(
                    f"{self.origin(field)}: {value} is not a power of two from {low} to {high}: the kernel rounds "
                    "other sizes down and would show another value than asked at every run"
                )
            elif not low <= value <= high:
                self.problems.append(f"{self.origin(field)}: {value} is {outside}")
            numbers[field] = value
        for field in ("hard", "automount"):
            numbers[field] = self.value(field)
            if not isinstance(numbers[field], bool):
                self.problems.append(f"{self.origin(field)}: {numbers[field]!r} is not true or false")
        return numbers

    def options(self, version):
        """The extra options: the role-wide ones, then the mount's own (a later one of a name wins)."""
        listed = []
        for label, options in (
            (f"{self.where()}: options (from {self.variable}_options)", self.defaults.get("options")),
            (f"{self.where()}: options", self.item.get("options")),
        ):
            if options is None:
                continue
            if not isinstance(options, list):
                self.problems.append(f"{label}: is not a list of options, one option per item")
                continue
            listed += [(label, text) for text in options]
        extra = []
        for label, text in listed:
            try:
                key, value = check_option(text, version)
            except ValueError as error:
                self.problems.append(f"{label}: {error}")
                continue
            if key not in IMPLIED_OPTIONS:
                extra = [(k, v) for k, v in extra if _option_base(k) != _option_base(key)]
                extra.append((key, value))
        return extra


def duplicate_paths(mounts):
    """A problem for each checked mount whose path an earlier one of the same list has."""
    problems, seen = [], {}
    for mount in mounts:
        if mount["path"] in seen:
            problems.append(
                f"{mount['where']}: path {mount['path']} is also {seen[mount['path']]}'s; one mount per path"
            )
        seen.setdefault(mount["path"], mount["where"].split(" ")[0])
    return problems


def check_mounts(items, defaults, *, variable="shared_mounts_nfs", resolver=resolve, rdma=(), fstab_paths=()):
    """(mounts, problems): the wanted mounts, normalised, and every problem as a sentence naming the
    variable. Nothing on the node is changed; server names are resolved here, on the node, as the
    mount will resolve them. rdma: the node's RDMA devices; fstab_paths: the mount points of fstab."""
    problems = []
    mounts = []
    if not isinstance(items, list):
        return [], [f"{variable}: is not a list of mounts"]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"{variable}[{index}]: is not a mapping with path, server and export")
            continue
        entry = _Entry(item, defaults or {}, variable, index)
        mount = _check_mount(entry, resolver, rdma, fstab_paths)
        problems += entry.problems
        if mount is not None and not entry.problems:
            mounts.append(mount)
    problems += duplicate_paths(mounts)
    problems += _check_shared_clients([m for m in mounts if m["state"] == "present"])
    return mounts, problems


def _check_mount(entry, resolver, rdma, fstab_paths):
    item = entry.item
    unknown = sorted(map(str, set(item) - set(FIELDS)))
    if unknown:
        entry.problem(f"unknown field {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    path = item.get("path")
    state = item.get("state", "present")
    reason = check_path(path) or (None if state in STATES else f"state {state!r} is not present or absent")
    if reason:
        entry.problem(reason)
        return None
    if path in fstab_paths:
        entry.problem(
            f"/etc/fstab mounts {path} too; remove that line so that one owner persists this mount (a mount unit "
            "in /etc/systemd/system silently wins over it)"
        )
    mount = {"index": entry.index, "where": entry.where(), "path": path, "state": state}
    if state == "absent":
        return mount
    version, proto = entry.version_and_proto(rdma)
    servers, addresses = entry.servers(version, resolver)
    export = entry.export()
    numbers = entry.numbers(proto)
    extra = entry.options(version)
    if entry.problems:
        return None
    mount.update(
        servers=servers,
        addresses=addresses,
        export=export,
        version=version,
        proto=proto,
        port=numbers["port"] if numbers["port"] is not None else (NFS_RDMA_PORT if proto == "rdma" else None),
        max_connect=len(servers) if len(servers) > 1 else None,
        extra=extra,
        source=source(servers[0], export),
        **{k: numbers[k] for k in ("nconnect", "rsize", "wsize", "hard", "timeo", "retrans")},
        **{k: numbers[k] for k in ("automount", "mount_timeout", "idle_timeout")},
    )
    mount["options"] = render_options(mount_options(mount))
    return mount


def elsewhere_mounts(elsewhere):
    """The groups of another module's lists, {variable: [[path, state], ...]} (paths only, no secret), as
    overlap_problems takes them: [(variable, [(where, path), ...])] of the present ones with a usable path
    (a bad one is the other module's to report)."""
    groups = []
    for variable, pairs in sorted((elsewhere or {}).items()):
        present = []
        for index, pair in enumerate(pairs if isinstance(pairs, list) else []):
            path, state = ([*list(pair), None, None])[:2] if isinstance(pair, (list, tuple)) else (None, None)
            if isinstance(path, str) and check_path(path) is None and state in (None, "present"):
                present.append((f"{variable}[{index}] ({path})", path))
        groups.append((variable, present))
    return groups


def overlap_problems(groups, involving=None):
    """Present mounts of every list (NFS, CPFS, JuiceFS) whose paths are equal or nested: a mount over or
    inside another hides what is below it, and ties the two together at every mount, unmount and boot.
    groups: [(group, [(where, path), ...])]; an equal path within one group is that group's own check's to
    report. involving: report only pairs with a mount of that group."""
    flat = [(group, where, path) for group, entries in groups for where, path in entries]
    problems = []
    for position, (group_a, where_a, path_a) in enumerate(flat):
        for group_b, where_b, path_b in flat[position + 1 :]:
            if involving is not None and involving not in (group_a, group_b):
                continue
            if path_a == path_b:
                if group_a != group_b:
                    problems.append(f"{where_b}: path {path_b} is also {where_a.split(' ')[0]}'s; one mount per path")
                continue
            if _under(path_b, path_a) or _under(path_a, path_b):
                (inner, inner_path), (outer, outer_path) = sorted(
                    ((where_a, path_a), (where_b, path_b)), key=lambda pair: -len(pair[1])
                )
                problems.append(
                    f"{inner}: path {inner_path} lies inside {outer.split(' ')[0]}'s mount {outer_path}: one would "
                    "hide the other's files, and each unmount and boot would wait on both; give each mount a "
                    "directory of its own, neither inside the other"
                )
    return problems


def _check_shared_clients(mounts):
    """The kernel keeps one nfs_client (its connections) per server address, protocol, version and
    port, for every mount that reaches that server: nconnect and max_connect are the first mount's
    for all of them. Two wanted mounts that disagree would never both be what they ask."""
    problems = []
    for position, first in enumerate(mounts):
        for second in mounts[position + 1 :]:
            if _client_of(first) != _client_of(second):
                continue
            shared = {a for group in first["addresses"] for a in group} & {
                a for group in second["addresses"] for a in group
            }
            for field in ("nconnect", "max_connect") if shared else ():
                if first[field] != second[field]:
                    problems.append(
                        f"{second['where']}: {field} {second[field] or 1} differs from {first['where']}'s "
                        f"{first[field] or 1}, and both reach {', '.join(sorted(shared))} over {first['proto']} with "
                        f"NFS {first['version']}: the kernel shares one set of connections between such mounts "
                        "(the first mount's), so give them the same value"
                    )
    return problems


def _client_of(mount):
    return mount["proto"], mount["version"], mount["port"] or NFS_PORT


def source(server, export):
    host = f"[{server}]" if ":" in server else server
    return f"{host}:{export}"


def mount_options(mount):
    """The Options= of the unit: the managed options in a fixed order, then the extra ones."""
    pairs = [("vers", mount["version"]), ("proto", mount["proto"])]
    if mount["port"] is not None:
        pairs.append(("port", str(mount["port"])))
    if mount["nconnect"] is not None:
        pairs.append(("nconnect", str(mount["nconnect"])))
    if mount["max_connect"]:
        pairs.append(("max_connect", str(mount["max_connect"])))
    pairs += [
        ("rsize", str(mount["rsize"])),
        ("wsize", str(mount["wsize"])),
        ("hard" if mount["hard"] else "soft", None),
        ("timeo", str(mount["timeo"])),
        ("retrans", str(mount["retrans"])),
    ]
    pairs += mount["extra"]
    # Read by systemd (nofail: boot does not wait for the mount; _netdev: it needs the network);
    # mount(8) keeps both from the kernel.
    pairs += [("_netdev", None), ("nofail", None)]
    return pairs


# --- unit files -------------------------------------------------------------------------------


def render_units(mount):
    """{file name: text} of every unit a present mount needs: the mount, its automount, its trunks."""
    primary = unit_name(mount["path"])
    rdma = mount["proto"] == "rdma"
    modules = ["After=systemd-modules-load.service", "Wants=systemd-modules-load.service"] if rdma else []
    servers = ", ".join(mount["servers"])
    units = {}
    mount_lines = [
        MARKER,
        "[Unit]",
        f"Description=Shared file system {mount['path']} (NFS {mount['version']} over {mount['proto']} from {servers})",
        # Network mounts are ordered after network-online.target already; said here for the reader.
        "After=network-online.target",
        "Wants=network-online.target",
        *modules,
        "",
        "[Mount]",
        f"What={mount['source']}",
        f"Where={mount['path']}",
        "Type=nfs",
        f"Options={mount['options']}",
        f"TimeoutSec={mount['mount_timeout']}",
    ]
    if not mount["automount"]:
        mount_lines += ["", "[Install]", "WantedBy=remote-fs.target"]
    units[primary] = "\n".join(mount_lines) + "\n"
    if mount["automount"]:
        units[unit_name(mount["path"], "automount")] = "\n".join(
            [
                MARKER,
                "[Unit]",
                f"Description=Automount of the shared file system {mount['path']}",
                "",
                "[Automount]",
                f"Where={mount['path']}",
                f"TimeoutIdleSec={mount['idle_timeout']}",
                "",
                "[Install]",
                "WantedBy=remote-fs.target",
                "",
            ]
        )
    for index, server in enumerate(mount["servers"][1:], 1):
        where = trunk_path(mount["path"], index)
        units[unit_name(where)] = "\n".join(
            [
                MARKER,
                "[Unit]",
                f"Description=Session-trunked transport to {server} for {mount['path']}",
                # Mounted after the first address, so that the kernel adds this address to that
                # mount's session (same server owner and scope) instead of making a client of its own;
                # stopped with it.
                f"BindsTo={primary}",
                f"After={primary}",
                *modules,
                "",
                "[Mount]",
                f"What={source(server, mount['export'])}",
                f"Where={where}",
                "Type=nfs",
                f"Options={mount['options']}",
                "DirectoryMode=0700",
                f"TimeoutSec={mount['mount_timeout']}",
                "",
                "[Install]",
                f"WantedBy={primary}",
                "",
            ]
        )
    return units


def unit_mount_settings(text):
    """What, Type and Options of a mount unit's [Mount] section: what a remount must follow."""
    if text is None:
        return None
    settings, section = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Mount" and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            if key.strip() in ("What", "Type", "Options"):
                settings[key.strip()] = value.strip()
    return settings


# --- what the kernel shows ------------------------------------------------------------------------


def _address(text):
    try:
        return str(ipaddress.ip_address((text or "").strip("[]").split("%")[0]))
    except ValueError:
        return text


def _shown_int(options, key, default=None):
    value = options.get(key)
    return int(value) if _uint(value) else default


def compare(mount, entry):
    """(drift, notes) of a mounted NFS file system against the wanted mount, from mountinfo.

    drift: sentences, each an option the kernel shows otherwise than asked (a remount is due).
    notes: what differs for a reason no remount changes (a server that limits rsize).
    """
    drift, notes = _compare_managed(mount, entry)
    drift += _compare_extra(mount, entry)
    return drift, notes


def _compare_managed(mount, entry):
    drift, notes = [], []
    so = entry["super_options"]

    def differs(name, shown, wanted):
        if shown != wanted:
            drift.append(f"{name}: the kernel shows {shown if shown is not None else 'none'}, wanted {wanted}")

    differs("type", entry["fstype"], "nfs" if mount["version"] == "3" else "nfs4")
    differs("source", entry["source"], mount["source"])
    differs("vers", so.get("vers"), mount["version"])
    differs("proto", (so.get("proto") or "").rstrip("6") or None, mount["proto"])  # tcp6, rdma6: over IPv6
    differs("port", _shown_int(so, "port", NFS_PORT), mount["port"] or NFS_PORT)
    wanted_nconnect = mount["nconnect"] or 1
    if "nconnect" in so or mount["proto"] == "tcp":
        differs("nconnect", _shown_int(so, "nconnect", 1), wanted_nconnect)
    elif wanted_nconnect > 1:
        notes.append(
            f"nconnect={wanted_nconnect} is not in effect over RDMA: kernels before 6.9 open one RDMA connection "
            "whatever nconnect says, and do not show it"
        )
    if mount["version"] != "3":  # the kernel shows max_connect for NFSv4 only, and only above 1
        differs("max_connect", _shown_int(so, "max_connect", 1), mount["max_connect"] or 1)
    for field in ("rsize", "wsize"):
        shown = _shown_int(so, field)
        if shown is not None and shown < mount[field]:
            notes.append(f"{field}: the server limits it to {shown} (asked {mount[field]})")
        else:
            differs(field, shown, mount[field])
    shown_hard = "soft" not in so and "softerr" not in so
    if shown_hard != mount["hard"]:
        wanted = "hard" if mount["hard"] else "soft"
        drift.append(f"hard: the kernel mounts it {'hard' if shown_hard else 'soft'}, wanted {wanted}")
    differs("timeo", _shown_int(so, "timeo"), mount["timeo"])
    differs("retrans", _shown_int(so, "retrans"), mount["retrans"])
    if _address(so.get("addr")) not in {a for group in mount["addresses"] for a in group}:
        drift.append(f"addr: the kernel shows {so.get('addr') or 'none'}, no address of {', '.join(mount['servers'])}")
    return drift, notes


def _compare_extra(mount, entry):
    """Drift in the extra options that the kernel shows as they were given."""
    drift = []
    so, mo = entry["super_options"], entry["mount_options"]
    extra = dict(mount["extra"])
    if ("ro" in mo) != ("ro" in extra):
        drift.append(
            f"ro: the kernel mounts it {'ro' if 'ro' in mo else 'rw'}, wanted {'ro' if 'ro' in extra else 'rw'}"
        )
    drift += [
        f"{flag}: asked, and the kernel does not show it"
        for flag in SHOWN_MOUNT_FLAGS
        if flag in extra and flag not in mo
    ]
    for flag in SHOWN_SUPER_FLAGS:
        if (flag in extra) != (flag in so):
            asked = "asked" if flag in extra else "not asked"
            drift.append(f"{flag}: {asked}, and the kernel shows it {'set' if flag in so else 'unset'}")
    for key in (k for k in SHOWN_SUPER_VALUES if k in extra):
        shown = so.get(key, "all" if key == "lookupcache" else None)
        wanted = extra[key].split(":") if key == "sec" else [{"positive": "pos"}.get(extra[key], extra[key])]
        if shown not in wanted:  # sec lists flavours the server picks one of
            drift.append(f"{key}: the kernel shows {shown or 'none'}, wanted {' or '.join(wanted)}")
    return drift


# Client-wide settings: changed only once every mount on the same nfs_client is gone.
CLIENT_OPTIONS = ("nconnect", "max_connect")


def client_key(entry):
    so = entry["super_options"]
    proto = so.get("proto") or ""
    return (_address(so.get("addr")), proto.rstrip("6"), so.get("vers"), so.get("port"))


# --- who holds a mount -------------------------------------------------------------------------


def _under(path, mount_path):
    return path == mount_path or path.startswith(mount_path.rstrip("/") + "/")


def _devno_of_maps(field):
    major, _, minor = field.partition(":")
    return f"{int(major, 16)}:{int(minor, 16)}"


def holders(mountinfo, ids, mount_path, proc="/proc", limit=20):
    """Who keeps the mounts with these mount IDs busy: mounts below them, and processes by their
    open files (the mnt_id of /proc/<pid>/fdinfo), working and root directory (by path) and mapped
    files (by device number and path). Nothing on the mount itself is touched: a stat there would
    hang on a dead server.

    A process that ends or closes a file while it is read is skipped, and so is one whose fds cannot
    be read (an LSM may refuse even root): the kernel refuses to unmount a busy mount in any case,
    and that refusal is reported as pending too.
    """
    ids = set(ids)
    devnos = {m["devno"] for m in mountinfo if m["id"] in ids}
    found = [
        {"mount": m["path"], "fstype": m["fstype"]} for m in mountinfo if m["parent"] in ids and m["id"] not in ids
    ]
    try:
        pids = sorted((name for name in os.listdir(proc) if name.isdigit()), key=int)
    except OSError as error:
        raise StateError(f"cannot list the processes in {proc}: {error.strerror}") from error
    for pid in pids:
        if len(found) >= limit:
            break
        try:
            uses = _uses(os.path.join(proc, pid), ids, devnos, mount_path)
            if uses:
                with open(os.path.join(proc, pid, "comm")) as handle:
                    found.append({"pid": int(pid), "command": handle.read().strip(), "uses": uses[:5]})
        except OSError:
            continue
    return found


def _uses(base, ids, devnos, mount_path):
    """How one process (/proc/<pid>) uses the mount: open files, directories, mapped files."""
    uses = []
    for fd in sorted(os.listdir(os.path.join(base, "fd")), key=lambda name: int(name) if name.isdigit() else -1):
        with open(os.path.join(base, "fdinfo", fd)) as handle:
            info = dict(line.split(":", 1) for line in handle if ":" in line)
        mnt_id = info.get("mnt_id", "").strip()
        if _uint(mnt_id) and int(mnt_id) in ids:
            uses.append(f"fd {fd}: {os.readlink(os.path.join(base, 'fd', fd))}")
    for link in ("cwd", "root"):
        target = os.readlink(os.path.join(base, link))
        if _under(target, mount_path):
            uses.append(f"{link}: {target}")
    mapped = set()
    with open(os.path.join(base, "maps")) as handle:
        for line in handle:
            fields = line.split(None, 5)
            if len(fields) == 6 and ":" in fields[3] and _under(fields[5].strip(), mount_path):
                mapped.update([fields[5].strip()] if _devno_of_maps(fields[3]) in devnos else [])
    return uses + [f"mapped: {path}" for path in sorted(mapped)]


def describe_holders(found):
    parts = []
    for holder in found:
        if "mount" in holder:
            parts.append(f"{holder['mount']} ({holder['fstype']}) mounted below it")
        else:
            parts.append(f"{holder['command']} (pid {holder['pid']}; {', '.join(holder['uses'])})")
    return ", ".join(parts)


# --- reading the node -----------------------------------------------------------------------------


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateError(f"cannot read {path}: {error.strerror}") from error


def fstab_mount_points(path):
    """The mount points /etc/fstab names (a missing fstab names none)."""
    points = set()
    for line in (_read(path) or "").splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            points.add(_unescape(fields[1]))
    return points


def rdma_devices(path):
    """The RDMA devices of the node (/sys/class/infiniband); none where the directory is missing."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise StateError(f"cannot list {path}: {error.strerror}") from error


def finish(module, run, paths, result, fact):
    """A mount module's whole call: run(module, paths, result), then exit, or fail with what was done so far;
    either way the pending remounts become the fact named."""
    try:
        run(module, paths, result)
    except (StateError, ApplyError) as error:
        result["ansible_facts"] = {fact: result["pending"]}
        module.fail_json(msg=str(error), **result)
    result["ansible_facts"] = {fact: result["pending"]}
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


class Node:
    """The node as the plan sees it: mountinfo, unit files, their links, pending marks, holders."""

    def __init__(self, paths):
        self.paths = paths
        text = _read(paths.mountinfo)
        if not text:
            raise StateError(f"{paths.mountinfo} is missing or empty: what is mounted cannot be told")
        self.mountinfo = parse_mountinfo(text)

    def at(self, path):
        return [m for m in self.mountinfo if m["path"] == path]

    def unit(self, name):
        return _read(os.path.join(self.paths.unit_dir, name))

    def unit_files(self):
        try:
            return sorted(os.listdir(self.paths.unit_dir))
        except FileNotFoundError:
            return []

    def linked(self, unit, target):
        return os.path.lexists(os.path.join(self.paths.unit_dir, f"{target}.wants", unit))

    def mark(self, unit):
        text = _read(os.path.join(self.paths.pending_dir, unit))
        return int(text) if text and text.strip().isdigit() else None

    def holders(self, ids, path):
        return holders(self.mountinfo, ids, path, self.paths.proc)

    def module_loaded(self, name):
        return os.path.isdir(os.path.join(self.paths.sys_module, name))


# --- the plan --------------------------------------------------------------------------------


def _top_nfs(entries):
    """The NFS mount a path shows (the last one mounted there, above an automount point)."""
    nfs = [m for m in entries if m["fstype"] in NFS_FSTYPES]
    return nfs[-1] if nfs else None


def _installable(text):
    return text is not None and "\n[Install]\n" in text


def _trunk_index(path, candidate):
    """The index of a trunk mount point or unit of the mount at path, or None."""
    prefix = f"{TRUNK_ROOT}{path}/"
    if candidate.startswith(prefix) and candidate[len(prefix) :].isdigit():
        return int(candidate[len(prefix) :])
    stem = escape_path(f"{TRUNK_ROOT}{path}") + "-"
    if candidate.startswith(stem) and candidate.endswith(".mount") and candidate[len(stem) : -6].isdigit():
        return int(candidate[len(stem) : -6])
    return None


def _kernel_view(entry):
    if entry is None:
        return None
    so = entry["super_options"]
    keys = ("vers", "proto", "port", "nconnect", "max_connect", "rsize", "wsize", "hard", "soft", "timeo", "retrans")
    return {
        "id": entry["id"],
        "source": entry["source"],
        "fstype": entry["fstype"],
        "options": render_options([(k, v) for k, v in so.items() if k in keys]),  # in the kernel's order
        "addr": so.get("addr"),
    }


class Planner:
    """Builds the plan of plan(): one method per kind of mount, all writing into self.out."""

    def __init__(self, node):
        self.node = node
        self.out = {
            "files": [],
            "modules": [],
            "stop": [],
            "disable": [],
            "enable": [],
            "start": [],
            "marks": {},
            "unmarks": [],
            "pending": [],
            "mounts": [],
            "problems": [],
        }
        self.cycles = []  # unmounts (then mounts) still to decide on: held or blocked ones become pending
        self.files = node.unit_files()

    def put(self, name, text):
        before = self.node.unit(name)
        if before != text:
            self.out["files"].append(
                {"path": os.path.join(self.node.paths.unit_dir, name), "before": before, "after": text}
            )

    def drop(self, name):
        text = self.node.unit(name)
        if text is not None:
            if _installable(text):
                self.out["disable"].append(name)
            self.out["files"].append(
                {"path": os.path.join(self.node.paths.unit_dir, name), "before": text, "after": None}
            )

    def modules(self, mounts):
        """rpcrdma at every boot (modules-load.d) and now, while any mount runs over RDMA."""
        text = None
        if any(m["state"] == "present" and m["proto"] == "rdma" for m in mounts):
            text = "# NFS over RDMA, loaded at every boot; written by hpc-datapath (role shared_mounts)\n"
            text += "".join(f"{name}\n" for name in MODULES)
            self.out["modules"] = [name for name in MODULES if not self.node.module_loaded(name)]
        current = _read(self.node.paths.modules_load)
        if current != text:
            self.out["files"].append({"path": self.node.paths.modules_load, "before": current, "after": text})

    def state_of(self, mount):
        """What the node has of a mount: its NFS mount, automount point, trunks (units and mounts), mark."""
        path = mount["path"]
        entries = self.node.at(path)
        return {
            "nfs": _top_nfs(entries),
            "armed": any(m["fstype"] == "autofs" for m in entries),
            "foreign": [m for m in entries if m["fstype"] not in NFS_FSTYPES and m["fstype"] != "autofs"],
            "trunk_units": [n for n in self.files if _trunk_index(path, n) is not None],
            "trunk_mounts": {
                _trunk_index(path, m["path"]): m
                for m in self.node.mountinfo
                if m["fstype"] in NFS_FSTYPES and _trunk_index(path, m["path"]) is not None
            },
            "mark": self.node.mark(unit_name(path)),
        }

    def add(self, mount):
        path = mount["path"]
        have = self.state_of(mount)
        status = {"path": path, "state": mount["state"], "unit": unit_name(path), "kernel": _kernel_view(have["nfs"])}
        self.out["mounts"].append(status)
        if mount["state"] == "absent":
            self.absent(mount, have)
        elif have["foreign"]:
            other = have["foreign"][-1]
            self.out["problems"].append(
                f"{mount['where']}: {path} holds {other['fstype']} from {other['source']}, which a shared mount there "
                "would hide; choose another path, or unmount that first"
            )
        else:
            self.present(mount, have, status)

    def absent(self, mount, have):
        path = mount["path"]
        primary, auto = unit_name(path), unit_name(path, "automount")
        for name in (primary, auto, *have["trunk_units"]):
            self.drop(name)
        nfs, armed = have["nfs"], have["armed"]
        if nfs or armed or have["trunk_mounts"]:
            self.cycles.append(
                {
                    "path": path,
                    "units": [*([auto] if armed else []), *([primary] if nfs else []), *_units(have["trunk_mounts"])],
                    "ids": [nfs["id"]] if nfs else [],
                    "why": "state: absent",
                    "remount": False,
                }
            )
        if have["mark"] is not None:
            self.out["unmarks"].append(primary)

    def persist(self, mount, have):
        """Unit files and their links; returns the units of the mount by name."""
        path = mount["path"]
        primary, auto = unit_name(path), unit_name(path, "automount")
        old_primary = self.node.unit(primary)
        units = render_units(mount)
        for name, text in units.items():
            self.put(name, text)
        for name in have["trunk_units"]:
            if name not in units:
                self.drop(name)
        if mount["automount"]:
            if _installable(old_primary):
                self.out["disable"].append(primary)  # remote-fs.target now wants the automount instead
            if not self.node.linked(auto, "remote-fs.target"):
                self.out["enable"].append(auto)
        else:
            self.drop(auto)
            if not self.node.linked(primary, "remote-fs.target"):
                self.out["enable"].append(primary)
        self.out["enable"] += [n for n in units if _is_trunk(n) and not self.node.linked(n, primary)]
        return units

    def present(self, mount, have, status):
        path, nfs, armed = mount["path"], have["nfs"], have["armed"]
        primary, auto = unit_name(path), unit_name(path, "automount")
        old = unit_mount_settings(self.node.unit(primary))
        units = self.persist(mount, have)
        trunks = [n for n in units if _is_trunk(n)]
        drift, notes = compare(mount, nfs) if nfs else ([], [])
        status.update(source=mount["source"], options=mount["options"], automount=mount["automount"])
        status.update(drift=drift, notes=notes)
        reasons = list(drift)
        new = unit_mount_settings(units[primary])
        if nfs and old is not None and old != new:
            reasons.append(f"the unit's {', '.join(k for k in sorted(new) if old.get(k) != new[k])} changed")
        if have["mark"] is not None and nfs and have["mark"] == nfs["id"] and not reasons:
            reasons.append("a remount is pending since an earlier run")
        elif have["mark"] is not None and (nfs is None or have["mark"] != nfs["id"]):
            self.out["unmarks"].append(primary)  # remounted or unmounted since: the mark is stale
        if nfs and mount["automount"] != armed:
            reasons.append("automount " + ("on" if mount["automount"] else "off"))
        if reasons or (armed and not mount["automount"]):
            keep_armed = armed and mount["automount"]
            self.cycles.append(
                {
                    "path": path,
                    "units": [
                        *([auto] if armed and not keep_armed else []),
                        *([primary] if nfs else []),
                        *_units(have["trunk_mounts"]),
                    ],
                    "ids": [nfs["id"]] if nfs else [],
                    "trunk_ids": [m["id"] for m in have["trunk_mounts"].values()],
                    "why": "; ".join(reasons) or "automount off",
                    "remount": bool(nfs),
                    "client": [r.split(":")[0] for r in drift if r.split(":")[0] in CLIENT_OPTIONS],
                    "key": client_key(nfs) if nfs else None,
                    "then": [*([auto] if mount["automount"] and not keep_armed else []), primary, *trunks],
                }
            )
            status["remount"] = self.cycles[-1]["why"]
            return
        stale = {i: m for i, m in have["trunk_mounts"].items() if i >= len(mount["servers"])}
        if stale:
            self.cycles.append(
                {"path": path, "units": _units(stale), "ids": [], "why": "server no longer listed", "remount": False}
            )
        start = [auto] if mount["automount"] and not armed else []
        start += [primary] if not mount["automount"] and nfs is None else []
        if nfs is not None or not mount["automount"]:  # trunks ride on the first address's mount
            start += [n for i, n in enumerate(trunks, 1) if i not in have["trunk_mounts"]]
        if start:
            self.out["start"].append({"path": path, "units": start, "why": "not mounted" if nfs is None else "trunks"})

    def decide(self):
        """Which unmounts go ahead: none where a process or a mount below holds the mount, and a change
        of client-wide options (nconnect, max_connect) only where every mount on that client goes too."""
        held = {}
        for cycle in self.cycles:
            found = self.node.holders(cycle["ids"], cycle["path"]) if cycle["ids"] else []
            if found:
                held[cycle["path"]] = found
        blocked = self.blocked(held)
        for cycle in self.cycles:
            path, unit = cycle["path"], unit_name(cycle["path"])
            if path not in held and path not in blocked:
                self.out["stop"].append({k: cycle[k] for k in ("path", "units", "ids", "why", "remount")})
                if cycle.get("then"):
                    self.out["start"].append(
                        {"path": path, "units": cycle["then"], "why": cycle["why"], "after_stop": True}
                    )
                if self.node.mark(unit) is not None and unit not in self.out["unmarks"]:
                    self.out["unmarks"].append(unit)
                continue
            if path in held:
                why, found = f"{cycle['why']}; held by {describe_holders(held[path])}", held[path]
            else:
                key, others = cycle["key"], ", ".join(sorted({m["path"] for m in blocked[path]}))
                why = (
                    f"{cycle['why']}; the kernel keeps one set of connections for every mount of {key[0]} over "
                    f"{key[1]} with NFS {key[2]}, and {others} stays mounted: {', '.join(cycle['client'])} changes "
                    "only once all of them are unmounted"
                )
                found = [{"mount": m["path"], "fstype": m["fstype"]} for m in blocked[path]]
            self.out["pending"].append({"path": path, "why": why, "holders": found})
            if cycle["remount"] and self.node.mark(unit) != cycle["ids"][0]:
                self.out["marks"][unit] = cycle["ids"][0]

    def blocked(self, held):
        """{path: the mounts that keep its nfs_client} for client-wide changes that cannot take effect."""
        going = {i for c in self.cycles if c["path"] not in held for i in (*c["ids"], *c.get("trunk_ids", ()))}
        blocked = {}
        again = True
        while again:  # a blocked unmount keeps its client, which may block another
            again = False
            for cycle in self.cycles:
                if cycle["path"] in held or cycle["path"] in blocked or not cycle.get("client"):
                    continue
                others = [
                    m
                    for m in self.node.mountinfo
                    if m["fstype"] in NFS_FSTYPES and client_key(m) == cycle["key"] and m["id"] not in going
                ]
                if others:
                    blocked[cycle["path"]] = others
                    going.difference_update((*cycle["ids"], *cycle.get("trunk_ids", ())))
                    again = True
        return blocked


def plan(mounts, node):
    """What to do, as a plain value; reads the node and changes nothing.

    files: [{path, before, after (None: remove)}]; modules: to load now; stop: [{path, units, ids,
    why, remount}]; disable, enable: units; start: [{path, units, why, after_stop}]; marks: {unit:
    mount id} of remounts left pending; unmarks: units whose mark goes; pending: [{path, why,
    holders}]; mounts: the state of each mount; problems: what stops the run before any change.
    """
    planner = Planner(node)
    planner.modules(mounts)
    for mount in mounts:
        planner.add(mount)
    planner.decide()
    return planner.out


def _units(trunk_mounts):
    return [unit_name(m["path"]) for _, m in sorted(trunk_mounts.items())]


def changes(planned):
    """Whether the plan changes the node (pending marks in /run are the run's own bookkeeping)."""
    return any(planned[key] for key in ("files", "modules", "stop", "disable", "enable", "start"))


def actions(planned):
    """The plan as lines, in the order apply() carries it out."""
    config = [c for c in planned["files"] if not c["path"].endswith((".mount", ".automount"))]
    units = [c for c in planned["files"] if c["path"].endswith((".mount", ".automount"))]
    lines = [f"{'remove' if c['after'] is None else 'write'} {c['path']}" for c in config]
    lines += [f"modprobe {name}" for name in planned["modules"]]
    lines += [f"systemctl stop {' '.join(s['units'])}  # {s['path']}: {s['why']}" for s in planned["stop"]]
    lines += [f"systemctl disable {unit}" for unit in planned["disable"]]
    lines += [f"{'remove' if c['after'] is None else 'write'} {c['path']}" for c in units]
    lines += ["systemctl daemon-reload"] if units else []
    lines += [f"systemctl enable {unit}" for unit in planned["enable"]]
    lines += [f"systemctl start {' '.join(s['units'])}  # {s['path']}: {s['why']}" for s in planned["start"]]
    return lines


# --- carrying it out --------------------------------------------------------------------------------


def _write_file(path, text):
    """Replace a file in one rename, mode 0644."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fchmod(handle.fileno(), 0o644)
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _is_trunk(unit):
    return unit.startswith(escape_path(TRUNK_ROOT) + "-")


class Applier:
    """Carries out a plan with a runner (argv -> (rc, stdout, stderr)) and records what it did."""

    def __init__(self, runner, paths):
        self.runner = runner
        self.paths = paths
        self.done = []
        self.pending = []
        self.warnings = []

    def run(self, argv, why):
        rc, out, err = self.runner(argv)
        self.done.append(" ".join(argv))
        if rc != 0:
            raise ApplyError(f"{' '.join(argv)} ({why}) failed (rc {rc}): {(err or out).strip()}")
        return out

    def journal(self, unit):
        rc, out, _ = self.runner(["journalctl", "--unit", unit, "--lines", "5", "--no-pager", "--output", "cat"])
        return " | ".join(line.strip() for line in out.splitlines() if line.strip()) if rc == 0 else ""

    def holders(self, step):
        if not step["ids"]:
            return []
        text = _read(self.paths.mountinfo)
        if not text:
            raise StateError(f"{self.paths.mountinfo} is missing or empty")
        return holders(parse_mountinfo(text), step["ids"], step["path"], self.paths.proc)

    def apply(self, planned):
        config = [c for c in planned["files"] if not c["path"].endswith((".mount", ".automount"))]
        units = [c for c in planned["files"] if c["path"].endswith((".mount", ".automount"))]
        for change in config:
            self.file(change)
        for name in planned["modules"]:
            self.run(["modprobe", name], "NFS over RDMA")
        marks = dict(planned["marks"])
        stopped = {step["path"] for step in planned["stop"] if self.stop(step, marks)}
        for unit in planned["disable"]:
            self.run(["systemctl", "disable", unit], "the unit goes or changes its mode")
        for change in units:
            self.file(change)
        if units:
            self.run(["systemctl", "daemon-reload"], "unit files changed")
        for unit in planned["enable"]:
            self.run(["systemctl", "enable", unit], "mounted at every boot")
        for step in planned["start"]:
            if not step.get("after_stop") or step["path"] in stopped:
                self.start(step)
        for unit in planned["unmarks"]:
            if unit not in marks:
                _remove(os.path.join(self.paths.pending_dir, unit))
        for unit, mount_id in marks.items():
            _write_file(os.path.join(self.paths.pending_dir, unit), f"{mount_id}\n")

    def stop(self, step, marks):
        """Unmount unless something holds the mount now; True where it went."""
        found = self.holders(step)  # opened since the plan was made?
        why = step["why"]
        if not found:
            rc, out, err = self.runner(["systemctl", "stop", *step["units"]])
            if rc == 0:
                self.done.append(f"systemctl stop {' '.join(step['units'])}")
                return True
            found = self.holders(step)
            why += f"; unmounting failed: {(err or out).strip()}"
        if found:
            why += f"; held by {describe_holders(found)}"
        self.pending.append({"path": step["path"], "why": why, "holders": found})
        if step["remount"]:
            marks[unit_name(step["path"])] = step["ids"][0]
        return False

    def file(self, change):
        if change["after"] is None:
            _remove(change["path"])
            self.done.append(f"remove {change['path']}")
        else:
            _write_file(change["path"], change["after"])
            self.done.append(f"write {change['path']}")

    def start(self, step):
        for unit in step["units"]:
            rc, out, err = self.runner(["systemctl", "start", unit])
            if rc == 0:
                self.done.append(f"systemctl start {unit}")
                continue
            journal = self.journal(unit)
            message = f"{step['path']}: systemctl start {unit} failed (rc {rc}): {(err or out).strip()}" + (
                f"; journal: {journal}" if journal else ""
            )
            if not _is_trunk(unit):
                raise ApplyError(message)
            # The first address carries the mount; a missing trunk costs bandwidth, never data.
            self.warnings.append(message)


def verify(mounts, paths, pending=()):
    """After applying, from mountinfo: (drift, trunks). drift lists every wanted mount that the
    kernel shows otherwise than asked (an error: the run fails) and every absent one still mounted;
    trunks tells for each extra server address whether the kernel session-trunked it (its mount
    shares the first address's client, so it shows that address) or made a client of its own."""
    text = _read(paths.mountinfo)
    if not text:
        raise StateError(f"{paths.mountinfo} is missing or empty")
    mountinfo = parse_mountinfo(text)
    skip = {p["path"] for p in pending}
    drift, trunks = [], []
    for mount in mounts:
        nfs = _top_nfs([m for m in mountinfo if m["path"] == mount["path"]])
        if mount["path"] in skip or nfs is None:
            continue
        if mount["state"] == "absent":
            drift.append(f"{mount['where']}: still mounted ({nfs['source']}) after it was unmounted")
            continue
        found, _ = compare(mount, nfs)
        if found:
            drift.append(f"{mount['where']}: after mounting, {'; '.join(found)}")
        first = _address(nfs["super_options"].get("addr"))
        for index, server in enumerate(mount["servers"][1:], 1):
            entry = _top_nfs([m for m in mountinfo if m["path"] == trunk_path(mount["path"], index)])
            shown = _address(entry["super_options"].get("addr")) if entry else None
            trunks.append(
                {
                    "path": mount["path"],
                    "server": server,
                    "trunked": shown == first,
                    "why": None
                    if shown == first
                    else "its mount failed"
                    if entry is None
                    else (
                        f"the kernel made a client of its own for {shown}: the server reports another server owner "
                        "or scope at this address, so it is not the same session"
                    ),
                }
            )
    return drift, trunks
