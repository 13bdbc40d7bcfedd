# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NAS-to-NAS data sync: fpsync (fpart + parallel rsync) from one directory tree to another.

Used by the `data_sync` module, and the same file is the program of each job's systemd service:

    python3 datasync.py run /etc/hpc-datapath/data-sync/<name>.json

so that a run started by the timer checks, copies, parses and reports exactly as a run started
from Ansible. Standard library only, Python 3.8 or newer.

A run, in order:
  1. takes the job's lock (a second run of the same job is refused, also while the rsync
     processes of a killed run still live: they inherit the lock's file descriptor);
  2. checks source and target again on the node (directories, mounted where required);
  3. runs fpsync with the job's rsync options (or their dry run), one rsync per partition of
     the tree, and reads every partition's log: each must end with rsync's statistics, every
     line must be one that rsync writes; anything else stops the run with what was seen;
  4. for a job with `delete`, lists what is on the target and not in the source, and deletes it
     only when the caller confirms the digest of exactly that listing (the module's run), never
     from the timer (the listing is reported as pending);
  5. writes a JSON report and a listing of every change, and returns the report.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

# --- what the tools and systemd accept ---------------------------------------------------------

# A job's name reaches unit names (hpc-data-sync-<name>.service), file names and command lines.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
# fpsync writes source and target into a `/bin/sh -c '...'` job line inside double quotes, so a
# path holds only characters no shell layer treats specially (names inside the trees are free:
# they reach rsync through fpart's NUL-separated lists, never a shell).
PATH_COMPONENT = re.compile(r"[A-Za-z0-9_.+@=-]+\Z")
# Total bandwidth, bytes per second with a binary unit: 500K, 200M, 1G.
BWLIMIT = re.compile(r"([1-9][0-9]{0,6})([KMG])\Z")
BWLIMIT_KIB = {"K": 1, "M": 1024, "G": 1024 * 1024}
# OnCalendar: what systemd.time(7) writes (digits, names, time zones like Europe/Berlin); no %
# (a unit file would expand it as a specifier), no newline, no quote.
SCHEDULE = re.compile(r"[A-Za-z0-9*:,./~ _+-]{1,200}\Z")
WORKERS_MAX = 64  # rsync processes at once on one client node
FILES_PER_JOB_MAX = 1000000
LIST_LIMIT_MAX = 10000
# Where a sync must never read from or write to: the system's trees, and the directories that are
# fine to hold a mount below them but never to be one whole tree of a sync themselves.
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
SYSTEM_DIRECTORIES = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/srv")

# The rsync of every partition: links, permissions, times, group, owner, devices and specials
# (fpsync's own default, less -v), numeric ids (a NAS keeps uids, not names), plain numbers, the
# statistics block, and one line per change in a form of our own. A real run adds --temp-dir.
RSYNC_OPTIONS = ("-lptgoD", "--numeric-ids", "--no-human-readable", "--stats")
ITEM_PREFIX = "HPCDS"
# %i itemize (11 characters), %l length, %n name (rsync escapes unprintable bytes as \#ooo). No
# blank: fpsync splits its -o value into words.
OUT_FORMAT = f"--out-format={ITEM_PREFIX}:%i:%l:%n"
# rsync writes each file to a temporary file and renames it into place once whole and verified.
# Beside the file, a killed rsync would leave `.<name>.<random>` for good; in this one directory at
# the target's top, each run removes what a killed run left, under the job's lock, before copying.
TEMP_DIR = ".hpc-data-sync-tmp"
# fpsync's own default for fpart (-O): NAS snapshot directories are never copied, and the
# deletion listing passes over them too (a target NAS's .snapshot is not extra data to delete).
EXCLUDED_NAMES = (".zfs", ".snapshot*", ".ckpt", TEMP_DIR)
RSYNC_MIN = (3, 1, 0)  # --no-human-readable, --stats as the --info=stats2 block read here
FPSYNC_TTY_NOTICE = re.compile(r"^\S*fpsync: \d+: set: can't access tty; job control turned off$")
DIGEST_CHARS = 16
STOP_GRACE_SECONDS = 10  # a stopped run's rsync processes get this long to remove their temp files


class Refused(Exception):
    """The job cannot run on this node as given (a check failed); nothing was changed."""


class ParseError(Exception):
    """A tool wrote something this code cannot read exactly: the run stops (fail closed)."""


# --- the job -----------------------------------------------------------------------------------

FIELDS = (
    "name",
    "source",
    "target",
    "schedule",
    "delete",
    "checksum",
    "bwlimit",
    "workers",
    "files_per_job",
    "state",
)
# Fields a job may leave out, taken from the role's data_sync_<field>.
DEFAULTED = ("schedule", "delete", "checksum", "bwlimit", "workers", "files_per_job")
# Settings of every job from the role, not per job.
SETTINGS = ("require_mount", "report_dir", "state_dir", "list_limit")


def _plain(path):
    return "/" + os.path.normpath(path).lstrip("/")


def _under(path, tree):
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def check_path(path, *, exists=os.path.isdir, realpath=os.path.realpath):
    """Why a source or target cannot be used, or None."""
    if not isinstance(path, str) or not path.startswith("/"):
        return f"{path!r} is not an absolute path"
    bad = [part for part in path.split("/")[1:] if not PATH_COMPONENT.match(part)]
    tree = next((t for t in SYSTEM_TREES if _under(path, t)), None)
    reason = None
    if _plain(path) != path:
        reason = f"{path!r} is not in its plain form (no //, /./, /../ or trailing /); write {_plain(path)!r}"
    elif bad:
        reason = (
            f"{path!r}: {bad[0]!r} holds characters that fpsync's shell command line would break on (spaces, "
            "quotes, $, `, ...); a path is made of A-Z a-z 0-9 . _ + @ = - and /"
        )
    elif path in SYSTEM_DIRECTORIES:
        reason = f"{path} is a directory of the system; sync a dedicated directory below it ({path.rstrip('/')}/<name>)"
    elif tree:
        reason = f"{path} is inside {tree}, which belongs to the system; sync a directory of a mounted NAS"
    elif not exists(path):
        reason = f"{path} is not a directory on this node"
    elif realpath(path) != path:
        reason = f"{path} leads through a symbolic link to {realpath(path)}; give the real path"
    return reason


def mount_point_of(path, ismount=os.path.ismount):
    """The mount point a path lies on (the path itself or its nearest ancestor that is one)."""
    current = path
    while not ismount(current) and current != "/":
        current = os.path.dirname(current)
    return current


def _int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.match(r"[0-9]{1,9}\Z", value):
        return int(value)
    return None


def bwlimit_kib(text):
    """Total KiB/s of a bandwidth limit ('200M' -> 204800), None for no limit; ValueError if malformed."""
    if text in (None, "", 0, "0"):
        return None
    match = BWLIMIT.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(
            f"{text!r} is not a bandwidth: a whole number and K, M or G (binary units, bytes per second), "
            "such as 500K, 200M, 1G; empty or null for no limit"
        )
    return int(match.group(1)) * BWLIMIT_KIB[match.group(2)]


def per_worker_kib(total_kib, workers):
    """rsync's --bwlimit is per process: each of the workers gets an equal share, never more."""
    return None if total_kib is None else max(1, total_kib // workers)


def check_jobs(
    items,
    defaults,
    settings,
    *,
    variable="data_sync_jobs",
    prefix="data_sync_",
    exists=os.path.isdir,
    ismount=os.path.ismount,
):
    """(jobs, problems): each item with every field filled in and checked, or why it cannot run.

    Every problem is a sentence that starts with the variable it is about. Paths are checked on
    this node: they must be directories, reached without symbolic links, outside the system's
    directories, on a mounted file system where settings['require_mount'] asks for it, and no
    job's source or target may lie inside (or be) another's target.
    """
    problems = []
    jobs = []
    if not isinstance(items, list):
        return [], [f"{variable} must be a list of jobs, not {type(items).__name__}"]
    for index, item in enumerate(items):
        where = f"{variable}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where} must be a dict with name, source and target")
            continue
        name = item.get("name")
        if isinstance(name, str) and NAME.match(name):
            where = f"{variable}[{index}] ({name})"
        unknown = sorted(set(item) - set(FIELDS))
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(FIELDS)}")
        job = {field: item[field] if field in item else defaults.get(field) for field in FIELDS}
        job.update({key: settings.get(key) for key in SETTINGS})
        job["state"] = item.get("state", "present")
        found = _check_job(job, where, prefix, exists=exists, ismount=ismount)
        problems.extend(found)
        jobs.append(job)
    problems.extend(_check_together(jobs, variable))
    return jobs, problems


