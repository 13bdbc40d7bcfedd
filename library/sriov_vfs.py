#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan and apply the SR-IOV virtual functions of a node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sriov_vfs
short_description: Plan, apply and report the SR-IOV virtual functions of a node
description:
  - C(state=plan) changes nothing. It checks O(pfs) against the node (the physical function found by
    name, PCI address or MAC, the VF count against C(sriov_totalvfs), every VF setting, VF names
    against the kernel's 15 characters, a VF count change of a PF whose VFs are in use) and returns
    the plan, with the PCI address and name of every VF, and the problems found as sentences that
    start with the role variable they are about. It does not fail on them.
  - C(state=apply) brings the VFs to the plan, reading every value first and changing only what
    differs; a count change of a PF whose VFs are in use is refused again here unless opted in.
    Supports check mode. Returns the VFs as the node has them.
  - The same code (module_utils C(hpc_datapath.sriov)) runs at boot as C(hpc-sriov.service).
  - C(state=install) writes that code to O(boot_program), as C(roce_fabric) does for its own.
options:
  state:
    description: What to do.
    type: str
    choices: [plan, apply, install]
    default: plan
  pfs:
    description:
      - The physical functions, each with one of C(name), C(pci_address), C(mac); C(num_vfs);
        optional C(vf_defaults) and C(vfs) (per VF C(index) with C(mac), C(trust), C(spoofchk),
        C(vlan), C(link_state), C(driver)); C(name_prefix); C(allow_count_change_in_use).
    type: list
    elements: dict
    default: []
  firmware:
    description:
      - The role's C(sriov_firmware) (C(device), C(num_vfs)). A PF whose count only the NUM_OF_VFS
        given here allows waits for its firmware (a reboot) instead of being refused.
    type: list
    elements: dict
    default: []
  plan:
    description: For C(state=apply), the plan that C(state=plan) returned.
    type: dict
  boot_program:
    description: For C(state=install), where the boot program goes (the path C(hpc-sriov.service) runs).
    type: path
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Plan the VFs
  sriov_vfs:
    pfs:
      - name: ens1f0np0
        num_vfs: 8
        vf_defaults: {trust: true, spoofchk: false}
        vfs: [{index: 7, driver: vfio-pci}]
  register: sriov_plan

- name: Apply them
  sriov_vfs:
    state: apply
    plan: "{{ sriov_plan.plan }}"
"""

RETURN = r"""
problems:
  description: What stops the plan on this node; empty when it can be applied.
  returned: state=plan
  type: list
plan:
  description: Per PF its name, PCI address, VF count and every VF with PCI address, name and settings.
  returned: state=plan
  type: dict
vfio_needed:
  description: Whether a VF of the plan is bound to vfio-pci (the IOMMU must be on).
  returned: state=plan
  type: bool
changes:
  description: What was changed (in check mode, would be), each with the command or sysfs file.
  returned: state=apply
  type: list
pending:
  description: What VFs in use keep until they are free, and PFs that wait for their firmware, in sentences.
  returned: state=apply
  type: list
status:
  description: Per PF the VF count and each VF's PCI address, netdev, driver, MAC, trust, spoofchk, VLAN, link state.
  returned: state=apply
  type: dict
boot_program:
  description: The path of the boot program.
  returned: state=install
  type: str
sha256:
  description: SHA-256 of the boot program as installed (in check mode, as it would be).
  returned: state=install
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath import sriov as sriov_utils
from ansible.module_utils.hpc_datapath.boot_program import install as install_boot_program


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["plan", "apply", "install"], "default": "plan"},
            "pfs": {"type": "list", "elements": "dict", "default": []},
            "firmware": {"type": "list", "elements": "dict", "default": []},
            "plan": {"type": "dict"},
            "boot_program": {"type": "path"},
        },
        required_if=[("state", "apply", ["plan"]), ("state", "install", ["boot_program"])],
        supports_check_mode=True,
    )
    state = module.params["state"]
    if state == "install":
        install_boot_program(module, sriov_utils, "sriov_vfs", module.params["boot_program"])
    try:
        facts = sriov_utils.netdev_facts(module.run_command)
    except sriov_utils.ApplyError as error:
        module.fail_json(msg=f"sriov_vfs: {error}")
    if state == "plan":
        plan, problems = sriov_utils.plan(module.params["pfs"], facts, firmware=module.params["firmware"])
        vfio = any(vf["driver"] == "vfio-pci" for pf in plan["pfs"] for vf in pf["vfs"])
        module.exit_json(changed=False, plan=plan, problems=problems, vfio_needed=vfio)
    runner = sriov_utils.Runner(module.run_command, check_mode=module.check_mode)
    try:
        changes = sriov_utils.apply_plan(module.params["plan"], runner, facts)
        status = sriov_utils.status(module.params["plan"], runner)
    except sriov_utils.ApplyError as error:
        module.fail_json(msg=f"sriov_vfs: {error}", changes=runner.changes)
    module.exit_json(changed=bool(changes), changes=changes, pending=runner.pending, status=status)


if __name__ == "__main__":
    main()
