# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The RDMA stack of a node: installed OFED, what an install would do, which modules must stay.

Pure readers and parsers with an injectable sysfs root, so that unit tests run against a fake
tree. Standard library and sysfs.py only, Python 3.8 or newer: it runs on the targets.
"""

from __future__ import annotations

import os
import re

from ansible.module_utils.hpc_datapath.sysfs import SYS, link_name, listdir, read

# The modules at the bottom of an RDMA stack: everything that holds them goes when they reload.
STACK_ROOTS = ("ib_core", "mlx5_core", "mlx4_core")
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "ceph", "lustre", "beegfs", "gpfs", "glusterfs", "fuse.juicefs"}


def parse_ofed_info(text):
    """The version `ofed_info -s` prints: 'MLNX_OFED_LINUX-5.8-1.1.2.1:' or 'OFED-internal-24.10-1.1.4:'."""
    found = re.search(r"(?:MLNX_OFED_LINUX|OFED-internal|DOCA[\w-]*?)-(\d[\w.-]*?):?\s*$", text.strip())
    return found.group(1) if found else None


def parse_apt_simulation(text):
    """{package: version} that `apt-get -s install` would install or upgrade ('Inst name [old] (new ...')."""
    return {
        match.group(1): match.group(2)
        for match in re.finditer(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+)", text, re.MULTILINE)
    }


def parse_madison(text):
    """Versions of a package that `apt-cache madison` lists: ' pkg | 1.2-3 | file:/repo ./ Packages'."""
    return [fields[1].strip() for fields in (line.split("|") for line in text.splitlines()) if len(fields) >= 3]


def exact_dependencies(control):
    """`name=version` for each `Depends: name (= version)` of a package's control text.

    apt resolves a dependency to the newest candidate and then fails on an exact version from an
    older release: a meta package pinned to an older release must bring its exact versions along.
    """
    found = re.search(r"^Depends:(.*)$", control, re.MULTILINE)
    if not found:
        return []
    return [
        f"{match.group(1)}={match.group(2)}"
        for match in re.finditer(r"(?:^|,)\s*([\w.+-]+)(?::\w+)?\s*\(=\s*([^)\s]+)\)", found.group(1))
    ]


def dkms_problem(install_set, kernel, installed_headers):
    """Why DKMS could not build for the running kernel, or None."""
    dkms = sorted(name for name in install_set if name.endswith("-dkms"))
    headers = f"linux-headers-{kernel}"
    if dkms and not installed_headers and headers not in install_set:
        return (
            f"{', '.join(dkms)} would build the driver with DKMS for kernel {kernel}, but {headers} is neither "
            "installed nor pulled in; put it in the mirror or install it first"
        )
    return None


def kernel_problem(kernel, supported):
    if supported and not any(re.search(pattern, kernel) for pattern in supported):
        return f"rdma_stack_supported_kernels: the running kernel {kernel} matches none of {supported}"
    return None


def _module_of(path):
    """The kernel module behind a sysfs device or driver directory's `driver/module` link, or None."""
    return link_name(os.path.join(path, "driver", "module"))


def stack_modules(sys_root=SYS, roots=STACK_ROOTS):
    """The loaded modules that go when the stack reloads: the roots and everything holding them."""
    found, todo = set(), [root for root in roots if os.path.isdir(f"{sys_root}/module/{root}")]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += listdir(f"{sys_root}/module/{name}/holders")
    return found


def block_modules(major_minor, sys_root=SYS):
    """Driver modules under a block device: its ancestors' drivers, md/dm members, NVMe-oF transports."""
    modules, todo, seen = set(), [f"{sys_root}/dev/block/{major_minor}"], set()
    while todo:
        block = os.path.realpath(todo.pop())
        if block in seen:
            continue
        seen.add(block)
        todo += [os.path.join(block, "slaves", member) for member in listdir(os.path.join(block, "slaves"))]
        parent = os.path.dirname(block)
        if os.path.isdir(os.path.join(parent, "slaves")):  # a partition: its disk's members too
            todo.append(parent)
        path = os.path.realpath(os.path.join(block, "device"))
        while path.startswith(sys_root + "/devices"):
            module = _module_of(path)
            if module:
                modules.add(module)
            transport = read(os.path.join(path, "transport"))  # an NVMe-oF controller
            if transport in ("rdma", "tcp", "fc"):
                modules.add(f"nvme_{transport}")
            path = os.path.dirname(path)
    return modules


def parse_mountinfo(text):
    """[{mountpoint, fstype, source, options, major_minor}] from /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        left, _sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or len(tail) < 3:
            continue
        mounts.append(
            {
                "mountpoint": fields[4],
                "major_minor": fields[2],
                "fstype": tail[0],
                "source": tail[1],
                "options": f"{fields[5]},{tail[2]}",
            }
        )
    return mounts


def netdev_modules(netdev, sys_root=SYS):
    module = _module_of(f"{sys_root}/class/net/{netdev}/device")
    return {module} if module else set()


def pinned_modules(mounts, stack, sys_root=SYS, server_netdev=None, mgmt_netdevs=()):
    """{module: why} for the stack modules that a mounted file system or the management path needs.

    server_netdev(host) names the netdev that reaches a network file system's server.
    """
    pinned = {}

    def note(modules, why):
        for module in sorted(set(modules) & stack):
            pinned.setdefault(module, why)

    for mount in mounts:
        where = f"{mount['mountpoint']} ({mount['fstype']} from {mount['source']})"
        if mount["fstype"] in NETWORK_FILESYSTEMS or mount["fstype"].startswith("nfs"):
            if re.search(r"(^|,)proto=rdma(,|$)", mount["options"]) or re.search(r"(^|,)rdma(,|$)", mount["options"]):
                note(stack, f"{where} runs over RDMA")
            server = mount["source"].rsplit(":", 1)[0] if ":" in mount["source"] else None
            netdev = server_netdev(server) if server and server_netdev else None
            if netdev:
                note(netdev_modules(netdev, sys_root), f"{where} reaches its server through {netdev}")
        elif mount["major_minor"].split(":")[0] != "0":
            note(block_modules(mount["major_minor"], sys_root), f"{where} sits on it")
    for netdev in mgmt_netdevs:
        note(netdev_modules(netdev, sys_root), f"{netdev} carries the default route (the management path)")
    return pinned
