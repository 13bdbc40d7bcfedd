"""RoCE rails: validation, the plan, and the runtime settings against fake tools and a fake sysfs."""

import hashlib
import importlib.machinery
import ipaddress
import json
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest
from ansible.module_utils.hpc_datapath import boot_program, roce
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load
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


# --- the applier, tested once: as the module and as the installed boot program ---------------
#
# Every case below runs twice: through roce_fabric's own entry (state=apply, in this process), and
# through the boot program that roce_fabric state=install wrote, run as hpc-roce.service runs it
# (python3 PROGRAM PLAN.json), with no Ansible importable (-I -S). Both see the same fake sysfs and
# configfs trees and the same fake tools on PATH, and must report and do the same.

roce_fabric = _load("roce_fabric", ROOT / "library" / "roce_fabric.py")

FAKE_TOOL = f"""#!{sys.executable} -IS
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps(argv) + "\\n")
with open(os.path.join(here, "answers.json")) as answers:
    rc, out, err = json.load(answers).get(json.dumps(argv), (0, "", ""))
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(rc)
"""
TOOLS = ("rdma", "mlnx_qos", "dcb", "hccn_tool")
MLNX_QOS_DONE = MLNX_QOS_DEFAULT.replace("pcp", "dscp").replace(
    "enabled     0   0   0   0", "enabled     0   0   0   1"
)
DCB_PFC_OFF = "prio-pfc 0:off 1:off 2:off 3:off 4:off 5:off 6:off 7:off\n"
DCB_APPTRUST_UNKNOWN = (1, "", 'Object "apptrust" is unknown')  # iproute2 before 6.2
HCCN = {
    ("hccn_tool", "-i", "3", "-ip", "-g"): (0, "ipaddr:10.40.0.7\nnetmask:255.255.254.0\n", ""),
    ("hccn_tool", "-i", "3", "-gateway", "-g"): (0, "default gateway:10.40.1.254, Iface:eth3\n", ""),
    ("hccn_tool", "-i", "3", "-netdetect", "-g"): (0, "netdetect address:10.40.1.254\n", ""),
}


def is_setting(call):
    tool, args = call[0], call[1:]
    if tool == "mlnx_qos":
        return len(args) > 2  # mlnx_qos -i NETDEV reads
    if tool == "hccn_tool":
        return "-s" in args  # -g reads
    return any(verb in args for verb in ("add", "set", "replace"))  # rdma, dcb: show reads


class Node:
    """A fake node: sysfs and configfs trees, tools that answer from a table and log each call."""

    def __init__(self, root):
        self.sys, self.configfs, self.bin = root / "sys", root / "config", root / "bin"
        self.bin.mkdir(parents=True)
        self.answers = {}
        for tool in TOOLS:
            (self.bin / tool).write_text(FAKE_TOOL)
            (self.bin / tool).chmod(0o755)
        (self.configfs / "rdma_cm").mkdir(parents=True)

    def answer(self, argv, rc=0, out="", err=""):
        self.answers[json.dumps(list(argv))] = (rc, out, err)

    def cm(self, device, mode, tos):
        """A device's rdma_cm directory in configfs, as the kernel fills it, with port 1's defaults."""
        write(self.configfs / "rdma_cm" / device / "ports" / "1" / "default_roce_mode", mode)
        write(self.configfs / "rdma_cm" / device / "ports" / "1" / "default_roce_tos", str(tos))

    def ecn(self, netdev, enabled, cnp_dscp, cnp_priority):
        ecn = self.sys / "class" / "net" / netdev / "ecn"
        for side in ("roce_np", "roce_rp"):
            write(ecn / side / "enable" / "3", str(enabled))
        write(ecn / "roce_np" / "cnp_dscp", str(cnp_dscp))
        write(ecn / "roce_np" / "cnp_802p_prio", str(cnp_priority))

    def calls(self):
        log = self.bin / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def settings_made(self):
        """The calls that set something: every call but the reads the applier makes first."""
        return [call for call in self.calls() if is_setting(call)]

    def read(self, *parts):
        return (self.configfs.joinpath(*parts) if parts[0] == "rdma_cm" else self.sys.joinpath(*parts)).read_text()


