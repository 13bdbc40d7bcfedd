"""SR-IOV edge cases an adversarial review reproduced (issue 16): the boot unit's ordering, VFs in
use, VF names and addresses, an interrupted run, the role's reboot report, firmware that a count
waits for, and whereabouts' fallback to the whole subnet.

The node side reuses test_sriov.py's fake node (a sysfs tree and a fake `ip`).
"""

import json
import shutil
import subprocess
import types

import jinja2
import pytest
import yaml
from ansible.module_utils.hpc_datapath import sriov
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from conftest import ROOT, _load
from fake_sysfs import write
from test_sriov import PF1, Node, apply, plan, problems

ipam = _load("roce_ipam", ROOT / "filter_plugins" / "roce_ipam.py")
fabric = _load("k8s_fabric", ROOT / "filter_plugins" / "k8s_fabric.py")

TASKS = yaml.safe_load((ROOT / "roles" / "sriov" / "tasks" / "main.yml").read_text())


@pytest.fixture
def node(tmp_path):
    """test_sriov.py's node without its kernel: a probe binds nothing here, as for a VF whose driver
    never comes (autoprobe left off, vfio-pci without an IOMMU)."""
    node = Node(tmp_path)
    node.pf("ens1f0", PF1, mac="52:54:00:00:01:00")
    node.pf("ens2f0", "0000:02:00.0", mac="52:54:00:00:02:00", offset=2, stride=1)
    return node


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    slept = []
    monkeypatch.setattr(sriov, "time", types.SimpleNamespace(monotonic=lambda: sum(slept), sleep=slept.append))
    return slept


def task(name):
    return next(entry for entry in TASKS if entry["name"] == name)


def templar(variables):
    return Templar(loader=DataLoader(), variables=variables)


# --- 1. the boot unit's ordering: a cycle through sysinit.target on nodes with cloud-init -----------

# cloud-init's network stage as it ships for Debian and Ubuntu (canonical/cloud-init,
# systemd/cloud-init-network.service.tmpl, variant debian/ubuntu): Before=sysinit.target, after the
# network backends, which are after network-pre.target.
CLOUD_INIT_DEBIAN = """[Unit]
Description=Cloud-init: Network Stage
DefaultDependencies=no
After=systemd-networkd-wait-online.service
After=networking.service
Before=network-online.target
Before=sysinit.target
Before=shutdown.target
Conflicts=shutdown.target
[Service]
Type=oneshot
ExecStart=/bin/true
RemainAfterExit=yes
"""


