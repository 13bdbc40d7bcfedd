"""playbooks/data_sync.yml and the timers' program for real on the controller: Debian's fpsync
(fpart 1.5.1) and rsync copy between two directory trees of this machine (tools/setup.sh installs
both), as the lab will between two NFS exports of node2.

The trees live under /srv/hpc-datapath-tests (HPC_DATAPATH_TEST_DIR), not under /tmp: the role refuses
a source or target inside the system's trees, /tmp among them. They are local directories, so the
jobs set data_sync_require_mount: false (in the lab they are NFS mounts and keep the default).
"""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ansible_cli import ROOT, ansible_run

PLAYBOOK = ROOT / "playbooks" / "data_sync.yml"
PROGRAM = ROOT / "module_utils" / "hpc_datapath" / "datasync.py"
TEST_ROOT = Path(os.environ.get("HPC_DATAPATH_TEST_DIR", "/srv/hpc-datapath-tests"))
TEMP = ".hpc-data-sync-tmp"

if not (shutil.which("fpsync") and shutil.which("rsync")):
    pytest.fail("fpsync and rsync are needed (Debian's fpart and rsync): tools/setup.sh installs them")


@pytest.fixture
def base():
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="data-sync.", dir=TEST_ROOT))
    (path / "src").mkdir()
    (path / "dst").mkdir()
    yield path
    shutil.rmtree(path)


def node_paths(base):
    """The role's paths on the node, moved under the test's directory."""
    return {
        "data_sync_report_dir": str(base / "node" / "reports"),
        "__data_sync_state_dir": str(base / "node" / "state"),
        "__data_sync_config_dir": str(base / "node" / "conf"),
        "__data_sync_unit_dir": str(base / "node" / "units"),
        "__data_sync_program": str(base / "node" / "lib" / "datasync.py"),
    }


def job(base, **fields):
    return {"name": "datasets", "source": str(base / "src"), "target": str(base / "dst"), **fields}


def play(base, jobs, *args, **extra):
    """(rc, the json callback's report or None, all the output) of one run against localhost."""
    inventory = {
        "all": {
            "children": {
                "data_sync": {
                    "hosts": {
                        "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
                    }
                }
            }
        }
    }
    (base / "hosts.yml").write_text(yaml.safe_dump(inventory))
    variables = {"data_sync_jobs": jobs, "data_sync_require_mount": False, **node_paths(base), **extra}
    (base / "vars.json").write_text(json.dumps(variables))
    run = ansible_run(
        "ansible-playbook",
        "-i",
        base / "hosts.yml",
        PLAYBOOK,
        f"--extra-vars=@{base / 'vars.json'}",
        *args,
        env={"ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_SHOW_CUSTOM_STATS": "true"},
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        report = None
    return run.returncode, report, run.stdout + run.stderr


def tasks(report):
    return {
        task["task"]["name"].removeprefix("data_sync : "): task["hosts"]["localhost"]
        for task in report["plays"][0]["tasks"]
        if "localhost" in task["hosts"]
    }


def changed(report):
    return report["stats"]["localhost"]["changed"]


def sync_report(base, name="datasets", dry_run=False):
    return json.loads((base / "node" / "reports" / f"{name}{'.dry-run' if dry_run else ''}.json").read_text())


def transferred(sync):
    return sorted(line.split(" ", 2)[2] for line in sync["changes"] if line.startswith(">f"))


def digests(root):
    """{relative path: sha256} of every regular file under root, rsync's temporary directory aside."""
    found = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if name != TEMP]
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink():
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def make_tree(root, count, size, seed=b""):
    for number in range(count):
        path = root / f"d{number % 4}" / f"f{number:03d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(hashlib.sha256(seed + bytes([number])).digest() * (size // 32))


