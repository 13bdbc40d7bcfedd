"""nvme_storage planning against a fake node: sysfs, mountinfo and swaps.

What a wipe would take with it (md arrays on partitions, on non-NVMe disks, LVM), one namespace
under two names, the system disk mounted as /dev/root, and tuning the queues would reject. All
plans run in check mode: a refusal must come before any action is recorded.
"""

import json
from pathlib import Path

import pytest
from conftest import ROOT, _load
from fake_sysfs import link, write

nvme = _load("nvme_storage", ROOT / "library" / "nvme_storage.py")


class Node:
    """A fake node: NVMe namespaces, other disks, partitions, md and dm devices, mounts."""

    def __init__(self, tmp_path: Path):
        self.sys = tmp_path / "sys"
        self.mountinfo = tmp_path / "mountinfo"
        self.swaps = tmp_path / "swaps"
        self.swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n")
        self.mount_lines = []
        self.minor = 0

    def _block(self, path: Path, name: str, partition=False):
        self.minor += 1
        number = f"259:{self.minor}"
        write(path / "dev", number)
        (path / "holders").mkdir(parents=True, exist_ok=True)
        link(self.sys / "class/block" / name, str(path))
        link(self.sys / "dev/block" / number, str(path))
        if partition:
            write(path / "partition", "1")
        else:
            link(self.sys / "block" / name, str(path))
        return number

    def nvme(self, index, serial, parts=(), nguid=None, scheduler="[none] mq-deadline"):
        controller = self.sys / f"devices/pci0000:00/0000:00:{index:02x}.0/nvme/nvme{index}"
        for attribute, value in {"serial": serial, "model": "SAMSUNG MZQL2", "transport": "pcie"}.items():
            write(controller / attribute, value)
        name = f"nvme{index}n1"
        namespace = controller / name
        self._block(namespace, name)
        link(namespace / "device", str(controller))
        write(namespace / "nsid", "1")
        write(namespace / "size", "7501476528")
        write(namespace / "queue/scheduler", scheduler)
        write(namespace / "queue/read_ahead_kb", "128")
        write(namespace / "queue/nr_requests", "1023")
        if nguid:
            write(namespace / "nguid", nguid)
        for part in parts:
            self._block(namespace / part, part, partition=True)
        return name

    def partition(self, disk, part):
        self._block((self.sys / "class/block" / disk).resolve() / part, part, partition=True)

    def disk(self, name, parts=()):
        base = self.sys / "devices/pci0000:00/0000:00:1f.2/ata1/block" / name
        self._block(base, name)
        for part in parts:
            self._block(base / part, part, partition=True)

    def stacked(self, name, slaves, md=True, dm_name=None):
        base = self.sys / "devices/virtual/block" / name
        number = self._block(base, name)
        for slave in slaves:
            link(base / "slaves" / slave, str(self.sys / "class/block" / slave))
            link((self.sys / "class/block" / slave).resolve() / "holders" / name, str(base))
        if md:
            write(base / "md/level", "raid0")
            write(base / "md/chunk_size", "524288")
            write(base / "md/raid_disks", str(len(slaves)))
        if dm_name:
            write(base / "dm/name", dm_name)
        return number

    def mount(self, target, device, source=None):
        number = (self.sys / "class/block" / device / "dev").read_text().strip()
        mount_id = 20 + len(self.mount_lines)
        self.mount_lines.append(f"{mount_id} 1 {number} / {target} rw - xfs {source or '/dev/' + device} rw")
        self.mountinfo.write_text("\n".join(self.mount_lines) + "\n")


class FakeModule:
    def __init__(self, params):
        self.params = {"wipe_serials": [], "tuning": {}, "state": "present", **params}
        self.check_mode = True
        self.commands = []

    def run_command(self, args):
        self.commands.append(args)
        if args[0] == "wipefs":
            return 0, json.dumps({"signatures": []}), ""
        return 2, "", ""  # blkid: nothing found

    def get_bin_path(self, name):
        return None

    def fail_json(self, **result):
        raise AssertionError(result)


def volume(**fields):
    return {
        "name": "scratch",
        "layout": "raid0",
        "chunk_kib": 512,
        "filesystem": "xfs",
        "mount_point": "/scratch",
        "serials": None,
        "model_pattern": None,
        "all": False,
        **fields,
    }


