# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block device relations from sysfs: partitions, holders, the disks under a mount, md arrays, mounts.

Pure readers with an injectable sysfs root, like sysfs.py. Targets: Python 3.8+, stdlib only.
"""

from __future__ import annotations

import os
import re

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


def stacked_on(device, sys_root=SYS):
    """Every device stacked on a disk (through its partitions) or on a partition, nearest first."""
    found, queue = [], holders(device, sys_root)
    while queue:
        name = queue.pop(0)
        if name not in found:
            found.append(name)
            queue += holders(name, sys_root)
    return found


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
        # No device node (yet, or not in this mount namespace): /dev/<kernel name> still names it.
        name = os.path.basename(path)
        direct = os.path.dirname(path) in ("", dev_root)
        return name if direct and os.path.exists(os.path.join(sys_root, "class", "block", name)) else None
    wanted = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    for name in listdir(os.path.join(sys_root, "class", "block")):
        if read(os.path.join(sys_root, "class", "block", name, "dev")) == wanted:
            return name
    return None


def by_devno(devno, sys_root=SYS):
    """The kernel name of the block device numbered major:minor, or None (anonymous: btrfs, nfs, tmpfs)."""
    path = os.path.join(sys_root, "dev", "block", devno)
    return os.path.basename(os.path.realpath(path)) if os.path.exists(path) else None


def devno(device, sys_root=SYS):
    """major:minor of a block device by kernel name (disk or partition), or None."""
    return read(os.path.join(sys_root, "class", "block", device, "dev"))


def _unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal.group(1), 8)), field)


def mounts(mountinfo="/proc/self/mountinfo"):
    """(mount point, major:minor, source, fstype) of every mount, from mountinfo.

    The device number is what the kernel mounted: it names the disk where the source does not
    (/dev/root, a path since renamed).
    """
    with open(mountinfo) as handle:
        for line in handle:
            fields = line.split()
            dash = fields.index("-", 6)
            yield _unescape(fields[4]), fields[2], _unescape(fields[dash + 2]), fields[dash + 1]


def btrfs_members(device, sys_root=SYS):
    """Every device of the btrfs file system that has this device among its members."""
    base = os.path.join(sys_root, "fs", "btrfs")
    for fsid in listdir(base):
        members = listdir(os.path.join(base, fsid, "devices"))
        if device in members:
            return members
    return [device]


def loops_on(device, sys_root=SYS):
    """Loop devices whose backing file is this block device (loop registers no holder)."""
    found = []
    for name in listdir(os.path.join(sys_root, "block")):
        backing = read(os.path.join(sys_root, "block", name, "loop", "backing_file"))
        if backing and os.path.basename(backing) == device and os.path.dirname(backing) == "/dev":
            found.append(name)
    return found


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
