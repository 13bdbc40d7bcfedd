"""Shared NFS mounts: option rendering, the refusals, mountinfo and drift, holders, and the plan
applied against a fake node (a mountinfo file, unit files, /proc) whose `systemctl` mounts and
unmounts the way the 6.1 kernel shows NFS mounts, so that remounts, pending remounts, check mode
and a second run's changed=0 are tested without a kernel."""

import json
import os
import shutil
import socket
import subprocess
import types
from pathlib import Path

import pytest
from ansible.module_utils.hpc_datapath import mounts
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load

shared_mount = _load("shared_mount", ROOT / "library" / "shared_mount.py")

# Lines of /proc/self/mountinfo on Debian 12 (kernel 6.1): NFSv4.1 over TCP with nconnect, NFSv3 over
# RDMA, systemd's automount point, and the root file system.
LINE_TCP = (
    "151 29 0:52 / /shared/data rw,relatime shared:80 - nfs4 10.0.0.2:/export rw,vers=4.1,rsize=1048576,"
    "wsize=1048576,namlen=255,hard,proto=tcp,nconnect=8,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.1,"
    "local_lock=none,addr=10.0.0.2"
)
LINE_RDMA_V3 = (
    "160 29 0:55 / /shared/ckpt rw,relatime shared:84 - nfs 10.30.0.2:/ckpt rw,vers=3,rsize=262144,wsize=262144,"
    "namlen=255,hard,proto=rdma,port=20049,timeo=600,retrans=2,sec=sys,mountaddr=10.30.0.2,mountvers=3,"
    "mountproto=tcp,local_lock=none,addr=10.30.0.2"
)
LINE_AUTOFS = (
    "40 29 0:40 / /shared/auto rw,relatime shared:20 - autofs systemd-1 rw,fd=54,pgrp=1,timeout=0,minproto=5,"
    "maxproto=5,direct,pipe_ino=12345"
)
LINE_ROOT = "29 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro"

DNS = {
    "10.0.0.2": ["10.0.0.2"],
    "10.0.0.3": ["10.0.0.3"],
    "10.100.0.2": ["10.100.0.2"],
    "10.30.0.2": ["10.30.0.2"],
    "fd00:10::2": ["fd00:10::2"],
    "nas1": ["10.0.0.2"],
    "nas1-alias": ["10.0.0.2"],
    "other-nas": ["10.9.0.9"],
}
DEFAULTS = {
    "version": "4.1",
    "proto": "tcp",
    "nconnect": 8,
    "rsize": 1048576,
    "wsize": 1048576,
    "hard": True,
    "timeo": 600,
    "retrans": 2,
    "options": [],
    "automount": False,
    "mount_timeout": 60,
    "idle_timeout": 0,
}


def resolver(name):
    if name not in DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return DNS[name]


def check(items, defaults=None, rdma=("rxe0",), fstab=()):
    return mounts.check_mounts(
        items, dict(DEFAULTS, **(defaults or {})), resolver=resolver, rdma=rdma, fstab_paths=set(fstab)
    )


def one(**fields):
    found, problems = check([{"path": "/shared/data", "server": "10.0.0.2", "export": "/export", **fields}])
    assert problems == []
    return found[0]


# --- option rendering and unit files -------------------------------------------------------------


def test_default_options_for_a_bond():
    assert one()["options"] == (
        "vers=4.1,proto=tcp,nconnect=8,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,_netdev,nofail"
    )


def test_rdma_takes_its_port_and_no_default_nconnect():
    mount = one(proto="rdma", version=3)
    assert mount["options"] == (
        "vers=3,proto=rdma,port=20049,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,_netdev,nofail"
    )
    assert "nconnect=4," in one(proto="rdma", nconnect=4)["options"]  # asked for: passed on


def test_several_servers_set_max_connect_and_extra_options_follow():
    mount = one(server=["10.0.0.2", "10.100.0.2"], options=["noatime", "lookupcache=pos", "sec=sys"], hard=False)
    assert mount["options"] == (
        "vers=4.1,proto=tcp,nconnect=8,max_connect=2,rsize=1048576,wsize=1048576,soft,timeo=600,retrans=2,"
        "noatime,lookupcache=pos,sec=sys,_netdev,nofail"
    )


def test_role_options_come_first_and_a_later_one_of_a_name_wins():
    found, problems = check(
        [{"path": "/shared/data", "server": "nas1", "export": "/export", "options": ["ac", "nodev"]}],
        defaults={"options": ["noac", "nosuid", "_netdev"]},
    )
    assert problems == []
    assert found[0]["extra"] == [("nosuid", None), ("ac", None), ("nodev", None)]


def test_ipv6_server_is_bracketed_in_the_source():
    assert one(server="fd00:10::2")["source"] == "[fd00:10::2]:/export"


def test_version_given_as_a_number():
    assert one(version=4.2)["version"] == "4.2"
    assert one(version=3)["options"].startswith("vers=3,")


def test_unit_files():
    units = mounts.render_units(one(server=["10.0.0.2", "10.100.0.2"]))
    assert sorted(units) == ["run-hpc_shared_mounts-trunk-shared-data-1.mount", "shared-data.mount"]
    assert units["shared-data.mount"] == (
        f"{mounts.MARKER}\n"
        "[Unit]\n"
        "Description=Shared file system /shared/data (NFS 4.1 over tcp from 10.0.0.2, 10.100.0.2)\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Mount]\n"
        "What=10.0.0.2:/export\n"
        "Where=/shared/data\n"
        "Type=nfs\n"
        "Options=vers=4.1,proto=tcp,nconnect=8,max_connect=2,rsize=1048576,wsize=1048576,hard,timeo=600,"
        "retrans=2,_netdev,nofail\n"
        "TimeoutSec=60\n"
        "\n"
        "[Install]\n"
        "WantedBy=remote-fs.target\n"
    )
    trunk = units["run-hpc_shared_mounts-trunk-shared-data-1.mount"]
    assert "BindsTo=shared-data.mount\nAfter=shared-data.mount\n" in trunk
    assert "What=10.100.0.2:/export\nWhere=/run/hpc_shared_mounts/trunk/shared/data/1\n" in trunk
    assert "DirectoryMode=0700\n" in trunk
    assert trunk.endswith("[Install]\nWantedBy=shared-data.mount\n")


def test_automount_units():
    units = mounts.render_units(one(automount=True, idle_timeout=600, mount_timeout=30))
    assert "[Install]" not in units["shared-data.mount"]  # the automount starts it
    assert "TimeoutSec=30\n" in units["shared-data.mount"]
    assert units["shared-data.automount"].endswith(
        "[Automount]\nWhere=/shared/data\nTimeoutIdleSec=600\n\n[Install]\nWantedBy=remote-fs.target\n"
    )


def test_rdma_units_wait_for_the_modules():
    unit = mounts.render_units(one(proto="rdma"))["shared-data.mount"]
    assert "After=systemd-modules-load.service\nWants=systemd-modules-load.service\n" in unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_takes_the_units(tmp_path):
    wanted = [
        one(path="/shared/data", server=["10.0.0.2", "10.100.0.2"], proto="rdma"),
        one(path="/shared/auto-x", automount=True, options=["noatime"]),
    ]
    for mount in wanted:
        for name, text in mounts.render_units(mount).items():
            (tmp_path / name).write_text(text)
    for unit in sorted(tmp_path.iterdir()):
        verified = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
        )
        assert (verified.returncode, verified.stdout + verified.stderr) == (0, ""), unit.name


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/shared/data", "shared-data.mount"),
        ("/shared/my-data", "shared-my\\x2ddata.mount"),
        ("/data/.hidden/x", "data-.hidden-x.mount"),
        ("/.x", "\\x2ex.mount"),
    ],
)
def test_unit_names_are_systemd_escape(path, name):
    assert mounts.unit_name(path) == name
    if shutil.which("systemd-escape"):
        assert (
            subprocess.run(
                ["systemd-escape", "--path", "--suffix=mount", path], capture_output=True, text=True, check=True
            ).stdout.strip()
            == name
        )