@pytest.fixture
def node(tmp_path):
    node = Node(tmp_path)
    node.nvme(0, "S0", parts=["nvme0n1p1", "nvme0n1p2"])
    node.nvme(1, "S1")
    node.nvme(2, "S2")
    node.nvme(3, "S3")
    node.disk("sda")
    # The root file system as the kernel mounted it: /dev/root, which names no device node.
    node.mount("/", "nvme0n1p2", source="/dev/root")
    return node


def plan(node, *volumes, **params):
    module = FakeModule({"volumes": list(volumes), **params})
    storage = nvme.NvmeStorage(module, str(node.sys), str(node.mountinfo), str(node.swaps))
    return storage, storage.apply()


def refused(node, match, *volumes, **params):
    module = FakeModule({"volumes": list(volumes), **params})
    storage = nvme.NvmeStorage(module, str(node.sys), str(node.mountinfo), str(node.swaps))
    with pytest.raises(nvme.Refused, match=match):
        storage.apply()
    assert storage.actions == [], "a refusal comes before any action"
    assert [c for c in module.commands if c[0] not in ("wipefs", "blkid")] == []


def test_dev_root_marks_the_system_disk(node):
    _, result = plan(node, volume(all=True))
    system = {d["name"]: d["system"] for d in result["devices"]}
    assert system == {"nvme0n1": True, "nvme1n1": False, "nvme2n1": False, "nvme3n1": False}
    assert [d["serial"] for d in result["volumes"][0]["devices"]] == ["S1", "S2", "S3"]


def test_unresolvable_system_mount_stops_the_run(node, tmp_path):
    node.mountinfo.write_text("20 1 8:99 / / rw - ext4 /dev/gone rw\n")
    refused(node, r"cannot tell which disk holds / \(ext4 /dev/gone, device 8:99\)", volume(serials=["S1"]))


def test_array_on_partitions_needs_every_disk_opted_in(node):
    node.partition("nvme1n1", "nvme1n1p1")
    node.partition("nvme2n1", "nvme2n1p1")
    node.stacked("md127", ["nvme1n1p1", "nvme2n1p1"])
    node.mount("/data", "md127")
    refused(
        node,
        r"volume scratch: S1 \(nvme1n1\) is a member of md127, which also spans S2 \(nvme2n1\): wiping it would "
        r"destroy md127. To allow it, list S2 in nvme_storage_wipe_serials",
        volume(serials=["S1", "S3"]),
        wipe_serials=["S1"],
    )
    storage, _ = plan(node, volume(serials=["S1", "S3"]), wipe_serials=["S1", "S2"])
    assert storage.actions[:4] == [
        "umount /data",
        "mdadm --stop /dev/md127",
        "wipefs --all --force /dev/nvme1n1",
        "mdadm --create /dev/md/scratch --run --level=0 --chunk=512 --metadata=1.2 --homehost=any "
        "--name=scratch --raid-devices=2 /dev/nvme1n1 /dev/nvme3n1",
    ]


def test_array_with_a_disk_that_is_not_nvme_is_refused(node):
    node.stacked("md127", ["nvme1n1", "sda"])
    refused(
        node,
        r"S1 \(nvme1n1\) is a member of md127, which also spans sda, not an NVMe device",
        volume(serials=["S1"]),
        wipe_serials=["S1", "S2", "S3"],
    )


def test_lvm_on_a_device_is_refused_not_wiped(node):
    node.stacked("dm-0", ["nvme3n1"], md=False, dm_name="vg0-data")
    node.mount("/data", "dm-0", source="/dev/mapper/vg0-data")
    refused(
        node,
        r"S3 \(nvme3n1\) is under dm-0, a device-mapper device vg0-data \(LVM, crypt, multipath\), /data, "
        r"which this role does not take apart",
        volume(all=True),
        wipe_serials=["S3"],
    )


def test_lvm_on_md_on_a_device_is_refused(node):
    node.stacked("md127", ["nvme1n1", "nvme2n1"])
    node.stacked("dm-0", ["md127"], md=False, dm_name="vg0-data")
    refused(node, r"S1 \(nvme1n1\) is under dm-0", volume(serials=["S1", "S2"]), wipe_serials=["S1", "S2"])


def test_one_namespace_under_two_names_is_refused(tmp_path):
    node = Node(tmp_path)
    node.nvme(1, "S1", nguid="6e7b1c00-0000-0000-0000-000000000001")
    node.nvme(2, "S2", nguid="6e7b1c00-0000-0000-0000-000000000001")
    node.mountinfo.write_text("")
    refused(
        node,
        "volume scratch: nvme1n1 and nvme2n1 report the same nguid 6e7b1c00-0000-0000-0000-000000000001: "
        "one namespace seen through two controllers",
        volume(all=True),
    )


