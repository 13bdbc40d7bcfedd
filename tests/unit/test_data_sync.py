"""The data sync's pure parts: the checks of the jobs, fpsync's command line, reading rsync's logs
(text rsync 3.5.0 of Debian 12's security updates wrote under fpsync 1.5.1), the deletion listing, its
digest and the deletion of exactly what was confirmed (on a real tree under tmp_path), the summary,
and the module's check state with a fake systemd-analyze. The runs of the real fpsync are in
tests/playbooks/test_data_sync_playbook.py."""

import functools
import json
import os

import pytest
from ansible.module_utils.hpc_datapath import datasync
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load

data_sync = _load("data_sync", ROOT / "library" / "data_sync.py")

DEFAULTS = {"schedule": None, "delete": False, "checksum": False, "bwlimit": None, "workers": 4, "files_per_job": 2000}
SETTINGS = {"require_mount": True, "report_dir": "/var/log/hpc-data-sync", "state_dir": "/var/lib/x", "list_limit": 50}
MOUNTS = {"/", "/shared/nas1", "/shared/nas2"}
JOB = {"name": "datasets", "source": "/shared/nas1/datasets", "target": "/shared/nas2/datasets"}


def check(*items, defaults=None, settings=None, exists=lambda path: True):
    return datasync.check_jobs(
        list(items),
        dict(DEFAULTS, **(defaults or {})),
        dict(SETTINGS, **(settings or {})),
        exists=exists,
        ismount=lambda path: path in MOUNTS,
    )


def problems(*items, **options):
    return check(*items, **options)[1]


# --- the checks ----------------------------------------------------------------------------------


def test_a_job_takes_the_role_defaults_and_settings():
    (job,), found = check(dict(JOB, workers="8"), defaults={"bwlimit": "200M"})
    assert found == []
    assert job == {
        "name": "datasets",
        "source": "/shared/nas1/datasets",
        "target": "/shared/nas2/datasets",
        "schedule": None,
        "delete": False,
        "checksum": False,
        "bwlimit": "200M",
        "workers": 8,
        "files_per_job": 2000,
        "state": "present",
        **SETTINGS,
    }


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("source", "shared/nas1", "source 'shared/nas1' is not an absolute path"),
        (
            "source",
            "/shared/nas1/ds/",
            "is not in its plain form (no //, /./, /../ or trailing /); write '/shared/nas1/ds'",
        ),
        ("source", "/shared//nas1/ds", "write '/shared/nas1/ds'"),
        (
            "target",
            "/shared/nas2/my data",
            "'my data' holds characters that fpsync's shell command line would break on",
        ),
        ("target", "/shared/nas2/$HOME", "'$HOME' holds characters"),
        (
            "target",
            "/srv",
            "target /srv is a directory of the system; sync a dedicated directory below it (/srv/<name>)",
        ),
        ("target", "/var/lib/data", "target /var/lib/data is inside /var, which belongs to the system"),
        ("source", "/tmp/x", "source /tmp/x is inside /tmp, which belongs to the system"),
        ("name", "data sets", "name 'data sets' must be 1 to 32 of A-Z a-z 0-9 _ -"),
        ("name", "-x", "name '-x' must be"),
        ("name", "a" * 33, "must be 1 to 32"),
        ("bwlimit", "200MB", "bwlimit '200MB' is not a bandwidth: a whole number and K, M or G"),
        ("bwlimit", "1.5G", "is not a bandwidth"),
        ("workers", 0, "workers 0 must be a whole number from 1 to 64"),
        ("workers", 65, "workers 65 must be"),
        ("files_per_job", "many", "files_per_job 'many' must be a whole number from 1 to 1000000"),
        ("delete", "yes", "delete 'yes' must be true or false"),
        ("schedule", "daily\nExecStart=/bin/sh", "is not a systemd calendar expression"),
        ("schedule", "%H", "is not a systemd calendar expression"),
        ("state", "gone", "state 'gone' must be present or absent"),
    ],
)
def test_refusals_name_the_job_the_field_and_the_reason(field, value, reason):
    (found,) = problems(dict(JOB, **{field: value}))
    assert found.startswith("data_sync_jobs[0]")
    assert reason in found