def _check_job(job, where, prefix, *, exists, ismount):
    problems = []
    if not isinstance(job["name"], str) or not NAME.match(job["name"]):
        problems.append(
            f"{where}: name {job['name']!r} must be 1 to 32 of A-Z a-z 0-9 _ - starting with a letter or digit (it "
            "names the unit hpc-data-sync-<name>.service and the report <name>.json)"
        )
    if job["state"] not in ("present", "absent"):
        problems.append(f"{where}: state {job['state']!r} must be present or absent")
    elif job["state"] == "present":  # an absent job needs only its name: its units and job file are removed
        problems += _check_paths(job, where, exists=exists, ismount=ismount)
        problems += _check_values(job, where, prefix)
    return problems


def _check_paths(job, where, *, exists, ismount):
    problems = []
    for field in ("source", "target"):
        reason = check_path(job[field], exists=exists)
        if reason:
            problems.append(f"{where}: {field} {reason}")
        elif job["require_mount"] and mount_point_of(job[field], ismount) == "/":
            problems.append(
                f"{where}: {field} {job[field]} is on the root file system, not on a mounted one (is the NAS "
                "mounted?); data_sync_require_mount: false allows local directories"
            )
    source, target = job["source"], job["target"]
    if isinstance(source, str) and isinstance(target, str):
        if source == target:
            problems.append(f"{where}: source and target are the same directory {source}")
        elif _under(source, target) or _under(target, source):
            inner, outer = (source, target) if _under(source, target) else (target, source)
            problems.append(f"{where}: {inner} lies inside {outer}; source and target must be apart")
    return problems


