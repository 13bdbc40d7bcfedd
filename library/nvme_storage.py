#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Local NVMe volumes: RAID0 or one per device, with a file system, never destroying data unasked."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvme_storage
short_description: Build local NVMe volumes (md RAID0 or one per device) safely
description:
  - Discovers the node's NVMe namespaces from sysfs and C(nvme-cli) (serial, model, firmware,
    size, NUMA node, PCI address, health, existing signatures), selects each volume's devices by
    serial, model pattern or all, and makes the volumes exist - an md RAID0 array (or the bare
    devices) with an XFS or ext4 file system whose stripe geometry matches the array.
  - Safe mode, always on - a device that carries any signature (partition table, file system, md
    member, LVM) or holds other devices is never touched unless its serial is listed in
    I(wipe_serials); then the run reports what it destroyed. An existing array is never grown or
    changed; with every member opted in, it is stopped, wiped and built anew.
  - What is stacked on a device goes with it, so every disk under every md array on a device to wipe
    (through partitions) must be an NVMe device opted in, or the run refuses. Device-mapper devices
    (LVM, crypt) on it are refused, never taken apart. A selection never holds one namespace twice
    (the same serial, NGUID or EUI-64 under two names).
  - The disks under C(/), C(/boot), C(/boot/efi) and swap are never candidates; they are found by
    device number, so C(/dev/root) counts.
  - Tuning is checked against each queue's own sysfs lists while planning, and written before any
    array or file system is made.
  - Applies the I/O tuning to the selected devices at once; the role persists it with a udev rule.
  - Mounting, C(fstab), C(mdadm.conf) and the initramfs are left to the role's tasks, with the
    C(targets) this module returns.
  - With I(state=info) it changes nothing, even outside check mode - it reports, plans (C(actions))
    and fails on anything a real run would refuse.
options:
  volumes:
    description: The volumes, each selecting its devices by exactly one of I(serials), I(model_pattern), I(all).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Volume name (1 to 32 of A-Z a-z 0-9 _ -); RAID0 arrays are /dev/md/<name>.
        type: str
        required: true
      layout:
        description: C(raid0) stripes the devices into one array; C(single) gives each device its own file system.
        type: str
        choices: [raid0, single]
        default: raid0
      serials:
        description: Serial numbers of the devices.
        type: list
        elements: str
      model_pattern:
        description: Regular expression matched against the model of every NVMe device.
        type: str
      all:
        description: Every NVMe device except those holding the system and those of other volumes.
        type: bool
        default: false
      chunk_kib:
        description: RAID0 chunk size in KiB, a power of two from 4 to 65536.
        type: int
        default: 512
      filesystem:
        description: File system to create.
        type: str
        choices: [xfs, ext4]
        default: xfs
      mount_point:
        description: >-
          Absolute mount point in its plain form, not one of the system's (/usr, /var, /etc, /boot, ...);
          C(single) mounts device i at C(<mount_point>/disk<i>).
        type: str
        required: true
  wipe_serials:
    description: Serials whose existing data may be destroyed. Nothing else is ever wiped.
    type: list
    elements: str
    default: []
  tuning:
    description: I/O queue settings applied to every selected device; a null value leaves the setting alone.
    type: dict
    default: {}
    suboptions:
      scheduler:
        description: I/O scheduler.
        type: str
      read_ahead_kb:
        description: Read-ahead in KiB (also applied to the md array).
        type: int
      nr_requests:
        description: Queue depth of the block layer.
        type: int
  state:
    description: C(present) builds the volumes; C(info) only reports and validates.
    type: str
    choices: [present, info]
    default: present
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Stripe every NVMe device into /scratch
  nvme_storage:
    volumes:
      - {name: scratch, layout: raid0, all: true, mount_point: /scratch}
    tuning: {scheduler: none, read_ahead_kb: 4096}
"""

RETURN = r"""
ansible_facts:
  description: C(nvme_devices), the same list as C(devices).
  returned: always
  type: dict
devices:
  description: Every NVMe namespace with its identity, health, signatures and whether it holds the system.
  returned: always
  type: list
  elements: dict
volumes:
  description: >-
    Each volume with its devices, the mount points its other layout would use, and its targets,
    the block devices that carry a file system,
    each with device, uuid (null in check mode for a file system still to create), fstype and mount_point;
    and for RAID0 the md array (device, uuid).
  returned: always
  type: list
  elements: dict
