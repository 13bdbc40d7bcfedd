#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check an RDMA stack install against the node before anything installs."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rdma_stack_check
short_description: Check that an RDMA stack can go on this node, and report what is there
description:
  - Changes nothing, so it runs the same in check mode. Debian family (apt).
  - Reports the running kernel, the OFED version that C(ofed_info -s) prints, the installed version
    of each package and, for C(mofed) and C(doca), the versions the configured repository offers
    and what installing the pinned version would pull in (C(apt-get -s)).
  - Returns the problems found as sentences that start with the role variable they are about
    (OFED present under C(inbox), pinned version missing from the repository, kernel not in the
    supported list, an install apt cannot resolve, DKMS without kernel headers). It does not fail
    on them.
  - Reports the stack's kernel modules that a mounted file system or the management path needs,
    which must never be reloaded at run time.
options:
  provider:
    description: C(inbox), C(mofed) or C(doca).
    type: str
    required: true
    choices: [inbox, mofed, doca]
  packages:
    description: Packages to install; for C(mofed) and C(doca) the first is the pinned meta package.
    type: list
    elements: str
    required: true
  version:
    description: Pinned version of the meta package (C(mofed), C(doca)).
    type: str
    default: ""
  nvidia_peermem:
    description: Whether nvidia-peermem will be loaded; it must then be installed.
    type: bool
    default: false
  supported_kernels:
    description: Regular expressions; the running kernel must match one. Empty allows any.
    type: list
    elements: str
    default: []
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Check the DOCA-OFED install
  rdma_stack_check:
    provider: doca
    packages: [doca-ofed]
    version: 24.10-1.1.4.0
  register: rdma_check
"""

RETURN = r"""
problems:
  description: What stops the install; empty when it can go ahead.
  returned: always
  type: list
kernel:
  description: The running kernel release.
  returned: always
  type: str
ofed_version:
  description: What C(ofed_info -s) reports, or null without OFED.
  returned: always
  type: str
installed:
  description: Installed version of each package, null where absent.
  returned: always
  type: dict
available:
  description: Versions of the meta package in the configured repositories.
  returned: always
  type: list
install_args:
  description: >-
    What to hand apt; for vendor stacks the meta package at its version, with the exact versions
    it depends on.
  returned: always
  type: list
install_set:
  description: Packages and versions the pinned install would put on the node.
  returned: always
  type: dict
needs_install:
  description: Whether a package is missing or not at the pinned version.
  returned: always
  type: bool
pinned_modules:
  description: Stack modules that a mounted file system or the management path needs, each with why.
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.iproute import default_route_netdevs, route_netdev
from ansible.module_utils.hpc_datapath.rdma import (
    dkms_problem,
    exact_dependencies,
    kernel_problem,
    parse_apt_simulation,
    parse_madison,
    parse_mountinfo,
    parse_ofed_info,
    pinned_modules,
    stack_modules,
)


def installed_versions(module, packages):
    versions = {}
    for name in packages:
        rc, out, _err = module.run_command(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", name])
        status, _sep, version = out.partition(" ")
        versions[name] = version if rc == 0 and status == "installed" else None
    return versions


def main():
    module = AnsibleModule(
        argument_spec={
            "provider": {"type": "str", "required": True, "choices": ["inbox", "mofed", "doca"]},
            "packages": {"type": "list", "elements": "str", "required": True},
            "version": {"type": "str", "default": ""},
            "supported_kernels": {"type": "list", "elements": "str", "default": []},
            "nvidia_peermem": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    provider, packages, version = params["provider"], params["packages"], params["version"]
    kernel = os.uname().release
    problems = []
    ofed_info = module.get_bin_path("ofed_info")
    ofed_version = parse_ofed_info(module.run_command([ofed_info, "-s"])[1]) if ofed_info else None
    installed = installed_versions(module, packages)
    available, install_set, install_args = [], {}, list(packages)

    problem = kernel_problem(kernel, params["supported_kernels"])
    if problem:
        problems.append(problem)
    if params["nvidia_peermem"] and module.run_command(["modinfo", "-n", "nvidia-peermem"])[0] != 0:
        problems.append(
            "rdma_stack_nvidia_peermem: the nvidia-peermem module is not installed; it ships with the NVIDIA "
            "GPU driver (470 or newer), which must go on first"
        )
    if provider == "inbox":
        if ofed_version:
            problems.append(
                f"rdma_stack_provider: inbox, but OFED {ofed_version} is installed (ofed_info -s); "
                "set the provider to mofed or doca, or remove it first"
            )
        needs_install = any(v is None for v in installed.values())
    else:
        meta = packages[0]
        needs_install = installed[meta] != version or any(v is None for v in installed.values())
        available = parse_madison(module.run_command(["apt-cache", "madison", meta])[1])
        if not version:
            problems.append(f"rdma_stack_version: {provider} needs a pinned version of {meta}")
        elif version not in available:
            problems.append(
                f"rdma_stack_version: {meta} {version} is not in the configured repository "
                f"(it offers: {', '.join(available) or 'nothing'})"
            )
        else:
            control = module.run_command(["apt-cache", "show", f"{meta}={version}"])[1]
            install_args = [f"{meta}={version}", *exact_dependencies(control.split("\n\n")[0]), *packages[1:]]
        if needs_install and not problems:
            wanted = install_args
            rc, out, err = module.run_command(["apt-get", "-s", "-q", "install", "--no-install-recommends", *wanted])
            if rc != 0:
                errors = [line for line in (out + err).splitlines() if line.startswith(("E:", " "))]
                problems.append(f"rdma_stack_version: apt cannot install {meta} {version}: {' '.join(errors)}")
            install_set = parse_apt_simulation(out)
            headers = installed_versions(module, [f"linux-headers-{kernel}"])[f"linux-headers-{kernel}"]
            problem = dkms_problem(install_set, kernel, headers)
            if problem:
                problems.append(f"rdma_stack_version: {problem}")

    with open("/proc/self/mountinfo") as handle:
        mounts = parse_mountinfo(handle.read())
    pinned = pinned_modules(
        mounts,
        stack_modules(),
        server_netdev=lambda host: route_netdev(module, host),
        mgmt_netdevs=sorted(default_route_netdevs(module)),
    )
    module.exit_json(
        changed=False,
        problems=problems,
        kernel=kernel,
        ofed_version=ofed_version,
        installed=installed,
        available=available,
        install_set=install_set,
        install_args=install_args,
        needs_install=needs_install,
        pinned_modules=pinned,
    )


if __name__ == "__main__":
    main()
