"""RoCE rails: validation, the plan, and the runtime settings against fake tools and a fake sysfs."""

import ipaddress

import pytest
from ansible.module_utils.hpc_datapath import roce
from fake_sysfs import write
from hypothesis import given
from hypothesis import strategies as st

SETTINGS = {
    "mtu": 9000,
    "rdma_mtu": 4096,
    "mode": "RoCE v2",
    "tos": 106,
    "qos": {
        "tool": "mlnx_qos",
        "trust": "dscp",
        "pfc_priorities": [3],
        "dscp": 26,
        "ecn": True,
        "cnp_dscp": 48,
        "cnp_priority": 6,
    },
}
ADDRESSES = {
    "mlx5_0": {"address": "10.31.0.1", "prefix": 24, "pool": "shared", "gateway": "10.31.0.254"},
    "mlx5_1": {"address": "10.31.0.2", "prefix": 24, "pool": "shared", "gateway": "10.31.0.254"},
    "mlx5_2": {"address": "10.32.0.1", "prefix": 24, "pool": "alone", "gateway": None},
    "npu3": {"address": "10.40.0.7", "prefix": 23, "pool": "npu", "gateway": "10.40.1.254"},
    "mlx5_6": {"address": "fd00:31::1", "prefix": 64, "pool": "v6", "gateway": None},
}


def plan(rails, netdevs=("ens1", "ens2", "ens3", "eno1"), source_routing="auto"):
    return roce.plan_rails(
        rails,
        ADDRESSES,
        netdevs=set(netdevs),
        default_route_netdevs={"eno1"},
        source_routing=source_routing,
        table_base=100,
        rule_priority_base=1000,
    )


def settings(**qos):
    return dict(SETTINGS, qos=dict(SETTINGS["qos"], **qos))


def test_good_settings_have_no_problems():
    assert roce.check_settings(SETTINGS) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"mtu": 4000}, "roce_mtu: 4000 is below what RDMA MTU 4096 needs: at least 4184"),
        ({"mtu": 4183}, "roce_mtu: 4183 is below what RDMA MTU 4096 needs"),
        ({"rdma_mtu": 3000}, "roce_rdma_mtu: 3000 is not an RDMA MTU"),
        ({"mtu": 9600}, "roce_mtu: 9600 is above 9216"),
        ({"mode": "RoCE v3"}, "roce_mode: 'RoCE v3' is not one of RoCE v2, IB/RoCE v1"),
        ({"tos": 300}, "roce_tos: 300 is out of 0..255"),
    ],
)
def test_bad_settings_are_named(change, problem):
    assert any(p.startswith(problem) for p in roce.check_settings(dict(SETTINGS, **change)))


@pytest.mark.parametrize(
    ("qos", "problem"),
    [
        ({"pfc_priorities": [3, 8]}, "roce_pfc_priorities: 8 is out of 0..7"),
        ({"pfc_priorities": [-1, 3]}, "roce_pfc_priorities: -1 is out of 0..7"),
        ({"cnp_priority": 9}, "roce_cnp_priority: 9 is out of 0..7"),
        ({"dscp": 64}, "roce_dscp: 64 is out of 0..63"),
        ({"dscp": 46}, "roce_dscp: 46 maps to priority 5, which is not lossless"),
    ],
)
def test_bad_qos_is_named(qos, problem):
    assert any(p.startswith(problem) for p in roce.check_settings(settings(**qos)))


def test_mtu_4184_is_the_least_for_4096():
    assert roce.rdma_mtu_fits(4184, 4096)
    assert not roce.rdma_mtu_fits(4183, 4096)


def test_rails_sharing_a_subnet_get_source_routing_and_their_own_tables():
    rails, problems = plan(
        [
            {"device": "mlx5_0", "netdev": "ens1", "pool": "shared"},
            {"device": "mlx5_1", "netdev": "ens2", "pool": "shared"},
            {"device": "mlx5_2", "netdev": "ens3", "pool": "alone"},
        ]
    )
    assert problems == []
    assert [(r["source_routing"], r["table"], r["rule_priority"]) for r in rails] == [
        (True, 100, 1000),
        (True, 101, 1001),
        (False, 102, 1002),
    ]
    assert rails[0]["network"] == "10.31.0.0/24"
    assert rails[0]["netmask"] == "255.255.255.0"


