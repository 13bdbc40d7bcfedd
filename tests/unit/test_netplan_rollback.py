"""The netplan rollback script (roles/network_change/files/hpc-netplan-rollback), run for real.

The script works on /etc/netplan and nothing else names it, so each run happens in a mount
namespace of its own (`unshare -rm`) where a temporary directory is bind-mounted over /etc: the
script sees a fake /etc/netplan and this machine's is never touched. `netplan`, `ip` and `logger`
are stubs that record their arguments (`flock`, `cp`, `find`, `date` are real). Each shell that
stands for /bin/sh on the targets runs it: dash (Debian, Ubuntu) and bash (RHEL family).
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "network_change" / "files" / "hpc-netplan-rollback"
SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]

STUB = """#!/bin/sh
echo "${0##*/} $*" >> "$STUBS_LOG"
case "${0##*/}" in
  netplan) [ -z "${NETPLAN_STARTED:-}" ] || touch "$NETPLAN_STARTED"
           [ -z "${NETPLAN_SLEEP:-}" ] || sleep "$NETPLAN_SLEEP"
           exit "${NETPLAN_RC:-0}" ;;
esac
"""


def namespaces_work():
    """Whether the tests can bind a directory of their own over /etc in a namespace of their own.

    The probe binds an empty directory, as the tests bind theirs: binding /tmp itself is refused in a
    user namespace while anything is mounted below it (make test's image build mounts /proc and /sys
    in its chroot), and the whole module would be skipped for a reason that has nothing to do with it.
    """
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as empty:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", 'mount --bind "$1" /etc', "sh", empty], capture_output=True, check=False
        )
    return probe.returncode == 0


pytestmark = [
    pytest.mark.skipif(not SHELLS, reason="neither dash nor bash on this machine"),
    pytest.mark.skipif(not namespaces_work(), reason="needs a mount namespace of its own (unshare -rm)"),
]


@pytest.fixture
def node(tmp_path):
    """A fake /etc/netplan holding the change, and the saved directory the arming step leaves."""
    etc, saved, stubs = tmp_path / "etc", tmp_path / "saved", tmp_path / "stubs"
    (etc / "netplan").mkdir(parents=True)
    (etc / "netplan" / "60-hpc-bond0.yaml").write_text("new bond\n")
    (etc / "netplan" / "61-new.yaml").write_text("new file\n")
    (saved / "netplan").mkdir(parents=True)
    (saved / "netplan" / "60-hpc-bond0.yaml").write_text("old bond\n")
    (saved / "netplan" / "50-mgmt.yaml").write_text("mgmt\n")
    (saved / "new-devices").write_text("bond0\nbond0.100\n")
    (saved / "deadline").write_text(f"{int(time.time()) - 1}\n")
    stubs.mkdir()
    for name in ("netplan", "ip", "logger"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    return tmp_path


def start(node, shell, **env):
    command = f'mount --bind "$1" /etc && exec {shell} "$2" "$3" hpc-bond'
    return subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", command, "sh", str(node / "etc"), str(SCRIPT), str(node / "saved")],
        env={
            **os.environ,
            "PATH": f"{node / 'stubs'}:{os.environ['PATH']}",
            "STUBS_LOG": str(node / "stubs.log"),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run(node, shell, **env):
    process = start(node, shell, **env)
    output, _ = process.communicate(timeout=30)
    return process.returncode, output


def calls(node):
    log = node / "stubs.log"
    return log.read_text().splitlines() if log.exists() else []


def files(directory):
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("shell", SHELLS)
def test_a_rollback_puts_netplan_back_applies_it_and_says_so(node, shell):
    rc, output = run(node, shell)
    assert rc == 0, output
    assert files(node / "etc" / "netplan") == {"50-mgmt.yaml": "mgmt\n", "60-hpc-bond0.yaml": "old bond\n"}
    log = calls(node)
    assert log[:3] == ["netplan apply", "ip link delete dev bond0", "ip link delete dev bond0.100"]
    assert log[3].startswith("logger -t hpc-bond rolled back an unconfirmed network change")
    saved = node / "saved"
    assert (saved / "rolled-back").exists() and (saved / "rolling-back").exists()
    assert not (saved / "rollback-failed").exists() and not (saved / "deadline").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_failed_netplan_apply_leaves_a_failure_marker_and_still_deletes_the_new_devices(node, shell):
    rc, output = run(node, shell, NETPLAN_RC="1")
    assert rc == 1, output
    saved = node / "saved"
    assert not (saved / "rolled-back").exists()
    assert (saved / "rollback-failed").read_text().split(" ", 1)[1] == "netplan apply failed (exit 1)\n"
    log = calls(node)
    assert log[:3] == ["netplan apply", "ip link delete dev bond0", "ip link delete dev bond0.100"]
    assert log[3].startswith(
        "logger -p user.err -t hpc-bond the rollback of an unconfirmed network change failed: netplan apply (exit 1)"
    )
    # The files went back before the apply failed: the next boot brings up the previous network.
    assert files(node / "etc" / "netplan") == {"50-mgmt.yaml": "mgmt\n", "60-hpc-bond0.yaml": "old bond\n"}


@pytest.mark.parametrize("shell", SHELLS)
def test_a_failed_restore_of_the_files_is_named_and_nothing_is_applied(node, shell):
    shutil.rmtree(node / "saved" / "netplan")
    rc, output = run(node, shell)
    assert rc != 0, output
    marker = (node / "saved" / "rollback-failed").read_text()
    assert f"putting back /etc/netplan from {node / 'saved'}/netplan failed (exit " in marker
    assert not (node / "saved" / "rolled-back").exists()
    log = calls(node)
    assert "netplan apply" not in log
    assert log[:2] == ["ip link delete dev bond0", "ip link delete dev bond0.100"]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_rollback_stopped_while_it_applies_is_a_failure(node, shell):
    started = node / "netplan-started"
    process = start(node, shell, NETPLAN_SLEEP="20", NETPLAN_STARTED=str(started))
    for _ in range(100):
        if started.exists():
            break
        time.sleep(0.1)
    assert started.exists(), "netplan apply never ran"
    # As systemctl stop does: SIGTERM to every process of the unit.
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0, output
    marker = (node / "saved" / "rollback-failed").read_text()
    assert " netplan apply failed (exit 143)" in marker
    assert not (node / "saved" / "rolled-back").exists()
    assert "ip link delete dev bond0" in calls(node)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_confirmed_change_is_left_alone(node, shell):
    (node / "saved" / "deadline").rename(node / "saved" / "confirmed")
    rc, output = run(node, shell)
    assert rc == 0, output
    assert calls(node) == []
    assert {path.name for path in (node / "saved").iterdir()} == {"confirmed", "lock", "new-devices", "netplan"}
    assert files(node / "etc" / "netplan") == {"60-hpc-bond0.yaml": "new bond\n", "61-new.yaml": "new file\n"}