def _check_values(job, where, prefix):
    problems = [
        f"{where}: {field} {job[field]!r} must be true or false"
        for field in ("delete", "checksum")
        if not isinstance(job[field], bool)
    ]
    try:
        bwlimit_kib(job["bwlimit"])
    except ValueError as error:
        problems.append(f"{where}: bwlimit {error}")
    for field, top in (("workers", WORKERS_MAX), ("files_per_job", FILES_PER_JOB_MAX)):
        value = _int(job[field])
        if value is None or not 1 <= value <= top:
            problems.append(f"{where}: {field} {job[field]!r} must be a whole number from 1 to {top}")
        else:
            job[field] = value
    schedule = job["schedule"]
    if schedule == "":
        job["schedule"] = None
    elif schedule is not None and (not isinstance(schedule, str) or not SCHEDULE.match(schedule)):
        problems.append(
            f"{where}: schedule {schedule!r} is not a systemd calendar expression (systemd.time(7): such as "
            "'*-*-* 02:00:00' or 'Mon..Fri 22:30'; no %, quotes or newlines)"
        )
    limit = _int(job["list_limit"])
    if limit is None or not 0 <= limit <= LIST_LIMIT_MAX:
        problems.append(f"{prefix}list_limit {job['list_limit']!r} must be a whole number from 0 to {LIST_LIMIT_MAX}")
    else:
        job["list_limit"] = limit
    for key in ("report_dir", "state_dir"):
        value = job[key]
        if not isinstance(value, str) or not value.startswith("/") or _plain(value) != value:
            problems.append(f"{prefix}{key} {value!r} must be an absolute path in its plain form")
    return problems


def _check_together(jobs, variable):
    """Names are unique, and no job writes where another job reads or writes."""
    problems = []
    seen = {}
    for job in jobs:
        name = job["name"]
        if isinstance(name, str) and name in seen:
            problems.append(f"{variable}: the name {name} is given to two jobs")
        seen[name] = job
    present = [
        job
        for job in jobs
        if job["state"] == "present" and isinstance(job["source"], str) and isinstance(job["target"], str)
    ]
    for position, job in enumerate(present):
        for other in present[position + 1 :]:
            for mine, theirs, what in (
                (job["target"], other["target"], "target"),
                (job["target"], other["source"], "source"),
                (other["target"], job["source"], "source"),
            ):
                if _under(mine, theirs) or _under(theirs, mine):
                    first, second = (job, other) if mine == job["target"] else (other, job)
                    problems.append(
                        f"{variable}: the target {first['target']} of {first['name']} and the {what} of "
                        f"{second['name']} overlap; one job's writes would change the other's tree"
                    )
    return problems


# --- the commands ------------------------------------------------------------------------------


def rsync_options(job, dry_run):
    """The rsync options of every partition, as one string for fpsync's -o (no blanks in a value)."""
    options = list(RSYNC_OPTIONS)
    if job["checksum"]:
        options.append("--checksum")
    share = per_worker_kib(bwlimit_kib(job["bwlimit"]), job["workers"])
    if share is not None:
        options.append(f"--bwlimit={share}")
    options.append(OUT_FORMAT)
    options.append("--dry-run" if dry_run else f"--temp-dir={os.path.join(job['target'], TEMP_DIR)}")
    return " ".join(options)