def test_first_sync_is_verified_then_only_the_change_is_copied(base):
    src = base / "src"
    make_tree(src, 24, 4096)
    (src / "d1" / "empty.bin").write_bytes(b"")
    (src / "with space and\nnewline").write_text("odd name")
    (src / "d2" / "link").symlink_to("f002.bin")
    (src / "empty-dir").mkdir()
    os.chown(src / "d0" / "f000.bin", 1234, 2345)
    os.chmod(src / "d0" / "f000.bin", 0o640)
    os.utime(src / "d3" / "f003.bin", (1_600_000_000, 1_600_000_000))

    rc, report, output = play(base, [job(base, workers=2, files_per_job=5)], data_sync_mode="now")
    assert rc == 0, output
    first = sync_report(base)
    assert (first["files_checked"], first["files_transferred"], first["failures"], first["error"]) == (26, 26, [], None)
    assert first["bytes_transferred"] == 24 * 4096 + len("odd name")
    assert first["partitions"] >= 6  # files_per_job 5: several rsync processes
    assert digests(base / "dst") == digests(src)
    stat = os.stat(base / "dst" / "d0" / "f000.bin")
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) == (1234, 2345, 0o640)
    assert os.stat(base / "dst" / "d3" / "f003.bin").st_mtime == 1_600_000_000
    assert os.readlink(base / "dst" / "d2" / "link") == "f002.bin"
    assert (base / "dst" / "empty-dir").is_dir()
    assert tasks(report)["Say what the runs did"]["msg"][0].startswith(
        f"datasets: {src} -> {base / 'dst'}: copied 26 of 26 files, 96.0 KiB, in "
    )
    assert report["global_custom_stats"]["data_sync"]["localhost"][0]["files_transferred"] == 26

    rc, report, output = play(base, [job(base, workers=2, files_per_job=5)], data_sync_mode="now")
    assert rc == 0, output
    assert changed(report) == 0
    assert (sync_report(base)["files_transferred"], sync_report(base)["changes"]) == (0, [])

    # A changed file, a new one, and one of the same size and time but other content: rsync's quick
    # check cannot see that one, a checksum run copies it, and only these three.
    (src / "d1" / "f001.bin").write_bytes(b"changed and longer" * 300)
    (src / "d2" / "new.bin").write_bytes(b"new")
    before = os.stat(src / "d0" / "f004.bin")
    (src / "d0" / "f004.bin").write_bytes(b"\0" * before.st_size)
    os.utime(src / "d0" / "f004.bin", ns=(before.st_atime_ns, before.st_mtime_ns))
    rc, report, output = play(
        base, [job(base, workers=2, files_per_job=5)], data_sync_mode="now", data_sync_checksum=True
    )
    assert rc == 0, output
    assert changed(report) == 1
    third = sync_report(base)
    assert (third["files_checked"], third["files_transferred"], third["checksum"]) == (27, 3, True)
    assert third["bytes_transferred"] == 18 * 300 + 3 + 4096
    assert transferred(third) == ["d0/f004.bin", "d1/f001.bin", "d2/new.bin"]
    assert digests(base / "dst") == digests(src)


def test_deletion_is_shown_first_and_deletes_only_the_confirmed_listing(base):
    src, dst = base / "src", base / "dst"
    make_tree(src, 8, 64)
    (src / "gone").mkdir()
    (src / "gone" / "inner.bin").write_text("inner")
    dst.rmdir()
    shutil.copytree(src, dst, symlinks=True)  # in sync already
    (src / "d1" / "f001.bin").unlink()
    shutil.rmtree(src / "gone")
    (dst / ".snapshot").mkdir()  # a NAS's snapshot directory: never listed, never deleted

    rc, report, output = play(base, [job(base, delete=True)], data_sync_mode="dry_run")
    assert rc == 0, output
    assert changed(report) == 0
    listing = sync_report(base, dry_run=True)["deletions"]
    assert (listing["state"], listing["listed"]) == ("pending", ["d1/f001.bin", "gone/", "gone/inner.bin"])
    assert (base / "node" / "reports" / "datasets.dry-run.deletions.txt").read_text() == (
        "d1/f001.bin\ngone/\ngone/inner.bin\n"
    )
    code = listing["digest"]
    assert f"data_sync_delete_confirm: {{datasets: {code}}}" in "\n".join(tasks(report)["Say what the runs did"]["msg"])

    # Without the digest: copied, nothing deleted, the run fails saying what to confirm.
    rc, report, output = play(base, [job(base, delete=True)], data_sync_mode="now")
    assert rc == 2, output
    assert (dst / "d1" / "f001.bin").exists() and (dst / "gone" / "inner.bin").exists()
    assert (
        f"nothing deletes without the listing's digest confirmed (data_sync_delete_confirm: {{datasets: {code}}})"
        in (tasks(report)["Fail where a run failed or was refused"]["msg"])
    )

    # The target changed since the listing was read: the listing's digest changes with it (a run
    # confirmed with the old one deletes nothing: tests/unit/test_data_sync.py).
    (dst / "d2" / "added-since.bin").write_text("someone's")
    new_code = datasync_module().digest(datasync_module().extraneous(str(src), str(dst)))
    assert new_code != code
    rc, report, output = play(
        base, [job(base, delete=True)], data_sync_mode="now", data_sync_delete_confirm={"datasets": new_code}
    )
    assert rc == 0, output
    done = sync_report(base)["deletions"]
    assert (done["state"], done["deleted"], done["kept"]) == ("deleted", 4, [])
    assert not (dst / "gone").exists() and not (dst / "d2" / "added-since.bin").exists()
    assert (dst / ".snapshot").is_dir()
    assert digests(dst) == digests(src)