def applier_plan(rails, *, tool="mlnx_qos", ecn=True, hccn_netdetect=None):
    """The plan roce_fabric state=plan returns for these rails: what both entries apply."""
    addresses = dict(ADDRESSES, rxe0={"address": "10.31.0.9", "prefix": 24, "pool": "shared", "gateway": None})
    planned, problems = roce.plan_rails(
        rails,
        addresses,
        netdevs={"ens1", "ens2"},
        default_route_netdevs=set(),
        source_routing="auto",
        table_base=100,
        rule_priority_base=1000,
    )
    assert problems == []
    qos = dict(SETTINGS["qos"], tool=tool, ecn=ecn)
    return {"rails": planned, "mtu": 9000, "mode": "RoCE v2", "tos": 106, "qos": qos, "hccn_netdetect": hccn_netdetect}


def run_roce_fabric(capsys, args):
    """roce_fabric's main() on these arguments: (exit code, its JSON result)."""
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        roce_fabric.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


@dataclass
class Applied:
    ok: bool
    changes: list  # the why of each change, in order
    error: str | None


def through_the_module(node, plan, capsys, monkeypatch):
    (node.bin / "answers.json").write_text(json.dumps(node.answers))
    monkeypatch.setattr(roce, "SYS", str(node.sys))
    monkeypatch.setattr(roce, "CONFIGFS", str(node.configfs))
    monkeypatch.setenv("PATH", str(node.bin))
    code, result = run_roce_fabric(capsys, {"state": "apply", "plan": plan})
    if code:
        return Applied(False, [c["why"] for c in result.get("changes", [])], result["msg"])
    assert result["changed"] is bool(result["changes"])
    return Applied(True, [c["why"] for c in result["changes"]], None)