def fpart_options():
    return "|".join(part for name in EXCLUDED_NAMES for part in ("-x", name))


def fpsync_command(job, run_dir, dry_run, fpsync="fpsync"):
    """fpsync's command line: N workers, partitions of files_per_job, its run state in run_dir."""
    return [
        fpsync,
        "-n",
        str(job["workers"]),
        "-f",
        str(job["files_per_job"]),
        "-t",
        run_dir,
        "-d",
        run_dir,
        "-o",
        rsync_options(job, dry_run),
        "-O",
        fpart_options(),
        job["source"] + "/",
        job["target"] + "/",
    ]


def rsync_version(text):
    """(3, 2, 7) from `rsync --version`; ParseError when the first line is not rsync's."""
    match = re.match(r"rsync\s+version\s+v?(\d+)\.(\d+)\.(\d+)", text or "")
    if not match:
        raise ParseError(f"`rsync --version` printed {(text or '').splitlines()[:1]!r}, not rsync's version line")
    return tuple(int(part) for part in match.groups())


# --- reading rsync's logs ------------------------------------------------------------------------

_ITEM = re.compile(rf"{ITEM_PREFIX}:([<>ch.*][fdLDS][.+?a-zA-Z ]{{9}}|\*deleting  ):([0-9]+):(.+)\Z")
_STATS = {
    "files": re.compile(r"Number of files: ([0-9]+)(?: \((.*)\))?\Z"),
    "created": re.compile(r"Number of created files: ([0-9]+)(?: \((.*)\))?\Z"),
    "deleted": re.compile(r"Number of deleted files: ([0-9]+)(?: \((.*)\))?\Z"),
    "transferred": re.compile(r"Number of regular files transferred: ([0-9]+)\Z"),
    "total_size": re.compile(r"Total file size: ([0-9]+) bytes\Z"),
    "transferred_size": re.compile(r"Total transferred file size: ([0-9]+) bytes\Z"),
    "literal": re.compile(r"Literal data: ([0-9]+) bytes\Z"),
    "matched": re.compile(r"Matched data: ([0-9]+) bytes\Z"),
    "list_size": re.compile(r"File list size: ([0-9]+)\Z"),
    "list_generation": re.compile(r"File list generation time: ([0-9.]+) seconds\Z"),
    "list_transfer": re.compile(r"File list transfer time: ([0-9.]+) seconds\Z"),
    "sent": re.compile(r"Total bytes sent: ([0-9]+)\Z"),
    "received": re.compile(r"Total bytes received: ([0-9]+)\Z"),
}
_SUMMARY = (
    re.compile(r"sent [0-9]+ bytes  received [0-9]+ bytes  [0-9.]+ bytes/sec\Z"),
    re.compile(r"total size is [0-9]+  speedup is [0-9.]+(?: \(DRY RUN\))?\Z"),
)
# What rsync writes to stdout, not stderr, about an entry it could not replace (a directory of the
# target where the source has a file): a failure of that partition, named as rsync names it.
_STDOUT_FAILURES = (re.compile(r"cannot delete non-empty directory: .+\Z"),)
_KINDS = re.compile(r"(reg|dir|link|dev|special): ([0-9]+)")
# Lines rsync writes to stderr that are not failures: a file that vanished from a live source
# between fpart's crawl and rsync's read, and rsync's closing line for exactly that.
_VANISHED = (
    re.compile(r"file has vanished: \"(.*)\"\Z"),
    re.compile(r"rsync warning: some files vanished before they could be transferred \(code 24\)"),
)


def _parse_stdout(number, stdout):
    """(changes, statistics, failures) of a partition's stdout; ParseError on a line rsync does not write so."""
    items = []
    stats = {}
    failures = []
    for line in stdout.splitlines():
        match = _ITEM.match(line)
        if not line or any(pattern.match(line) for pattern in _SUMMARY):
            continue
        if any(pattern.match(line) for pattern in _STDOUT_FAILURES):
            failures.append(f"partition {number}: {line}")
            continue
        if match:
            items.append({"item": match.group(1), "size": int(match.group(2)), "name": match.group(3)})
            continue
        key, found = next(((key, p.match(line)) for key, p in _STATS.items() if p.match(line)), (None, None))
        if key is None:
            raise ParseError(f"partition {number}: rsync wrote a line this code does not know: {line!r}")
        if key in stats:
            raise ParseError(f"partition {number}: rsync wrote its statistics twice ({line!r})")
        stats[key] = found.group(1)
        if key == "files":
            stats["kinds"] = {kind: int(count) for kind, count in _KINDS.findall(found.group(2) or "")}
    return items, stats, failures


