# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the node's NICs, NVMe devices and RDMA devices from sysfs.

Pure readers with an injectable sysfs root, shared by the modules, so that unit tests run
against a fake tree. Runs on the targets: Python 3.8 or newer, standard library only.
"""

from __future__ import annotations

import os

SYS = "/sys"


def read(path, default=None):
    """The stripped content of a sysfs attribute, or default where it is absent or unreadable.

    Some attributes exist but raise on read (speed of a link that is down: EINVAL).
    """
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def read_int(path, default=None):
    value = read(path)
    try:
        return int(value, 0) if value is not None else default
    except ValueError:
        return default


def link_name(path):
    """Basename of a symlink's target (driver, PCI address), or None."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def pci_address(device_path):
    """The PCI address of a device directory, or None where it does not sit on PCI."""
    real = os.path.realpath(device_path)
    while real not in ("/", ""):
        name = os.path.basename(real)
        if len(name) == 12 and name[4] == ":" and name[7] == ":" and name[10] == ".":
            return name
        real = os.path.dirname(real)
    return None


def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def nics(sys_root=SYS):
    """Network interfaces backed by a device (physical NICs and SR-IOV VFs), by name."""
    result = []
    for name in listdir(os.path.join(sys_root, "class/net")):
        base = os.path.join(sys_root, "class/net", name)
        device = os.path.join(base, "device")
        if not os.path.exists(device):
            continue  # lo, bonds, bridges, VLANs, veth: no hardware behind them
        speed = read_int(os.path.join(base, "speed"))
        mac = read(os.path.join(base, "address"))
        result.append(
            {
                "name": name,
                "mac": mac,
                # A bond gives its members its own MAC; the burned-in one is kept here.
                "perm_mac": read(os.path.join(base, "bonding_slave/perm_hwaddr"), mac),
                "driver": link_name(os.path.join(device, "driver")),
                "pci_address": pci_address(device),
                "speed_mbps": speed if speed is not None and speed > 0 else None,
                "mtu": read_int(os.path.join(base, "mtu")),
                "operstate": read(os.path.join(base, "operstate")),
                "numa_node": read_int(os.path.join(device, "numa_node")),
                "sriov_totalvfs": read_int(os.path.join(device, "sriov_totalvfs")),
                "sriov_numvfs": read_int(os.path.join(device, "sriov_numvfs")),
                "is_vf": os.path.exists(os.path.join(device, "physfn")),
            }
        )
    return result


def nvme_controller(device_dir):
    """The controller directory behind a namespace's 'device' link.

    Without native multipath the link points at the controller (nvmeN). With it, the visible
    namespace hangs off its subsystem (nvme-subsysN), which links to its controllers.
    """
    real = os.path.realpath(device_dir)
    if os.path.exists(os.path.join(real, "transport")):
        return real
    controllers = [name for name in listdir(real) if name.startswith("nvme") and name[4:].isdigit()]
    return os.path.realpath(os.path.join(real, controllers[0])) if controllers else real


def nvme_queues(name, sys_root=SYS):
    """The block devices that carry a namespace's request queue.

    Without multipath that is the namespace itself. Under native multipath the visible head
    (nvme0n1) is bio-based, without scheduler or request queue; each path (nvme0c0n1, hidden,
    under its controller) has them.
    """
    subsystem = os.path.realpath(os.path.join(sys_root, "block", name, "device"))
    if os.path.exists(os.path.join(subsystem, "transport")):
        return [name]  # the device is the controller itself: no multipath head
    nsid = read(os.path.join(sys_root, "block", name, "nsid"))
    paths = []
    for controller in listdir(subsystem):
        if controller.startswith("nvme") and controller[4:].isdigit():
            paths += [
                entry
                for entry in listdir(os.path.join(subsystem, controller))
                if entry.startswith(controller + "c") and entry.endswith("n" + str(nsid))
            ]
    return sorted(paths) or [name]


def _identity(value):
    """An NGUID or EUI-64 as the kernel prints it, or None where the drive reports none (all zeros)."""
    return value if value and value.strip("0-:") else None


def nvme_namespaces(sys_root=SYS):
    """Visible NVMe namespaces with their controller's identity, by block device name."""
    result = []
    for name in listdir(os.path.join(sys_root, "block")):
        block = os.path.join(sys_root, "block", name)
        # Multipath hides its per-path devices (nvme0c0n1); the head (nvme0n1) is the disk.
        if not name.startswith("nvme") or read(os.path.join(block, "hidden")) == "1":
            continue
        controller = nvme_controller(os.path.join(block, "device"))
        sectors = read_int(os.path.join(block, "size"), 0)
        result.append(
            {
                "name": name,
                "controller": os.path.basename(controller),
                "serial": read(os.path.join(controller, "serial")),
                "model": read(os.path.join(controller, "model")),
                "firmware": read(os.path.join(controller, "firmware_rev")),
                "transport": read(os.path.join(controller, "transport")),
                "pci_address": pci_address(os.path.join(controller, "device")),
                "numa_node": read_int(os.path.join(controller, "device", "numa_node")),
                "namespace_id": read_int(os.path.join(block, "nsid")),
                "size_bytes": sectors * 512,  # sysfs counts 512-byte sectors whatever the LBA size
                "logical_block_size": read_int(os.path.join(block, "queue", "logical_block_size")),
                # The namespace's own identity: one namespace seen through two controllers (dual
                # port, native multipath off) shows up twice with the same NGUID or EUI-64.
                "nguid": _identity(read(os.path.join(block, "nguid"))),
                "eui64": _identity(read(os.path.join(block, "eui"))),
            }
        )
    return result


def rdma_devices(sys_root=SYS):
    """RDMA devices with each port's state, link layer and network device."""
    result = []
    for name in listdir(os.path.join(sys_root, "class/infiniband")):
        base = os.path.join(sys_root, "class/infiniband", name)
        ports = []
        for port in listdir(os.path.join(base, "ports")):
            port_dir = os.path.join(base, "ports", port)
            ports.append(
                {
                    "port": int(port),
                    "state": read(os.path.join(port_dir, "state")),
                    "link_layer": read(os.path.join(port_dir, "link_layer")),
                    "netdev": read(os.path.join(port_dir, "gid_attrs", "ndevs", "0")),
                }
            )
        result.append(
            {
                "name": name,
                "node_type": read(os.path.join(base, "node_type")),
                "driver": link_name(os.path.join(base, "device", "driver")),
                "parent": read(os.path.join(base, "parent")),  # Soft-RoCE (rxe) names its netdev here
                "ports": ports,
            }
        )
    return result