def test_paths_are_checked_on_the_node():
    assert problems(JOB, exists=lambda path: path != JOB["target"]) == [
        "data_sync_jobs[0] (datasets): target /shared/nas2/datasets is not a directory on this node"
    ]


def test_an_unmounted_nas_is_refused_unless_local_directories_are_allowed():
    job = dict(JOB, target="/data/copy")
    assert problems(job) == [
        "data_sync_jobs[0] (datasets): target /data/copy is on the root file system, not on a mounted one (is the NAS "
        "mounted?); data_sync_require_mount: false allows local directories"
    ]
    assert problems(job, settings={"require_mount": False}) == []


def test_a_path_through_a_symbolic_link_is_refused():
    reason = datasync.check_path("/shared/nas1/ds", exists=lambda path: True, realpath=lambda path: "/etc/ds")
    assert reason == "/shared/nas1/ds leads through a symbolic link to /etc/ds; give the real path"


def test_source_and_target_must_be_apart():
    assert problems(dict(JOB, target=JOB["source"])) == [
        "data_sync_jobs[0] (datasets): source and target are the same directory /shared/nas1/datasets"
    ]
    assert problems(dict(JOB, target="/shared/nas1/datasets/copy")) == [
        "data_sync_jobs[0] (datasets): /shared/nas1/datasets/copy lies inside /shared/nas1/datasets; source and "
        "target must be apart"
    ]
    assert problems(dict(JOB, source="/shared/nas2/datasets/sub")) == [
        "data_sync_jobs[0] (datasets): /shared/nas2/datasets/sub lies inside /shared/nas2/datasets; source and "
        "target must be apart"
    ]


def test_jobs_never_write_where_another_reads_or_writes():
    other = {"name": "ckpt", "source": "/shared/nas1/ckpt", "target": "/shared/nas2/datasets/ckpt"}
    chained = {"name": "onward", "source": "/shared/nas2/datasets", "target": "/shared/nas1/mirror"}
    assert problems(JOB, other) == [
        "data_sync_jobs: the target /shared/nas2/datasets of datasets and the target of ckpt overlap; one job's "
        "writes would change the other's tree"
    ]
    assert problems(JOB, chained) == [
        "data_sync_jobs: the target /shared/nas2/datasets of datasets and the source of onward overlap; one job's "
        "writes would change the other's tree"
    ]
    assert problems(JOB, dict(JOB, target="/shared/nas2/other")) == [
        "data_sync_jobs: the name datasets is given to two jobs"
    ]


def test_an_absent_job_needs_only_its_name_and_unknown_fields_are_named():
    assert problems({"name": "old", "state": "absent"}) == []
    assert problems(dict(JOB, bandwidth="1G")) == [
        "data_sync_jobs[0] (datasets): unknown field(s) bandwidth; known: name, source, target, schedule, delete, "
        "checksum, bwlimit, workers, files_per_job, state"
    ]
    assert problems("datasets") == ["data_sync_jobs[0] must be a dict with name, source and target"]


def test_role_settings_are_named_by_their_variable():
    assert problems(JOB, settings={"list_limit": -1, "report_dir": "logs"}) == [
        "data_sync_list_limit -1 must be a whole number from 0 to 10000",
        "data_sync_report_dir 'logs' must be an absolute path in its plain form",
    ]


# --- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "total", "share"),
    [("200M", 204800, 51200), ("1G", 1048576, 262144), ("3K", 3, 1), (None, None, None), ("", None, None)],
)
def test_the_bandwidth_is_shared_by_the_workers(text, total, share):
    assert datasync.bwlimit_kib(text) == total
    assert datasync.per_worker_kib(total, 4) == share