destroyed:
  description: What was (or, in check mode, would be) wiped, as serial, device and the signatures found.
  returned: always
  type: list
  elements: dict
actions:
  description: The commands run (or, in check mode, that would run), in order.
  returned: always
  type: list
  elements: str
refused:
  description: >-
    With I(state=info), why a real run would refuse (null when it would not); the other states
    fail with this message instead.
  returned: always
  type: str
"""

import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.blockdev import (
    base_disks,
    btrfs_members,
    by_devno,
    device_name,
    devno,
    holders,
    loops_on,
    md_arrays,
    mounts,
    partitions,
    stacked_on,
)
from ansible.module_utils.hpc_datapath.sysfs import SYS, nvme_namespaces, nvme_queues, read

VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")  # \Z: $ would pass a trailing newline

SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr", "/var")
# Where a fresh file system mounted over the directory would hide what the system runs on: these
# directories themselves, and anything below the trees of the second set (/var/lib/docker and
# /home/data stay possible).
SYSTEM_MOUNT_POINTS = frozenset(SYSTEM_MOUNTS) | {"/home", "/opt", "/root", "/srv", "/var/lib", "/var/log"}
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr")
# File systems that hold no local disk: a diskless node's root is one of them.
NO_LOCAL_DISK = frozenset(
    {"nfs", "nfs4", "tmpfs", "ramfs", "rootfs", "overlay", "cifs", "smb3", "9p", "virtiofs", "ceph", "lustre"}
)


class Refused(Exception):
    """An input or a state the module will not act on; nothing has been changed."""


class NvmeStorage:
    def __init__(self, module, sys_root=SYS, mountinfo="/proc/self/mountinfo", swaps="/proc/swaps", dev_root="/dev"):
        self.module = module
        self.sys_root, self.mountinfo, self.swaps, self.dev_root = sys_root, mountinfo, swaps, dev_root
        self.params = module.params
        self.check_mode = module.check_mode
        self.actions = []
        self.destroyed = []
        self.changed = False

    # --- reading the node ---------------------------------------------------------------

    def run(self, args, check_rc=True):
        rc, out, err = self.module.run_command(args)
        if check_rc and rc != 0:
            self.module.fail_json(msg=f"{' '.join(args)} failed (rc={rc}): {err.strip() or out.strip()}")
        return rc, out, err

    def change(self, args):
        """Run a command that changes the node, or only record it in check mode."""
        self.actions.append(" ".join(args))
        self.changed = True
        if not self.check_mode:
            self.run(args)

    def system_disks(self):
        """The disks under /, /boot, /usr, /var and swap, found by device number (/dev/root names none)."""
        disks = set()
        for target, number, source, fstype in mounts(self.mountinfo):
            if target not in SYSTEM_MOUNTS:
                continue
            name = by_devno(number, self.sys_root) or device_name(source, self.sys_root)
            if name:
                # A btrfs file system spans every device of it, the one mountinfo names being only one.
                for member in btrfs_members(name, self.sys_root) if fstype == "btrfs" else [name]:
                    disks |= base_disks(member, self.sys_root)
            elif source.startswith("/dev/") or not (fstype in NO_LOCAL_DISK or fstype.startswith("fuse")):
                raise Refused(
                    f"cannot tell which disk holds {target} ({fstype} {source}, device {number}): "
                    "no device is selected without knowing the system disks"
                )
        with open(self.swaps) as swaps:
            for line in list(swaps)[1:]:
                path, kind = line.split()[:2]
                if kind == "file":  # the disk under a swap file is that of its file system
                    stat = os.stat(path)
                    name = by_devno(f"{os.major(stat.st_dev)}:{os.minor(stat.st_dev)}", self.sys_root)
                    if name is None and stat.st_dev == os.stat("/").st_dev:
                        continue  # on the root file system, counted above
                else:
                    name = device_name(path, self.sys_root)
                if not name:
                    raise Refused(f"cannot tell which disk holds the swap {path}: no device is selected")
                disks |= base_disks(name, self.sys_root)
        return disks

    def signatures(self, device):
        """Everything that says a device is in use: wipefs signatures, partitions, holders."""
        _, out, _ = self.run(["wipefs", "--no-act", "--json", f"/dev/{device}"])
        found = [
            f"{sig.get('type')}" + (f" ({sig['label']})" if sig.get("label") else "")
            for sig in (json.loads(out or "{}").get("signatures") or [])
        ]
        found += [f"partition {name}" for name in partitions(device, self.sys_root)]
        found += [f"held by {name}" for name in holders(device, self.sys_root)]
        found += [f"backs {name}" for name in self.loops(device)]
        return found

    def health(self, controller):
        """The smart-log fields the health gates use, or None where nvme-cli cannot tell."""
        nvme = self.module.get_bin_path("nvme")
        if nvme is None:
            return None
        rc, out, _ = self.run([nvme, "smart-log", "--output-format=json", f"/dev/{controller}"], check_rc=False)
        if rc != 0:
            return None
        log = json.loads(out)
        return {
            "critical_warning": int(log.get("critical_warning", 0)),
            "percent_used": int(log.get("percent_used", log.get("percentage_used", 0))),
            "media_errors": int(log.get("media_errors", 0)),
        }

    def loops(self, device):
        """Loop devices on a disk or its partitions: loop registers no holder, so nothing else shows them."""
        names = [device, *partitions(device, self.sys_root)]
        return [loop for name in names for loop in loops_on(name, self.sys_root)]

    def discover(self):
        system = self.system_disks()
        devices = []
        for namespace in nvme_namespaces(self.sys_root):
            if not namespace["serial"]:
                raise Refused(f"{namespace['name']}: the serial of its controller cannot be read")
            devices.append(
                {
                    **namespace,
                    "system": namespace["name"] in system,
                    "signatures": self.signatures(namespace["name"]),
                    "health": self.health(namespace["controller"]),
                }
            )
        # Another path to a system namespace (dual port, native multipath off) is the system too.
        system_ids = {(k, d[k]) for d in devices if d["system"] for k in ("serial", "nguid", "eui64") if d.get(k)}
        for device in devices:
            device["system"] = device["system"] or any((k, device.get(k)) in system_ids for k in ("nguid", "eui64"))
            device["system"] = device["system"] or ("serial", device["serial"]) in system_ids
        return devices

    def filesystem(self, path):
        """(TYPE, UUID) of what blkid finds on a device, probing it rather than its cache.

        Exit 2 alone means nothing was found; anything else blkid cannot tell (8: two signatures)
        stops the run. A partition table counts as a TYPE.
        """
        rc, out, err = self.run(["blkid", "-p", "-o", "export", path], check_rc=False)
        if rc == 2:
            return None, None
        if rc != 0:
            raise Refused(f"blkid cannot tell what {path} holds (exit {rc}): {err.strip() or out.strip()}")
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        table = values.get("PTTYPE")
        return values.get("TYPE") or (f"{table} partition table" if table else None), values.get("UUID")

    # --- deciding ----------------------------------------------------------------------

    @staticmethod
    def check_volume(volume):
        """Input checks that need no look at the node."""
        name, chunk = volume["name"], volume["chunk_kib"]
        if not VOLUME_NAME.match(str(name)):
            # It names /dev/md/<name>, and mdadm.conf lines are found by it.
            raise Refused(f"volume {name!r}: a name is 1 to 32 of A-Z a-z 0-9 _ -, starting with a letter or digit")
        if sum([bool(volume.get("serials")), bool(volume.get("model_pattern")), bool(volume.get("all"))]) != 1:
            raise Refused(f"volume {name}: select devices by exactly one of serials, model_pattern, all")
        if chunk & (chunk - 1) or not 4 <= chunk <= 65536:
            raise Refused(f"volume {name}: chunk_kib {chunk} is not a power of two from 4 to 65536")
        mount_point = volume["mount_point"]
        if re.search(r"[\s\x00-\x1f\x7f]", mount_point):  # fstab separates fields by blanks
            raise Refused(f"volume {name}: mount_point {mount_point!r} holds a blank or control character")
        if not os.path.isabs(mount_point) or mount_point == "/":
            raise Refused(f"volume {name}: mount_point {mount_point!r} is not an absolute path below /")
        normal = "/" + os.path.normpath(mount_point).lstrip("/")
        if normal != mount_point:
            raise Refused(f"volume {name}: mount_point {mount_point!r} is not in its plain form; write {normal!r}")
        if normal in SYSTEM_MOUNT_POINTS or any(normal == t or normal.startswith(t + "/") for t in SYSTEM_TREES):
            raise Refused(f"volume {name}: mount_point {normal} belongs to the system; a new file system would hide it")

    @staticmethod
    def pick(volume, devices, claimed):
        """The devices a volume selects, before the checks that apply to every selection."""
        name = volume["name"]
        if volume.get("serials"):
            by_serial = {}
            for device in devices:
                by_serial.setdefault(device["serial"], []).append(device)
            missing = [serial for serial in volume["serials"] if serial not in by_serial]
            if missing:
                present = ", ".join(sorted(by_serial)) or "none"
                raise Refused(f"volume {name}: serials {', '.join(missing)} are not on this node (present: {present})")
            if any(len(by_serial[serial]) > 1 for serial in volume["serials"]):
                raise Refused(f"volume {name}: a selected controller has several namespaces; select them by name")
            return [by_serial[serial][0] for serial in volume["serials"]]
        if volume.get("model_pattern"):
            try:
                pattern = re.compile(volume["model_pattern"])
            except re.error as error:
                raise Refused(
                    f"volume {name}: model_pattern {volume['model_pattern']!r} is no regular expression: {error}"
                ) from None
            picked = [d for d in devices if pattern.search(d["model"] or "") and not d["system"]]
            if not picked:
                raise Refused(f"volume {name}: model_pattern {volume['model_pattern']!r} matches no NVMe device")
            return picked
        return [d for d in devices if not d["system"] and d["name"] not in claimed]

    def select(self, devices):
        """{volume name: [device dicts]} after every input check; raises Refused."""
        names = [volume["name"] for volume in self.params["volumes"]]
        if len(set(names)) != len(names):
            raise Refused(f"volume names must be unique: {', '.join(names)}")
        mount_points = sorted(volume["mount_point"] for volume in self.params["volumes"])
        for upper, lower in [(mount_points[i - 1], mount_points[i]) for i in range(1, len(mount_points))]:
            if lower == upper or lower.startswith(upper.rstrip("/") + "/"):
                raise Refused(f"mount points {upper} and {lower}: one volume would be mounted over or inside another")
        claimed, chosen, identities = {}, {}, {}
        # Explicit selections first, so that 'all' means every device no other volume names.
        for volume in sorted(self.params["volumes"], key=lambda v: bool(v.get("all"))):
            self.check_volume(volume)
            picked = self.pick(volume, devices, claimed)
            if not picked:
                raise Refused(
                    f"volume {volume['name']}: selects no device (every one is the system's or another volume's)"
                )
            for device in picked:
                # One namespace under two names would be striped with itself, and opting in its
                # serial would wipe both paths.
                for kind in ("serial", "nguid", "eui64"):
                    if device.get(kind) is None:
                        continue
                    other = identities.setdefault((kind, device[kind]), device["name"])
                    if other != device["name"]:
                        raise Refused(
                            f"volume {volume['name']}: {other} and {device['name']} report the same {kind} "
                            f"{device[kind]}: one namespace seen through two controllers (native NVMe "
                            "multipath off) or several namespaces of one controller; a volume takes whole, "
                            "distinct drives"
                        )
                if device["system"]:
                    raise Refused(
                        f"volume {volume['name']}: {device['serial']} ({device['name']}) holds the system "
                        "and is never used"
                    )
                if device["name"] in claimed:
                    raise Refused(
                        f"device {device['serial']} is in two volumes, {claimed[device['name']]} and "
                        f"{volume['name']}: one layout per device"
                    )
                claimed[device["name"]] = volume["name"]
            chosen[volume["name"]] = sorted(picked, key=lambda d: d["serial"])
        return chosen

    def existing_array(self, volume):
        """The running md array named after the volume, with its members' serials, or None."""
        link = os.path.join(self.dev_root, "md", volume["name"])
        if not os.path.exists(link):
            return None
        kernel = os.path.basename(os.path.realpath(link))
        info = md_arrays(self.sys_root).get(kernel)
        if info is None:
            return None
        if info["chunk_bytes"] is None or info["raid_disks"] is None or info["level"] is None:
            raise Refused(f"volume {volume['name']}: {link} ({kernel}): its level or geometry cannot be read")
        if len(info["members"]) < info["raid_disks"]:
            # What the missing members held cannot be checked: never destroyed on the others' opt-in.
            raise Refused(
                f"volume {volume['name']}: {link} is degraded ({len(info['members'])} of {info['raid_disks']} "
                "members present); assemble or remove it yourself first"
            )
        # Members may be partitions or other disks: name them by the NVMe devices under them, if any.
        by_name = {d["name"]: d for d in self.all_devices}
        serials = sorted(by_name[m]["serial"] if m in by_name else m for m in info["members"])
        return {"kernel": kernel, "device": link, **info, "serials": serials}

    def plan_wipe(self, volume, devices, reason):
        """Wipe devices that carry data, if every one of them is opted in; else refuse."""
        for device in devices:
            if device["system"]:
                raise Refused(
                    f"volume {volume['name']}: {reason}, and {device['serial']} ({device['name']}) holds the system: "
                    "it is never wiped, whatever nvme_storage_wipe_serials says"
                )
        dirty = [d for d in devices if d["signatures"]]
        not_allowed = [d for d in dirty if d["serial"] not in self.params["wipe_serials"]]
        if not_allowed:
            details = "; ".join(f"{d['serial']} ({d['name']}): {', '.join(d['signatures'])}" for d in not_allowed)
            raise Refused(
                f"volume {volume['name']}: {reason}. Refusing to destroy data on {details}. To allow it, list "
                f"these serials in nvme_storage_wipe_serials"
            )
        for device in dirty:
            self.check_stack(volume, device)
        return dirty

    def check_stack(self, volume, device):
        """Refuse to wipe a device whose stacked devices reach beyond the opted-in NVMe devices.

        Wiping one member destroys the whole of an md array or LVM volume on it, partitions or not:
        every disk under everything stacked on the device must be an NVMe device opted in.
        """
        by_name = {d["name"]: d for d in self.all_devices}
        what = f"volume {volume['name']}: {device['serial']} ({device['name']})"
        loops = self.loops(device["name"])
        if loops:
            raise Refused(
                f"{what} backs {', '.join(loops)}, which this role does not take apart. Detach it yourself "
                "(losetup --detach), then run again"
            )
        for holder in stacked_on(device["name"], self.sys_root):
            node = os.path.join(self.sys_root, "class", "block", holder)
            if not os.path.isdir(os.path.join(node, "md")):
                mapped = read(os.path.join(node, "dm", "name"))
                kind = f"device-mapper device {mapped} (LVM, crypt, multipath)" if mapped else "stacked device"
                mounted = ", ".join(self.mounts_of(holder)) or "not mounted"
                raise Refused(
                    f"{what} is under {holder}, a {kind}, {mounted}, which this role does not take apart. "
                    "Unmount it and remove it yourself (for LVM: lvremove, vgremove, pvremove), then run again"
                )
            for disk in sorted(base_disks(holder, self.sys_root)):
                other = by_name.get(disk)
                if other is None:
                    raise Refused(
                        f"{what} is a member of {holder}, which also spans {disk}, not an NVMe device: "
                        f"wiping it would destroy {holder}. Take {holder} apart yourself first"
                    )
                if other["system"]:
                    raise Refused(
                        f"{what} is a member of {holder}, which also spans {other['serial']} ({disk}), a disk of the "
                        "system: it is never wiped"
                    )
                if other["serial"] not in self.params["wipe_serials"]:
                    raise Refused(
                        f"{what} is a member of {holder}, which also spans {other['serial']} ({disk}): wiping it "
                        f"would destroy {holder}. To allow it, list {other['serial']} in nvme_storage_wipe_serials"
                    )

    def destroy(self, devices):
        """Take apart what is stacked on the devices (md only: check_stack refused the rest), top first, then wipe."""
        stopped = set()
        for device in devices:
            self.destroyed.append(
                {"serial": device["serial"], "device": f"/dev/{device['name']}", "signatures": device["signatures"]}
            )
            for holder in reversed(stacked_on(device["name"], self.sys_root)):
                if holder not in stopped:
                    stopped.add(holder)
                    for mount in [
                        m for name in [*partitions(holder, self.sys_root), holder] for m in self.mounts_of(name)
                    ]:
                        self.change(["umount", mount])
                    self.change(["mdadm", "--stop", f"/dev/{holder}"])
            for name in [*partitions(device["name"], self.sys_root), device["name"]]:
                for mount in self.mounts_of(name):
                    self.change(["umount", mount])
            self.change(["wipefs", "--all", "--force", f"/dev/{device['name']}"])

    def mounts_of(self, device):
        """Where a block device (kernel name) is mounted, deepest first so that unmounting works."""
        number = devno(device, self.sys_root)
        found = [
            target
            for target, mounted, source, _ in mounts(self.mountinfo)
            # A device number names the disk; anonymous ones (0:N, btrfs) leave only the source path.
            if mounted == number or (mounted.startswith("0:") and device_name(source, self.sys_root) == device)
        ]
        return sorted(set(found), key=len, reverse=True)

    def check_remnant(self, volume, devices):
        """A new array may show a file system its devices' own signatures did not: one left inside the
        data area by an earlier array or LVM volume (their labels wiped, their data not). It may be
        someone's way back to that data, so it is overwritten only with every device opted in;
        otherwise the new array is taken down again and the run refuses.
        """
        path = f"/dev/md/{volume['name']}"
        remnant, _ = self.filesystem(path)
        not_opted_in = [d["serial"] for d in devices if d["serial"] not in self.params["wipe_serials"]]
        if remnant and not_opted_in:
            self.change(["mdadm", "--stop", path])
            self.change(["wipefs", "--all", "--force", *[f"/dev/{d['name']}" for d in devices]])  # our own labels
            raise Refused(
                f"volume {volume['name']}: the new array showed a {remnant} file system left by an earlier array "
                f"or volume on its devices; the array was taken down again and nothing else was written. "
                f"To overwrite it, list {', '.join(not_opted_in)} in nvme_storage_wipe_serials"
            )
        return remnant is not None

    def mkfs(self, volume, path, stripe_devices, force):
        chunk = volume["chunk_kib"]
        if volume["filesystem"] == "xfs":
            args = ["mkfs.xfs", "-q", "-L", volume["name"][:12]]
            if stripe_devices > 1:
                args += ["-d", f"su={chunk}k,sw={stripe_devices}"]
            if force:
                args.append("-f")
        else:
            args = ["mkfs.ext4", "-q", "-L", volume["name"][:16]]
            if stripe_devices > 1:
                stride = chunk // 4
                args += ["-E", f"stride={stride},stripe_width={stride * stripe_devices}"]
            if force:
                args.append("-F")
        self.change([*args, path])

    def raid0(self, volume, devices):
        wanted_serials = [d["serial"] for d in devices]
        array = self.existing_array(volume)
        chunk_bytes = volume["chunk_kib"] * 1024
        matches = array is not None and (
            array["level"] == "raid0"
            and array["chunk_bytes"] == chunk_bytes
            and array["serials"] == sorted(wanted_serials)
        )
        wiped, remnant = [], False
        if array is not None and not matches:
            current = (
                f"{array['device']} exists as {array['level']}, chunk {array['chunk_bytes'] // 1024} KiB, "
                f"members {', '.join(array['serials'])}"
            )
            # Changing it means destroying it: every disk under it and every new device must be opted in.
            under = base_disks(array["kernel"], self.sys_root)
            strangers = sorted(under - {d["name"] for d in self.all_devices})
            if strangers:
                raise Refused(
                    f"volume {volume['name']}: {current}, on {', '.join(strangers)}, not NVMe devices: "
                    f"the role does not destroy it; take {array['device']} apart yourself first"
                )
            affected = [d for d in devices if d["signatures"]] + [
                d for d in self.all_devices if d["name"] in under and d not in devices
            ]
            wiped = self.plan_wipe(volume, affected, f"{current}; growing or changing an array destroys it")
        elif array is None:
            wiped = self.plan_wipe(volume, devices, "its devices already carry data")
        if wiped:
            self.destroy(wiped)
        if not matches:
            self.change(
                [
                    "mdadm",
                    "--create",
                    f"/dev/md/{volume['name']}",
                    "--run",
                    "--level=0",
                    f"--chunk={volume['chunk_kib']}",
                    "--metadata=1.2",
                    "--homehost=any",
                    f"--name={volume['name']}",
                    f"--raid-devices={len(devices)}",
                    *[f"/dev/{d['name']}" for d in devices],
                ]
            )
            if not self.check_mode:
                self.run(["udevadm", "settle"])
                remnant = self.check_remnant(volume, devices)
        path = f"/dev/md/{volume['name']}"
        fstype = self.filesystem(path)[0] if matches else None
        if matches and fstype not in (None, volume["filesystem"]):
            self.plan_wipe(volume, devices, f"{path} carries {fstype}, not {volume['filesystem']}")
            self.destroyed.append({"serial": None, "device": path, "signatures": [fstype]})
        if fstype != volume["filesystem"]:
            # Forced where the devices were wiped, or where a remnant was found and they are all opted in.
            force = bool(wiped) or fstype is not None or remnant
            self.mkfs(volume, path, len(devices), force=force)
        md_uuid = None
        if not self.check_mode or matches:
            _, out, _ = self.run(["mdadm", "--detail", "--export", path])
            md_uuid = dict(line.split("=", 1) for line in out.splitlines() if "=" in line).get("MD_UUID")
        return {"md": {"device": path, "uuid": md_uuid}, "targets": [self.target(volume, path, volume["mount_point"])]}

    def single(self, volume, devices):
        targets = []
        for index, device in enumerate(devices):
            path = f"/dev/{device['name']}"
            fstype, _ = self.filesystem(path)
            plain = (
                fstype == volume["filesystem"]
                and not partitions(device["name"], self.sys_root)
                and not holders(device["name"], self.sys_root)
            )
            if not plain:
                wiped = self.plan_wipe(
                    volume, [device], f"{device['serial']} is not a bare {volume['filesystem']} device"
                )
                if wiped:
                    self.destroy(wiped)
                self.mkfs(volume, path, 1, force=bool(wiped))
            targets.append(self.target(volume, path, f"{volume['mount_point']}/disk{index}"))
        return {"md": None, "targets": targets}

    def target(self, volume, path, mount_point):
        fstype, uuid = self.filesystem(path) if not self.check_mode or not self.changed else (None, None)
        if not self.check_mode:
            for _ in range(50):  # udev may still be writing the new file system's links
                if uuid:
                    break
                time.sleep(0.1)
                fstype, uuid = self.filesystem(path)
        return {"device": path, "uuid": uuid, "fstype": fstype or volume["filesystem"], "mount_point": mount_point}

    def tuning(self):
        return {key: value for key, value in (self.params["tuning"] or {}).items() if value is not None}

    def queues(self, device, key):
        # Read-ahead belongs to the device that is read; scheduler and queue depth to the request
        # queues, which under native multipath are the paths' (see nvme_queues).
        return [device["name"]] if key == "read_ahead_kb" else nvme_queues(device["name"], self.sys_root)

    def check_tuning(self, devices):
        """Refuse tuning the devices' own queues would reject (or silently change), before anything is built."""
        tuning = self.tuning()
        if tuning.get("read_ahead_kb", 0) < 0:
            raise Refused(f"tuning.read_ahead_kb: {tuning['read_ahead_kb']} is negative")
        if tuning.get("nr_requests", 4) < 4:  # the block layer raises anything lower to 4, every run
            raise Refused(f"tuning.nr_requests: {tuning['nr_requests']} is below the block layer's minimum of 4")
        for device in devices:
            for queue in self.queues(device, "scheduler") if "scheduler" in tuning else []:
                offered = (read(self.queue_attribute(queue, "scheduler")) or "").replace("[", "").replace("]", "")
                if tuning["scheduler"] not in offered.split():
                    raise Refused(
                        f"tuning.scheduler: {tuning['scheduler']!r} is not offered by {queue} "
                        f"({device['serial']}), which offers: {offered or 'none readable'}"
                    )

    def tune(self, devices, md_devices):
        tuning = self.tuning()
        for device in devices:
            for key, value in tuning.items():
                for name in self.queues(device, key):
                    self.write_queue(name, key, value)
        for path in md_devices:
            if "read_ahead_kb" in tuning and os.path.exists(path):
                self.write_queue(os.path.basename(os.path.realpath(path)), "read_ahead_kb", tuning["read_ahead_kb"])

    def queue_attribute(self, device, key):
        return os.path.join(self.sys_root, "block", device, "queue", key)

    def write_queue(self, device, key, value):
        attribute = self.queue_attribute(device, key)
        current = read(attribute) or ""
        if key == "scheduler":
            active = re.search(r"\[(\S+)\]", current)
            if (active.group(1) if active else current) == value:
                return
        elif current == str(value):
            return
        self.actions.append(f"echo {value} > {attribute}")
        self.changed = True
        if not self.check_mode:
            try:
                with open(attribute, "w") as handle:
                    handle.write(str(value))
            except OSError as error:
                raise Refused(f"cannot set {attribute} to {value}: {error}") from error

    def build(self):
        devices = self.discover()
        self.all_devices = devices
        chosen = self.select(devices)
        self.check_tuning([d for picked in chosen.values() for d in picked])
        result = {"devices": devices, "volumes": []}
        for volume in self.params["volumes"]:
            self.check_other_layout(volume, chosen[volume["name"]])
        # The queues first: a write the kernel refuses then fails before any array or file system is made.
        self.tune([d for picked in chosen.values() for d in picked], [])
        for volume in self.params["volumes"]:
            picked = chosen[volume["name"]]
            built = self.raid0(volume, picked) if volume["layout"] == "raid0" else self.single(volume, picked)
            self.tune([], [built["md"]["device"]] if built["md"] else [])
            # Where the other layout would mount, so the role can drop what a layout change left in fstab.
            other = self.other_layout_mount_points(volume, picked)
            result["volumes"].append(
                {
                    "name": volume["name"],
                    "layout": volume["layout"],
                    "devices": picked,
                    "other_layout_mount_points": other,
                    **built,
                }
            )
        return result

    @staticmethod
    def other_layout_mount_points(volume, picked):
        """Where the other layout would mount, so the role can drop what a layout change left in fstab."""
        if volume["layout"] == "raid0":
            return [f"{volume['mount_point']}/disk{i}" for i in range(len(picked))]
        return [volume["mount_point"]]

    def check_other_layout(self, volume, picked):
        """The role unmounts the other layout's mount points: refuse where something else is mounted there."""
        wanted = set(self.other_layout_mount_points(volume, picked))
        own = {d["name"] for d in picked}
        for target, number, source, _ in mounts(self.mountinfo):
            name = by_devno(number, self.sys_root) if target in wanted else None
            if target in wanted and not (name and base_disks(name, self.sys_root) <= own):
                raise Refused(
                    f"volume {volume['name']}: {target} holds {source}, which is not on this volume's devices; "
                    "changing the layout would unmount it"
                )

    def apply(self):
        """Plan everything first, touching nothing, so that a refusal anywhere leaves the node as it was."""
        check_mode = self.check_mode
        self.check_mode = True
        planned = self.build()
        if check_mode or self.params["state"] == "info" or not self.changed:
            return planned
        self.check_mode, self.changed, self.actions, self.destroyed = False, False, [], []
        return self.build()