# --- refusals ----------------------------------------------------------------------------------------


def refused(items, message, **kwargs):
    _, problems = check(items, **kwargs)
    assert any(message in problem for problem in problems), problems
    return problems


def mount_with(**fields):
    return [{"path": "/shared/data", "server": "10.0.0.2", "export": "/export", **fields}]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"server": "nas-missing"},
            "shared_mounts_nfs[0] (/shared/data): server nas-missing does not resolve on this node "
            "(Name or service not known)",
        ),
        ({"server": "nas 1"}, "server 'nas 1' is not a host name, an IPv4 or an IPv6 address"),
        ({"server": "[fd00::1]"}, "server '[fd00::1]' is not a host name"),
        ({"server": "a,b"}, "server 'a,b' is not a host name"),
        ({"server": []}, "server is missing"),
        ({"server": ["10.0.0.2", "nas1"]}, "servers 10.0.0.2 and nas1 both resolve to 10.0.0.2"),
        ({"server": [f"10.0.1.{i}" for i in range(17)]}, "server lists 17 addresses; the kernel trunks at most 16"),
        (
            {"server": ["10.0.0.2", "10.100.0.2"], "version": 3},
            "session trunking needs NFSv4.1 or 4.2 (NFSv3 has no sessions)",
        ),
        ({"export": "export"}, "export 'export' is not an absolute path"),
        ({"export": "/a b"}, "export '/a b' is not an absolute path"),
        ({"export": "/a/../b"}, "export '/a/../b' is not an absolute path"),
        ({"options": ["nosuchoption"]}, "options: 'nosuchoption' is not an option nfs(5) or mount(8) knows for NFS"),
        ({"options": ["nconect=8"]}, "'nconect=8' is not an option nfs(5) or mount(8) knows"),
        ({"options": ["vers=4.2"]}, "'vers=4.2' is set by the field version"),
        ({"options": ["nfsvers=3"]}, "'nfsvers=3' is set by the field version"),
        ({"options": ["rsize=4096"]}, "'rsize=4096' is set by the field rsize"),
        ({"options": ["soft"]}, "'soft' is set by the field hard"),
        ({"options": ["tcp"]}, "'tcp' is set by the field proto"),
        ({"options": ["max_connect=4"]}, "'max_connect=4' is set by the field server"),
        ({"options": ["x-systemd.automount"]}, "use the fields automount, mount_timeout and idle_timeout"),
        ({"options": ["noauto"]}, "'noauto' is refused: the mount would not come back after a reboot"),
        ({"options": ["bg"]}, "'bg' is refused: mount.nfs would retry in the background"),
        ({"options": ["sloppy"]}, "'sloppy' is refused"),
        ({"options": ["noac,nocto"]}, "holds a blank, comma, #, quote, backslash or control character"),
        ({"options": ["sec=krb6"]}, "'sec=krb6': sec takes one or more of sys, krb5, krb5i, krb5p, none"),
        ({"options": ["lookupcache=some"]}, "lookupcache takes all, none, pos or positive"),
        ({"options": ["actimeo"]}, "'actimeo': actimeo takes seconds"),
        ({"options": ["noac=1"]}, "'noac=1': noac takes no value"),
        ({"options": ["nosec"]}, "'nosec' is not an option nfs(5) or mount(8) knows"),
        (
            {"options": ["mountport=20048"]},
            "'mountport=20048' is an option of NFSv3 (nfs(5)), and this mount is NFS 4.1",
        ),
        ({"version": 3, "options": ["clientaddr=10.0.0.1"]}, "is an option of NFSv4.1 and 4.2 (nfs(5))"),
        ({"options": "noac"}, "options: is not a list of options"),
        ({"version": "4.0"}, "version: 4.0 is NFSv4.0, which has no sessions"),
        ({"version": 4}, "version: 4 is NFSv4.0"),
        ({"version": "4.3"}, "version: '4.3' is not one of 3, 4.1, 4.2"),
        ({"proto": "udp"}, "proto: 'udp' is not one of tcp, rdma"),
        ({"nconnect": 0}, "nconnect: 0 is outside 1..16, the kernel's limit"),
        ({"nconnect": 17}, "nconnect: 17 is outside 1..16"),
        ({"nconnect": "8x"}, "nconnect: '8x' is not a whole number"),
        ({"nconnect": True}, "nconnect: True is not a whole number"),
        ({"rsize": 1000000}, "rsize: 1000000 is not a power of two from 4096 to 1048576"),
        ({"wsize": 2097152}, "wsize: 2097152 is not a power of two"),
        ({"timeo": 0}, "timeo: 0 is outside 1..6000 tenths of a second"),
        ({"hard": "yes"}, "hard: 'yes' is not true or false"),
        ({"state": "mounted"}, "state 'mounted' is not present or absent"),
        ({"nconect": 8}, "unknown field nconect (known: path, server, export"),
    ],
)
def test_bad_mounts_are_refused(fields, message):
    refused(mount_with(**fields), message)


def test_a_bad_default_names_the_role_variable():
    refused(
        mount_with(),
        "shared_mounts_nfs[0] (/shared/data): nconnect (from shared_mounts_nfs_nconnect): 32 is outside",
        defaults={"nconnect": 32},
    )
    refused(
        mount_with(),
        "options (from shared_mounts_nfs_options): 'bogus' is not an option",
        defaults={"options": ["bogus"]},
    )


def test_rdma_needs_an_rdma_device():
    refused(
        mount_with(proto="rdma"),
        "shared_mounts_nfs[0] (/shared/data): proto: rdma needs an RDMA device, and this node has none "
        "(/sys/class/infiniband is empty)",
        rdma=(),
    )


def test_nfsv3_over_rdma_is_fine():
    assert one(proto="rdma", version="3")["port"] == 20049


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/", "path / is a directory of the system"),
        ("/home", "path /home is a directory of the system"),
        (
            "/mnt",
            "path /mnt is a directory of the system: a mount there hides what is kept in it; mount in a dedicated "
            "directory below it (/mnt/<name>)",
        ),
        ("/etc/nfs", "path /etc/nfs is inside /etc, which belongs to the system"),
        ("/var", "path /var is inside /var"),
        ("/var/lib/data", "inside /var"),
        ("/usr/share/x", "inside /usr"),
        ("/tmp/x", "inside /tmp"),
        ("/run/x", "inside /run"),
        ("/proc/x", "inside /proc"),
        ("/boot", "inside /boot"),
        ("/lib64/x", "inside /lib64"),
        ("/shared/my data", "'my data' holds characters that would break a unit name, fstab or a command line"),
        ("/shared/a,b", "'a,b' holds characters"),
        ("/shared/#x", "'#x' holds characters"),
        ("/shared/x\n", "'x\\n' holds characters"),
        ("/shared/d\u00e9j\u00e0", "holds characters"),
        ("/shared//x", "is not in its plain form (no //, /./, /../ or trailing /); write '/shared/x'"),
        ("/shared/x/", "is not in its plain form"),
        ("/shared/./x", "is not in its plain form"),
        ("/shared/../etc", "is not in its plain form"),
        ("shared/x", "path 'shared/x' is not an absolute path"),
        (None, "path None is not an absolute path"),
        ("/shared/" + "x" * 250, "is too long for a systemd unit name"),
    ],
)
def test_mount_points_of_the_system_and_bad_paths_are_refused(path, message):
    refused([{"path": path, "server": "10.0.0.2", "export": "/export"}], message)