def test_fpsync_command_line():
    (job,), _ = check(dict(JOB, bwlimit="100M", checksum=True, workers=8, files_per_job=500))
    assert datasync.fpsync_command(job, "/var/lib/x/datasets/run", dry_run=False, fpsync="/usr/bin/fpsync") == [
        "/usr/bin/fpsync",
        "-n",
        "8",
        "-f",
        "500",
        "-t",
        "/var/lib/x/datasets/run",
        "-d",
        "/var/lib/x/datasets/run",
        "-o",
        "-lptgoD --numeric-ids --no-human-readable --stats --checksum --bwlimit=12800 "
        "--out-format=HPCDS:%i:%l:%n --temp-dir=/shared/nas2/datasets/.hpc-data-sync-tmp",
        "-O",
        "-x|.zfs|-x|.snapshot*|-x|.ckpt|-x|.hpc-data-sync-tmp",
        "/shared/nas1/datasets/",
        "/shared/nas2/datasets/",
    ]
    (plain,), _ = check(JOB)
    assert datasync.rsync_options(plain, dry_run=True) == (
        "-lptgoD --numeric-ids --no-human-readable --stats --out-format=HPCDS:%i:%l:%n --dry-run"
    )


def test_rsync_version_is_read_or_refused():
    assert datasync.rsync_version("rsync  version 3.2.7  protocol version 31\nCopyright") == (3, 2, 7)
    assert datasync.rsync_version("rsync  version v3.5.0  protocol version 32\n") == (3, 5, 0)
    with pytest.raises(datasync.ParseError, match="not rsync's version line"):
        datasync.rsync_version("openrsync: protocol version 29\n")


# --- rsync's logs ----------------------------------------------------------------------------------

STATS = """
Number of files: {files} ({kinds})
Number of created files: {created}
Number of deleted files: 0
Number of regular files transferred: {transferred}
Total file size: 300004 bytes
Total transferred file size: {size} bytes
Literal data: {size} bytes
Matched data: 0 bytes
File list size: 0
File list generation time: 0.001 seconds
File list transfer time: 0.000 seconds
Total bytes sent: 300277
Total bytes received: 59

sent 300277 bytes  received 59 bytes  600672.00 bytes/sec
total size is 300004  speedup is 1.00{dry}
"""
PARTITION = (
    "HPCDS:cd+++++++++:4096:a/\n"
    "HPCDS:>f+++++++++:4:a/f 2\n"
    "HPCDS:cd+++++++++:4096:a/b/\n"
    "HPCDS:>f+++++++++:300000:a/b/big\n"
    "HPCDS:cL+++++++++:3:a/link\n"
    "HPCDS:>f+++++++++:1:a/nl\\#012name\n"
    "HPCDS:.d..t......:4096:empty/\n"
) + STATS.format(files=7, kinds="reg: 3, dir: 3, link: 1", created=5, transferred=3, size=300005, dry="")


def test_a_partition_log_gives_its_changes_and_counts():
    parsed = datasync.parse_partition(1, PARTITION, "")
    assert parsed["counts"] == {"files_checked": 3, "files_transferred": 3, "bytes_transferred": 300005}
    assert [item["name"] for item in parsed["items"]] == [
        "a/",
        "a/f 2",
        "a/b/",
        "a/b/big",
        "a/link",
        "a/nl\\#012name",
        "empty/",
    ]
    assert parsed["items"][6] == {"item": ".d..t......", "size": 4096, "name": "empty/"}
    assert parsed["failures"] == []


def test_a_dry_run_and_an_empty_partition_read_too():
    empty = STATS.format(files=1, kinds="dir: 1", created=0, transferred=0, size=0, dry=" (DRY RUN)")
    assert datasync.parse_partition(2, empty, "")["counts"] == {
        "files_checked": 0,
        "files_transferred": 0,
        "bytes_transferred": 0,
    }


