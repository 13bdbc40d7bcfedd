"""The sysfs readers against a fake tree shaped like the kernel's."""

from pathlib import Path

import pytest
from ansible.module_utils.hpc_datapath import sysfs
from fake_sysfs import link, write

PCI = "devices/pci0000:00"


def add_nic(root: Path, name: str, pci: str, driver: str, *, speed="25000", vf_of=None, totalvfs=None):
    device = root / PCI / pci
    write(device / "numa_node", "0")
    link(device / "driver", f"../../../bus/pci/drivers/{driver}")
    if vf_of:
        link(device / "physfn", f"../{vf_of}")
    if totalvfs is not None:
        write(device / "sriov_totalvfs", str(totalvfs))
        write(device / "sriov_numvfs", "0")
    net = device / "net" / name
    for attr, value in {"address": "52:54:00:10:01:02", "mtu": "9000", "operstate": "up"}.items():
        write(net / attr, value)
    if speed is not None:
        write(net / "speed", speed)
    link(net / "device", f"../../../{pci}")
    link(root / "class/net" / name, f"../../{PCI}/{pci}/net/{name}")


def add_nvme_controller(root: Path, name: str, pci: str, serial: str):
    controller = root / PCI / pci / "nvme" / name
    attrs = {"serial": f"{serial:20}", "model": "QEMU NVMe Ctrl", "firmware_rev": "10.0.2", "transport": "pcie"}
    for attr, value in attrs.items():
        write(controller / attr, value)
    link(controller / "device", "../../../" + pci)
    write(root / PCI / pci / "numa_node", "-1")


def add_namespace(root: Path, name: str, where: str, device_link: str, hidden=False):
    block = root / where
    write(block / "size", str(8 * 1024 * 1024))  # 4 GiB in 512-byte sectors
    write(block / "nsid", "1")
    write(block / "hidden", "1" if hidden else "0")
    write(block / "queue/logical_block_size", "512")
    link(block / "device", device_link)
    link(root / "block" / name, "../" + where)


@pytest.fixture
def sys_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    add_nic(root, "enp0s3", "0000:00:03.0", "virtio-pci", totalvfs=None)
    add_nic(root, "enp1s0", "0000:01:00.0", "igb", speed="-1", totalvfs=7)
    write(root / PCI / "0000:01:00.0/net/enp1s0/bonding_slave/perm_hwaddr", "52:54:00:10:01:07")
    add_nic(root, "enp1s0v0", "0000:01:10.0", "igbvf", speed=None, vf_of="0000:01:00.0")
    # A bond and loopback have no device behind them.
    write(root / "devices/virtual/net/bond0/address", "aa:bb:cc:dd:ee:ff")
    link(root / "class/net/bond0", "../../devices/virtual/net/bond0")
    link(root / "class/net/lo", "../../devices/virtual/net/lo")

    # nvme0: a plain controller; its namespace links straight to it.
    add_nvme_controller(root, "nvme0", "0000:00:06.0", "LABN1NVME0")
    add_namespace(root, "nvme0n1", f"{PCI}/0000:00:06.0/nvme/nvme0/nvme0n1", "../../nvme0")
    # nvme1 under native multipath: the visible head links to the subsystem, the per-path
    # device (nvme1c1n1) is hidden.
    add_nvme_controller(root, "nvme1", "0000:00:07.0", "LABN1NVME1")
    subsys = root / "devices/virtual/nvme-subsystem/nvme-subsys1"
    write(subsys / "serial", "LABN1NVME1")
    link(subsys / "nvme1", f"../../../../{PCI}/0000:00:07.0/nvme/nvme1")
    add_namespace(root, "nvme1n1", "devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1", "../../nvme-subsys1")
    add_namespace(root, "nvme1c1n1", f"{PCI}/0000:00:07.0/nvme/nvme1/nvme1c1n1", "../../nvme1", hidden=True)
    write(root / "devices/virtual/block/vda/size", "100")
    link(root / "block/vda", "../devices/virtual/block/vda")

    rxe = root / "devices/virtual/infiniband/rxe0"
    write(rxe / "node_type", "1: CA")
    write(rxe / "parent", "enp0s3")
    write(rxe / "ports/1/state", "4: ACTIVE")
    write(rxe / "ports/1/link_layer", "Ethernet")
    write(rxe / "ports/1/gid_attrs/ndevs/0", "enp0s3")
    link(root / "class/infiniband/rxe0", "../../devices/virtual/infiniband/rxe0")
    return root