def test_a_vlan_netdev_is_a_valid_rail_netdev():
    # The dot of a VLAN netdev is part of the name (the ARP sysctl keys turn it into a slash).
    rails, problems = plan(
        [
            {"device": "mlx5_0", "netdev": "ens1f0np0.100", "pool": "shared"},
            {"device": "mlx5_1", "netdev": "ens2", "pool": "shared"},
        ],
        netdevs=("ens1f0np0.100", "ens2"),
    )
    assert problems == []
    assert [(r["netdev"], r["source_routing"]) for r in rails] == [("ens1f0np0.100", True), ("ens2", True)]


def test_npu_ports_need_no_netdev():
    rails, problems = plan([{"device": "npu3", "pool": "npu"}])
    assert problems == []
    assert rails[0]["npu"] == 3
    assert rails[0]["netmask"] == "255.255.254.0"


@pytest.mark.parametrize(
    ("rail", "problem"),
    [
        ({"netdev": "ens1", "pool": "shared"}, "roce_rails[0]: needs a device"),
        ({"device": "mlx5_0", "netdev": "ens1"}, "roce_rails[0] (mlx5_0): has no pool"),
        ({"device": "mlx5_9", "netdev": "ens1", "pool": "shared"}, "roce_rails[0] (mlx5_9): IPAM holds no address"),
        (
            {"device": "mlx5_0", "netdev": "ens1", "pool": "alone"},
            "roce_rails[0] (mlx5_0): its address comes from pool",
        ),
        (
            {"device": "mlx5_0", "netdev": "ens9", "pool": "shared"},
            "roce_rails[0] (mlx5_0): netdev ens9 does not exist",
        ),
        ({"device": "mlx5_0", "netdev": "eno1", "pool": "shared"}, "roce_rails[0] (mlx5_0): netdev eno1 carries the"),
        ({"device": "mlx5_0", "pool": "shared"}, "roce_rails[0] (mlx5_0): needs a netdev, or must be an Ascend"),
        # Names reach sysfs, configfs and /proc/sys paths, which the boot unit writes as root.
        ({"device": "../../victim", "pool": "shared"}, "roce_rails[0]: device '../../victim' is not a valid RDMA"),
        ({"device": "..", "pool": "shared"}, "roce_rails[0]: device '..' is not a valid RDMA device name"),
        ({"device": "mlx5 0", "pool": "shared"}, "roce_rails[0]: device 'mlx5 0' is not a valid RDMA device name"),
        (
            {"device": "mlx5_0", "netdev": "ens1/../../x", "pool": "shared"},
            "roce_rails[0] (mlx5_0): netdev 'ens1/../../x' is not a valid interface name",
        ),
        (
            {"device": "mlx5_0", "netdev": "a-very-long-name0", "pool": "shared"},
            "roce_rails[0] (mlx5_0): netdev 'a-very-long-name0' is not a valid interface name",
        ),
        # = would split a sysctl.d line, a quote breaks ansible.posix.sysctl, a newline ends a line anywhere.
        (
            {"device": "mlx5_0", "netdev": "ens1=x", "pool": "shared"},
            "roce_rails[0] (mlx5_0): netdev 'ens1=x' is not a valid interface name (1 to 15 of A-Z a-z 0-9 _ . -)",
        ),
        (
            {"device": "mlx5_0", "netdev": "ens1'x", "pool": "shared"},
            'roce_rails[0] (mlx5_0): netdev "ens1\'x" is not a valid interface name',
        ),
        (
            {"device": "mlx5_0", "netdev": "ens1\n", "pool": "shared"},
            "roce_rails[0] (mlx5_0): netdev 'ens1\\n' is not a valid interface name",
        ),
        ({"device": "mlx5_0\n", "pool": "shared"}, "roce_rails[0]: device 'mlx5_0\\n' is not a valid RDMA device"),
        (
            {"device": "mlx5_6", "netdev": "ens1", "pool": "v6"},
            "roce_rails[0] (mlx5_6): pool v6 is IPv6; the roce role configures IPv4 rails only",
        ),
    ],
)
def test_bad_rails_are_named(rail, problem):
    _rails, problems = plan([rail])
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    ("table_base", "rule_priority_base", "problem"),
    [
        (252, 1000, "roce_route_table_base: 252 gives 252..253, outside 1..252 (253-255 are the kernel's"),
        (254, 1000, "roce_route_table_base: 254 gives 254..255, outside 1..252"),
        (0, 1000, "roce_route_table_base: 0 gives 0..1, outside 1..252"),
        (100, 32765, "roce_rule_priority_base: 32765 gives 32765..32766, outside 1..32765 (the kernel's own rules)"),
        (100, 0, "roce_rule_priority_base: 0 gives 0..1, outside 1..32765"),
    ],
)
def test_routing_numbers_stay_clear_of_the_kernels_own(table_base, rule_priority_base, problem):
    two_rails = [
        {"device": "mlx5_0", "netdev": "ens1", "pool": "shared"},
        {"device": "mlx5_1", "netdev": "ens2", "pool": "shared"},
    ]
    _rails, problems = roce.plan_rails(
        two_rails,
        ADDRESSES,
        netdevs={"ens1", "ens2"},
        default_route_netdevs=set(),
        source_routing="auto",
        table_base=table_base,
        rule_priority_base=rule_priority_base,
    )
    assert len(problems) == 1
    assert problems[0].startswith(problem), problems