def main():
    volume_options = {
        "name": {"type": "str", "required": True},
        "layout": {"type": "str", "choices": ["raid0", "single"], "default": "raid0"},
        "serials": {"type": "list", "elements": "str"},
        "model_pattern": {"type": "str"},
        "all": {"type": "bool", "default": False},
        "chunk_kib": {"type": "int", "default": 512},
        "filesystem": {"type": "str", "choices": ["xfs", "ext4"], "default": "xfs"},
        "mount_point": {"type": "str", "required": True},
    }
    module = AnsibleModule(
        argument_spec={
            "volumes": {"type": "list", "elements": "dict", "required": True, "options": volume_options},
            "wipe_serials": {"type": "list", "elements": "str", "default": []},
            "tuning": {
                "type": "dict",
                "default": {},
                "options": {
                    "scheduler": {"type": "str"},
                    "read_ahead_kb": {"type": "int"},
                    "nr_requests": {"type": "int"},
                },
            },
            "state": {"type": "str", "choices": ["present", "info"], "default": "present"},
        },
        supports_check_mode=True,
    )
    storage = NvmeStorage(module)
    try:
        result = storage.apply()
    except Refused as refusal:
        if module.params["state"] == "info":  # a report, for the caller to act on with its own message
            module.exit_json(changed=False, refused=str(refusal), devices=[], volumes=[], destroyed=[], actions=[])
        module.fail_json(msg=str(refusal), changed=storage.changed, actions=storage.actions)
    result.update(changed=storage.changed, destroyed=storage.destroyed, actions=storage.actions, refused=None)
    result["ansible_facts"] = {"nvme_devices": result["devices"]}
    if module._diff and storage.actions:
        result["diff"] = {"prepared": "\n".join(storage.actions) + "\n"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
