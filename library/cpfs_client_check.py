#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check the pinned CPFS POSIX client against the configured repository before anything installs."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cpfs_client_check
short_description: Check that the pinned CPFS POSIX client version is in the configured repository
description:
  - Changes nothing, so it runs the same in check mode. Debian family (apt).
  - Reports the installed version of the client package (C(dpkg-query)), the versions the configured
    repositories offer (C(apt-cache madison)), whether the pinned version must be installed, and which of
    the client's kernel modules are loaded now (C(/sys/module)).
  - Returns the problems as sentences that start with C(shared_mounts_cpfs_client_version) - no version
    pinned, or one the repository lacks, with the versions it has. It does not fail on them.
options:
  package:
    description: The client package.
    type: str
    required: true
  version:
    description: The pinned version, as apt lists it.
    type: str
    default: ""
  modules:
    description: The client's kernel modules, reported when loaded.
    type: list
    elements: str
    default: []
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Check the CPFS client install
  cpfs_client_check:
    package: cpfs-client
    version: 1.2.1
    modules: [lustre, lnet]
  register: cpfs_check
"""

RETURN = r"""
problems:
  description: What stops the install; empty when it can go ahead.
  returned: always
  type: list
  elements: str
installed:
  description: The installed version of the package, or null.
  returned: always
  type: str
available:
  description: Versions of the package in the configured repositories, newest first.
  returned: always
  type: list
  elements: str
needs_install:
  description: Whether the package is missing or not at the pinned version.
  returned: always
  type: bool
install_args:
  description: What to hand apt (C(package=version)); empty when the version cannot install.
  returned: always
  type: list
  elements: str
loaded_modules:
  description: The client's kernel modules that are loaded now.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.cpfs import version_problems
from ansible.module_utils.hpc_datapath.rdma import parse_madison


def main():
    module = AnsibleModule(
        argument_spec={
            "package": {"type": "str", "required": True},
            "version": {"type": "str", "default": ""},
            "modules": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    package, version = module.params["package"], module.params["version"]
    rc, out, _err = module.run_command(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package])
    status, _sep, installed = out.partition(" ")
    installed = installed if rc == 0 and status == "installed" else None
    available = parse_madison(module.run_command(["apt-cache", "madison", package])[1])
    problems = version_problems(package, version, available)
    module.exit_json(
        changed=False,
        problems=problems,
        installed=installed,
        available=available,
        needs_install=installed != version,
        install_args=[] if problems else [f"{package}={version}"],
        loaded_modules=[name for name in module.params["modules"] if os.path.isdir(f"/sys/module/{name}")],
    )


if __name__ == "__main__":
    main()
