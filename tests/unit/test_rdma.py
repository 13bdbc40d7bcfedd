"""The RDMA stack check: OFED detection, apt output, DKMS and kernel checks, modules that must stay."""

from ansible.module_utils.hpc_datapath import rdma
from fake_sysfs import link, write


def test_ofed_info_versions():
    assert rdma.parse_ofed_info("MLNX_OFED_LINUX-5.8-1.1.2.1:\n") == "5.8-1.1.2.1"
    assert rdma.parse_ofed_info("OFED-internal-24.10-1.1.4:\n") == "24.10-1.1.4"
    assert rdma.parse_ofed_info("") is None


def test_apt_simulation_lists_what_would_install():
    text = (
        "NOTE: This is only a simulation!\n"
        "Inst mlnx-tools (24.10.0-1 lab:./ [all])\n"
        "Inst rdma-core [44.0-2] (2410mlnx54-1 mirror:./ [amd64])\n"
        "Conf mlnx-tools (24.10.0-1 lab:./ [all])\n"
    )
    assert rdma.parse_apt_simulation(text) == {"mlnx-tools": "24.10.0-1", "rdma-core": "2410mlnx54-1"}


def test_madison_versions():
    text = (
        " doca-ofed | 24.10-1.1.4.0 | file:/srv/repo ./ Packages\n"
        " doca-ofed | 24.07-0.6.1.0 | file:/srv/repo ./ Packages\n"
    )
    assert rdma.parse_madison(text) == ["24.10-1.1.4.0", "24.07-0.6.1.0"]


def test_exact_dependencies_of_a_meta_package():
    control = (
        "Package: doca-ofed\nVersion: 24.07-0.6.1.0\n"
        "Depends: mlnx-ofed-kernel-utils (= 24.07.OFED.24.07.0.6.1.1-1), mlnx-tools, rdma-core:amd64 (= 2407mlnx52-1)"
        ", ibverbs-utils (>= 2407)\n"
    )
    assert rdma.exact_dependencies(control) == [
        "mlnx-ofed-kernel-utils=24.07.OFED.24.07.0.6.1.1-1",
        "rdma-core=2407mlnx52-1",
    ]
    assert rdma.exact_dependencies("Package: x\n") == []


def test_dkms_needs_the_running_kernels_headers():
    install = {"mlnx-ofed-kernel-dkms": "24.10", "dkms": "3.0"}
    assert "linux-headers-6.1.0-28-amd64 is neither installed nor pulled in" in rdma.dkms_problem(
        install, "6.1.0-28-amd64", None
    )
    assert rdma.dkms_problem(install, "6.1.0-28-amd64", "6.1.119-1") is None
    assert (
        rdma.dkms_problem(dict(install, **{"linux-headers-6.1.0-28-amd64": "6.1.119-1"}), "6.1.0-28-amd64", None)
        is None
    )
    assert rdma.dkms_problem({"doca-ofed": "24.10"}, "6.1.0-28-amd64", None) is None


def test_supported_kernels():
    assert rdma.kernel_problem("6.1.0-28-amd64", []) is None
    assert rdma.kernel_problem("6.1.0-28-amd64", [r"^6\.1\."]) is None
    assert rdma.kernel_problem("6.8.0-40-generic", [r"^5\.14\.", r"^6\.1\."]).startswith(
        "rdma_stack_supported_kernels: the running kernel 6.8.0-40-generic matches none of"
    )


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /data rw,relatime shared:2 - nfs4 10.0.0.5:/export rw,vers=4.2,proto=rdma,addr=10.0.0.5
31 22 0:41 / /home rw,relatime shared:3 - nfs4 nas:/home rw,vers=4.2,proto=tcp
"""


def test_mountinfo():
    mounts = rdma.parse_mountinfo(MOUNTINFO)
    assert [(m["mountpoint"], m["fstype"], m["major_minor"]) for m in mounts] == [
        ("/", "ext4", "254:0"),
        ("/data", "nfs4", "0:40"),
        ("/home", "nfs4", "0:41"),
    ]


def fake_modules(sys_root):
    for name, holders in {"ib_core": ["mlx5_ib", "rdma_cm"], "mlx5_core": ["mlx5_ib"], "rdma_cm": ["rpcrdma"]}.items():
        (sys_root / "module" / name / "holders").mkdir(parents=True, exist_ok=True)
        for holder in holders:
            (sys_root / "module" / holder / "holders").mkdir(parents=True, exist_ok=True)
            link(sys_root / "module" / name / "holders" / holder, f"../../{holder}")


def test_the_stack_is_its_roots_and_everything_holding_them(tmp_path):
    fake_modules(tmp_path)
    assert rdma.stack_modules(str(tmp_path)) == {"ib_core", "mlx5_core", "mlx5_ib", "rdma_cm", "rpcrdma"}


def fake_nic(sys_root, netdev, driver):
    device = sys_root / "devices" / "pci0000:00" / "0000:3b:00.0"
    write(device / "vendor", "0x15b3")
    link(device / "driver", f"../../../bus/pci/drivers/{driver}")
    link(sys_root / "bus" / "pci" / "drivers" / driver / "module", f"../../../../module/{driver}")
    link(sys_root / "class" / "net" / netdev / "device", "../../../devices/pci0000:00/0000:3b:00.0")


def test_rdma_mounts_and_the_management_nic_pin_the_stack(tmp_path):
    fake_modules(tmp_path)
    fake_nic(tmp_path, "ens1f0", "mlx5_core")
    pinned = rdma.pinned_modules(
        rdma.parse_mountinfo(MOUNTINFO),
        rdma.stack_modules(str(tmp_path)),
        sys_root=str(tmp_path),
        server_netdev=lambda host: None,
        mgmt_netdevs=["ens1f0"],
    )
    assert pinned["rpcrdma"] == "/data (nfs4 from 10.0.0.5:/export) runs over RDMA"
    assert pinned["mlx5_core"] == "/data (nfs4 from 10.0.0.5:/export) runs over RDMA"
    assert set(pinned) == {"ib_core", "mlx5_core", "mlx5_ib", "rdma_cm", "rpcrdma"}


def test_nfs_over_tcp_through_a_connectx_port_pins_its_driver(tmp_path):
    fake_modules(tmp_path)
    fake_nic(tmp_path, "ens1f0", "mlx5_core")
    pinned = rdma.pinned_modules(
        rdma.parse_mountinfo(MOUNTINFO.splitlines()[2]),
        rdma.stack_modules(str(tmp_path)),
        sys_root=str(tmp_path),
        server_netdev={"nas": "ens1f0"}.get,
    )
    assert pinned == {"mlx5_core": "/home (nfs4 from nas:/home) reaches its server through ens1f0"}


def test_a_node_that_needs_nothing_of_the_stack_pins_nothing(tmp_path):
    fake_modules(tmp_path)
    fake_nic(tmp_path, "eno1", "igb")
    pinned = rdma.pinned_modules(
        rdma.parse_mountinfo(MOUNTINFO.splitlines()[2]),
        rdma.stack_modules(str(tmp_path)),
        sys_root=str(tmp_path),
        server_netdev={"nas": "eno1"}.get,
        mgmt_netdevs=["eno1"],
    )
    assert pinned == {}