@pytest.mark.parametrize("path", ["/mnt/x", "/data/x", "/shared/x", "/home/x", "/data", "/scratch-nfs/a_b.c"])
def test_dedicated_directories_are_fine(path):
    _, problems = check([{"path": path, "server": "10.0.0.2", "export": "/export"}])
    assert problems == []


def test_one_mount_per_path():
    refused(
        [
            {"path": "/shared/x", "server": "nas1", "export": "/a"},
            {"path": "/shared/x", "server": "nas1", "export": "/b"},
        ],
        "shared_mounts_nfs[1] (/shared/x): path /shared/x is also shared_mounts_nfs[0]'s",
    )


def test_mounts_of_one_server_must_agree_on_nconnect():
    refused(
        [
            {"path": "/shared/a", "server": "nas1", "export": "/a"},
            {"path": "/shared/b", "server": "10.0.0.2", "export": "/b", "nconnect": 4},
        ],
        "shared_mounts_nfs[1] (/shared/b): nconnect 4 differs from shared_mounts_nfs[0] (/shared/a)'s 8, and both "
        "reach 10.0.0.2 over tcp with NFS 4.1: the kernel shares one set of connections",
    )
    _, problems = check(  # another version or protocol is another client
        [
            {"path": "/shared/a", "server": "nas1", "export": "/a"},
            {"path": "/shared/b", "server": "10.0.0.2", "export": "/b", "nconnect": 4, "version": "4.2"},
        ]
    )
    assert problems == []


def test_a_path_fstab_mounts_is_refused():
    refused(mount_with(), "/etc/fstab mounts /shared/data too; remove that line", fstab=["/shared/data"])
    refused(mount_with(state="absent"), "/etc/fstab mounts /shared/data too", fstab=["/shared/data"])


def test_every_problem_is_reported_at_once():
    problems = refused(mount_with(nconnect=99, rsize=3, server="nowhere"), "nconnect: 99")
    assert len(problems) == 3


def test_absent_needs_only_the_path():
    found, problems = check([{"path": "/shared/old", "state": "absent"}])
    assert problems == []
    assert found == [
        {"index": 0, "where": "shared_mounts_nfs[0] (/shared/old)", "path": "/shared/old", "state": "absent"}
    ]


# --- mountinfo and drift ----------------------------------------------------------------------------


def test_mountinfo_parses_the_kernels_lines():
    tcp, rdma, autofs, root = mounts.parse_mountinfo("\n".join([LINE_TCP, LINE_RDMA_V3, LINE_AUTOFS, LINE_ROOT]))
    assert (tcp["id"], tcp["parent"], tcp["devno"], tcp["path"], tcp["fstype"], tcp["source"]) == (
        151,
        29,
        "0:52",
        "/shared/data",
        "nfs4",
        "10.0.0.2:/export",
    )
    assert tcp["mount_options"] == {"rw": None, "relatime": None}
    assert tcp["super_options"]["nconnect"] == "8"
    assert tcp["super_options"]["hard"] is None
    assert tcp["super_options"]["addr"] == "10.0.0.2"
    assert rdma["super_options"]["proto"] == "rdma"
    assert rdma["super_options"]["port"] == "20049"
    assert autofs["fstype"] == "autofs"
    assert autofs["source"] == "systemd-1"
    assert root["path"] == "/"


def test_mountinfo_unescapes_paths():
    line = r"170 29 0:60 / /shared/a\040b rw - nfs4 10.0.0.2:/x rw,vers=4.1,addr=10.0.0.2"
    assert mounts.parse_mountinfo(line)[0]["path"] == "/shared/a b"


def test_a_line_not_in_the_kernels_format_stops_the_run():
    with pytest.raises(mounts.StateError, match="mountinfo line 2 is not in the kernel's format"):
        mounts.parse_mountinfo(LINE_ROOT + "\n151 29 0:52 / /x rw nfs4\n")


def entry(line=LINE_TCP, **changes):
    parsed = mounts.parse_mountinfo(line)[0]
    parsed["super_options"].update(changes)
    for key in [k for k, v in changes.items() if v is False]:
        del parsed["super_options"][key]
    return parsed


def test_the_kernels_view_of_the_default_mount_has_no_drift():
    assert mounts.compare(one(), entry()) == ([], [])


@pytest.mark.parametrize(
    ("changes", "fields", "drift"),
    [
        ({"nconnect": "4"}, {}, "nconnect: the kernel shows 4, wanted 8"),
        ({"nconnect": False}, {}, "nconnect: the kernel shows 1, wanted 8"),
        ({"timeo": "100"}, {}, "timeo: the kernel shows 100, wanted 600"),
        ({"retrans": "5"}, {}, "retrans: the kernel shows 5, wanted 2"),
        ({"vers": "4.2"}, {}, "vers: the kernel shows 4.2, wanted 4.1"),
        ({"proto": "rdma", "port": "20049"}, {}, "proto: the kernel shows rdma, wanted tcp"),
        ({"hard": False, "soft": None}, {}, "hard: the kernel mounts it soft, wanted hard"),
        ({}, {"hard": False}, "hard: the kernel mounts it hard, wanted soft"),
        ({"rsize": "2097152"}, {}, "rsize: the kernel shows 2097152, wanted 1048576"),
        ({"addr": "10.0.0.9"}, {}, "addr: the kernel shows 10.0.0.9, no address of 10.0.0.2"),
        ({}, {"nconnect": 16}, "nconnect: the kernel shows 8, wanted 16"),
        ({}, {"server": ["10.0.0.2", "10.100.0.2"]}, "max_connect: the kernel shows 1, wanted 2"),
        ({}, {"export": "/other"}, "source: the kernel shows 10.0.0.2:/export, wanted 10.0.0.2:/other"),
        ({}, {"options": ["noac"]}, "noac: asked, and the kernel shows it unset"),
        ({"noac": None}, {}, "noac: not asked, and the kernel shows it set"),
        ({}, {"options": ["ro"]}, "ro: the kernel mounts it rw, wanted ro"),
        ({}, {"options": ["nosuid"]}, "nosuid: asked, and the kernel does not show it"),
        ({}, {"options": ["sec=krb5i:krb5p"]}, "sec: the kernel shows sys, wanted krb5i or krb5p"),
        ({}, {"options": ["lookupcache=none"]}, "lookupcache: the kernel shows all, wanted none"),
    ],
)
def test_drift(changes, fields, drift):
    found, _ = mounts.compare(one(**fields), entry(**changes))
    assert drift in found


def test_a_server_that_limits_rsize_is_a_note_not_drift():
    # knfsd on a 1.5 GiB node (the lab's) offers 256 KiB: its max_block_size is RAM / 4096, in powers of two.
    drift, notes = mounts.compare(one(), entry(rsize="262144", wsize="262144"))
    assert drift == []
    assert notes == [
        "rsize: the server limits it to 262144 (asked 1048576)",
        "wsize: the server limits it to 262144 (asked 1048576)",
    ]


def test_the_options_the_kernel_shows_as_given_match():
    mount = one(options=["lookupcache=positive", "sec=sys", "noac", "nosuid", "local_lock=none"])
    line = LINE_TCP.replace("hard,", "hard,noac,").replace("rw,relatime", "rw,nosuid,relatime", 1)
    assert mounts.compare(mount, entry(line, lookupcache="pos")) == ([], [])


def test_nfsv3_over_rdma_as_the_kernel_shows_it():
    mount = one(path="/shared/ckpt", server="10.30.0.2", export="/ckpt", version=3, proto="rdma")
    drift, notes = mounts.compare(mount, entry(LINE_RDMA_V3))
    assert drift == []
    assert notes[0].startswith("rsize: the server limits it to 262144")