def test_a_duplicate_serial_is_refused(tmp_path):
    node = Node(tmp_path)
    node.nvme(1, "DUAL")
    node.nvme(2, "DUAL")
    node.mountinfo.write_text("")
    refused(node, "nvme1n1 and nvme2n1 report the same serial DUAL", volume(model_pattern="SAMSUNG"))


def test_zero_nguids_are_no_identity(tmp_path):
    node = Node(tmp_path)
    node.nvme(1, "S1", nguid="00000000-0000-0000-0000-000000000000")
    node.nvme(2, "S2", nguid="00000000-0000-0000-0000-000000000000")
    node.mountinfo.write_text("")
    _, result = plan(node, volume(all=True))
    assert [d["nguid"] for d in result["devices"]] == [None, None]
    assert [d["serial"] for d in result["volumes"][0]["devices"]] == ["S1", "S2"]


@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        (
            {"scheduler": "bfq"},
            r"tuning.scheduler: 'bfq' is not offered by nvme1n1 \(S1\), which offers: none mq-deadline",
        ),
        ({"nr_requests": 2}, "tuning.nr_requests: 2 is below the block layer's minimum of 4"),
        ({"read_ahead_kb": -1}, "tuning.read_ahead_kb: -1 is negative"),
    ],
)
def test_tuning_is_checked_before_anything_is_built(node, tuning, message):
    refused(node, message, volume(serials=["S1", "S3"]), tuning={"scheduler": None, **tuning})


def test_tuning_is_written_before_the_array_is_made(node):
    storage, _ = plan(node, volume(serials=["S1", "S3"]), tuning={"scheduler": "mq-deadline", "read_ahead_kb": 4096})
    assert storage.actions.index(f"echo mq-deadline > {node.sys}/block/nvme1n1/queue/scheduler") < next(
        i for i, action in enumerate(storage.actions) if action.startswith("mdadm --create")
    )


class RemnantModule(FakeModule):
    """A real run whose new array shows an XFS left inside the devices' data area."""

    def __init__(self, params):
        super().__init__(params)
        self.check_mode = False

    def run_command(self, args):
        self.commands.append(args)
        if args[:2] == ["wipefs", "--no-act"]:
            return 0, json.dumps({"signatures": []}), ""
        if args[0] == "blkid":
            return (0, "TYPE=xfs\nUUID=0f0e\n", "") if args[-1] == "/dev/md/scratch" else (2, "", "")
        if args[:2] == ["mdadm", "--detail"]:
            return 0, "MD_UUID=aa:bb\n", ""
        return 0, "", ""


def run_for_real(node, **params):
    module = RemnantModule({"volumes": [volume(serials=["S1", "S3"])], **params})
    storage = nvme.NvmeStorage(module, str(node.sys), str(node.mountinfo), str(node.swaps))
    return module, storage


def test_a_remnant_file_system_on_a_new_array_needs_the_opt_in(node):
    module, storage = run_for_real(node)
    with pytest.raises(nvme.Refused, match="the new array showed a xfs file system left by an earlier array"):
        storage.apply()
    # The array it made is taken down again; nothing else was written.
    assert [" ".join(c) for c in module.commands if c[0] in ("mdadm", "wipefs", "mkfs.xfs")][-3:] == [
        "mdadm --create /dev/md/scratch --run --level=0 --chunk=512 --metadata=1.2 --homehost=any --name=scratch "
        "--raid-devices=2 /dev/nvme1n1 /dev/nvme3n1",
        "mdadm --stop /dev/md/scratch",
        "wipefs --all --force /dev/nvme1n1 /dev/nvme3n1",
    ]


def test_with_the_opt_in_the_remnant_is_overwritten(node):
    module, storage = run_for_real(node, wipe_serials=["S1", "S3"])
    storage.apply()
    assert ["mkfs.xfs", "-q", "-L", "scratch", "-d", "su=512k,sw=2", "-f", "/dev/md/scratch"] in module.commands


# --- Found by trying to break it: each of these planned a destructive command or crashed ---------


def plan_on(node, *volumes, dev_root=None, **params):
    module = FakeModule({"volumes": list(volumes), **params})
    args = (str(node.sys), str(node.mountinfo), str(node.swaps))
    storage = nvme.NvmeStorage(module, *args, dev_root=str(dev_root)) if dev_root else nvme.NvmeStorage(module, *args)
    return module, storage