def test_failures_and_vanished_files_are_told_apart():
    stdout = "cannot delete non-empty directory: x\nHPCDS:>f+++++++++:2:ok\n" + STATS.format(
        files=3, kinds="reg: 2, dir: 1", created=1, transferred=1, size=2, dry=""
    )
    stderr = (
        "could not make way for new regular file: x\n"
        'file has vanished: "/shared/nas1/datasets/tmp.123"\n'
        "rsync warning: some files vanished before they could be transferred (code 24) at main.c(1865) [sender=3.5.0]\n"
        "rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394) "
        "[sender=3.5.0]\n"
    )
    parsed = datasync.parse_partition(4, stdout, stderr)
    assert parsed["failures"] == [
        "partition 4: cannot delete non-empty directory: x",
        "partition 4: could not make way for new regular file: x",
        "partition 4: rsync error: some files/attrs were not transferred (see previous errors) (code 23) at "
        "main.c(1394) [sender=3.5.0]",
    ]
    assert parsed["vanished"] == ["/shared/nas1/datasets/tmp.123"]


@pytest.mark.parametrize(
    ("stdout", "error"),
    [
        (
            "HPCDS:>f+++++++++:4:a/f 2\n",
            r"partition 3: rsync's statistics are missing \(files, created, .*did not finish",
        ),
        (PARTITION + "Number of files: 1 (dir: 1)\n", "partition 3: rsync wrote its statistics twice"),
        ("created directory /shared/nas2/x\n" + PARTITION, "a line this code does not know: 'created directory"),
        (PARTITION.replace("HPCDS:>f+++++++++:4:a/f 2\n", ""), "counts 3 files transferred but listed 2"),
        (PARTITION.replace(" (reg: 3, dir: 3, link: 1)", ""), "'Number of files: 7' does not say what kinds they are"),
    ],
)
def test_a_log_that_is_not_exactly_rsyncs_stops_the_run(stdout, error):
    with pytest.raises(datasync.ParseError, match=error):
        datasync.parse_partition(3, stdout, "")


def test_a_run_directory_must_hold_one_run_with_a_log_per_partition(tmp_path):
    with pytest.raises(datasync.ParseError, match="holds 0 fpsync runs, not one"):
        datasync.read_run(str(tmp_path))
    (tmp_path / "parts" / "17-1").mkdir(parents=True)
    (tmp_path / "parts" / "17-1" / "part.1").write_text("")
    (tmp_path / "parts" / "17-1" / "part.2").write_text("")
    (tmp_path / "log" / "17-1").mkdir(parents=True)
    (tmp_path / "log" / "17-1" / "1.stdout").write_text(PARTITION)
    (tmp_path / "log" / "17-1" / "1.stderr").write_text("")
    with pytest.raises(datasync.ParseError, match=r"partition 2 has no stdout log .*: its job never ran"):
        datasync.read_run(str(tmp_path))
    (tmp_path / "log" / "17-1" / "2.stdout").write_text(PARTITION)
    (tmp_path / "log" / "17-1" / "2.stderr").write_text("")
    run_id, partitions = datasync.read_run(str(tmp_path))
    assert (run_id, [partition["number"] for partition in partitions]) == ("17-1", [1, 2])


# --- what would be deleted, and deleting exactly that -------------------------------------------------


@pytest.fixture
def trees(tmp_path):
    """A source and a target; the target holds more, and a NAS snapshot directory."""
    source, target = tmp_path / "source", tmp_path / "target"
    for root in (source, target):
        (root / "keep" / "sub").mkdir(parents=True)
        (root / "keep" / "sub" / "same").write_text("same")
    (target / "old.bin").write_text("old")
    (target / "gone" / "deeper").mkdir(parents=True)
    (target / "gone" / "deeper" / "x").write_text("x")
    (target / "keep" / "extra").write_text("extra")
    (target / "keep" / "link").symlink_to("/etc")
    (target / ".snapshot" / "hourly.0").mkdir(parents=True)
    (target / "keep" / ".zfs").mkdir()
    (target / "odd\nname").write_text("odd")
    return str(source), str(target)


def test_the_listing_holds_what_the_source_lacks_and_passes_over_snapshots(trees):
    entries = datasync.extraneous(*trees)
    assert [datasync.listing_line(entry) for entry in entries] == [
        "gone/",
        "gone/deeper/",
        "gone/deeper/x",
        "keep/extra",
        "keep/link",
        "odd\\nname",
        "old.bin",
    ]
    assert datasync.digest(entries) == datasync.digest(list(reversed(entries)))
    assert len(datasync.digest(entries)) == 16
    assert datasync.digest(entries) != datasync.digest(entries[1:])