def test_nconnect_over_rdma_that_the_61_kernel_ignores_is_a_note():
    mount = one(path="/shared/ckpt", server="10.30.0.2", export="/ckpt", version=3, proto="rdma", nconnect=4)
    drift, notes = mounts.compare(mount, entry(LINE_RDMA_V3))
    assert drift == []
    assert any("kernels before 6.9 open one RDMA connection" in note for note in notes)


def test_an_ipv6_mount_shows_tcp6():
    mount = one(server="fd00:10::2")
    line = LINE_TCP.replace("10.0.0.2:/export", "[fd00:10::2]:/export").replace("proto=tcp", "proto=tcp6")
    assert mounts.compare(mount, entry(line, addr="fd00:10::2")) == ([], [])


# --- the fake node ------------------------------------------------------------------------------


class FakeNode:
    """A node in a directory: mountinfo, unit files, /proc, /sys/class/infiniband, and a `systemctl`
    that mounts and unmounts as systemd and the kernel would, showing the options as 6.1 does.

    servers: groups of addresses that are one NFS server (same server owner and scope: trunkable).
    server_max: the largest rsize/wsize the server offers.
    """

    def __init__(self, root):
        self.root = root
        self.paths = mounts.Paths(
            proc=str(root / "proc"),
            mountinfo=str(root / "mountinfo"),
            unit_dir=str(root / "etc/systemd/system"),
            fstab=str(root / "etc/fstab"),
            infiniband=str(root / "sys/class/infiniband"),
            sys_module=str(root / "sys/module"),
            modules_load=str(root / "etc/modules-load.d/hpc-shared-mounts.conf"),
            pending_dir=str(root / "run/hpc_shared_mounts/pending"),
        )
        (root / "proc").mkdir()
        (root / "etc/systemd/system").mkdir(parents=True)
        (root / "sys/class/infiniband/rxe0").mkdir(parents=True)
        self.lines = [LINE_ROOT]
        self.next_id = 200
        self.calls = []
        self.fail = {}  # unit -> stderr of a start that fails
        self.busy = set()  # units whose unmount the kernel refuses for a reason /proc does not show
        self.servers = [{"10.0.0.2", "10.100.0.2"}]
        self.server_max = 1048576
        self.clients = {}  # (addr, proto, vers, port) -> {"nconnect", "max_connect", "addrs", "users"}
        self.save()

    def save(self):
        Path(self.paths.mountinfo).write_text("\n".join(self.lines) + "\n")

    def entries(self):
        return mounts.parse_mountinfo("\n".join(self.lines))

    def at(self, path):
        return [m for m in self.entries() if m["path"] == path]

    def add_line(self, path, fstype, source, super_options, mount_options="rw,relatime"):
        self.next_id += 1
        below = [m for m in self.entries() if mounts._under(path, m["path"])]  # the mount the path is on
        parent = max(below, key=lambda m: (len(m["path"]), m["id"]))["id"]
        escaped = path.replace(" ", "\\040")
        self.lines.append(
            f"{self.next_id} {parent} 0:{self.next_id} / {escaped} {mount_options} shared:{self.next_id} - "
            f"{fstype} {source} {super_options}"
        )
        self.save()
        return self.next_id

    def process(self, pid, command, *, fds=(), cwd="/", maps=()):
        """A process: fds as (fd, path, mount id), its working directory, mapped files as (devno, path)."""
        base = self.root / "proc" / str(pid)
        (base / "fd").mkdir(parents=True)
        (base / "fdinfo").mkdir()
        for fd, target, mnt_id in fds:
            os.symlink(target, base / "fd" / str(fd))
            (base / "fdinfo" / str(fd)).write_text(f"pos:\t0\nflags:\t0100002\nmnt_id:\t{mnt_id}\nino:\t12\n")
        os.symlink(cwd, base / "cwd")
        os.symlink("/", base / "root")
        (base / "maps").write_text(
            "".join(f"7f00-7f10 r-xp 00000000 {dev} 1234 {path}\n" for dev, path in maps)
            + "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n"
        )
        (base / "comm").write_text(command + "\n")

    def end(self, pid):
        shutil.rmtree(self.root / "proc" / str(pid))

    def unit_text(self, name):
        path = Path(self.paths.unit_dir) / name
        return path.read_text() if path.exists() else None

    # --- what the kernel shows for a mount ---

    def kernel_options(self, what, options, where):
        opts = mounts.parse_options(options)
        host = what.rsplit(":", 1)[0].strip("[]")
        addr = DNS[host][0]
        proto, vers = opts["proto"], opts["vers"]
        port = opts.get("port")
        client = self.client_for(addr, proto, vers, port, opts=opts, where=where)
        size = str(min(int(opts["rsize"]), self.server_max))
        shown = [f"vers={vers}", f"rsize={size}", f"wsize={size}", "namlen=255"]
        shown.append("soft" if "soft" in opts else "hard")
        shown += [flag for flag in mounts.SHOWN_SUPER_FLAGS if flag in opts]
        shown.append(f"proto={proto}6" if ":" in addr else f"proto={proto}")
        if client["nconnect"]:
            shown.append(f"nconnect={client['nconnect']}")
        if vers != "3" and client["max_connect"] > 1:
            shown.append(f"max_connect={client['max_connect']}")
        if port and (vers == "3" or port != "2049"):
            shown.append(f"port={port}")
        shown += [f"timeo={opts['timeo']}", f"retrans={opts['retrans']}", f"sec={opts.get('sec', 'sys').split(':')[0]}"]
        shown += ["clientaddr=10.0.0.1"] if vers != "3" else [f"mountaddr={addr}", "mountvers=3", "mountproto=tcp"]
        lookupcache = {"positive": "pos", "all": None}.get(opts.get("lookupcache"), opts.get("lookupcache"))
        shown += [f"lookupcache={lookupcache}"] if lookupcache else []
        shown += [f"local_lock={opts.get('local_lock', 'none')}", f"addr={client['addr']}"]
        return "rw," + ",".join(shown), "ro,relatime" if "ro" in opts else "rw,relatime"

    def client_for(self, addr, proto, vers, port, *, opts, where):
        """The nfs_client a new mount gets: an existing one of the address, a trunk into one of the same
        server (a mount under the trunk directory, NFSv4.1+), or a new one with this mount's settings."""
        for key, client in self.clients.items():
            if addr in client["addrs"] and key[1:] == (proto, vers, port):
                client["users"].append(where)
                return client
        same = next((group for group in self.servers if addr in group), {addr})
        if vers != "3":
            for key, client in self.clients.items():
                if key[0] in same and key[1:] == (proto, vers, port) and len(client["addrs"]) < client["max_connect"]:
                    client["addrs"].add(addr)
                    client["users"].append(where)
                    return client
        nconnect = int(opts["nconnect"]) if "nconnect" in opts and proto == "tcp" else 0
        client = {
            "addr": addr,
            "nconnect": nconnect,
            "max_connect": int(opts.get("max_connect", 1)),
            "addrs": {addr},
            "users": [where],
        }
        self.clients[(addr, proto, vers, port)] = client
        return client

    def release(self, where):
        for key, client in list(self.clients.items()):
            if where in client["users"]:
                client["users"].remove(where)
                if not client["users"]:
                    del self.clients[key]

    # --- the commands ---

    def __call__(self, argv):
        self.calls.append(argv)
        if argv[0] == "journalctl":
            return 0, "mount.nfs: Connection refused\n", ""
        if argv[0] == "modprobe":
            (Path(self.paths.sys_module) / argv[1]).mkdir(parents=True, exist_ok=True)
            return 0, "", ""
        action, units = argv[1], argv[2:]
        if action in ("daemon-reload",):
            return 0, "", ""
        for unit in units:
            rc, err = getattr(self, action.replace("-", "_"))(unit)
            if rc:
                return rc, "", err
        return 0, "", ""

    def settings(self, unit):
        text = self.unit_text(unit)
        assert text is not None, f"{unit} has no unit file"
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))

    def start(self, unit):
        if unit in self.fail:
            return 32, self.fail[unit]
        settings = self.settings(unit)
        where = settings["Where"]
        if unit.endswith(".automount"):
            if not any(m["fstype"] == "autofs" for m in self.at(where)):
                self.add_line(where, "autofs", "systemd-1", "rw,fd=54,pgrp=1,timeout=0,minproto=5,maxproto=5,direct")
            return 0, ""
        if any(m["fstype"] in mounts.NFS_FSTYPES for m in self.at(where)):
            return 0, ""  # active already
        super_options, mount_options = self.kernel_options(settings["What"], settings["Options"], where)
        fstype = "nfs" if "vers=3" in settings["Options"] else "nfs4"
        self.add_line(where, fstype, settings["What"], super_options, mount_options)
        return 0, ""

    def stop(self, unit):
        entries = [m for m in self.entries() if mounts.unit_name(m["path"], unit.rsplit(".", 1)[1]) == unit]
        entries = [m for m in entries if (m["fstype"] == "autofs") == unit.endswith(".automount")]
        for mount in entries[-1:]:
            if unit in self.busy or mounts.holders(self.entries(), [mount["id"]], mount["path"], self.paths.proc):
                return 32, f"umount: {mount['path']}: target is busy."
            self.lines = [line for line in self.lines if not line.startswith(f"{mount['id']} ")]
            self.release(mount["path"])
            if unit.endswith(".mount") and not mounts._is_trunk(unit):  # BindsTo: its trunks go with it
                for trunk in [
                    m for m in self.entries() if m["path"].startswith(f"{mounts.TRUNK_ROOT}{mount['path']}/")
                ]:
                    self.stop(mounts.unit_name(trunk["path"]))
        self.save()
        return 0, ""

    def enable(self, unit):
        for target in [v for k, v in self.settings(unit).items() if k == "WantedBy"]:
            wants = Path(self.paths.unit_dir) / f"{target}.wants"
            wants.mkdir(exist_ok=True)
            if not (wants / unit).is_symlink():
                os.symlink(f"../{unit}", wants / unit)
        return 0, ""

    def disable(self, unit):
        for link in Path(self.paths.unit_dir).glob(f"*.wants/{unit}"):
            link.unlink()
        return 0, ""


