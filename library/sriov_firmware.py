#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SR-IOV settings of ConnectX firmware (SRIOV_EN, NUM_OF_VFS), through mlxconfig."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sriov_firmware
short_description: Bring the SR-IOV settings of ConnectX firmware to a number of VFs with mlxconfig
description:
  - For each device, reads C(mlxconfig -d DEVICE -e q SRIOV_EN NUM_OF_VFS) and compares its Next
    Boot column with what is wanted; a value already set for the next boot counts as done.
  - Only where it differs, runs C(mlxconfig -d DEVICE -y set SRIOV_EN=1 NUM_OF_VFS=N), then reads
    the device again and fails unless Next Boot now holds the values.
  - I(num_vfs=0) means no VFs. A device whose Next Boot has SR-IOV off, or a count of 0, is left
    alone; otherwise it gets C(set SRIOV_EN=0), which takes the SR-IOV capability off the PF and
    leaves C(NUM_OF_VFS) as it is (the firmware ignores it while SR-IOV is off).
  - >-
    Firmware applies Next Boot only after a firmware reset (C(mlxfwreset)) or a power cycle; some
    cards need the power cycle. The module never resets: it returns the devices whose Next Boot
    differs from Current in RV(reboot_required).
  - Output it cannot read exactly (an error line, a missing parameter, a value of another form, a
    table without the Default, Current and Next Boot columns) fails the run with the text seen.
  - Supports check mode (queries only) and diff.
  - C(mstconfig) of mstflint takes the same arguments; point O(mlxconfig) at it to use it.
options:
  devices:
    description:
      - The physical functions, each C(device) (what C(mlxconfig -d) takes, an MST device such as
        C(/dev/mst/mt4125_pciconf0) or a PCI address such as C(0000:3b:00.0)) and C(num_vfs).
      - The sriov role's variable C(sriov_firmware); messages about an entry start with
        C(sriov_firmware[N]) and its device.
    type: list
    elements: dict
    default: []
  max_vfs:
    description: The most VFs I(num_vfs) may ask for; the firmware's own limit may be lower.
    type: int
    default: 127
  mlxconfig:
    description: Path of C(mlxconfig); empty looks it up on PATH. Needed only when O(devices) lists one.
    type: path
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Eight VFs in the firmware of both ports
  sriov_firmware:
    devices:
      - {device: /dev/mst/mt4125_pciconf0, num_vfs: 8}
      - {device: "0000:3b:00.1", num_vfs: 8}
  register: sriov_fw

- name: Say which devices wait for a firmware reset or power cycle
  ansible.builtin.debug:
    msg: "{{ sriov_fw.reboot_required }}"
  when: sriov_fw.reboot_required | length > 0
"""

RETURN = r"""
devices:
  description: >-
    Per device, as listed: C(device), C(num_vfs), C(default), C(current) and C(next_boot) (each
    C({SRIOV_EN, NUM_OF_VFS}), next_boot after this run, or in check mode as it would be), C(wanted)
    (what a set writes) and C(changed).
  returned: always
  type: list
  elements: dict
reboot_required:
  description: >-
    The devices whose Next Boot differs from Current after this run; a firmware reset or power
    cycle applies it.
  returned: always
  type: list
  elements: str
commands:
  description: The set commands run (in check mode, that would run), each as its argument list.
  returned: always
  type: list
  elements: list
warnings_seen:
  description: The -W- and -I- lines mlxconfig printed with its queries.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.mlxconfig import (
    VARIABLE,
    ParseError,
    check_devices,
    column,
    parse_query,
    pending,
    query_argv,
    render,
    satisfied,
    set_argv,
    wanted,
)


def _seen(out, err):
    return "\n".join(part for part in (out.strip(), err.strip()) if part)


def query(module, mlxconfig, label, device, warnings):
    """The device's SRIOV_EN and NUM_OF_VFS in each column, or the run fails with what mlxconfig printed."""
    argv = query_argv(mlxconfig, device)
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg=f"{label}: {' '.join(argv[1:])} failed (exit {rc}): {_seen(out, err)}", rc=rc)
    try:
        values, found = parse_query(out)
    except ParseError as error:
        asked = " ".join(argv[1:])
        module.fail_json(
            msg=f"{label}: the answer to mlxconfig {asked} cannot be read: {error}. It said: {_seen(out, err)}"
        )
    warnings += [f"{device}: {line}" for line in found]
    return values