def refused_on(node, match, *volumes, dev_root=None, **params):
    _, storage = plan_on(node, *volumes, dev_root=dev_root, **params)
    with pytest.raises(nvme.Refused, match=match):
        storage.apply()
    assert storage.actions == [], "a refusal comes before any action"


def test_the_system_disk_under_the_volumes_array_is_never_wiped(node, tmp_path):
    node.mount("/boot", "nvme0n1p1")
    node.stacked("md127", ["nvme0n1p2", "nvme1n1"])
    (tmp_path / "dev/md").mkdir(parents=True)
    (tmp_path / "dev/md127").touch()
    (tmp_path / "dev/md/scratch").symlink_to(tmp_path / "dev/md127")
    refused_on(
        node,
        r"S0 \(nvme0n1\) holds the system: it is never wiped, whatever nvme_storage_wipe_serials says",
        volume(serials=["S1", "S2"]),
        dev_root=tmp_path / "dev",
        wipe_serials=["S0", "S1", "S2", "S3"],
    )


def test_an_array_reaching_a_system_disk_is_never_stopped(node):
    node.stacked("md127", ["nvme0n1p1", "nvme1n1"])
    refused_on(
        node,
        r"S1 \(nvme1n1\) is a member of md127, which also spans S0 \(nvme0n1\), a disk of the system",
        volume(serials=["S1"]),
        wipe_serials=["S0", "S1"],
    )


def test_a_second_path_to_the_system_namespace_is_the_system_too(tmp_path):
    node = Node(tmp_path)
    node.nvme(0, "S0", parts=["nvme0n1p1"], nguid="6e7b1c00-0000-0000-0000-0000000000aa")
    node.nvme(1, "S0B", parts=["nvme1n1p1"], nguid="6e7b1c00-0000-0000-0000-0000000000aa")
    node.nvme(2, "S2")
    node.mount("/", "nvme0n1p1", source="/dev/root")
    _, result = plan(node, volume(all=True), wipe_serials=["S0", "S0B"])
    assert {d["name"]: d["system"] for d in result["devices"]} == {"nvme0n1": True, "nvme1n1": True, "nvme2n1": False}
    assert [d["name"] for d in result["volumes"][0]["devices"]] == ["nvme2n1"]


def test_a_device_backing_a_loop_device_is_not_taken(node):
    write(node.sys / "devices/virtual/block/loop0/loop/backing_file", "/dev/nvme2n1")
    link(node.sys / "block/loop0", str(node.sys / "devices/virtual/block/loop0"))
    refused(node, r"S2 \(nvme2n1\): backs loop0", volume(serials=["S2"]))
    refused(
        node,
        r"S2 \(nvme2n1\) backs loop0, which this role does not take apart",
        volume(serials=["S2"]),
        wipe_serials=["S2"],
    )


def test_blkid_that_cannot_tell_stops_the_run(node):
    class Ambivalent(RemnantModule):
        def run_command(self, args):
            if args[0] == "blkid" and args[-1] == "/dev/md/scratch":
                self.commands.append(args)
                return 8, "", "ambivalent result (probably more filesystems on the device)"
            return super().run_command(args)

    module = Ambivalent({"volumes": [volume(serials=["S1", "S3"])]})
    storage = nvme.NvmeStorage(module, str(node.sys), str(node.mountinfo), str(node.swaps))
    with pytest.raises(nvme.Refused, match=r"blkid cannot tell what /dev/md/scratch holds \(exit 8\)"):
        storage.apply()
    assert not any(c[0].startswith("mkfs") for c in module.commands)


@pytest.mark.parametrize(
    ("mountinfo", "outcome"),
    [
        ("20 1 0:31 / / rw - zfs rpool/ROOT/debian rw", r"cannot tell which disk holds / \(zfs rpool/ROOT/debian"),
        ("20 1 0:22 / / rw - nfs4 10.0.0.1:/roots/n1 rw", None),  # a diskless node: no local system disk
        ("20 1 0:23 / / rw - tmpfs tmpfs rw", None),
    ],
)
def test_root_without_a_disk_is_fine_and_root_on_unknown_disks_stops(tmp_path, mountinfo, outcome):
    node = Node(tmp_path)
    node.nvme(1, "S1")
    node.mountinfo.write_text(mountinfo + "\n")
    if outcome:
        refused_on(node, outcome, volume(all=True))
    else:
        assert [d["serial"] for d in plan(node, volume(all=True))[1]["volumes"][0]["devices"]] == ["S1"]