@pytest.fixture
def node(tmp_path):
    return FakeNode(tmp_path)


def run_plan(node, items, defaults=None):
    found, problems = mounts.check_mounts(
        items,
        dict(DEFAULTS, **(defaults or {})),
        resolver=resolver,
        rdma=mounts.rdma_devices(node.paths.infiniband),
        fstab_paths=mounts.fstab_mount_points(node.paths.fstab),
    )
    assert problems == []
    return found, mounts.plan(found, mounts.Node(node.paths))


def converge(node, items, defaults=None):
    """plan and apply, as the module does; returns (plan, applier, verify's drift and trunks)."""
    found, planned = run_plan(node, items, defaults)
    applier = mounts.Applier(node, node.paths)
    applier.apply(planned)
    return planned, applier, mounts.verify(found, node.paths, planned["pending"] + applier.pending)


DATA = {"path": "/shared/data", "server": "10.0.0.2", "export": "/export"}


def test_a_new_mount_is_written_enabled_and_mounted_and_a_second_run_changes_nothing(node):
    planned, _, (drift, trunks) = converge(node, [DATA])
    assert mounts.actions(planned) == [
        f"write {node.paths.unit_dir}/shared-data.mount",
        "systemctl daemon-reload",
        "systemctl enable shared-data.mount",
        "systemctl start shared-data.mount  # /shared/data: not mounted",
    ]
    assert (drift, trunks) == ([], [])
    assert (Path(node.paths.unit_dir) / "remote-fs.target.wants/shared-data.mount").is_symlink()
    shown = node.at("/shared/data")[0]
    assert shown["super_options"]["nconnect"] == "8"
    _, again = run_plan(node, [DATA])
    assert not mounts.changes(again)
    assert mounts.actions(again) == []
    assert again["mounts"][0]["drift"] == []


def test_check_mode_writes_nothing_and_shows_the_diff(node, monkeypatch):
    result = module_run(node, monkeypatch, [DATA], check_mode=True)
    assert result["changed"] is True
    assert node.calls == []
    assert not (Path(node.paths.unit_dir) / "shared-data.mount").exists()
    assert result["diff"][0]["after_header"].endswith("shared-data.mount")
    assert "Options=vers=4.1,proto=tcp,nconnect=8," in result["diff"][0]["after"]
    assert "systemctl start shared-data.mount  # /shared/data: not mounted" in result["actions"]


def test_an_option_change_remounts_a_mount_nothing_holds(node):
    converge(node, [DATA])
    old_id = node.at("/shared/data")[0]["id"]
    planned, applier, (drift, _) = converge(node, [DATA], {"nconnect": 4})
    assert planned["stop"][0]["why"] == "nconnect: the kernel shows 8, wanted 4; the unit's Options changed"
    assert "systemctl stop shared-data.mount" in applier.done
    shown = node.at("/shared/data")[0]
    assert shown["id"] != old_id
    assert shown["super_options"]["nconnect"] == "4"
    assert drift == []
    assert not mounts.changes(run_plan(node, [DATA], {"nconnect": 4})[1])


def test_a_held_mount_is_pending_with_its_holders_named_and_remounted_once_free(node):
    converge(node, [DATA])
    mount_id = node.at("/shared/data")[0]["id"]
    node.process(4242, "python3", fds=[(7, "/shared/data/train/shard-0001.tar", mount_id)])
    node.process(4343, "bash", cwd="/shared/data/runs")
    node.process(4444, "trainer", maps=[(f"00:{mount_id:02x}", "/shared/data/lib/libdata.so")])
    node.process(4545, "sshd", fds=[(3, "/var/log/auth.log", 29)])
    planned, _, (drift, _) = converge(node, [DATA], {"timeo": 100})
    assert [p["path"] for p in planned["pending"]] == ["/shared/data"]
    why = planned["pending"][0]["why"]
    assert why.startswith("timeo: the kernel shows 600, wanted 100; the unit's Options changed; held by ")
    assert "python3 (pid 4242; fd 7: /shared/data/train/shard-0001.tar)" in why
    assert "bash (pid 4343; cwd: /shared/data/runs)" in why
    assert "trainer (pid 4444; mapped: /shared/data/lib/libdata.so)" in why
    assert "sshd" not in why
    assert not any(call[:2] == ["systemctl", "stop"] for call in node.calls)
    assert "timeo=100" in node.unit_text("shared-data.mount")  # persisted: the next boot mounts it so
    assert drift == []  # a pending mount is no error
    assert Path(node.paths.pending_dir, "shared-data.mount").read_text() == f"{mount_id}\n"

    _, again = run_plan(node, [DATA], {"timeo": 100})
    assert again["pending"][0]["path"] == "/shared/data"
    assert not mounts.changes(again)  # still pending: nothing to do, changed=0

    for pid in (4242, 4343, 4444):
        node.end(pid)
    planned, _, (drift, _) = converge(node, [DATA], {"timeo": 100})
    assert planned["pending"] == []
    assert node.at("/shared/data")[0]["super_options"]["timeo"] == "100"
    assert not Path(node.paths.pending_dir, "shared-data.mount").exists()


