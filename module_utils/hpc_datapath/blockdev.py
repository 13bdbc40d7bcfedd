# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block device relations from sysfs: partitions, holders, the disks under a mount, md arrays.

Pure readers with an injectable sysfs root, like sysfs.py. Targets: Python 3.8+, stdlib only.
"""

from __future__ import annotations

import os

from ansible.module_utils.hpc_datapath.sysfs import SYS, listdir, read, read_int


def partitions(disk, sys_root=SYS):
    """Names of the partitions of a disk (nvme0n1p1, ...)."""
    base = os.path.join(sys_root, "block", disk)
    return [name for name in listdir(base) if os.path.exists(os.path.join(base, name, "partition"))]


def holders(device, sys_root=SYS):
    """Devices stacked on this one (md127, dm-0), from the disk and from its partitions."""
    base = os.path.join(sys_root, "class", "block", device)
    found = set(listdir(os.path.join(base, "holders")))
    if os.path.isdir(os.path.join(sys_root, "block", device)):
        for part in partitions(device, sys_root):
            found.update(listdir(os.path.join(sys_root, "block", device, part, "holders")))
    return sorted(found)


def base_disks(device, sys_root=SYS, _seen=None):
    """The whole disks under a block device: through partitions, md, dm and LVM (slaves)."""
    seen = set() if _seen is None else _seen
    if device in seen:
        return set()
    seen.add(device)
    node = os.path.join(sys_root, "class", "block", device)
    if os.path.exists(os.path.join(node, "partition")):
        parent = os.path.basename(os.path.dirname(os.path.realpath(node)))
        return base_disks(parent, sys_root, seen)
    slaves = listdir(os.path.join(node, "slaves"))
    if not slaves:
        return {device}
    disks = set()
    for slave in slaves:
        disks |= base_disks(slave, sys_root, seen)
    return disks


def device_name(path, sys_root=SYS, dev_root="/dev"):
    """The kernel name of a device node path (/dev/mapper/vg-root -> dm-0), or None."""
    try:
        real = os.path.realpath(path if os.path.isabs(path) else os.path.join(dev_root, path))
        st = os.stat(real)
    except OSError:
        return None
    wanted = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    for name in listdir(os.path.join(sys_root, "class", "block")):
        if read(os.path.join(sys_root, "class", "block", name, "dev")) == wanted:
            return name
    return None


def md_arrays(sys_root=SYS):
    """Running md arrays: {kernel name: {level, chunk_bytes, members, raid_disks}}."""
    arrays = {}
    for name in listdir(os.path.join(sys_root, "block")):
        md = os.path.join(sys_root, "block", name, "md")
        if not os.path.isdir(md):
            continue
        arrays[name] = {
            "level": read(os.path.join(md, "level")),
            "chunk_bytes": read_int(os.path.join(md, "chunk_size")),
            "raid_disks": read_int(os.path.join(md, "raid_disks")),
            "members": sorted(listdir(os.path.join(sys_root, "block", name, "slaves"))),
        }
    return arrays
