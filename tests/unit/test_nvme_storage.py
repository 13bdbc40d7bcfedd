"""nvme_storage: device selection and input checks (the lab scenario covers the real devices)."""

from types import SimpleNamespace

import pytest
from conftest import ROOT, _load

nvme = _load("nvme_storage", ROOT / "library" / "nvme_storage.py")

DEVICES = [
    {"name": "nvme0n1", "serial": "S0", "model": "SAMSUNG MZQL2", "system": True},
    {"name": "nvme1n1", "serial": "S1", "model": "SAMSUNG MZQL2", "system": False},
    {"name": "nvme2n1", "serial": "S2", "model": "SAMSUNG MZQL2", "system": False},
    {"name": "nvme3n1", "serial": "K3", "model": "KIOXIA CM6", "system": False},
]


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


def select(*volumes):
    storage = nvme.NvmeStorage(SimpleNamespace(params={"volumes": list(volumes)}, check_mode=True))
    return {name: [d["serial"] for d in picked] for name, picked in storage.select(DEVICES).items()}


def refused(match, *volumes):
    with pytest.raises(nvme.Refused, match=match):
        select(*volumes)


def test_select_by_serial_model_and_all():
    assert select(volume(serials=["S2", "S1"])) == {"scratch": ["S1", "S2"]}
    assert select(volume(model_pattern="^SAMSUNG")) == {"scratch": ["S1", "S2"]}  # never the system disk
    assert select(volume(all=True)) == {"scratch": ["K3", "S1", "S2"]}


def test_all_leaves_the_devices_other_volumes_name():
    chosen = select(volume(name="rest", all=True, mount_point="/rest"), volume(name="cache", serials=["K3"]))
    assert chosen == {"cache": ["K3"], "rest": ["S1", "S2"]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"serials": ["S9"]}, r"volume scratch: serials S9 are not on this node \(present: K3, S0, S1, S2\)"),
        ({"serials": ["S0"]}, r"volume scratch: S0 \(nvme0n1\) holds the system and is never used"),
        ({"model_pattern": "INTEL"}, "model_pattern 'INTEL' matches no NVMe device"),
        ({"serials": ["S1"], "chunk_kib": 100}, "chunk_kib 100 is not a power of two from 4 to 65536"),
        ({"serials": ["S1"], "chunk_kib": 131072}, "chunk_kib 131072 is not a power of two from 4 to 65536"),
        ({"serials": ["S1"], "mount_point": "scratch"}, "mount_point 'scratch' is not an absolute path below /"),
        ({"serials": ["S1"], "mount_point": "/"}, "mount_point '/' is not an absolute path below /"),
        ({"serials": ["S1"], "mount_point": "//"}, "mount_point '//' is not in its plain form; write '/'"),
        ({"serials": ["S1"], "mount_point": "/."}, "mount_point '/.' is not in its plain form; write '/'"),
        ({"serials": ["S1"], "mount_point": "/scratch/.."}, "mount_point '/scratch/..' is not in its plain form"),
        ({"serials": ["S1"], "mount_point": "/scratch/"}, "mount_point '/scratch/' is not in its plain form"),
        ({"serials": ["S1"], "mount_point": "/usr"}, "mount_point /usr belongs to the system; a new file system"),
        ({"serials": ["S1"], "mount_point": "/var"}, "mount_point /var belongs to the system"),
        ({"serials": ["S1"], "mount_point": "/etc"}, "mount_point /etc belongs to the system"),
        ({"serials": ["S1"], "mount_point": "/boot"}, "mount_point /boot belongs to the system"),
        ({"name": "../../dev/sda", "serials": ["S1"]}, r"volume '\.\./\.\./dev/sda': a name is 1 to 32 of"),
        ({"name": "data.1", "serials": ["S1"]}, "volume 'data.1': a name is 1 to 32 of A-Z a-z 0-9 _ -"),
        ({"name": ".*", "serials": ["S1"]}, r"volume '\.\*': a name is 1 to 32 of"),
        ({"name": "data\n", "serials": ["S1"]}, r"volume 'data\\n': a name is 1 to 32 of"),  # an mdadm.conf line
        ({"serials": ["S1"], "all": True}, "select devices by exactly one of serials, model_pattern, all"),
        ({}, "select devices by exactly one of serials, model_pattern, all"),
    ],
)
def test_bad_volumes_are_refused(fields, message):
    refused(message, volume(**fields))


def test_one_layout_per_device():
    refused(
        "device S1 is in two volumes, fast and cache: one layout per device",
        volume(name="fast", serials=["S1", "S2"]),
        volume(name="cache", layout="single", serials=["S1"], mount_point="/cache"),
    )


def test_volume_names_are_unique():
    refused("volume names must be unique", volume(serials=["S1"]), volume(serials=["S2"]))