def test_a_change_the_kernel_does_not_show_stays_pending_across_runs(node):
    converge(node, [DATA])
    mount_id = node.at("/shared/data")[0]["id"]
    node.process(4242, "python3", fds=[(7, "/shared/data/x", mount_id)])
    wanted = [dict(DATA, options=["trunkdiscovery"])]
    planned, _, _ = converge(node, wanted)
    assert planned["pending"][0]["why"].startswith("the unit's Options changed; held by python3")
    _, again = run_plan(node, wanted)  # the unit is as wanted now: only the mark remembers
    assert again["pending"][0]["why"].startswith("a remount is pending since an earlier run; held by")
    node.end(4242)
    planned, _, _ = converge(node, wanted)
    assert planned["stop"][0]["why"] == "a remount is pending since an earlier run"
    assert node.at("/shared/data")[0]["id"] != mount_id
    assert not mounts.changes(run_plan(node, wanted)[1])


def test_a_mount_below_holds_it(node):
    converge(node, [DATA])
    node.add_line("/shared/data/sub", "tmpfs", "tmpfs", "rw")
    planned, _, _ = converge(node, [DATA], {"retrans": 3})
    assert "held by /shared/data/sub (tmpfs) mounted below it" in planned["pending"][0]["why"]


def test_something_opened_after_the_plan_keeps_the_mount_pending(node):
    converge(node, [DATA])
    _, planned = run_plan(node, [DATA], {"retrans": 3})
    mount_id = node.at("/shared/data")[0]["id"]
    node.process(4242, "python3", fds=[(7, "/shared/data/x", mount_id)])  # opened after the plan was made
    before = len(node.calls)
    applier = mounts.Applier(node, node.paths)
    applier.apply(planned)
    assert node.calls[before:] == [["systemctl", "daemon-reload"]]  # no stop, no start
    assert applier.pending[0]["why"].startswith("retrans: the kernel shows 2, wanted 3; the unit's Options changed")
    assert "held by python3 (pid 4242" in applier.pending[0]["why"]
    assert Path(node.paths.pending_dir, "shared-data.mount").exists()


def test_an_unmount_the_kernel_refuses_becomes_pending(node):
    converge(node, [DATA])
    node.busy.add("shared-data.mount")
    _, applier, (drift, _) = converge(node, [DATA], {"retrans": 3})
    assert applier.pending == [
        {
            "path": "/shared/data",
            "why": "retrans: the kernel shows 2, wanted 3; the unit's Options changed; unmounting failed: umount: "
            "/shared/data: target is busy.",
            "holders": [],
        }
    ]
    assert not any(call[:2] == ["systemctl", "start"] for call in node.calls[-2:])
    assert drift == []
    _, applier, _ = converge(node, [DATA], {"retrans": 3})  # still busy: tried again, nothing changed
    assert applier.pending[0]["path"] == "/shared/data"
    assert applier.done == []
    node.busy.clear()
    converge(node, [DATA], {"retrans": 3})
    assert node.at("/shared/data")[0]["super_options"]["retrans"] == "3"


def test_nconnect_waits_for_every_mount_of_the_same_client(node):
    converge(node, [DATA])
    # Mounted by hand, not ours, on the same nfs_client.
    node.add_line("/mnt/manual", "nfs4", "10.0.0.2:/other", LINE_TCP.split(" - nfs4 10.0.0.2:/export ")[1])
    planned, _, _ = converge(node, [DATA], {"nconnect": 4})
    assert planned["stop"] == []
    assert planned["pending"][0]["why"].endswith(
        "the kernel keeps one set of connections for every mount of 10.0.0.2 over tcp with NFS 4.1, and "
        "/mnt/manual stays mounted: nconnect changes only once all of them are unmounted"
    )


def test_two_of_our_mounts_on_one_client_are_remounted_together(node):
    other = {"path": "/shared/other", "server": "nas1", "export": "/other"}
    converge(node, [DATA, other])
    planned, _, (drift, _) = converge(node, [DATA, other], {"nconnect": 4})
    assert [s["path"] for s in planned["stop"]] == ["/shared/data", "/shared/other"]
    assert drift == []  # both down before either came back: the new client has nconnect=4
    assert {m["super_options"]["nconnect"] for m in node.entries() if m["fstype"] == "nfs4"} == {"4"}


def test_absent_unmounts_and_removes_the_units(node):
    converge(node, [DATA])
    planned, _, (drift, _) = converge(node, [{"path": "/shared/data", "state": "absent"}])
    assert mounts.actions(planned) == [
        "systemctl stop shared-data.mount  # /shared/data: state: absent",
        "systemctl disable shared-data.mount",
        f"remove {node.paths.unit_dir}/shared-data.mount",
        "systemctl daemon-reload",
    ]
    assert node.at("/shared/data") == []
    assert drift == []
    assert not (Path(node.paths.unit_dir) / "remote-fs.target.wants/shared-data.mount").exists()
    assert not mounts.changes(run_plan(node, [{"path": "/shared/data", "state": "absent"}])[1])


def test_absent_while_held_removes_the_persistence_and_leaves_the_unmount_pending(node):
    converge(node, [DATA])
    node.process(4242, "python3", cwd="/shared/data")
    planned, _, (drift, _) = converge(node, [{"path": "/shared/data", "state": "absent"}])
    assert planned["pending"][0]["why"] == "state: absent; held by python3 (pid 4242; cwd: /shared/data)"
    assert node.unit_text("shared-data.mount") is None
    assert node.at("/shared/data")  # still mounted
    assert drift == []
    node.end(4242)
    converge(node, [{"path": "/shared/data", "state": "absent"}])
    assert node.at("/shared/data") == []


def test_session_trunking_mounts_each_further_address_bound_to_the_first(node):
    wanted = [dict(DATA, server=["10.0.0.2", "10.100.0.2"])]
    planned, _, (drift, trunks) = converge(node, wanted)
    assert "systemctl enable run-hpc_shared_mounts-trunk-shared-data-1.mount" in mounts.actions(planned)
    assert planned["start"][0]["units"] == ["shared-data.mount", "run-hpc_shared_mounts-trunk-shared-data-1.mount"]
    assert drift == []
    assert trunks == [{"path": "/shared/data", "server": "10.100.0.2", "trunked": True, "why": None}]
    trunk = node.at("/run/hpc_shared_mounts/trunk/shared/data/1")[0]
    assert trunk["super_options"]["addr"] == "10.0.0.2"  # the first address's client
    assert trunk["super_options"]["max_connect"] == "2"
    assert (
        Path(node.paths.unit_dir) / "shared-data.mount.wants/run-hpc_shared_mounts-trunk-shared-data-1.mount"
    ).is_symlink()
    assert not mounts.changes(run_plan(node, wanted)[1])


def test_an_address_of_another_server_is_not_trunked(node):
    node.servers = []  # every address its own server owner
    _, _, (drift, trunks) = converge(node, [dict(DATA, server=["10.0.0.2", "10.100.0.2"])])
    assert drift == []
    assert trunks[0]["trunked"] is False
    assert "the kernel made a client of its own for 10.100.0.2" in trunks[0]["why"]


def test_a_trunk_that_does_not_mount_is_a_warning(node):
    node.fail["run-hpc_shared_mounts-trunk-shared-data-1.mount"] = "mount.nfs: No route to host"
    _, applier, (drift, trunks) = converge(node, [dict(DATA, server=["10.0.0.2", "10.100.0.2"])])
    assert applier.warnings[0].startswith(
        "/shared/data: systemctl start run-hpc_shared_mounts-trunk-shared-data-1.mount failed (rc 32): mount.nfs: "
        "No route to host; journal: mount.nfs: Connection refused"
    )
    assert trunks[0] == {"path": "/shared/data", "server": "10.100.0.2", "trunked": False, "why": "its mount failed"}
    assert drift == []