def parse_partition(number, stdout, stderr):
    """One partition's rsync log: its changes, statistics, failures and vanished files.

    The statistics block must be there, whole and once (a job killed or failed before the end has
    none); every other stdout line must be one of our change lines; anything else is a ParseError.
    """
    items, stats, failures = _parse_stdout(number, stdout)
    missing = [key for key in _STATS if key not in stats]
    if missing:
        raise ParseError(
            f"partition {number}: rsync's statistics are missing ({', '.join(missing)}): the job did not finish; "
            f"its last lines: {stdout.splitlines()[-3:]!r}, its errors: {stderr.splitlines()[-3:]!r}"
        )
    if stats["files"] != "0" and not stats["kinds"]:
        raise ParseError(f"partition {number}: 'Number of files: {stats['files']}' does not say what kinds they are")
    vanished = []
    for line in stderr.splitlines():
        found = _VANISHED[0].search(line)
        if found:
            vanished.append(found.group(1))
        elif line and not _VANISHED[1].search(line):
            failures.append(f"partition {number}: {line}")
    transferred_items = sum(1 for item in items if item["item"][:2] == ">f")
    counts = {
        "files_checked": stats["kinds"].get("reg", 0),
        "files_transferred": int(stats["transferred"]),
        "bytes_transferred": int(stats["transferred_size"]),
    }
    if transferred_items != counts["files_transferred"]:
        raise ParseError(
            f"partition {number}: rsync counts {counts['files_transferred']} files transferred but listed "
            f"{transferred_items}"
        )
    return {"number": number, "items": items, "counts": counts, "failures": failures, "vanished": vanished}


def read_run(run_dir):
    """Every partition of the one fpsync run in run_dir, parsed; ParseError where one is missing."""
    parts_root = os.path.join(run_dir, "parts")
    runs = sorted(os.listdir(parts_root)) if os.path.isdir(parts_root) else []
    if len(runs) != 1:
        raise ParseError(f"{parts_root} holds {len(runs)} fpsync runs, not one: {runs!r}")
    run_id = runs[0]
    numbers = []
    for entry in os.listdir(os.path.join(parts_root, run_id)):
        match = re.match(r"part\.([0-9]+)\Z", entry)
        if not match:
            raise ParseError(f"fpsync's partitions directory holds {entry!r}, not a part.<n> file")
        numbers.append(int(match.group(1)))
    log_dir = os.path.join(run_dir, "log", run_id)
    partitions = []
    for number in sorted(numbers):
        texts = []
        for suffix in ("stdout", "stderr"):
            path = os.path.join(log_dir, f"{number}.{suffix}")
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                    texts.append(handle.read())
            except FileNotFoundError:
                raise ParseError(f"partition {number} has no {suffix} log ({path}): its job never ran") from None
        partitions.append(parse_partition(number, *texts))
    return run_id, partitions


# --- what the target holds that the source does not --------------------------------------------


def _excluded(name):
    return any(fnmatch.fnmatchcase(name, os.fsencode(pattern)) for pattern in EXCLUDED_NAMES)


def extraneous(source, target):
    """Entries of the target that the source lacks, as (relative path bytes, is_dir), sorted.

    A directory the source lacks comes with everything below it. Symbolic links are entries, never
    followed; names fpart never copies (EXCLUDED_NAMES) are passed over at any depth.
    """
    found = []
    source_b, target_b = os.fsencode(source), os.fsencode(target)

    def below(relative):
        # everything inside a directory the source lacks
        with os.scandir(os.path.join(target_b, relative)) as entries:
            for entry in entries:
                path = os.path.join(relative, entry.name)
                is_dir = entry.is_dir(follow_symlinks=False)
                found.append((path, is_dir))
                if is_dir:
                    below(path)

    def walk(relative):
        with os.scandir(os.path.join(target_b, relative) if relative else target_b) as entries:
            for entry in entries:
                if _excluded(entry.name):
                    continue
                path = os.path.join(relative, entry.name) if relative else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                try:
                    mode = os.lstat(os.path.join(source_b, path)).st_mode
                except FileNotFoundError:
                    found.append((path, is_dir))
                    if is_dir:
                        below(path)
                    continue
                if is_dir and stat.S_ISDIR(mode):
                    walk(path)

    walk(b"")
    return sorted(found)


def listing_line(entry):
    path, is_dir = entry
    text = os.fsdecode(path) + ("/" if is_dir else "")
    return text.encode("unicode_escape", "backslashreplace").decode("ascii") if not text.isprintable() else text