def test_nics_are_only_interfaces_with_hardware(sys_root):
    names = [nic["name"] for nic in sysfs.nics(str(sys_root))]
    assert names == ["enp0s3", "enp1s0", "enp1s0v0"]


def test_nic_attributes(sys_root):
    nics = {nic["name"]: nic for nic in sysfs.nics(str(sys_root))}
    assert nics["enp0s3"] == {
        "name": "enp0s3",
        "mac": "52:54:00:10:01:02",
        "perm_mac": "52:54:00:10:01:02",
        "driver": "virtio-pci",
        "pci_address": "0000:00:03.0",
        "speed_mbps": 25000,
        "mtu": 9000,
        "operstate": "up",
        "numa_node": 0,
        "sriov_totalvfs": None,
        "sriov_numvfs": None,
        "is_vf": False,
    }
    assert nics["enp1s0"]["speed_mbps"] is None  # -1: link down
    assert nics["enp1s0"]["perm_mac"] == "52:54:00:10:01:07"  # in a bond: its own MAC, not the bond's
    assert nics["enp1s0"]["sriov_totalvfs"] == 7
    assert nics["enp1s0v0"]["is_vf"] is True
    assert nics["enp1s0v0"]["speed_mbps"] is None  # unreadable attribute


def test_nvme_namespaces_with_and_without_multipath(sys_root):
    common = {
        "model": "QEMU NVMe Ctrl",
        "firmware": "10.0.2",
        "transport": "pcie",
        "numa_node": -1,
        "namespace_id": 1,
        "size_bytes": 4 * 1024**3,
        "logical_block_size": 512,
        "nguid": None,  # QEMU reports none unless asked
        "eui64": None,
    }
    assert sysfs.nvme_namespaces(str(sys_root)) == [
        {"name": "nvme0n1", "controller": "nvme0", "serial": "LABN1NVME0", "pci_address": "0000:00:06.0", **common},
        {"name": "nvme1n1", "controller": "nvme1", "serial": "LABN1NVME1", "pci_address": "0000:00:07.0", **common},
    ]


def test_rdma_devices(sys_root):
    assert sysfs.rdma_devices(str(sys_root)) == [
        {
            "name": "rxe0",
            "node_type": "1: CA",
            "driver": None,
            "parent": "enp0s3",
            "ports": [{"port": 1, "state": "4: ACTIVE", "link_layer": "Ethernet", "netdev": "enp0s3"}],
        }
    ]


def test_missing_tree_gives_empty_lists(tmp_path):
    assert sysfs.nics(str(tmp_path)) == []
    assert sysfs.nvme_namespaces(str(tmp_path)) == []
    assert sysfs.rdma_devices(str(tmp_path)) == []


@pytest.mark.parametrize(("text", "expected"), [("42", 42), ("0x1f", 31), ("-1", -1), ("junk", None)])
def test_read_int(tmp_path, text, expected):
    write(tmp_path / "attr", text)
    assert sysfs.read_int(str(tmp_path / "attr")) == expected


def test_nvme_queues_are_the_paths_under_multipath(sys_root):
    assert sysfs.nvme_queues("nvme0n1", str(sys_root)) == ["nvme0n1"]  # plain: its own queue
    assert sysfs.nvme_queues("nvme1n1", str(sys_root)) == ["nvme1c1n1"]  # multipath head: its path's
