"""Block device relations from a fake sysfs: the disks under a mount, holders, md arrays."""

from pathlib import Path

import pytest
from ansible.module_utils.hpc_datapath import blockdev
from fake_sysfs import link, write


def disk(root: Path, name: str, parts=()):
    base = root / "devices/pci/block" / name
    write(base / "dev", f"259:{len(name)}")
    (base / "holders").mkdir(parents=True)
    link(root / "class/block" / name, f"../../devices/pci/block/{name}")
    link(root / "block" / name, f"../devices/pci/block/{name}")
    for part in parts:
        write(base / part / "partition", "1")
        (base / part / "holders").mkdir(parents=True)
        link(root / "class/block" / part, f"../../devices/pci/block/{name}/{part}")


def stacked(root: Path, name: str, slaves, level=None, chunk=None):
    base = root / "devices/virtual/block" / name
    for slave in slaves:
        link(base / "slaves" / slave, f"../../../../../class/block/{slave}")
        holder_dir = (root / "class/block" / slave).resolve() / "holders"
        link(holder_dir / name, f"../../../../virtual/block/{name}")
    link(root / "class/block" / name, f"../../devices/virtual/block/{name}")
    link(root / "block" / name, f"../devices/virtual/block/{name}")
    if level:
        write(base / "md/level", level)
        write(base / "md/chunk_size", str(chunk))
        write(base / "md/raid_disks", str(len(slaves)))


@pytest.fixture
def sys_root(tmp_path):
    root = tmp_path / "sys"
    disk(root, "sda", parts=["sda1", "sda2"])
    disk(root, "sdb", parts=["sdb1"])
    disk(root, "nvme0n1")
    disk(root, "nvme1n1")
    stacked(root, "md0", ["sda2", "sdb1"], level="raid1", chunk=0)  # mirrored root
    stacked(root, "dm-0", ["md0"])  # LVM on top of it
    stacked(root, "md127", ["nvme0n1", "nvme1n1"], level="raid0", chunk=524288)
    return root


def test_base_disks_through_lvm_md_and_partitions(sys_root):
    assert blockdev.base_disks("dm-0", str(sys_root)) == {"sda", "sdb"}
    assert blockdev.base_disks("sda1", str(sys_root)) == {"sda"}
    assert blockdev.base_disks("nvme0n1", str(sys_root)) == {"nvme0n1"}


def test_partitions_and_holders(sys_root):
    assert blockdev.partitions("sda", str(sys_root)) == ["sda1", "sda2"]
    assert blockdev.partitions("nvme0n1", str(sys_root)) == []
    assert blockdev.holders("sda", str(sys_root)) == ["md0"]  # through its partition
    assert blockdev.holders("nvme1n1", str(sys_root)) == ["md127"]
    assert blockdev.holders("dm-0", str(sys_root)) == []


def test_md_arrays(sys_root):
    arrays = blockdev.md_arrays(str(sys_root))
    assert arrays["md127"] == {
        "level": "raid0",
        "chunk_bytes": 524288,
        "raid_disks": 2,
        "members": ["nvme0n1", "nvme1n1"],
    }
    assert arrays["md0"]["members"] == ["sda2", "sdb1"]
    assert "dm-0" not in arrays