def find_mlxconfig(module, count):
    given = module.params["mlxconfig"]
    if given:
        found = given if os.path.isfile(given) and os.access(given, os.X_OK) else None
    else:
        found = module.get_bin_path("mlxconfig")
    if not found:
        module.fail_json(
            msg=(
                f"{VARIABLE}: {count} ConnectX device(s) listed, but {given or 'mlxconfig'} is not installed: "
                "the firmware's SR-IOV settings need mlxconfig from NVIDIA MFT (or mstconfig of mstflint, given "
                "as the path of mlxconfig)"
            )
        )
    return found


def carry_out(module, mlxconfig, step, result):
    """Run one device's set (none in check mode) and read it back; its Next Boot as it is (or would be) now."""
    label, entry, values, argv = step
    device, num_vfs = entry["device"], entry["num_vfs"]
    if module.check_mode:
        for name, value in wanted(num_vfs).items():
            values[name]["next_boot"] = value
        return values
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(
            msg=f"{label}: {' '.join(argv[1:])} failed (exit {rc}): {_seen(out, err)}",
            commands=result["commands"],
            rc=rc,
        )
    values = query(module, mlxconfig, label, device, result["warnings_seen"])
    if not satisfied(column(values, "next_boot"), num_vfs):
        module.fail_json(
            msg=(
                f"{label}: after {' '.join(argv[1:])} the firmware's Next Boot holds "
                f"{render(device, column(values, 'next_boot')).strip()}, not {num_vfs} VFs"
            ),
            commands=result["commands"],
        )
    return values


def main():
    module = AnsibleModule(
        argument_spec={
            "devices": {"type": "list", "elements": "dict", "default": []},
            "max_vfs": {"type": "int", "default": 127},
            "mlxconfig": {"type": "path"},
        },
        supports_check_mode=True,
    )
    devices, max_vfs = module.params["devices"], module.params["max_vfs"]
    if max_vfs < 0:
        module.fail_json(msg=f"{VARIABLE}: max_vfs {max_vfs} is negative")
    problems = check_devices(devices, max_vfs)
    if problems:
        module.fail_json(msg="; ".join(problems), problems=problems)
    result = {"changed": False, "devices": [], "reboot_required": [], "commands": [], "warnings_seen": []}
    if not devices:
        module.exit_json(**result)
    mlxconfig = find_mlxconfig(module, len(devices))

    # Plan: read every device first, so that nothing is set when any of them cannot be read.
    plan = []
    for index, entry in enumerate(devices):
        device, num_vfs = entry["device"], entry["num_vfs"]
        label = f"{VARIABLE}[{index}] ({device})"
        values = query(module, mlxconfig, label, device, result["warnings_seen"])
        argv = None if satisfied(column(values, "next_boot"), num_vfs) else set_argv(mlxconfig, device, num_vfs)
        plan.append((label, entry, values, argv))

    diff = {"before": "", "after": ""}
    for step in plan:
        _label, entry, values, argv = step
        device = entry["device"]
        before = column(values, "next_boot")
        if argv:
            result["commands"].append(argv)
            values = carry_out(module, mlxconfig, step, result)
        after = column(values, "next_boot")
        diff["before"] += render(device, before)
        diff["after"] += render(device, after)
        if pending(values):
            result["reboot_required"].append(device)
        result["devices"].append(
            {
                "device": device,
                "num_vfs": entry["num_vfs"],
                "default": column(values, "default"),
                "current": column(values, "current"),
                "next_boot": after,
                "wanted": wanted(entry["num_vfs"]),
                "changed": argv is not None,
            }
        )
    result["changed"] = bool(result["commands"])
    for line in result["warnings_seen"]:
        module.warn(f"mlxconfig: {line}")
    if module._diff and result["changed"]:
        result["diff"] = dict(diff, before_header="firmware Next Boot (mlxconfig)", after_header="firmware Next Boot")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