def digest(entries):
    """The short name of a deletion listing: what an operator confirms (sha256 of the raw paths)."""
    data = b"\n".join(path + (b"/" if is_dir else b"") for path, is_dir in sorted(entries))
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def _open_parent(root_fd, relative):
    """A descriptor of the directory holding relative, reached without following any link."""
    fd = os.dup(root_fd)
    try:
        for part in relative.split(b"/")[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def delete_entries(source, target, entries):
    """Delete exactly the confirmed entries that are still not in the source: (deleted, kept).

    Deepest first, so that a directory is empty when its turn comes; a directory is only ever
    removed empty (rmdir), a file or link unlinked; each entry is found again by its name without
    following links, so a link swapped in since the listing leads nowhere.
    """
    deleted, kept = [], []
    source_b = os.fsencode(source)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for path, is_dir in sorted(entries, key=lambda entry: (-entry[0].count(b"/"), entry[0])):
            line = listing_line((path, is_dir))
            if os.path.lexists(os.path.join(source_b, path)):
                kept.append(f"{line}: now in the source")
                continue
            try:
                parent = _open_parent(root_fd, path)
            except OSError as error:
                kept.append(f"{line}: {error.strerror}")
                continue
            name = path.rsplit(b"/", 1)[-1]
            try:
                mode = os.lstat(name, dir_fd=parent).st_mode
                if stat.S_ISDIR(mode) != is_dir:
                    kept.append(f"{line}: changed its type since it was listed")
                elif is_dir:
                    os.rmdir(name, dir_fd=parent)
                    deleted.append(line)
                else:
                    os.unlink(name, dir_fd=parent)
                    deleted.append(line)
            except OSError as error:
                kept.append(f"{line}: {error.strerror}")
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)
    return deleted, kept


# --- a run -------------------------------------------------------------------------------------


@contextlib.contextmanager
def job_lock(state_dir, name):
    """Hold the job's lock; Refused when another run (or its surviving rsync processes) holds it."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, f"{name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refused(
                f"{name}: another run of this job holds {path} (a run in progress, or the rsync processes of a "
                "killed one still running)"
            ) from None
        yield fd
    finally:
        os.close(fd)


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _stop(process):
    """Stop fpsync and every rsync it started (one process group): TERM, then KILL after the grace time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(STOP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def _write_atomic(path, text):
    directory = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(text)
            os.fchmod(out.fileno(), 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def report_paths(job, dry_run):
    stem = os.path.join(job["report_dir"], job["name"] + (".dry-run" if dry_run else ""))
    return {"report": stem + ".json", "changes": stem + ".changes.txt", "deletions": stem + ".deletions.txt"}


def check_now(job, ismount=os.path.ismount):
    """The checks that can change between the job's writing and its run: Refused if one fails."""
    for field in ("source", "target"):
        reason = check_path(job[field])
        if reason:
            raise Refused(f"{job['name']}: {field} {reason}")
        if job["require_mount"] and mount_point_of(job[field], ismount) == "/":
            raise Refused(
                f"{job['name']}: {field} {job[field]} is on the root file system now, not on a mounted one (is the "
                "NAS mounted?)"
            )


def run(job, *, dry_run=False, delete_confirm=None, trigger="ansible", write=True, which=None, clock=time):
    """One run of a job; returns its report (also written under report_dir when write).

    dry_run: rsync's --dry-run, nothing on the target changes; the deletion listing is made for
    every job. delete_confirm: the digest of the deletion listing the caller saw; only a run with
    the job's delete true and the digest of the listing made after its copy deletes anything.
    Raises Refused (nothing done) or returns a report whose 'error' says why it stopped.
    """
    which = which or shutil.which
    fpsync, rsync = which("fpsync"), which("rsync")
    if not fpsync or not rsync:
        missing = [tool for tool, path in (("fpsync", fpsync), ("rsync", rsync)) if not path]
        raise Refused(f"{job['name']}: {' and '.join(missing)} missing on this node (the packages fpart and rsync)")
    version = rsync_version(subprocess.run([rsync, "--version"], capture_output=True, text=True, check=False).stdout)
    if version < RSYNC_MIN:
        raise Refused(f"{job['name']}: rsync {'.'.join(map(str, version))} is older than 3.1.0, which this code needs")
    check_now(job)
    paths = report_paths(job, dry_run)
    report = {
        "name": job["name"],
        "source": job["source"],
        "target": job["target"],
        "dry_run": dry_run,
        "trigger": trigger,
        "checksum": job["checksum"],
        "bwlimit": job["bwlimit"] or None,
        "workers": job["workers"],
        "started": _now(),
        "finished": None,
        "seconds": None,
        "partitions": 0,
        "files_checked": 0,
        "files_transferred": 0,
        "bytes_transferred": 0,
        "bytes_per_second": 0,
        "failures": [],
        "vanished": [],
        "changes": [],
        "changes_count": 0,
        "changes_file": paths["changes"] if write else None,
        "report_file": paths["report"] if write else None,
        "deletions": {"state": "not listed", "count": 0, "digest": None, "listed": [], "kept": [], "deleted": 0},
        "command": None,
        "error": None,
    }
    with job_lock(job["state_dir"], job["name"]) as lock_fd:
        run_root = os.path.join(job["state_dir"], job["name"])
        run_dir = os.path.join(run_root, "dry-run" if dry_run else "run")
        shutil.rmtree(run_dir, ignore_errors=True)  # the previous run's state; ours alone, under our lock
        os.makedirs(run_dir, mode=0o700)
        if not dry_run:
            _empty_temp_dir(job["target"])
        command = fpsync_command(job, run_dir, dry_run, fpsync=fpsync)
        report["command"] = shlex.join(command)
        started = clock.monotonic()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="surrogateescape",
            # A process group of its own, to stop them all (_stop), in the caller's session: a timer's
            # service, or a test, finds every process of the run in it.
            preexec_fn=os.setpgrp,  # noqa: PLW1509 (no threads here; start_new_session would leave the session)
            pass_fds=(lock_fd,),  # rsync processes that outlive us keep the job locked
        )
        try:
            out, err = process.communicate()
        finally:
            if process.returncode is None:
                _stop(process)
        report["seconds"] = round(clock.monotonic() - started, 3)
        if not dry_run:
            with contextlib.suppress(OSError):  # left there, not empty, only by a failed rsync
                _keeping_times(job["target"], os.rmdir, os.path.join(job["target"], TEMP_DIR))
        try:
            _read_fpsync(report, run_dir, process.returncode, out, err)
        except ParseError as error:
            report["error"] = str(error)
        if report["error"] is None and (dry_run or job["delete"]):
            _deletions(job, report, dry_run, delete_confirm, trigger)
        report["finished"] = _now()
        if write:
            _write_report(job, report, paths, run_dir)
    return report


def _keeping_times(directory, change, *args):
    """change(*args) in directory, its times as they were: rsync set them as the source's."""
    before = os.stat(directory)
    change(*args)
    os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))