def test_check_mode_shows_the_timer_and_changes_nothing(base):
    make_tree(base / "src", 4, 64)
    jobs = [job(base, schedule="*-*-* 02:00:00", bwlimit="100M")]
    rc, report, output = play(base, jobs, "--check", "--diff", data_sync_mode="now")
    assert rc == 0, output
    units = tasks(report)["Write the services and timers"]["results"]
    service, timer = (result["diff"][0]["after"] for result in units)
    assert f"ExecStart=/usr/bin/python3 {base}/node/lib/datasync.py run {base}/node/conf/datasets.json" in service
    assert f"RequiresMountsFor={base}/src {base}/dst" in service
    assert "OnCalendar=*-*-* 02:00:00\nPersistent=true" in timer
    job_file = json.loads(tasks(report)["Write the job files"]["results"][0]["diff"][0]["after"])
    assert (job_file["bwlimit"], job_file["schedule"], job_file["delete"]) == ("100M", "*-*-* 02:00:00", False)
    run = tasks(report)["Run the jobs"]
    assert (run["changed"], run["reports"][0]["dry_run"], run["reports"][0]["files_transferred"]) == (True, True, 4)
    assert os.listdir(base / "dst") == []
    assert not (base / "node").exists()


def test_bad_jobs_are_refused_naming_host_variable_and_reason(base):
    jobs = [
        job(base, schedule="Mon 25:00"),
        {"name": "system", "source": str(base / "src"), "target": "/var/lib/datasets"},
        {"name": "nested", "source": str(base / "src"), "target": str(base / "src" / "copy")},
    ]
    rc, report, output = play(base, jobs, data_sync_mode="now", data_sync_require_mount=True)
    assert rc == 2, output
    message = tasks(report)["Refuse jobs this node cannot run"]["msg"]
    assert message.startswith("localhost: data_sync_jobs[0] (datasets): source ")
    for reason in (
        f"data_sync_jobs[0] (datasets): source {base}/src is on the root file system, not on a mounted one",
        "data_sync_jobs[1] (system): target /var/lib/datasets is inside /var, which belongs to the system",
        f"data_sync_jobs[2] (nested): {base}/src/copy lies inside {base}/src; source and target must be apart",
        "data_sync_jobs (datasets): schedule 'Mon 25:00' is refused by systemd-analyze calendar",
    ):
        assert reason in message
    assert os.listdir(base / "dst") == []


def session_pids(session):
    """The processes of a session (the run and every fpsync and rsync it started), by /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def datasync_module():
    """module_utils/hpc_datapath/datasync.py, the program a node runs, imported as it is (no Ansible)."""
    sys.path.insert(0, str(PROGRAM.parent))
    try:
        import datasync  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    return datasync


def test_a_killed_run_resumes_without_copying_again(base):
    """The timer's program (the file the role installs), killed mid-file as a node crash would."""
    src, dst = base / "src", base / "dst"
    make_tree(src, 16, 1024 * 1024)
    spec = [{"name": "datasets", "source": str(src), "target": str(dst)}]
    # 2 workers at 512 KiB/s each: a file takes 2 s, so the kill finds files half-written.
    defaults = {"schedule": None, "delete": False, "checksum": False, "bwlimit": "1M", "workers": 2, "files_per_job": 4}
    settings = {"require_mount": False, "report_dir": str(base / "reports"), "state_dir": str(base / "state")}
    (job_spec,), problems = datasync_module().check_jobs(spec, defaults, {**settings, "list_limit": 100})
    assert problems == []
    (base / "job.json").write_text(json.dumps(job_spec))
    command = [sys.executable, str(PROGRAM), "run", str(base / "job.json")]

    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and first.poll() is None:
        if len(digests(dst)) >= 2 and (dst / TEMP).is_dir() and list((dst / TEMP).iterdir()):
            break
        time.sleep(0.05)
    assert first.poll() is None, "the run ended before it could be killed"
    # The program dies alone: fpsync and its rsync processes hold the job's lock.
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run(command, capture_output=True, text=True, check=False)
    assert second.returncode == 2
    assert "another run of this job holds" in second.stderr
    # Then all of it at once, as a crash would: stopped first, so that no rsync sees another die and
    # removes its temporary file (as one does on a lost connection, and systemd's TERM lets it).
    while pids := session_pids(first.pid):  # again, for a process started while the others stopped
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        time.sleep(0.05)
    leftovers = list((dst / TEMP).iterdir())
    assert leftovers  # the files the killed rsync processes were writing, never under their own names
    done_before = digests(dst)
    source = digests(src)
    assert 2 <= len(done_before) < 16
    assert all(source[path] == digest for path, digest in done_before.items())  # in place only when whole

    (base / "job.json").write_text(json.dumps(dict(job_spec, bwlimit=None)))  # the rest at full speed
    third = subprocess.run(command, capture_output=True, text=True, check=False)
    assert third.returncode == 0, third.stdout + third.stderr
    resumed = json.loads((base / "reports" / "datasets.json").read_text())
    assert resumed["trigger"] == "timer"
    assert resumed["files_transferred"] == 16 - len(done_before)
    assert not set(transferred(resumed)) & set(done_before)
    assert digests(dst) == source
    assert not (dst / TEMP).exists()  # the next run removed what the killed one left, then the directory
    assert third.stdout.startswith(f"datasets: {src} -> {dst}: copied {16 - len(done_before)} of 16 files")