def test_deleting_removes_exactly_the_entries_and_follows_no_link(trees):
    source, target = trees
    entries = datasync.extraneous(source, target)
    os.makedirs(os.path.join(source, "keep"), exist_ok=True)
    with open(os.path.join(source, "keep", "extra"), "w") as handle:  # back in the source since the listing
        handle.write("extra")
    os.rename(os.path.join(target, "gone", "deeper"), os.path.join(target, "gone", "moved"))
    os.symlink("/etc", os.path.join(target, "gone", "deeper"))  # a link swapped in where a directory was
    deleted, kept = datasync.delete_entries(source, target, entries)
    assert deleted == ["keep/link", "odd\\nname", "old.bin"]
    assert kept == [
        "gone/deeper/x: Not a directory",
        "gone/deeper/: changed its type since it was listed",
        "keep/extra: now in the source",
        "gone/: Directory not empty",
    ]
    assert os.path.isdir("/etc")
    assert sorted(os.listdir(target)) == [".snapshot", "gone", "keep"]
    assert os.path.exists(os.path.join(target, "keep", "sub", "same"))
    assert os.path.exists(os.path.join(target, "gone", "moved", "x"))


@pytest.mark.parametrize(
    "case",
    [
        # delete, dry run, trigger, confirmed digest, what becomes of the listing, the run's error
        (False, True, "ansible", None, "kept", None),
        (True, True, "ansible", None, "pending", None),
        (True, False, "timer", "right", "pending", None),  # a timer's run never deletes
        (True, False, "ansible", None, "pending", "nothing deletes without the listing's digest confirmed"),
        (True, False, "ansible", "0000000000000000", "pending", "the confirmed digest 0000000000000000 is not that"),
        (True, False, "ansible", "right", "deleted", None),
    ],
)
def test_what_a_run_does_with_the_listing(trees, case):
    delete, dry_run, trigger, confirm, state, error = case
    source, target = trees
    job = {"name": "datasets", "source": source, "target": target, "delete": delete}
    code = datasync.digest(datasync.extraneous(source, target))
    report = {"deletions": {"state": "not listed", "deleted": 0, "kept": []}, "error": None}
    datasync._deletions(job, report, dry_run, code if confirm == "right" else confirm, trigger)
    deletions = report["deletions"]
    assert (deletions["state"], deletions["count"], deletions["digest"]) == (state, 7, code)
    if error:
        assert error in report["error"]
        assert f"(data_sync_delete_confirm: {{datasets: {code}}})" in report["error"]
    else:
        assert report["error"] is None
    assert os.path.exists(os.path.join(target, "old.bin")) is (state != "deleted")


# --- the summary ------------------------------------------------------------------------------------


def report(**changes):
    base = {
        "name": "datasets",
        "source": "/shared/nas1/datasets",
        "target": "/shared/nas2/datasets",
        "dry_run": False,
        "files_checked": 120000,
        "files_transferred": 1200,
        "bytes_transferred": 53687091200,
        "seconds": 611.4,
        "bytes_per_second": 87808812,
        "partitions": 60,
        "workers": 8,
        "failures": [],
        "vanished": [],
        "deletions": {"state": "none", "count": 0, "digest": None, "deleted": 0, "kept": []},
        "error": None,
    }
    return {**base, **changes}