def test_the_last_usable_table_and_priority_are_taken():
    rails, problems = roce.plan_rails(
        [{"device": "mlx5_0", "netdev": "ens1", "pool": "shared"}],
        ADDRESSES,
        netdevs={"ens1"},
        default_route_netdevs=set(),
        source_routing="always",
        table_base=252,
        rule_priority_base=32765,
    )
    assert problems == []
    assert (rails[0]["table"], rails[0]["rule_priority"]) == (252, 32765)


def test_a_netdev_carries_one_rail():
    _rails, problems = plan(
        [
            {"device": "mlx5_0", "netdev": "ens1", "pool": "shared"},
            {"device": "mlx5_1", "netdev": "ens1", "pool": "shared"},
        ]
    )
    assert problems == ["roce_rails[1] (mlx5_1): netdev ens1 carries another rail already"]


@given(st.ip_addresses(v=4))
def test_ipv4_gid_is_the_mapped_address(address):
    gid = roce.ipv4_gid(str(address))
    assert ipaddress.IPv6Address(gid).ipv4_mapped == address
    assert len(gid) == 39


class FakeTools:
    """Answers queries from canned output; records every command."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        return self.outputs.get(tuple(argv), (0, "", ""))


MLNX_QOS_DEFAULT = """DCBX mode: OS controlled
Priority trust state: pcp
PFC configuration:
\tpriority    0   1   2   3   4   5   6   7
\tenabled     0   0   0   0   0   0   0   0
\tbuffer      0   0   0   0   0   0   0   0
"""


def test_parse_mlnx_qos():
    assert roce.parse_mlnx_qos(MLNX_QOS_DEFAULT) == {"trust": "pcp", "pfc": [0] * 8}


def test_mlnx_qos_sets_what_differs_in_one_command():
    tools = FakeTools({("mlnx_qos", "-i", "ens1"): (0, MLNX_QOS_DEFAULT, "")})
    runner = roce.Runner(tools)
    roce.apply_mlnx_qos(runner, "ens1", SETTINGS["qos"])
    assert tools.calls[-1] == ["mlnx_qos", "-i", "ens1", "--trust", "dscp", "--pfc", "0,0,0,1,0,0,0,0"]


def test_mlnx_qos_in_place_issues_no_setting_command():
    done = MLNX_QOS_DEFAULT.replace("pcp", "dscp").replace("enabled     0   0   0   0", "enabled     0   0   0   1")
    tools = FakeTools({("mlnx_qos", "-i", "ens1"): (0, done, "")})
    runner = roce.Runner(tools)
    roce.apply_mlnx_qos(runner, "ens1", SETTINGS["qos"])
    assert runner.changes == []
    assert tools.calls == [["mlnx_qos", "-i", "ens1"]]


def test_check_mode_records_but_does_not_run():
    tools = FakeTools({("mlnx_qos", "-i", "ens1"): (0, MLNX_QOS_DEFAULT, "")})
    runner = roce.Runner(tools, check_mode=True)
    roce.apply_mlnx_qos(runner, "ens1", SETTINGS["qos"])
    assert tools.calls == [["mlnx_qos", "-i", "ens1"]]
    assert runner.changes[0]["command"][3:] == ["--trust", "dscp", "--pfc", "0,0,0,1,0,0,0,0"]


def test_dcb_sets_pfc_and_the_dscp_map():
    tools = FakeTools(
        {
            ("dcb", "pfc", "show", "dev", "ens1", "prio-pfc"): (
                0,
                "prio-pfc 0:off 1:off 2:off 3:off 4:off 5:off 6:off 7:off\n",
                "",
            ),
            ("dcb", "app", "show", "dev", "ens1", "dscp-prio"): (0, "dscp-prio 48:6\n", ""),
            ("dcb", "apptrust", "show", "dev", "ens1"): (1, "", 'Object "apptrust" is unknown'),
        }
    )
    runner = roce.Runner(tools)
    roce.apply_dcb(runner, "ens1", SETTINGS["qos"])
    assert [c["command"] for c in runner.changes] == [
        [
            "dcb",
            "pfc",
            "set",
            "dev",
            "ens1",
            "prio-pfc",
            "0:off",
            "1:off",
            "2:off",
            "3:on",
            "4:off",
            "5:off",
            "6:off",
            "7:off",
        ],
        ["dcb", "app", "replace", "dev", "ens1", "dscp-prio", "26:3"],
    ]


HCCN = {
    ("hccn_tool", "-i", "3", "-ip", "-g"): (0, "ipaddr:10.40.0.7\nnetmask:255.255.254.0\n", ""),
    ("hccn_tool", "-i", "3", "-gateway", "-g"): (0, "default gateway:10.40.1.254, Iface:eth3\n", ""),
    ("hccn_tool", "-i", "3", "-netdetect", "-g"): (0, "netdetect address:10.40.1.254\n", ""),
}


def test_hccn_in_place_issues_no_setting_command():
    rails, _problems = plan([{"device": "npu3", "pool": "npu"}])
    runner = roce.Runner(FakeTools(HCCN))
    roce.apply_hccn(runner, rails[0], "10.40.1.254")
    assert runner.changes == []


def test_hccn_sets_address_gateway_and_netdetect():
    rails, _problems = plan([{"device": "npu3", "pool": "npu"}])
    runner = roce.Runner(FakeTools({}))
    roce.apply_hccn(runner, rails[0], "10.40.1.254")
    assert [c["command"] for c in runner.changes] == [
        ["hccn_tool", "-i", "3", "-ip", "-s", "address", "10.40.0.7", "netmask", "255.255.254.0"],
        ["hccn_tool", "-i", "3", "-gateway", "-s", "gateway", "10.40.1.254"],
        ["hccn_tool", "-i", "3", "-netdetect", "-s", "address", "10.40.1.254"],
    ]


def test_a_failing_setting_command_stops_with_its_message():
    tools = FakeTools({("hccn_tool", "-i", "3", "-gateway", "-s", "gateway", "10.40.1.254"): (1, "", "bad gateway")})
    rails, _problems = plan([{"device": "npu3", "pool": "npu"}])
    with pytest.raises(
        roce.ApplyError, match=r"hccn_tool -i 3 -gateway -s gateway 10\.40\.1\.254 failed \(rc 1\): bad gateway"
    ):
        roce.apply_hccn(roce.Runner(tools), rails[0], None)


def fake_port(sys_root, device, gids):
    base = sys_root / "class" / "infiniband" / device / "ports" / "1"
    write(base / "state", "4: ACTIVE")
    write(base / "phys_state", "5: LinkUp")
    write(base / "link_layer", "Ethernet")
    for index, (gid, kind, netdev) in enumerate(gids):
        write(base / "gids" / str(index), gid)
        write(base / "gid_attrs" / "types" / str(index), kind)
        write(base / "gid_attrs" / "ndevs" / str(index), netdev)
    write(base / "gids" / str(len(gids)), "0000:0000:0000:0000:0000:0000:0000:0000")


def test_cm_defaults_written_where_they_differ(tmp_path):
    fake_port(tmp_path / "sys", "rxe0", [])
    cm = tmp_path / "config" / "rdma_cm"
    write(cm / "rxe0" / "ports" / "1" / "default_roce_mode", "IB/RoCE v1")
    write(cm / "rxe0" / "ports" / "1" / "default_roce_tos", "106")
    runner = roce.Runner(FakeTools({}))
    roce.apply_cm_defaults(
        runner, "rxe0", "RoCE v2", 106, sys_root=str(tmp_path / "sys"), configfs=str(tmp_path / "config")
    )
    assert (cm / "rxe0" / "ports" / "1" / "default_roce_mode").read_text() == "RoCE v2\n"
    assert [c["why"] for c in runner.changes] == ["rxe0 port 1: default RoCE mode RoCE v2"]


def test_cm_defaults_without_configfs_fail_clearly(tmp_path):
    with pytest.raises(roce.ApplyError, match="rdma_cm is missing: is configfs mounted and the rdma_cm module loaded"):
        roce.apply_cm_defaults(roce.Runner(FakeTools({})), "rxe0", "RoCE v2", 106, configfs=str(tmp_path))


def test_ecn_through_the_mlx5_sysfs(tmp_path):
    ecn = tmp_path / "class" / "net" / "ens1" / "ecn"
    for side in ("roce_np", "roce_rp"):
        write(ecn / side / "enable" / "3", "0")
    write(ecn / "roce_np" / "cnp_dscp", "48")
    write(ecn / "roce_np" / "cnp_802p_prio", "0")
    runner = roce.Runner(FakeTools({}))
    assert roce.apply_ecn(runner, "ens1", SETTINGS["qos"], sys_root=str(tmp_path))
    assert (ecn / "roce_rp" / "enable" / "3").read_text() == "1\n"
    assert [c["why"] for c in runner.changes] == [
        "ens1: ECN roce_np on priority 3",
        "ens1: ECN roce_rp on priority 3",
        "ens1: cnp_802p_prio 6",
    ]


def test_the_gid_table_shows_the_roce_v2_address(tmp_path):
    gid = roce.ipv4_gid("10.30.0.1")
    assert gid == "0000:0000:0000:0000:0000:ffff:0a1e:0001"
    fake_port(
        tmp_path, "rxe0", [("fe80:0000:0000:0000:5054:00ff:fe10:0105", "RoCE v2", "ens1"), (gid, "RoCE v2", "ens1")]
    )
    ports = roce.port_status("rxe0", sys_root=str(tmp_path))
    assert ports[1]["state"] == "ACTIVE"
    assert [g["gid"] for g in ports[1]["gids"]] == ["fe80:0000:0000:0000:5054:00ff:fe10:0105", gid]


def test_soft_roce_links_read_both_ifname_forms():
    tools = FakeTools(
        {
            ("rdma", "-j", "link", "show"): (
                0,
                '[{"ifname":"rxe0/1","netdev":"ens1"},{"ifname":"rxe1","netdev":"ens2"}]',
                "",
            )
        }
    )
    assert roce.soft_roce_links(roce.Runner(tools)) == {"rxe0": "ens1", "rxe1": "ens2"}


def test_soft_roce_on_another_netdev_is_refused():
    with pytest.raises(roce.ApplyError, match="rxe0 is an RDMA device on ens2, not on ens1"):
        roce.apply_soft_roce(roce.Runner(FakeTools({})), {"device": "rxe0", "netdev": "ens1"}, {"rxe0": "ens2"})