def test_dropping_a_server_remounts_without_its_trunk(node):
    converge(node, [dict(DATA, server=["10.0.0.2", "10.100.0.2"])])
    planned, _, (drift, _) = converge(node, [DATA])
    assert planned["stop"][0]["why"].startswith("max_connect: the kernel shows 2, wanted 1")
    assert f"remove {node.paths.unit_dir}/run-hpc_shared_mounts-trunk-shared-data-1.mount" in mounts.actions(planned)
    assert node.at("/run/hpc_shared_mounts/trunk/shared/data/1") == []
    assert drift == []


def test_a_failed_mount_stops_the_run_with_the_journal(node):
    node.fail["shared-data.mount"] = "Job for shared-data.mount failed."
    with pytest.raises(mounts.ApplyError, match=r"/shared/data: systemctl start shared-data.mount failed \(rc 32\)"):
        converge(node, [DATA])


def test_rdma_pins_rpcrdma_and_loads_it(node):
    wanted = [dict(DATA, server="10.30.0.2", proto="rdma")]
    planned, _, (drift, _) = converge(node, wanted)
    assert mounts.actions(planned)[:2] == [f"write {node.paths.modules_load}", "modprobe rpcrdma"]
    assert Path(node.paths.modules_load).read_text().splitlines()[1:] == ["rpcrdma"]
    assert node.at("/shared/data")[0]["super_options"]["port"] == "20049"
    assert drift == []
    assert not mounts.changes(run_plan(node, wanted)[1])
    planned, _, _ = converge(node, [DATA])  # back to TCP: the file goes
    assert f"remove {node.paths.modules_load}" in mounts.actions(planned)


def test_automount_arms_without_mounting_and_mounts_on_access(node):
    wanted = [dict(DATA, automount=True)]
    planned, _, _ = converge(node, wanted)
    assert planned["enable"] == ["shared-data.automount"]
    assert planned["start"] == [{"path": "/shared/data", "units": ["shared-data.automount"], "why": "not mounted"}]
    assert [m["fstype"] for m in node.at("/shared/data")] == ["autofs"]
    assert not mounts.changes(run_plan(node, wanted)[1])
    node.start("shared-data.mount")  # first access
    assert not mounts.changes(run_plan(node, wanted)[1])
    planned, _, (drift, _) = converge(node, wanted, {"retrans": 5})  # a change remounts over the automount point
    assert planned["stop"][0]["units"] == ["shared-data.mount"]
    assert [m["fstype"] for m in node.at("/shared/data")] == ["autofs", "nfs4"]
    assert drift == []


def test_turning_automount_off_mounts_it_plainly(node):
    converge(node, [dict(DATA, automount=True)])
    planned, _, _ = converge(node, [DATA])
    assert "systemctl disable shared-data.automount" in mounts.actions(planned)
    assert [m["fstype"] for m in node.at("/shared/data")] == ["nfs4"]
    assert (Path(node.paths.unit_dir) / "remote-fs.target.wants/shared-data.mount").is_symlink()
    assert not mounts.changes(run_plan(node, [DATA])[1])


def test_a_local_file_system_at_the_path_is_never_hidden(node):
    node.add_line("/shared/data", "xfs", "/dev/md127", "rw,attr2,inode64")
    _, planned = run_plan(node, [DATA])
    assert planned["problems"] == [
        "shared_mounts_nfs[0] (/shared/data): /shared/data holds xfs from /dev/md127, which a shared mount there "
        "would hide; choose another path, or unmount that first"
    ]


def test_a_mount_made_by_hand_as_wanted_is_adopted_without_a_remount(node):
    node.add_line("/shared/data", "nfs4", "10.0.0.2:/export", LINE_TCP.split(" - nfs4 10.0.0.2:/export ")[1])
    _, planned = run_plan(node, [DATA])
    assert planned["stop"] == []
    assert planned["start"] == []
    assert [Path(f["path"]).name for f in planned["files"]] == ["shared-data.mount"]


def test_unreadable_mountinfo_stops_the_run(tmp_path):
    with pytest.raises(mounts.StateError, match="is missing or empty: what is mounted cannot be told"):
        mounts.Node(mounts.Paths(mountinfo=str(tmp_path / "none")))


# --- the module ---------------------------------------------------------------------------------


def module_run(
    node, monkeypatch, items, *, check_mode=False, defaults=None, mount_nfs=True, cpfs=(), elsewhere=None, version=None
):
    monkeypatch.setattr(shared_mount, "resolve", resolver)
    module = types.SimpleNamespace(
        params={
            "nfs": items,
            "defaults": dict(DEFAULTS, **(defaults or {})),
            "variable": "shared_mounts_nfs",
            "cpfs": list(cpfs),
            "elsewhere": elsewhere or {},
            "cpfs_client_version": version,
        },
        check_mode=check_mode,
        _diff=True,
        run_command=node,
        get_bin_path=lambda name, opt_dirs=(): "/sbin/mount.nfs" if mount_nfs else None,
        warn=[].append,
    )
    result = {"changed": False, "problems": [], "missing": [], "pending": [], "actions": []}
    shared_mount.run(module, node.paths, result, resolver)
    return result


def test_the_module_reports_problems_and_changes_nothing(node, monkeypatch):
    result = module_run(node, monkeypatch, [dict(DATA, server="nowhere", options=["nolock"])])
    assert result["problems"] == [
        "shared_mounts_nfs[0] (/shared/data): server nowhere does not resolve on this node (Name or service not known)",
        "shared_mounts_nfs[0] (/shared/data): options: 'nolock' is an option of NFSv3 (nfs(5)), and this mount is "
        "NFS 4.1",
    ]
    assert result["changed"] is False
    assert node.calls == []


def test_the_module_without_mount_nfs_says_so_and_changes_nothing(node, monkeypatch):
    result = module_run(node, monkeypatch, [DATA], mount_nfs=False)
    assert result["missing"] == ["mount.nfs"]
    assert result["changed"] is False
    assert result["actions"] == []
    assert node.calls == []
    assert not (Path(node.paths.unit_dir) / "shared-data.mount").exists()
    result = module_run(node, monkeypatch, [DATA], mount_nfs=False, check_mode=True)  # shows the plan all the same
    assert result["missing"] == ["mount.nfs"]
    assert result["changed"] is True
    assert result["diff"][-1]["prepared"].endswith("systemctl start shared-data.mount  # /shared/data: not mounted\n")


def test_the_module_converges_then_reports_no_change(node, monkeypatch):
    result = module_run(node, monkeypatch, [DATA])
    assert result["changed"] is True
    assert result["actions"][-1] == "systemctl start shared-data.mount"
    result = module_run(node, monkeypatch, [DATA])
    assert result["changed"] is False
    assert result["actions"] == []
    assert result["mounts"][0]["kernel"]["options"].startswith("vers=4.1,rsize=1048576,wsize=1048576,hard,proto=tcp")


def test_the_module_fails_on_drift_left_after_mounting(node, monkeypatch):
    node.server_max = 1048576
    node.kernel_options_real = node.kernel_options
    node.kernel_options = lambda what, options, where: (
        node.kernel_options_real(what, options, where)[0].replace("timeo=600", "timeo=100"),
        "rw,relatime",
    )
    with pytest.raises(mounts.ApplyError, match=r"after mounting, timeo: the kernel shows 100, wanted 600"):
        module_run(node, monkeypatch, [DATA])