def test_the_summary_says_what_was_copied_how_fast_and_what_failed():
    assert datasync.summary(report()) == [
        "datasets: /shared/nas1/datasets -> /shared/nas2/datasets: copied 1200 of 120000 files, 50.0 GiB, in 611.4 s "
        "(83.7 MiB/s; 60 partitions, 8 workers); 0 failures"
    ]
    pending = report(
        dry_run=True,
        failures=["partition 4: could not make way for new regular file: x"],
        deletions={"state": "pending", "count": 3, "digest": "0123456789abcdef", "deleted": 0, "kept": []},
    )
    assert datasync.summary(pending) == [
        "datasets: /shared/nas1/datasets -> /shared/nas2/datasets: would copy 1200 of 120000 files, 50.0 GiB, in "
        "611.4 s (83.7 MiB/s; 60 partitions, 8 workers); 1 failures",
        "partition 4: could not make way for new regular file: x",
        "datasets: 3 entries on the target are not in the source and wait for deletion; to delete exactly these, run "
        "with data_sync_delete_confirm: {datasets: 0123456789abcdef}",
    ]
    kept = report(deletions={"state": "kept", "count": 2, "digest": "x", "deleted": 0, "kept": []})
    assert datasync.summary(kept)[1] == (
        "datasets: 2 entries on the target are not in the source; kept (delete: false)"
    )


# --- the module ------------------------------------------------------------------------------------


@pytest.fixture
def module_node(monkeypatch):
    """The module against fake paths (all directories, /shared/nas1 and nas2 mounted) and a fake systemd-analyze."""
    monkeypatch.setattr(
        datasync,
        "check_jobs",
        functools.partial(datasync.check_jobs, exists=lambda path: True, ismount=lambda path: path in MOUNTS),
    )
    calls = []

    def run_command(self, args, **kwargs):
        calls.append(args)
        if args[-1] == "*-*-* 02:00:00":
            return 0, "Normalized form: *-*-* 02:00:00\n", ""
        return 1, "", f"Failed to parse calendar specification '{args[-1]}': Invalid argument\n"

    monkeypatch.setattr(data_sync.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(
        data_sync.AnsibleModule, "get_bin_path", lambda self, name, *a, **k: {"systemd-analyze": "/x"}.get(name)
    )
    return calls


def call_module(args, capsys):
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        data_sync.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


def test_check_asks_systemd_analyze_and_names_what_is_missing(module_node, capsys, tmp_path):
    args = {
        "jobs": [
            dict(JOB, schedule="*-*-* 02:00:00"),
            {"name": "weekly", "source": "/shared/nas1/w", "target": "/shared/nas2/w", "schedule": "Mon 25:00"},
        ],
        "defaults": DEFAULTS,
        "settings": SETTINGS,
        "only": ["datasets", "nightly"],
        "unit_dir": str(tmp_path),
    }
    (tmp_path / "hpc-data-sync-weekly.timer").write_text("")
    rc, result = call_module(args, capsys)
    assert rc == 0
    assert module_node == [["/x", "calendar", "*-*-* 02:00:00"], ["/x", "calendar", "Mon 25:00"]]
    assert result["problems"] == [
        "data_sync_jobs (weekly): schedule 'Mon 25:00' is refused by systemd-analyze calendar: Failed to parse "
        "calendar specification 'Mon 25:00': Invalid argument",
        "data_sync_only names nightly, which no job is called",
    ]
    assert result["missing"] == ["fpsync", "rsync"]
    assert result["timers_present"] == ["weekly"]
    assert result["changed"] is False


def test_run_refuses_the_same_problems_before_anything_runs(module_node, capsys):
    rc, result = call_module(
        {"state": "run", "jobs": [dict(JOB, workers=0)], "defaults": DEFAULTS, "settings": SETTINGS}, capsys
    )
    assert rc == 1
    assert result["msg"] == "data_sync_jobs[0] (datasets): workers 0 must be a whole number from 1 to 64"
    assert result["reports"] == []


def test_a_refused_run_is_reported_as_a_failed_job(module_node, capsys, monkeypatch):
    monkeypatch.setattr(datasync.shutil, "which", lambda name: None)
    rc, result = call_module({"state": "run", "jobs": [JOB], "defaults": DEFAULTS, "settings": SETTINGS}, capsys)
    assert rc == 1
    assert result["failed_jobs"] == ["datasets"]
    assert result["msg"] == (
        "datasets: refused: datasets: fpsync and rsync missing on this node (the packages fpart and rsync)"
    )
