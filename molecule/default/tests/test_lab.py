"""The lab provides, on both nodes, the hardware the roles are tested against."""

import os
import re
import time
from dataclasses import dataclass

import pytest
import testinfra
import testinfra.host

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
NODES = ("node1", "node2")


def node(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def nic_by_mac(host, mac):
    """The interface name carrying this MAC (labctl.py sets MACs 52:54:00:10:<node>:<nic>)."""
    out = host.check_output(f"grep -l -x -i {mac} /sys/class/net/*/address")
    return out.split("/")[4]


@dataclass(frozen=True)
class LabNode:
    name: str
    index: int
    host: testinfra.host.Host


@pytest.fixture(params=NODES)
def lab_node(request):
    return LabNode(request.param, NODES.index(request.param) + 1, node(request.param))


def test_hostname_is_the_inventory_name(lab_node):
    assert lab_node.host.check_output("hostname") == lab_node.name


def test_two_nvme_controllers_with_fixed_serials(lab_node):
    serials = lab_node.host.check_output("cat /sys/class/nvme/nvme*/serial").split()
    assert sorted(serials) == [f"LABN{lab_node.index}NVME0", f"LABN{lab_node.index}NVME1"]


def test_root_disk_is_not_nvme(lab_node):
    assert lab_node.host.check_output("findmnt -n -o SOURCE /") == "/dev/vda"


# max_bonds=0: loading bonding must not create a bond0 of its own before the bond role runs.
@pytest.mark.parametrize("module", ["bonding max_bonds=0", "rdma_rxe", "raid0", "nfs", "xfs"])
def test_kernel_module_loads(lab_node, module):
    lab_node.host.run_expect([0], f"modprobe {module}")
    module = module.split()[0]
    assert lab_node.host.run(f"grep -q '^{module} ' /proc/modules").rc == 0


def test_data_nics_report_25g(lab_node):
    host = lab_node.host
    for nic in (2, 3):
        name = nic_by_mac(host, f"52:54:00:10:{lab_node.index:02x}:{nic:02x}")
        host.run_expect([0], f"ip link set {name} up")
        assert host.check_output(f"cat /sys/class/net/{name}/speed") == "25000"
        assert host.check_output(f"cat /sys/class/net/{name}/duplex") == "full"


def test_igb_creates_sriov_vfs(lab_node):
    host = lab_node.host
    pf = nic_by_mac(host, f"52:54:00:10:{lab_node.index:02x}:04")
    device = f"/sys/class/net/{pf}/device"
    assert host.check_output(f"basename $(readlink {device}/driver)") == "igb"
    assert int(host.check_output(f"cat {device}/sriov_totalvfs")) >= 4
    try:
        host.run_expect([0], f"echo 2 > {device}/sriov_numvfs")
        virtfns = host.check_output(f"ls -d {device}/virtfn*").split()
        assert len(virtfns) == 2
        drivers = {host.check_output(f"basename $(readlink {vf}/driver)") for vf in virtfns}
        assert drivers == {"igbvf"}
    finally:
        host.run(f"echo 0 > {device}/sriov_numvfs")
    assert host.run(f"ls -d {device}/virtfn*").rc != 0


@pytest.mark.parametrize("nic", [2, 3, 4, 5, 6], ids=["data0", "data1", "igb", "rail0", "rail1"])
def test_link_carries_traffic_between_nodes(nic):
    """Each wire between the nodes passes IP traffic, in both directions."""
    hosts = [node(name) for name in NODES]
    subnet = f"198.18.{nic}"  # RFC 2544 benchmarking range: never routed anywhere
    names = []
    for i, host in enumerate(hosts, start=1):
        name = nic_by_mac(host, f"52:54:00:10:{i:02x}:{nic:02x}")
        names.append(name)
        host.run_expect([0], f"ip link set {name} up && ip addr replace {subnet}.{i}/24 dev {name}")
    try:
        hosts[0].run_expect([0], f"ping -c 3 -W 2 -I {names[0]} {subnet}.2")
        hosts[1].run_expect([0], f"ping -c 3 -W 2 -I {names[1]} {subnet}.1")
        # The frames really crossed this wire: the peer's MAC is in the neighbour table.
        assert f"52:54:00:10:02:{nic:02x}" in hosts[0].check_output(f"ip neigh show dev {names[0]}")
    finally:
        for host, name in zip(hosts, names, strict=True):
            host.run(f"ip addr flush dev {name}")


def lacp_state(host, bond):
    """(active aggregator ID, partner MAC, aggregator IDs of the members) from /proc/net/bonding."""
    text = host.check_output(f"cat /proc/net/bonding/{bond}")
    active, _, members = text.partition("Slave Interface:")
    return (
        re.search(r"Aggregator ID: (\d+)", active).group(1),
        re.search(r"Partner Mac Address: (\S+)", active).group(1),
        re.findall(r"Aggregator ID: (\d+)", members),
    )


def test_bond_members_negotiate_lacp_with_the_other_node():
    """The two data links, bonded on both nodes, form one 802.3ad aggregator with a real partner."""
    hosts = [node(name) for name in NODES]
    members = [
        [nic_by_mac(host, f"52:54:00:10:{i:02x}:{nic:02x}") for nic in (2, 3)] for i, host in enumerate(hosts, 1)
    ]
    try:
        for host, (first, second) in zip(hosts, members, strict=True):
            host.run_expect(
                [0],
                "ip link add labbond type bond mode 802.3ad lacp_rate fast miimon 100 && "
                f"ip link set {first} down && ip link set {first} master labbond && "
                f"ip link set {second} down && ip link set {second} master labbond && ip link set labbond up",
            )
        expected = None
        for _ in range(60):  # fast LACP settles in seconds; TCG can be slow
            # The system MAC node2 advertises in its LACPDUs. Not the bond's current address: udev
            # may give a new bond its own MAC after the members joined, which LACP keeps ignoring.
            peer_text = hosts[1].check_output("cat /proc/net/bonding/labbond")
            peer_mac = re.search(r"System MAC address: (\S+)", peer_text).group(1)
            active, partner, member_aggregators = lacp_state(hosts[0], "labbond")
            expected = (active, peer_mac, [active, active])
            if (active, partner, member_aggregators) == expected:
                break
            time.sleep(1)
        assert (active, partner, member_aggregators) == expected
    finally:
        for host in hosts:
            host.run("ip link del labbond")