def test_every_device_of_a_btrfs_root_is_the_system(tmp_path):
    node = Node(tmp_path)
    node.nvme(1, "S1")
    node.nvme(2, "S2")
    node.nvme(3, "S3")
    for member in ("nvme1n1", "nvme2n1"):
        link(node.sys / "fs/btrfs/f00d/devices" / member, str(node.sys / "class/block" / member))
    node.mountinfo.write_text("20 1 0:33 / / rw - btrfs /dev/nvme1n1 rw\n")
    result = plan(node, volume(all=True))[1]
    assert [d["serial"] for d in result["volumes"][0]["devices"]] == ["S3"]


def test_a_swap_that_cannot_be_resolved_stops_the_run(node):
    node.swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/dev/disk/by-id/gone-part1 partition 1 0 -2\n")
    refused_on(node, "cannot tell which disk holds the swap /dev/disk/by-id/gone-part1", volume(all=True))


def test_a_mounted_partition_of_a_stacked_array_is_unmounted_before_the_array_stops(node):
    node.stacked("md127", ["nvme2n1", "nvme3n1"])
    node.partition("md127", "md127p1")
    node.mount("/data", "md127p1")
    storage, _ = plan(node, volume(serials=["S2", "S3"]), wipe_serials=["S2", "S3"])
    assert storage.actions[:2] == ["umount /data", "mdadm --stop /dev/md127"]


@pytest.mark.parametrize(
    ("volumes", "message"),
    [
        ([volume(model_pattern="[")], r"model_pattern '\[' is no regular expression"),
        (
            [volume(serials=["S1", "S2", "S3"]), volume(name="b", all=True, mount_point="/b")],
            "volume b: selects no device",
        ),
        ([volume(serials=["S1"], mount_point="/sys/fs/cgroup")], "mount_point /sys/fs/cgroup belongs to the system"),
        ([volume(serials=["S1"], mount_point="/usr/lib")], "mount_point /usr/lib belongs to the system"),
        ([volume(serials=["S1"], mount_point="/boot/grub")], "mount_point /boot/grub belongs to the system"),
        ([volume(serials=["S1"], mount_point="/scratch\n")], r"mount_point '/scratch\\n' holds a blank or control"),
        ([volume(serials=["S1"], mount_point="/my data")], "mount_point '/my data' holds a blank"),
        (
            [volume(serials=["S1"]), volume(name="b", serials=["S2"], mount_point="/scratch/disk0")],
            "mount points /scratch and /scratch/disk0: one volume would be mounted over or inside another",
        ),
        ([volume(serials=["S1"]), volume(name="b", serials=["S2"])], "mount points /scratch and /scratch: one volume"),
    ],
)
def test_more_bad_input_is_refused(node, volumes, message):
    refused_on(node, message, *volumes)


def test_mount_points_below_var_and_home_stay_possible(node):
    result = plan(node, volume(serials=["S1"], mount_point="/var/lib/docker"))[1]
    assert result["volumes"][0]["targets"][0]["mount_point"] == "/var/lib/docker"


def test_an_unreadable_serial_stops_the_run(tmp_path):
    node = Node(tmp_path)
    node.nvme(1, "S1")
    (node.sys / "devices/pci0000:00/0000:00:01.0/nvme/nvme1/serial").unlink()
    node.mountinfo.write_text("")
    refused_on(node, "nvme1n1: the serial of its controller cannot be read", volume(all=True))


def test_a_degraded_array_is_not_destroyed_on_the_present_members_opt_in(node, tmp_path):
    node.stacked("md127", ["nvme1n1"])
    write(node.sys / "devices/virtual/block/md127/md/raid_disks", "2")
    (tmp_path / "dev/md").mkdir(parents=True)
    (tmp_path / "dev/md127").touch()
    (tmp_path / "dev/md/scratch").symlink_to(tmp_path / "dev/md127")
    refused_on(
        node,
        r"/dev/md/scratch is degraded \(1 of 2 members present\)",
        volume(serials=["S1", "S2"]),
        dev_root=tmp_path / "dev",
        wipe_serials=["S1", "S2"],
    )


def test_a_layout_change_never_unmounts_another_file_system(node):
    node.mount("/scratch", "sda")  # someone else's disk where a raid0 volume would have been
    refused_on(
        node,
        r"volume scratch: /scratch holds /dev/sda, which is not on this volume's devices",
        volume(layout="single", serials=["S1"]),
    )