def through_the_boot_program(node, plan, capsys, monkeypatch):
    (node.bin / "answers.json").write_text(json.dumps(node.answers))
    program = node.bin.parent / "lib" / "roce.py"
    program.parent.mkdir()
    code, result = run_roce_fabric(capsys, {"state": "install", "boot_program": str(program)})
    assert (code, result["changed"]) == (0, True), result
    (node.bin.parent / "roce.json").write_text(json.dumps(plan, indent=2))
    done = subprocess.run(
        # As the unit runs it, and no Ansible to import: -I ignores PYTHON* and the user's site, -S the venv's.
        [sys.executable, "-I", "-S", program, "--sysfs", node.sys, "--configfs", node.configfs, "roce.json"],
        cwd=node.bin.parent,
        env={"PATH": str(node.bin)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    changes = [line.removeprefix("hpc-roce: ") for line in done.stdout.splitlines()]
    if done.returncode:
        assert done.stderr.startswith("hpc-roce: ") and done.stderr.count("\n") == 1, done.stderr
        return Applied(False, [], done.stderr.removeprefix("hpc-roce: ").strip())
    assert done.stderr == ""
    return Applied(True, changes, None)


@pytest.fixture(params=[through_the_module, through_the_boot_program], ids=["module", "boot-program"])
def apply(request, tmp_path, capsys, monkeypatch):
    """apply(plan) on a fake node: roce_fabric state=apply, or the boot program hpc-roce.service runs."""
    node = Node(tmp_path)
    return node, lambda plan: request.param(node, plan, capsys, monkeypatch)


MLX5_RAIL = [{"device": "mlx5_0", "netdev": "ens1", "pool": "shared"}]


def test_apply_sets_what_differs_through_mlnx_qos_configfs_and_the_ecn_sysfs(apply):
    node, run = apply
    fake_port(node.sys, "mlx5_0", [])
    node.cm("mlx5_0", "IB/RoCE v1", 0)
    node.ecn("ens1", enabled=0, cnp_dscp=48, cnp_priority=0)
    node.answer(["mlnx_qos", "-i", "ens1"], out=MLNX_QOS_DEFAULT)
    assert run(applier_plan(MLX5_RAIL)) == Applied(
        True,
        [
            "mlx5_0 port 1: default RoCE mode RoCE v2",
            "mlx5_0 port 1: default ToS 106",
            "ens1: trust dscp, PFC on priorities [3]",
            "ens1: ECN roce_np on priority 3",
            "ens1: ECN roce_rp on priority 3",
            "ens1: cnp_802p_prio 6",
        ],
        None,
    )
    # One mlnx_qos command sets both trust and PFC.
    assert node.settings_made() == [["mlnx_qos", "-i", "ens1", "--trust", "dscp", "--pfc", "0,0,0,1,0,0,0,0"]]
    assert node.read("rdma_cm", "mlx5_0", "ports", "1", "default_roce_mode") == "RoCE v2\n"
    assert node.read("rdma_cm", "mlx5_0", "ports", "1", "default_roce_tos") == "106\n"
    assert node.read("class", "net", "ens1", "ecn", "roce_rp", "enable", "3") == "1\n"
    assert node.read("class", "net", "ens1", "ecn", "roce_np", "cnp_802p_prio") == "6\n"


def test_apply_in_place_changes_nothing(apply):
    node, run = apply
    fake_port(node.sys, "mlx5_0", [])
    node.cm("mlx5_0", "RoCE v2", 106)
    node.ecn("ens1", enabled=1, cnp_dscp=48, cnp_priority=6)
    node.answer(["mlnx_qos", "-i", "ens1"], out=MLNX_QOS_DONE)
    assert run(applier_plan(MLX5_RAIL)) == Applied(True, [], None)
    assert node.settings_made() == []


def test_apply_sets_pfc_and_the_dscp_map_through_dcb(apply):
    node, run = apply
    fake_port(node.sys, "mlx5_0", [])
    node.cm("mlx5_0", "RoCE v2", 106)
    node.answer(["dcb", "pfc", "show", "dev", "ens1", "prio-pfc"], out=DCB_PFC_OFF)
    node.answer(["dcb", "app", "show", "dev", "ens1", "dscp-prio"], out="dscp-prio 48:6\n")
    node.answer(["dcb", "apptrust", "show", "dev", "ens1"], *DCB_APPTRUST_UNKNOWN)
    assert run(applier_plan(MLX5_RAIL, tool="dcb", ecn=False)) == Applied(
        True, ["ens1: PFC on priorities [3]", "ens1: DSCP 26:3"], None
    )
    pfc = ["0:off", "1:off", "2:off", "3:on", "4:off", "5:off", "6:off", "7:off"]
    assert node.settings_made() == [
        ["dcb", "pfc", "set", "dev", "ens1", "prio-pfc", *pfc],
        ["dcb", "app", "replace", "dev", "ens1", "dscp-prio", "26:3"],
    ]


def test_apply_creates_a_soft_roce_device_and_its_rdma_cm_directory(apply):
    node, run = apply
    node.answer(["rdma", "-j", "link", "show"], out='[{"ifname":"rxe1/1","netdev":"ens2"}]')
    plan = applier_plan([{"device": "rxe0", "netdev": "ens1", "pool": "shared", "soft_roce": True}], tool="none")
    assert run(plan) == Applied(True, ["rxe0: Soft-RoCE on ens1", "rxe0: rdma_cm defaults"], None)
    assert node.settings_made() == [["rdma", "link", "add", "rxe0", "type", "rxe", "netdev", "ens1"]]
    assert (node.configfs / "rdma_cm" / "rxe0").is_dir()


def test_apply_refuses_a_soft_roce_device_on_another_netdev(apply):
    node, run = apply
    node.answer(["rdma", "-j", "link", "show"], out='[{"ifname":"rxe0/1","netdev":"ens2"}]')
    plan = applier_plan([{"device": "rxe0", "netdev": "ens1", "pool": "shared", "soft_roce": True}], tool="none")
    assert run(plan) == Applied(False, [], "rxe0 is an RDMA device on ens2, not on ens1")
    assert node.settings_made() == []


def test_apply_sets_npu_address_gateway_and_netdetect(apply):
    node, run = apply
    assert run(applier_plan([{"device": "npu3", "pool": "npu"}], hccn_netdetect="10.40.1.254")) == Applied(
        True, ["npu3: address 10.40.0.7/23", "npu3: gateway", "npu3: netdetect"], None
    )
    assert node.settings_made() == [
        ["hccn_tool", "-i", "3", "-ip", "-s", "address", "10.40.0.7", "netmask", "255.255.254.0"],
        ["hccn_tool", "-i", "3", "-gateway", "-s", "gateway", "10.40.1.254"],
        ["hccn_tool", "-i", "3", "-netdetect", "-s", "address", "10.40.1.254"],
    ]


def test_apply_leaves_npu_ports_in_place(apply):
    node, run = apply
    for argv, answer in HCCN.items():
        node.answer(argv, *answer)
    assert run(applier_plan([{"device": "npu3", "pool": "npu"}])) == Applied(True, [], None)
    assert node.settings_made() == []


def test_apply_stops_at_a_failing_setting_command_with_its_message(apply):
    node, run = apply
    node.answer(["hccn_tool", "-i", "3", "-gateway", "-s", "gateway", "10.40.1.254"], 1, "", "bad gateway")
    applied = run(applier_plan([{"device": "npu3", "pool": "npu"}]))
    assert (applied.ok, applied.error) == (
        False,
        "hccn_tool -i 3 -gateway -s gateway 10.40.1.254 failed (rc 1): bad gateway",
    )
    # It stopped there: the netdetect address was not set.
    assert [call[3] for call in node.settings_made()] == ["-ip", "-gateway"]


def test_apply_without_rdma_cm_in_configfs_fails_clearly(apply):
    node, run = apply
    fake_port(node.sys, "mlx5_0", [])
    (node.configfs / "rdma_cm").rmdir()
    applied = run(applier_plan(MLX5_RAIL, tool="none"))
    assert not applied.ok
    assert applied.error == f"{node.configfs}/rdma_cm is missing: is configfs mounted and the rdma_cm module loaded?"


# --- what only one entry does ------------------------------------------------------------------


def test_check_mode_of_the_module_reports_and_changes_nothing(tmp_path, capsys, monkeypatch):
    node = Node(tmp_path)
    fake_port(node.sys, "mlx5_0", [])
    node.cm("mlx5_0", "IB/RoCE v1", 106)
    node.answer(["mlnx_qos", "-i", "ens1"], out=MLNX_QOS_DEFAULT)
    (node.bin / "answers.json").write_text(json.dumps(node.answers))
    monkeypatch.setattr(roce, "SYS", str(node.sys))
    monkeypatch.setattr(roce, "CONFIGFS", str(node.configfs))
    monkeypatch.setenv("PATH", str(node.bin))
    code, result = run_roce_fabric(
        capsys, {"state": "apply", "plan": applier_plan(MLX5_RAIL, ecn=False), "_ansible_check_mode": True}
    )
    assert (code, result["changed"]) == (0, True)
    assert [c.get("command") or c.get("write") for c in result["changes"]] == [
        f"{node.configfs}/rdma_cm/mlx5_0/ports/1/default_roce_mode",
        ["mlnx_qos", "-i", "ens1", "--trust", "dscp", "--pfc", "0,0,0,1,0,0,0,0"],
    ]
    assert node.settings_made() == []
    assert node.read("rdma_cm", "mlx5_0", "ports", "1", "default_roce_mode") == "IB/RoCE v1\n"


def test_the_boot_program_reads_its_plan_or_says_why_not(tmp_path):
    program = ROOT / "module_utils" / "hpc_datapath" / "roce.py"
    done = subprocess.run(
        [sys.executable, "-I", "-S", program, tmp_path / "roce.json"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"hpc-roce: reading the plan {tmp_path}/roce.json: [Errno 2]")
    usage = subprocess.run([sys.executable, "-I", "-S", program], capture_output=True, text=True, check=False)
    assert usage.returncode == 2
    assert "usage: roce.py [-h] [--sysfs SYSFS] [--configfs CONFIGFS] plan" in usage.stderr


# --- roce_fabric state=install: the boot program is the module's own module_utils file ------------

SOURCE = (ROOT / "module_utils" / "hpc_datapath" / "roce.py").read_bytes()


def install(capsys, program, **args):
    return run_roce_fabric(capsys, {"state": "install", "boot_program": str(program), **args})


def test_install_writes_the_module_utils_file_once(tmp_path, capsys):
    program = tmp_path / "roce.py"
    code, result = install(capsys, program)
    assert (code, result["changed"], result["boot_program"]) == (0, True, str(program))
    assert program.read_bytes() == SOURCE
    assert program.stat().st_mode & 0o7777 == 0o755
    assert result["sha256"] == hashlib.sha256(SOURCE).hexdigest()
    assert install(capsys, program)[1]["changed"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["roce.py"]  # no temporary file left


@pytest.mark.parametrize(
    "drift",
    [
        pytest.param(lambda program: program.write_bytes(b"# an older applier\n"), id="content"),
        pytest.param(lambda program: program.chmod(0o644), id="mode"),
    ],
)
def test_install_puts_back_what_drifted(tmp_path, capsys, drift):
    program = tmp_path / "roce.py"
    install(capsys, program)
    drift(program)
    assert install(capsys, program)[1]["changed"] is True
    assert (program.read_bytes(), program.stat().st_mode & 0o7777) == (SOURCE, 0o755)
    assert install(capsys, program)[1]["changed"] is False


def test_install_in_check_mode_writes_nothing_and_shows_the_difference(tmp_path, capsys):
    program = tmp_path / "roce.py"
    program.write_text("# an older applier\n")
    program.chmod(0o600)
    code, result = install(capsys, program, _ansible_check_mode=True, _ansible_diff=True)
    assert (code, result["changed"]) == (0, True)
    assert result["diff"]["before"] == "# an older applier\n"
    assert result["diff"]["after"] == SOURCE.decode()
    assert (program.read_text(), program.stat().st_mode & 0o7777) == ("# an older applier\n", 0o600)
    # A node the role has not prepared yet: the directory would be made by the task before.
    code, result = install(capsys, tmp_path / "missing" / "roce.py", _ansible_check_mode=True)
    assert (code, result["changed"]) == (0, True)
    assert not (tmp_path / "missing").exists()


def test_install_into_a_missing_directory_fails_clearly(tmp_path, capsys):
    code, result = install(capsys, tmp_path / "missing" / "roce.py")
    assert code == 1
    assert result["msg"] == f"{tmp_path}/missing does not exist: it holds the boot program {tmp_path}/missing/roce.py"


class MitogenModuleUtilsImporter:
    """What ansible_mitogen.runner.ModuleUtilsImporter leaves on a module: no get_source, a context."""

    _context = "the service context"


def test_source_under_mitogen_comes_from_its_file_service(monkeypatch):
    # The real importer is exercised in tests/playbooks/test_roce_boot_program_playbook.py.
    target = pytest.importorskip("ansible_mitogen.target")
    asked = []
    monkeypatch.setattr(target, "get_small_file", lambda context, path: asked.append((context, path)) or SOURCE)
    module = types.ModuleType("ansible.module_utils.hpc_datapath.roce")
    module.__spec__ = importlib.machinery.ModuleSpec(
        module.__name__, MitogenModuleUtilsImporter(), origin="master:/project/module_utils/hpc_datapath/roce.py"
    )
    assert boot_program.source_of(module) == SOURCE.decode()
    assert asked == [("the service context", "/project/module_utils/hpc_datapath/roce.py")]


def test_source_from_an_unknown_loader_is_an_error_not_a_guess():
    module = types.ModuleType("ansible.module_utils.hpc_datapath.roce")
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, object(), origin="somewhere")
    with pytest.raises(RuntimeError, match=r"cannot read the source of .*roce from its loader object \(somewhere\)"):
        boot_program.source_of(module)