def _empty_temp_dir(target):
    """Create the temporary directory of rsync's files, or remove what a killed run left in it."""
    path = os.path.join(target, TEMP_DIR)
    try:
        _keeping_times(target, os.mkdir, path, 0o700)
        return
    except FileExistsError:
        pass
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise Refused(f"{path} is not a directory: it is where rsync's temporary files go; move it away")
    for entry in os.scandir(path):
        if not entry.is_file(follow_symlinks=False):
            raise Refused(f"{entry.path} is not one of rsync's temporary files; move it away")
        os.unlink(entry.path)


def _read_fpsync(report, run_dir, returncode, out, err):
    own = [line for line in err.splitlines() if line and not FPSYNC_TTY_NOTICE.match(line)]
    try:
        _, partitions = read_run(run_dir)
    except ParseError as error:
        if returncode == 0:
            raise
        raise ParseError(f"fpsync exited {returncode} ({(own + out.splitlines())[-5:]!r}): {error}") from None
    changes = []
    for partition in partitions:
        for key, value in partition["counts"].items():
            if key in report:
                report[key] += value
        report["failures"] += partition["failures"]
        report["vanished"] += partition["vanished"]
        changes += [f"{item['item']} {item['size']} {item['name']}" for item in partition["items"]]
    report["partitions"] = len(partitions)
    report["_changes"] = changes
    report["changes_count"] = len(changes)
    seconds = report["seconds"] or 0
    report["bytes_per_second"] = int(report["bytes_transferred"] / seconds) if seconds > 0 else 0
    if returncode != 0 and not report["failures"]:
        raise ParseError(
            f"fpsync exited {returncode} with every partition clean; it said: {(own + out.splitlines())[-5:]!r}"
        )
    report["failures"] += [f"fpsync: {line}" for line in own]