def render_unit(pf_names):
    source = (ROOT / "roles" / "sriov" / "templates" / "hpc-sriov.service.j2").read_text()
    return (
        jinja2.Environment(keep_trailing_newline=True, autoescape=False)  # noqa: S701 (a unit file)
        .from_string(source)
        .render(
            ansible_managed="managed",
            __sriov_plan={"plan": {"pfs": [{"name": name} for name in pf_names]}},
            __sriov_boot_program="/usr/local/lib/hpc-datapath/sriov.py",
            __sriov_plan_file="/etc/hpc-datapath/sriov.json",
        )
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_boot_unit_makes_no_ordering_cycle_with_cloud_init_and_networkd(tmp_path):
    """hpc-sriov.service has default dependencies (After=sysinit.target basic.target) and
    Before=network-pre.target; cloud-init's network stage is Before=sysinit.target and after
    systemd-networkd/networking, which are After=network-pre.target. systemd breaks the cycle by
    deleting a start job (cloud-init's, or a network backend's) at every boot."""
    (tmp_path / "hpc-sriov.service").write_text(render_unit(["ens1f0"]))
    (tmp_path / "cloud-init.service").write_text(CLOUD_INIT_DEBIAN)
    (tmp_path / "boot.target").write_text(
        "[Unit]\nWants=hpc-sriov.service cloud-init.service systemd-networkd.service "
        "systemd-networkd-wait-online.service\n"
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", "boot.target"],
        cwd=tmp_path,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert "ordering cycle" not in done.stderr, done.stderr


# --- 2. attributes of a VF in use are changed under the pod or VM that holds it ---------------------


@pytest.mark.parametrize(
    ("shown", "wanted"),
    [({"vlan_list": [{"vlan": 200}]}, {"vlan": 0}), ({"trust": False}, {"trust": True})],
    ids=["vlan", "trust"],
)
def test_a_vf_in_a_pods_namespace_keeps_its_vlan_and_trust(node, shown, wanted):
    """VF 1 sits in a pod (its netdev in another namespace); the SR-IOV CNI gave it the NAD's VLAN
    200 (or trust off). Every role run sets vf_defaults on it again, cutting the pod off its VLAN.
    A MAC change of such a VF is refused; a VLAN, trust, spoofchk or link state change is not."""
    node.made("ens1f0", 2)
    node.vf("ens1f0", 1, elsewhere=True, **shown)
    applied = apply(node, [{"name": "ens1f0", "num_vfs": 2, "vf_defaults": wanted}])
    assert not [change for change in applied.changes if " vf 1 " in f"{change} "], applied


# --- 3. VF names: collisions with other netdevs and with each other ---------------------------------


def test_a_vf_name_that_is_another_netdevs_name_is_refused(node):
    """eno (an SR-IOV PF) with name_prefix '' names its VF 1 'eno1', the name of the node's eno1:
    the udev rule's rename fails (or, at boot, races the other NIC for the name)."""
    node.pf("eno", "0000:05:00.0", mac="52:54:00:00:05:00")
    assert problems(node, [{"name": "eno", "num_vfs": 2, "name_prefix": ""}]) != []


def test_two_vfs_of_two_pfs_are_never_given_one_name(node):
    """ens1 VF 10 and ens11 VF 0, both with name_prefix '': 'ens110' twice in the udev rule."""
    node.pf("ens1", "0000:05:00.0", mac="52:54:00:00:05:00", total=16)
    node.pf("ens11", "0000:06:00.0", mac="52:54:00:00:06:00", total=16)
    pfs = [{"name": "ens1", "num_vfs": 11, "name_prefix": ""}, {"name": "ens11", "num_vfs": 1, "name_prefix": ""}]
    assert problems(node, pfs) != []


# --- 4. a VF address the plan computes that is not a VF ---------------------------------------------


@pytest.mark.parametrize(
    ("offset", "other"),
    [(0, None), (1, "0000:03:00.1")],
    ids=["offset-0-is-the-pf-itself", "offset-1-is-the-second-port"],
)
def test_a_planned_vf_address_that_is_the_pf_or_another_device_is_refused(node, offset, other):
    """sriov_offset is read while the PF has no VFs, where the PCIe spec lets it change with
    NumVFs (the kernel itself refuses an offset of 0 only once VFs are asked for). The plan trusts
    it: VF 0 lands on the PF itself, or on the card's second port, and the udev rule
    (KERNELS=="<address>", NAME=..., NM_UNMANAGED=1) then renames that port and takes it from
    NetworkManager at its next add (the next boot)."""
    node.pf("ens3f0", "0000:03:00.0", mac="52:54:00:00:03:00", offset=offset, stride=1)
    if other:
        node.pf("ens3f1", other, mac="52:54:00:00:03:01")
    the_plan, found = plan(node, [{"name": "ens3f0", "num_vfs": 1}])
    assert found != [], the_plan


# --- 5. a killed run leaves autoprobe off, and the next run does not notice --------------------------


def test_a_rerun_puts_autoprobe_back_on_and_fails_when_a_vf_never_gets_its_driver(node, waits):
    """A run killed (connection lost, SIGKILL) after `echo 0 > sriov_drivers_autoprobe` and the
    count: the count is as planned, so the next run writes autoprobe no more; with autoprobe off
    the kernel probes no VF through drivers_probe (driver_override unset), each netdev VF is
    waited for 15 s, and the run ends 'changed', VFs without driver or name."""
    write(node.device(PF1) / "sriov_numvfs", "2")
    write(node.device(PF1) / "sriov_drivers_autoprobe", "0")
    for index in (0, 1):
        node.vf("ens1f0", index, driver=None)
    applied = apply(node, [{"name": "ens1f0", "num_vfs": 2}])
    assert node.read(f"{PF1}/sriov_drivers_autoprobe") == "1\n" or applied.error, applied


def test_a_netdev_vf_that_never_appears_fails_the_run(node, waits):
    """The VFs are probed, no netdev appears within the wait (the driver failed to bind, autoprobe
    off, vfio-pci without an IOMMU group for the vfio case): the module returns success."""
    for index in (0, 1):
        node.vf("ens1f0", index, driver=None)
    applied = apply(node, [{"name": "ens1f0", "num_vfs": 2}])
    assert applied.error is not None, applied


# --- 6. the role: the IOMMU reboot is forgotten on the next run -------------------------------------


def test_the_iommu_reboot_is_still_reported_on_the_run_after_the_boot_loader_changed():
    """Run 1 writes the boot loader and reports a reboot. Run 2 (no reboot yet): the check run finds
    the boot loader right (not changed) but the kernel not (reboot_required true), the real task is
    skipped, and __sriov_waiting reads __sriov_iommu.reboot_required of the skipped task: false."""
    check = {
        "changed": False,
        "matches": False,
        "effective": "off",
        "reboot_required": True,
        "boot_args_wanted": ["intel_iommu=on", "iommu=pt"],
    }
    variables = {"sriov_iommu_manage_boot": True, "__sriov_iommu_check": check}
    put = task("Put the pool's IOMMU arguments in the boot loader")
    assert not templar(variables).evaluate_conditional(trust_as_template(put["when"]))  # skipped on run 2
    variables["__sriov_iommu"] = {"changed": False, "skipped": True, "false_condition": put["when"]}
    variables["__sriov_firmware"] = {"changed": False, "skipped": True}
    waiting = task("Name what waits for a reboot (firmware, IOMMU)")["ansible.builtin.set_fact"]["__sriov_waiting"]
    assert templar(variables).template(trust_as_template(waiting)) != []


# --- 7. a count that only the firmware of the same run allows ---------------------------------------


@pytest.mark.parametrize("total", [4, None], ids=["NUM_OF_VFS 4", "SRIOV_EN off"])
def test_a_count_that_waits_for_the_firmware_of_the_same_run_is_not_a_dead_end(node, total):
    """A ConnectX with NUM_OF_VFS 4 (or SR-IOV off: no sriov_totalvfs), the inventory asking for 8
    VFs and sriov_firmware NUM_OF_VFS 8: the PF waits for the firmware's reboot instead of failing
    the host before the firmware task that makes 8 possible. Without sriov_firmware it is refused."""
    node.pf("ens4f0", "0000:04:00.0", mac="52:54:00:00:04:00", total=total or 4)
    if total is None:
        (node.device("0000:04:00.0") / "sriov_totalvfs").unlink()
    wanted = [{"pci_address": "0000:04:00.0", "num_vfs": 8}]
    the_plan, found = sriov.plan(wanted, {}, str(node.sys), firmware=[{"device": "04:00.0", "num_vfs": 8}])
    assert found == []
    assert the_plan["pfs"][0]["deferred"].startswith("waits for the firmware's NUM_OF_VFS 8")
    assert problems(node, wanted) != []


# --- 8. the unit file: a PF name systemd reads as a specifier ---------------------------------------


def test_a_pf_name_that_reaches_the_unit_file_is_checked(node):
    """A PF named by PCI address is taken with whatever name the kernel gave it; its name reaches
    the unit file (Wants=sys-subsystem-net-devices-<name>.device) unchecked when its VFs are all
    vfio-pci (no VF name to check). '%' is a systemd specifier, a quote or backslash is escaped
    by systemd-escape; the kernel allows all three in a netdev name."""
    node.pf("ens5%f0", "0000:05:00.0", mac="52:54:00:00:05:00")
    spec = {"pci_address": "0000:05:00.0", "num_vfs": 1, "vf_defaults": {"driver": "vfio-pci"}}
    assert problems(node, [spec]) != []


# --- 9. k8s_fabric: whereabouts' silent fallback to the whole subnet (fixed in this review) ----------


@pytest.mark.parametrize("pod_range", ["10.50.0.255/32", "10.50.0.0/32"])
def test_a_pod_range_of_the_subnets_first_or_last_address_is_refused(pod_range):
    """whereabouts ignores a range_start/range_end outside the subnet's usable addresses: both
    ignored, it hands pods the whole 10.50.0.0/24, the hosts' addresses with it."""
    pools = [{"name": "pods", "subnet": "10.50.0.0/24", "pod_range": pod_range}]
    pod_networks = ipam.roce_ipam_pod_networks(pools)
    result = fabric.k8s_fabric_plan(
        [{"name": "pods", "pool": "pods", "resource": "vfs"}],
        [{"name": "vfs", "vendors": ["8086"]}],
        pod_networks,
        pools,
        cluster="lab",
    )
    assert result["problems"], json.dumps(result["objects"], indent=1)
