"""CPFS: the mounts' refusals (host-free sentences naming shared_mounts_cpfs[i] and the reason), the NFS
endpoint's items and their renumbering, the POSIX client's config, the pinned version against a
repository listing (apt-cache madison), and the reboot report."""

import pytest
from ansible.module_utils.hpc_datapath import cpfs, rdma

POSIX = {"path": "/shared/cpfs", "client": "posix", "server": "cpfs-1.example", "fs_id": "hpctest"}
NFS = {
    "path": "/shared/cpfs-nfs",
    "client": "nfs",
    "server": "cpfs-x.cn-hangzhou.cpfs.aliyuncs.com",
    "export": "/share",
}


def test_the_nfs_endpoint_becomes_an_nfs_item_at_its_place():
    nfs, posix, problems = cpfs.check_cpfs([POSIX, NFS])
    assert problems == []
    assert nfs == [(1, {k: v for k, v in NFS.items() if k != "client"})]
    assert cpfs.nfs_items(nfs) == [{"path": "/shared/cpfs-nfs", "server": NFS["server"], "export": "/share"}]
    assert posix == [
        {
            "where": "shared_mounts_cpfs[0] (/shared/cpfs)",
            "path": "/shared/cpfs",
            "state": "present",
            "servers": ["cpfs-1.example"],
            "fs_id": "hpctest",
        }
    ]


def test_alibabas_nfs_options_are_the_defaults():
    defaults = cpfs.NFS_DEFAULTS
    assert (defaults["version"], defaults["proto"], defaults["hard"]) == ("3", "tcp", True)
    assert (defaults["rsize"], defaults["wsize"], defaults["timeo"], defaults["retrans"]) == (1048576, 1048576, 600, 2)
    assert defaults["options"] == ["noresvport"]


def test_renumbering_puts_shared_mounts_problems_back_at_their_place():
    pairs = [(1, {}), (3, {})]
    found = [
        "shared_mounts_cpfs[0] (/a): server x does not resolve",
        "shared_mounts_cpfs[1] (/b): options: 'foo' is not an option",
    ]
    assert cpfs.renumber(found, pairs) == [
        "shared_mounts_cpfs[1] (/a): server x does not resolve",
        "shared_mounts_cpfs[3] (/b): options: 'foo' is not an option",
    ]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("not a mapping", "shared_mounts_cpfs[0]: is not a mapping with path, client and server"),
        (dict(POSIX, client="lustre"), "client 'lustre' is not nfs (the NFS endpoint) or posix (the CPFS client)"),
        ({**NFS, "vers": "4.1"}, "unknown field vers for client nfs (known: path, client, server, export,"),
        ({**NFS, "rsize": 65536}, "the NFS endpoint takes Alibaba's options (vers=3, rsize/wsize 1 MiB, hard"),
        ({**POSIX, "options": ["ro"]}, "unknown field options for client posix"),
        (dict(POSIX, path="/etc/cpfs"), "path /etc/cpfs is inside /etc, which belongs to the system"),
        (dict(POSIX, state="mounted"), "state 'mounted' is not present or absent"),
        ({k: v for k, v in POSIX.items() if k != "server"}, "server is missing: the POSIX mount target's address"),
        (dict(POSIX, server="10.0.0.5@tcp"), "server '10.0.0.5@tcp' is not a host name or IPv4 address"),
        (dict(POSIX, server=["10.0.0.5", "10.0.0.5"]), "server lists an address twice"),
        (dict(POSIX, fs_id="/hpctest"), "fs_id '/hpctest' is not the file system's name"),
        ({k: v for k, v in POSIX.items() if k != "fs_id"}, "fs_id None is not the file system's name"),
    ],
)
def test_bad_mounts_are_refused_naming_the_variable(item, message):
    _, _, problems = cpfs.check_cpfs([item])
    assert len(problems) == 1
    assert problems[0].startswith("shared_mounts_cpfs[0]")
    assert message in problems[0]


def test_not_a_list_is_refused():
    assert cpfs.check_cpfs({"path": "/x"})[2] == ["shared_mounts_cpfs: is not a list of mounts"]


def test_two_posix_mounts_on_one_path_are_refused():
    _, _, problems = cpfs.check_cpfs([POSIX, dict(POSIX, fs_id="other")])
    assert problems == [
        "shared_mounts_cpfs[1] (/shared/cpfs): path /shared/cpfs is also shared_mounts_cpfs[0]'s; one mount per path"
    ]


def test_an_absent_posix_mount_needs_only_its_path():
    _, posix, problems = cpfs.check_cpfs([{"path": "/shared/cpfs", "client": "posix", "state": "absent"}])
    assert problems == []
    assert posix[0]["state"] == "absent"


def test_the_clients_config_lists_the_present_mounts():
    _, posix, _ = cpfs.check_cpfs(
        [dict(POSIX, server=["10.0.0.5", "10.0.0.6"]), {"path": "/shared/old", "client": "posix", "state": "absent"}]
    )
    assert cpfs.posix_config(posix).splitlines() == [
        "# Written by the shared_mounts role (hpc-datapath): CPFS POSIX mounts, one a line.",
        "10.0.0.5@tcp:10.0.0.6@tcp:/hpctest\t/shared/cpfs",
    ]


MADISON = (
    " cpfs-client | 1.2.2 | file:/srv/lab-cpfs-repo ./ Packages\n"
    " cpfs-client | 1.2.1 | file:/srv/lab-cpfs-repo ./ Packages\n"
)


def test_the_pinned_version_is_checked_against_the_repository_listing():
    available = rdma.parse_madison(MADISON)
    assert available == ["1.2.2", "1.2.1"]
    assert cpfs.version_problems("cpfs-client", "1.2.1", available) == []
    assert cpfs.version_problems("cpfs-client", "9.9", available) == [
        "shared_mounts_cpfs_client_version: cpfs-client 9.9 is not in the configured repository "
        "(it offers: 1.2.2, 1.2.1)"
    ]
    assert cpfs.version_problems("cpfs-client", "1.2.1", []) == [
        "shared_mounts_cpfs_client_version: cpfs-client 1.2.1 is not in the configured repository (it offers: nothing)"
    ]
    assert cpfs.version_problems("cpfs-client", "", available)[0].startswith(
        "shared_mounts_cpfs_client_version: the CPFS POSIX client installs only at a pinned version"
    )
    assert "is not a package version" in cpfs.version_problems("cpfs-client", "1.2 ; rm", available)[0]


def test_a_changed_client_reports_a_reboot_and_an_unchanged_one_nothing():
    assert cpfs.reboot_report("cpfs-client", "1.2.1", False, ["lustre"]) is None
    assert cpfs.reboot_report("cpfs-client", "1.2.1", True, ["lustre", "lnet"]) == (
        "cpfs-client 1.2.1 installed; its kernel modules take effect at the next boot (modules of the client: "
        "lustre, lnet); the role neither restarts the client nor reloads modules"
    )
    assert "none loaded now" in cpfs.reboot_report("cpfs-client", "1.2.1", True, [])


def test_the_client_version_is_checked_only_where_a_posix_mount_is_present():
    present, absent = [{"state": "present"}], [{"state": "absent"}]
    assert cpfs.client_version_problems("", absent) == []
    assert cpfs.client_version_problems("1.2.1-3~deb12", present) == []
    assert cpfs.client_version_problems(None, present)[0].endswith(
        "installs only at a pinned version of the CPFS client package; set it"
    )
    assert "is not a package version" in cpfs.client_version_problems("1.2.1\n", present)[0]
