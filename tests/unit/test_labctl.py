"""The lab launcher's wiring, cache key and accelerator choice, without booting anything."""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import labctl
import pytest


@pytest.fixture
def image(tmp_path):
    return tmp_path / "image"


def command(node_index, image, tmp_path, accel="tcg"):
    return labctl.qemu_command(labctl.Node(node_index), image, accel, tmp_path)


def netdevs(cmd):
    return {
        m.group(1): (int(m.group(2)), int(m.group(3)))
        for arg in cmd
        for m in [re.search(r"dgram,id=(\w+),.*local.port=(\d+),.*remote.port=(\d+)", arg)]
        if m
    }


def test_links_are_wired_back_to_back(image, tmp_path):
    one, two = netdevs(command(1, image, tmp_path)), netdevs(command(2, image, tmp_path))
    assert set(one) == set(two) == {"data0", "data1", "sriov", "rail0", "rail1"}
    for name, (local, remote) in one.items():
        assert two[name] == (remote, local)
    ports = [port for pair in one.values() for port in pair]
    assert len(set(ports)) == len(ports)  # no two links share a UDP port


def test_each_node_has_its_own_identity(image, tmp_path):
    cmds = [" ".join(command(i, image, tmp_path)) for i in (1, 2)]
    macs = [set(re.findall(r"mac=([0-9a-f:]+)", c)) for c in cmds]
    assert len(macs[0]) == 6  # mgmt, data0, data1, igb, rail0, rail1
    assert not macs[0] & macs[1]
    serials = [re.findall(r"serial=(\w+)", c) for c in cmds]
    assert serials == [["LABN1NVME0", "LABN1NVME1"], ["LABN2NVME0", "LABN2NVME1"]]
    assert "systemd.hostname=node1" in cmds[0]
    assert "systemd.hostname=node2" in cmds[1]
    ids = [re.search(r"systemd.machine_id=([0-9a-f]{32})", c).group(1) for c in cmds]
    assert ids[0] != ids[1]
    assert all("virtio-rng-pci" in c for c in cmds)


def test_ssh_only_on_loopback(image, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SSH_PORT", "2400")
    cmd = " ".join(command(2, image, tmp_path))
    assert "hostfwd=tcp:127.0.0.1:2401-:22" in cmd


def test_igb_sits_behind_a_pcie_root_port(image, tmp_path):
    cmd = command(1, image, tmp_path)
    assert any(arg.startswith("pcie-root-port,id=rp_sriov") for arg in cmd)
    assert any(arg.startswith("igb,netdev=sriov") and "bus=rp_sriov" in arg for arg in cmd)


def test_accelerator_flags(image, tmp_path):
    assert "host" in command(1, image, tmp_path, "kvm")
    tcg = command(1, image, tmp_path, "tcg")
    assert tcg[tcg.index("-accel") + 1] == "tcg"
    assert "host" not in tcg


def test_recipe_key_follows_every_guest_file(tmp_path, monkeypatch):
    lab = tmp_path / "lab"
    shutil.copytree(labctl.LAB_DIR / "guest", lab / "guest")
    shutil.copy(labctl.LAB_DIR / "build-image.sh", lab)
    monkeypatch.setattr(labctl, "LAB_DIR", lab)
    first = labctl.recipe_key()
    assert labctl.recipe_key() == first
    (lab / "guest/etc/fstab").write_text("changed\n")
    second = labctl.recipe_key()
    assert second != first
    (lab / "guest/etc/new-file").write_text("x")
    assert labctl.recipe_key() not in (first, second)


def test_explicit_accelerator_wins(monkeypatch, image):
    monkeypatch.setenv("LAB_ACCEL", "tcg")
    assert labctl.choose_accel(image) == "tcg"
    monkeypatch.setenv("LAB_ACCEL", "xen")
    with pytest.raises(SystemExit, match="LAB_ACCEL must be kvm or tcg"):
        labctl.choose_accel(image)


def test_kvm_probe_refuses_without_device_access(monkeypatch, image):
    monkeypatch.setattr(labctl.os, "access", lambda *_: False)
    assert labctl.kvm_works(image) is False


def test_probe_verdict_is_remembered_per_host_boot(monkeypatch, tmp_path, image):
    monkeypatch.delenv("LAB_ACCEL", raising=False)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(labctl, "kvm_works", lambda _image: calls.append(1) or False)
    assert labctl.choose_accel(image) == "tcg"
    assert labctl.choose_accel(image) == "tcg"
    assert calls == [1]


def test_no_processes_for_an_unused_state_dir(tmp_path):
    assert labctl.lab_processes(tmp_path / "never-used") == []


@pytest.fixture
def fake_qemu(tmp_path):
    """Start a process that looks like a lab's QEMU (argv[0] and -pidfile) for a state dir."""
    started = []

    def start(state):
        pidfile = state / "node1" / "qemu.pid"
        process = subprocess.Popen(
            [
                "bash",
                "-c",
                'exec -a "$0" "$2" -c "import time; time.sleep(60)" -pidfile "$1"',
                f"/usr/bin/{labctl.QEMU}",
                str(pidfile),
                sys.executable,
            ]
        )
        started.append(process)
        for _ in range(100):  # until exec has replaced bash
            if Path(f"/proc/{process.pid}/cmdline").read_bytes().startswith(f"/usr/bin/{labctl.QEMU}".encode()):
                return process.pid
            time.sleep(0.05)
        raise AssertionError("the fake QEMU did not start")

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_another_lab_whose_path_contains_ours_is_not_ours(tmp_path, fake_qemu):
    ours, theirs = tmp_path / "lab", tmp_path / "lab2"
    pid = fake_qemu(theirs)
    assert labctl.lab_processes(ours) == []
    assert labctl.lab_processes(theirs) == [pid]


def test_up_clears_only_what_labctl_wrote(tmp_path):
    state = tmp_path / "state"
    (state / "node1").mkdir(parents=True)
    (state / "node1" / "console.log").write_text("old boot\n")
    (state / "ssh_config").write_text("old\n")
    (state / "notes.txt").write_text("the operator's own file\n")
    labctl.clear_state(state, [labctl.Node(1), labctl.Node(2)])
    assert sorted(p.name for p in state.iterdir()) == ["notes.txt"]


def test_a_comma_in_the_state_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "lab,readonly=on"))
    with pytest.raises(SystemExit, match="contains a comma, which QEMU reads as an option separator"):
        labctl.state_dir()