def _deletions(job, report, dry_run, delete_confirm, trigger):
    entries = extraneous(job["source"], job["target"])
    lines = [listing_line(entry) for entry in entries]
    deletions = report["deletions"]
    deletions.update(count=len(entries), digest=digest(entries) if entries else None, _lines=lines)
    if not entries:
        deletions["state"] = "none"
    elif not job["delete"]:
        deletions["state"] = "kept"  # delete: false; listed by a dry run only
    elif dry_run or trigger != "ansible":
        deletions["state"] = "pending"
    elif delete_confirm != deletions["digest"]:
        deletions["state"] = "pending"
        seen = (
            f"the confirmed digest {delete_confirm} is not that of this listing (the source or the target changed "
            "since it was shown); read the listing again and confirm its digest"
            if delete_confirm
            else "nothing deletes without the listing's digest confirmed"
        )
        report["error"] = (
            f"{len(entries)} entries on the target are not in the source and were kept: {seen} "
            f"(data_sync_delete_confirm: {{{job['name']}: {deletions['digest']}}})"
        )
    else:
        deleted, kept = delete_entries(job["source"], job["target"], entries)
        deletions.update(state="deleted", deleted=len(deleted), kept=kept)


def _write_report(job, report, paths, run_dir):
    os.makedirs(job["report_dir"], mode=0o755, exist_ok=True)
    changes = report.pop("_changes", [])
    lines = report["deletions"].pop("_lines", [])
    limit = job["list_limit"]
    report["changes"] = changes[:limit]
    report["deletions"]["listed"] = lines[:limit]
    report["deletions"]["file"] = paths["deletions"] if lines else None
    _write_atomic(paths["changes"], "".join(line + "\n" for line in changes))
    if lines:
        _write_atomic(paths["deletions"], "".join(line + "\n" for line in lines))
    else:  # an older run's listing would read as this run's
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths["deletions"])
    report["summary"] = summary(report)
    _write_atomic(paths["report"], json.dumps(report, indent=2, sort_keys=True) + "\n")


def finish(job, report):
    """A report that was not written (check mode): cut its listings as a written one would be."""
    changes = report.pop("_changes", [])
    lines = report["deletions"].pop("_lines", [])
    report["changes"] = changes[: job["list_limit"]]
    report["deletions"]["listed"] = lines[: job["list_limit"]]
    report["summary"] = summary(report)
    return report


# --- what a person reads ------------------------------------------------------------------------


def human_bytes(count):
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # not reached


def summary(report):
    """A few lines for AWX's output: what was (or would be) copied, how fast, what failed, deletions."""
    name = report["name"]
    verb = "would copy" if report["dry_run"] else "copied"
    seconds = report["seconds"] or 0
    lines = [
        f"{name}: {report['source']} -> {report['target']}: {verb} {report['files_transferred']} of "
        f"{report['files_checked']} files, {human_bytes(report['bytes_transferred'])}, in {seconds:.1f} s "
        f"({human_bytes(report['bytes_per_second'])}/s; {report['partitions']} partitions, {report['workers']} "
        f"workers); {len(report['failures'])} failures"
        + (f", {len(report['vanished'])} files vanished from the source while it ran" if report["vanished"] else "")
    ]
    lines += report["failures"][:5]
    deletions = report["deletions"]
    count, code = deletions["count"], deletions["digest"]
    if deletions["state"] == "kept":
        lines.append(f"{name}: {count} entries on the target are not in the source; kept (delete: false)")
    elif deletions["state"] == "pending":
        lines.append(
            f"{name}: {count} entries on the target are not in the source and wait for deletion; to delete exactly "
            f"these, run with data_sync_delete_confirm: {{{name}: {code}}}"
        )
    elif deletions["state"] == "deleted":
        lines.append(f"{name}: deleted {deletions['deleted']} of {count} entries confirmed by digest {code}")
        lines += [f"{name}: kept {line}" for line in deletions["kept"][:5]]
    if report["error"]:
        lines.append(f"{name}: stopped: {report['error']}")
    return lines


# --- the program of the timer's service -----------------------------------------------------------


def main(argv):
    """`datasync.py run <job file>`: one run as the timer starts it; exit 0 clean, 1 failed, 2 refused."""
    if len(argv) != 3 or argv[1] != "run":
        sys.stderr.write(f"usage: {argv[0]} run <job file>\n")
        return 2
    try:
        with open(argv[2], encoding="utf-8") as handle:
            job = json.load(handle)
        report = run(job, trigger="timer")
    except (OSError, ValueError, KeyError, Refused, ParseError) as error:
        sys.stderr.write(f"{argv[2]}: {error}\n")
        return 2
    for line in report["summary"]:
        sys.stdout.write(line + "\n")
    return 1 if report["error"] or report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