def test_main_returns_the_problems_and_the_pending_fact(node, monkeypatch, capsys):
    monkeypatch.setattr(shared_mount, "Paths", lambda: node.paths)
    args = {"nfs": [dict(DATA, server="bad server")], "defaults": DEFAULTS, "_ansible_check_mode": False}
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        shared_mount.main()
    result = json.loads(capsys.readouterr().out)
    assert exited.value.code == 0
    assert result["problems"] == [
        "shared_mounts_nfs[0] (/shared/data): server 'bad server' is not a host name, an IPv4 or an IPv6 address "
        "(IPv6 without brackets)"
    ]
    assert result["changed"] is False
    assert result["ansible_facts"] == {"shared_mounts_pending": []}


def test_main_fails_closed_on_a_mountinfo_it_cannot_read(node, monkeypatch, capsys):
    Path(node.paths.mountinfo).write_text("garbage\n")
    monkeypatch.setattr(shared_mount, "Paths", lambda: node.paths)
    with patch_module_args({"nfs": [DATA], "defaults": DEFAULTS}), pytest.raises(SystemExit) as exited:
        shared_mount.main()
    result = json.loads(capsys.readouterr().out)
    assert exited.value.code == 1
    assert result["msg"] == "mountinfo line 1 is not in the kernel's format: 'garbage'"


# --- CPFS through the module: the NFS endpoint as an NFSv3 mount, the POSIX client's config -------------

CPFS_NFS = {"path": "/shared/cpfs-nfs", "client": "nfs", "server": "10.0.0.2", "export": "/scratch/nas/cpfs"}


def test_a_cpfs_nfs_mount_is_an_nfsv3_mount_with_alibabas_options(node, monkeypatch):
    result = module_run(node, monkeypatch, [], cpfs=[CPFS_NFS])
    assert result["problems"] == []
    unit = (Path(node.paths.unit_dir) / "shared-cpfs\\x2dnfs.mount").read_text()
    assert "What=10.0.0.2:/scratch/nas/cpfs" in unit
    assert (
        "Options=vers=3,proto=tcp,nconnect=1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport," in unit
    )
    shown = node.at("/shared/cpfs-nfs")[0]
    assert shown["super_options"]["vers"] == "3"
    again = module_run(node, monkeypatch, [], cpfs=[CPFS_NFS])
    assert again["changed"] is False


def test_cpfs_problems_name_their_place_in_shared_mounts_cpfs(node, monkeypatch):
    posix = {"path": "/shared/cpfs", "client": "posix", "server": "cpfs-1.example", "fs_id": "hpctest"}
    result = module_run(
        node,
        monkeypatch,
        [DATA],
        cpfs=[posix, dict(CPFS_NFS, server="nowhere"), dict(CPFS_NFS, path="/shared/data", server="10.0.0.2")],
    )
    assert result["problems"] == [
        "shared_mounts_cpfs[2] (/shared/data): path /shared/data is also shared_mounts_nfs[0]'s; one mount per path",
        "shared_mounts_cpfs[1] (/shared/cpfs-nfs): server nowhere does not resolve on this node (Name or service not "
        "known)",
    ]
    assert node.calls == []


def test_the_posix_mounts_come_back_with_the_clients_config(node, monkeypatch):
    posix = {"path": "/shared/cpfs", "client": "posix", "server": ["10.0.0.5", "10.0.0.6"], "fs_id": "hpctest"}
    result = module_run(node, monkeypatch, [], cpfs=[posix])
    assert result["problems"] == []
    assert result["cpfs_posix"][0]["servers"] == ["10.0.0.5", "10.0.0.6"]
    assert result["cpfs_config"].splitlines()[1] == "10.0.0.5@tcp:10.0.0.6@tcp:/hpctest\t/shared/cpfs"
    assert node.calls == []  # the module mounts none of them: the CPFS client does


def test_paths_equal_or_nested_across_nfs_cpfs_and_juicefs_are_refused_before_any_mount(node, monkeypatch):
    """One check on every call, also without a CPFS NFS mount: the JuiceFS paths come as paths only."""
    posix = {"path": "/shared/data/cpfs", "client": "posix", "server": "10.0.0.5", "fs_id": "hpctest"}
    result = module_run(
        node,
        monkeypatch,
        [DATA, dict(DATA, path="/shared/data/inner"), dict(DATA, path="/shared/old", state="absent")],
        cpfs=[posix],
        elsewhere={
            "shared_mounts_juicefs": [["/shared", "present"], ["/shared/old", "absent"], ["/shared/jfs", "present"]]
        },
    )
    assert result["problems"] == [
        "shared_mounts_nfs[1] (/shared/data/inner): path /shared/data/inner lies inside shared_mounts_nfs[0]'s "
        "mount /shared/data: one would hide the other's files, and each unmount and boot would wait on both; give "
        "each mount a directory of its own, neither inside the other",
        "shared_mounts_cpfs[0] (/shared/data/cpfs): path /shared/data/cpfs lies inside shared_mounts_nfs[0]'s "
        "mount /shared/data: one would hide the other's files, and each unmount and boot would wait on both; give "
        "each mount a directory of its own, neither inside the other",
        "shared_mounts_nfs[0] (/shared/data): path /shared/data lies inside shared_mounts_juicefs[0]'s mount "
        "/shared: one would hide the other's files, and each unmount and boot would wait on both; give each mount "
        "a directory of its own, neither inside the other",
        "shared_mounts_nfs[1] (/shared/data/inner): path /shared/data/inner lies inside shared_mounts_juicefs[0]'s "
        "mount /shared: one would hide the other's files, and each unmount and boot would wait on both; give each "
        "mount a directory of its own, neither inside the other",
        "shared_mounts_cpfs[0] (/shared/data/cpfs): path /shared/data/cpfs lies inside shared_mounts_juicefs[0]'s "
        "mount /shared: one would hide the other's files, and each unmount and boot would wait on both; give each "
        "mount a directory of its own, neither inside the other",
        "shared_mounts_juicefs[2] (/shared/jfs): path /shared/jfs lies inside shared_mounts_juicefs[0]'s mount "
        "/shared: one would hide the other's files, and each unmount and boot would wait on both; give each mount "
        "a directory of its own, neither inside the other",
    ]
    assert node.calls == []
    assert not list(Path(node.paths.unit_dir).glob("*.mount"))


def test_a_juicefs_path_equal_to_an_nfs_one_is_refused_by_the_nfs_call(node, monkeypatch):
    result = module_run(node, monkeypatch, [DATA], elsewhere={"shared_mounts_juicefs": [["/shared/data", "present"]]})
    assert result["problems"] == [
        "shared_mounts_juicefs[0] (/shared/data): path /shared/data is also shared_mounts_nfs[0]'s; one mount per path"
    ]
    assert node.calls == []
    ok = module_run(node, monkeypatch, [DATA], elsewhere={"shared_mounts_juicefs": [[None, "present"], ["x", None]]})
    assert ok["problems"] == []  # a bad JuiceFS path is the JuiceFS module's to refuse


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("", "the CPFS POSIX client installs only at a pinned version of the CPFS client package; set it"),
        ("1.2.1\nPin: release *", "'1.2.1\\nPin: release *' is not a package version (one word of"),
        ("latest", "'latest' is not a package version"),
    ],
)
def test_a_bad_cpfs_client_version_is_refused_by_the_first_call_before_any_mount(node, monkeypatch, version, reason):
    posix = {"path": "/shared/cpfs", "client": "posix", "server": "10.0.0.5", "fs_id": "hpctest"}
    result = module_run(node, monkeypatch, [DATA], cpfs=[posix], version=version)
    assert len(result["problems"]) == 1
    assert result["problems"][0].startswith(f"shared_mounts_cpfs_client_version: {reason}")
    assert node.calls == []
    assert not list(Path(node.paths.unit_dir).glob("*.mount"))
    fine = module_run(node, monkeypatch, [], cpfs=[dict(posix, state="absent")], version="")
    assert fine["problems"] == []  # no present POSIX mount: no client to pin
