"""The lab launcher's wiring, cache key and accelerator choice, without booting anything."""

import re
import shutil

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
