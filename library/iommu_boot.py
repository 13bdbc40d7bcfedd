#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The IOMMU state a pool wants, against the running kernel and the boot loader's configuration."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: iommu_boot
short_description: Check the IOMMU state a pool wants against the running kernel, and put it in the boot loader
description:
  - Reads the running kernel's IOMMU state (RV(effective)) from C(/sys/class/iommu) (a unit there
    means an IOMMU is on) and the IOMMU groups' default domain type (all C(identity) is C(pt)), with
    C(/proc/cmdline) where the groups do not tell.
  - >-
    I(wanted=on) is C(intel_iommu=on) on Intel CPUs and no argument on AMD (the kernel knows no
    C(amd_iommu=on): the AMD IOMMU comes up by itself wherever the firmware describes one);
    I(wanted=pt) adds C(iommu=pt); I(wanted=off) is C(intel_iommu=off) or C(amd_iommu=off). C(off) is
    checked against the kernel, not against the absence of arguments, since some kernels turn the
    Intel IOMMU on by default (C(CONFIG_INTEL_IOMMU_DEFAULT_ON)); Intel's state is therefore always
    written explicitly. The CPU vendor comes from C(/proc/cpuinfo); other CPUs take C(unmanaged) only.
  - Refuses, with a sentence that starts with C(sriov_iommu), C(on) in a GPUDirect Storage pool and
    C(pt) there unless O(dgx); and C(off), or C(unmanaged) on a kernel without IOMMU, where O(vfio_needed).
  - With O(manage_boot), brings the boot loader's configuration to the wanted state, changing it only
    where it asks for another one. grubby where installed (RHEL family; C(grubby --info=ALL) first,
    then C(--update-kernel=ALL --remove-args) and C(--args)). Else GRUB with C(/etc/default/grub)
    (Debian, Ubuntu) through the drop-in C(/etc/default/grub.d/90-hpc-iommu.cfg), which appends to
    C(GRUB_CMDLINE_LINUX), followed by C(update-grub) (or C(grub-mkconfig)/C(grub2-mkconfig)) only when
    the drop-in changed; the command line GRUB will build is worked out by sourcing its files as
    C(grub-mkconfig) does, and a setting of another file the drop-in cannot override fails the run,
    naming it. With no boot loader configuration (a VM booted with a direct kernel, as the lab's),
    a needed change fails the run.
  - Without O(manage_boot), the boot loader is not read; a running kernel that differs is reported
    (RV(matches) false, RV(message)), for the role to decide.
  - Never reboots. RV(reboot_required) says the boot configuration now asks for the wanted state
    and the running kernel was booted without it.
  - Supports check mode and diff.
options:
  wanted:
    description: The pool's IOMMU state (the role's C(sriov_iommu)); C(unmanaged) changes nothing.
    type: str
    choices: [unmanaged, "off", "on", pt]
    default: unmanaged
  manage_boot:
    description: Whether the boot loader's configuration may be changed (the role's C(sriov_iommu_manage_boot)).
    type: bool
    default: false
  gds_pool:
    description: Whether the pool is marked for GPUDirect Storage.
    type: bool
    default: false
  dgx:
    description: Whether the node is an NVIDIA DGX system, the only one NVIDIA supports C(iommu=pt) for GDS on.
    type: bool
    default: false
  vfio_needed:
    description: Whether a VF of this node is to be bound to vfio-pci, which needs the IOMMU on or pt.
    type: bool
    default: false
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Pass-through IOMMU for VFs given to vfio-pci
  iommu_boot:
    wanted: pt
    manage_boot: true
    vfio_needed: true
  register: sriov_iommu_state

- name: Say that a reboot is due
  ansible.builtin.debug:
    msg: "{{ sriov_iommu_state.message }}"
  when: sriov_iommu_state.reboot_required
"""

RETURN = r"""
effective:
  description: The IOMMU state the kernel runs now, C(on), C(pt) or C(off).
  returned: always
  type: str
matches:
  description: Whether the running kernel has the wanted state (always true for C(unmanaged)).
  returned: always
  type: bool
boot_args_wanted:
  description: The kernel arguments of the wanted state on this CPU (empty for C(unmanaged), and for C(on) on AMD).
  returned: always
  type: list
  elements: str
changed:
  description: Whether the boot loader's configuration changed (in check mode, would change).
  returned: always
  type: bool
reboot_required:
  description: Whether the boot configuration asks for the wanted state and the running kernel was booted without it.
  returned: always
  type: bool
message:
  description: A sentence on the state found and what was done or is left to do.
  returned: always
  type: str
boot_loader:
  description: C(grubby), C(grub), or null where none was found or O(manage_boot) is false.
  returned: always
  type: str
commands:
  description: The boot loader commands run (in check mode, that would run), each as its argument list.
  returned: always
  type: list
  elements: list
cpu_vendor:
  description: The CPU's vendor_id from /proc/cpuinfo, or null.
  returned: always
  type: str
"""

import glob
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.iommu import (
    BOOT_ARGS,
    MANAGED,
    WANTED,
    asked_state,
    cpu_vendor,
    effective_state,
    refusal,
    relevant,
    split_cmdline,
    unusual,
    without_unwanted,
)

PROC = "/proc"
SYS = "/sys"
GRUB_DEFAULT = "/etc/default/grub"
GRUB_DROPIN_DIR = "/etc/default/grub.d"
DROPIN_NAME = "90-hpc-iommu.cfg"
GRUB_CFG = {"grub-mkconfig": "/boot/grub/grub.cfg", "grub2-mkconfig": "/boot/grub2/grub.cfg"}
# Sources the files as grub-mkconfig does (/etc/default/grub, then grub.d/*.cfg in order) and prints
# what a normal menu entry's kernel command line is made of (10_linux: LINUX, then LINUX_DEFAULT).
GRUB_EVAL = (
    "unset GRUB_CMDLINE_LINUX GRUB_CMDLINE_LINUX_DEFAULT; "
    'for f in "$@"; do if [ -e "$f" ]; then . "$f"; fi; done; '
    'printf \'%s\\0%s\' "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"'
)


class BootError(Exception):
    """The boot loader cannot be read or brought to the wanted state; the message says why and what to do."""


def find_tool(module, name):
    return module.get_bin_path(name)


def _said(rc, out, err):
    return f"exit {rc}: " + " ".join(part.strip() for part in (out, err) if part.strip())


def shown(args):
    """The arguments that bear on the IOMMU, for messages."""
    return " ".join(relevant(args)) or "no IOMMU arguments"


class Grubby:
    """RHEL family: every kernel entry through grubby."""

    name = "grubby"

    def __init__(self, module, path):
        self.module, self.path = module, path

    def entries(self):
        """[(kernel, [args])] from grubby --info=ALL; fails on anything it cannot read."""
        argv = [self.path, "--info=ALL"]
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            raise BootError(f"sriov_iommu_manage_boot: grubby --info=ALL failed ({_said(rc, out, err)})")
        entries, current = [], None
        for line in out.splitlines():
            key, sep, value = line.strip().partition("=")
            if not line.strip():
                continue
            if line.strip() == "non linux entry" and current is not None:
                current["skip"] = True
                continue
            if not sep or (current is None and key != "index"):
                raise BootError(
                    f"sriov_iommu_manage_boot: grubby --info=ALL printed {line.strip()!r}, "
                    "which is not key=value of an entry"
                )
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if key == "index":
                current = {}
                entries.append(current)
            elif key in ("kernel", "args"):
                current[key] = value
        entries = [entry for entry in entries if not entry.get("skip")]
        if not entries or any("kernel" not in entry or "args" not in entry for entry in entries):
            raise BootError(
                f"sriov_iommu_manage_boot: grubby --info=ALL shows no kernel entry with its args: {out.strip()!r}"
            )
        return [(entry["kernel"], split_cmdline(entry["args"])) for entry in entries]

    def plan(self, wanted, vendor):
        entries = self.entries()
        text = "".join(f"{kernel}: {' '.join(args)}\n" for kernel, args in entries)
        if all(asked_state(args, vendor) == wanted for _kernel, args in entries):
            return {"commands": [], "before": text, "after": text}
        for kernel, args in entries:
            if unusual(args):
                raise BootError(
                    f"sriov_iommu: {wanted}, but kernel {kernel} has {' '.join(unusual(args))}, which this module "
                    "does not edit (grubby --args would replace it whole, options and all): change it by hand "
                    "with grubby --update-kernel"
                )
        keep = BOOT_ARGS[vendor][wanted]
        present = {arg for _kernel, args in entries for arg in args}
        remove = [arg for arg in MANAGED if arg in present and arg not in keep]
        predicted = [(kernel, without_unwanted(args, wanted, vendor)) for kernel, args in entries]
        for kernel, args in predicted:
            state = asked_state(args, vendor)
            if state != wanted:
                raise BootError(
                    f"sriov_iommu: {wanted}, but kernel {kernel} would still ask for the IOMMU {state} after "
                    f"the change ({shown(args)}): those arguments are not of a form this module edits; "
                    "change them by hand with grubby --update-kernel"
                )
        commands = []
        if remove:
            commands.append([self.path, "--update-kernel=ALL", f"--remove-args={' '.join(remove)}"])
        if any(arg not in args for _kernel, args in entries for arg in keep):
            commands.append([self.path, "--update-kernel=ALL", f"--args={' '.join(keep)}"])
        after = "".join(f"{kernel}: {' '.join(args)}\n" for kernel, args in predicted)
        return {"commands": commands, "before": text, "after": after}

    def apply(self, plan, wanted, vendor):
        for argv in plan["commands"]:
            rc, out, err = self.module.run_command(argv)
            if rc != 0:
                raise BootError(f"sriov_iommu_manage_boot: {' '.join(argv)} failed ({_said(rc, out, err)})")
        for kernel, args in self.entries():
            if asked_state(args, vendor) != wanted:
                raise BootError(
                    f"sriov_iommu: after {'; '.join(' '.join(argv) for argv in plan['commands'])}, kernel {kernel} "
                    f"still asks for the IOMMU {asked_state(args, vendor)} ({shown(args)})"
                )


class GrubDropIn:
    """Debian and Ubuntu: a drop-in of /etc/default/grub.d, then update-grub."""

    name = "grub"

    def __init__(self, module, updater):
        self.module, self.updater = module, updater
        self.path = os.path.join(GRUB_DROPIN_DIR, DROPIN_NAME)

    def current(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    @staticmethod
    def render(args):
        return (
            "# Managed by hpc-datapath (iommu_boot, the sriov role's sriov_iommu): the IOMMU state of this pool.\n"
            "# update-grub reads it after /etc/default/grub; it takes effect at the next boot.\n"
            f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {" ".join(args)}"\n'
        )

    def command_line(self, text):
        """The arguments of a normal GRUB entry with the drop-in holding text (None: without the drop-in)."""
        files = sorted(set(glob.glob(os.path.join(GRUB_DROPIN_DIR, "*.cfg"))) | {self.path})
        temporary = None
        try:
            if text is not None:
                handle, temporary = tempfile.mkstemp(prefix="hpc-iommu-", suffix=".cfg")
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    out.write(text)
            files = [temporary if name == self.path else name for name in files if name != self.path or temporary]
            rc, out, err = self.module.run_command(["/bin/sh", "-c", GRUB_EVAL, "sh", GRUB_DEFAULT, *files])
        finally:
            if temporary:
                os.unlink(temporary)
        if rc != 0 or out.count("\0") != 1:
            raise BootError(
                f"sriov_iommu_manage_boot: reading GRUB's kernel command line from {GRUB_DEFAULT} and "
                f"{GRUB_DROPIN_DIR}/*.cfg failed ({_said(rc, out.replace(chr(0), ' '), err)})"
            )
        linux, default = out.split("\0")
        return split_cmdline(f"{linux} {default}")

    def plan(self, wanted, vendor):
        current = self.current()
        line = self.command_line(current)
        if asked_state(line, vendor) == wanted:
            return {"commands": [], "before": current or "", "after": current or ""}
        args = list(BOOT_ARGS[vendor][wanted])
        text = self.render(args) if args else None
        line = self.command_line(text)
        if wanted == "on" and asked_state(line, vendor) == "pt":
            args.append("iommu=nopt")  # a pass-through switch earlier on the line
            text = self.render(args)
            line = self.command_line(text)
        state = asked_state(line, vendor)
        if state != wanted:
            raise BootError(
                f"sriov_iommu: {wanted}, but GRUB's kernel command line would still ask for the IOMMU {state} "
                f"with {self.path} in place ({shown(line)}): {GRUB_DEFAULT} (GRUB_CMDLINE_LINUX_DEFAULT comes "
                f"after the drop-in) or a later file of {GRUB_DROPIN_DIR} sets what the drop-in cannot override; "
                "remove it there by hand"
            )
        if text == current:
            return {"commands": [], "before": current or "", "after": current or ""}
        return {"commands": [self.updater], "write": text, "before": current or "", "after": text or ""}

    def apply(self, plan, wanted, vendor):
        if not plan["commands"]:
            return
        previous = self.current()
        self._put(plan["write"])
        rc, out, err = self.module.run_command(self.updater)
        if rc != 0:
            self._put(previous)
            raise BootError(
                f"sriov_iommu_manage_boot: {' '.join(self.updater)} failed ({_said(rc, out, err)}); "
                f"{self.path} is back as it was"
            )

    def _put(self, text):
        if text is None:
            if os.path.exists(self.path):
                os.unlink(self.path)
            return
        os.makedirs(GRUB_DROPIN_DIR, mode=0o755, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=GRUB_DROPIN_DIR, prefix=f".{DROPIN_NAME}.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                os.fchmod(out.fileno(), 0o644)
            os.replace(temporary, self.path)
        except BaseException:
            os.unlink(temporary)
            raise


def boot_loader(module):
    """The boot loader configuration of this node, or None."""
    grubby = find_tool(module, "grubby")
    if grubby:
        return Grubby(module, grubby)
    if os.path.isfile(GRUB_DEFAULT):
        for tool in ("update-grub", "grub-mkconfig", "grub2-mkconfig"):
            path = find_tool(module, tool)
            if path:
                return GrubDropIn(module, [path] if tool == "update-grub" else [path, "-o", GRUB_CFG[tool]])
    return None


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def leave_boot_alone(module, result, status, hint):
    """manage_boot false: report, never read the boot loader."""
    if result["matches"]:
        message = f"{status}; sriov_iommu_manage_boot is false, so the boot loader was not read"
    else:
        message = (
            f"{status}{hint['firmware']}; sriov_iommu_manage_boot is false, so the boot loader is left alone: boot "
            f"with {hint['args']} (or set sriov_iommu_manage_boot: true to let the role write it)"
        )
    module.exit_json(message=message, **result)


def no_boot_loader(module, result, status, hint):
    """manage_boot true on a node without a boot loader configuration this module knows."""
    known = f"neither grubby nor {GRUB_DEFAULT} with update-grub or grub-mkconfig"
    if result["matches"] or hint["firmware"]:
        module.exit_json(
            message=(
                f"{status}{hint['firmware']}; this node has no boot loader configuration this module knows "
                f"({known}): its kernel command line is set elsewhere, and kept as it is"
            ),
            **result,
        )
    module.fail_json(
        msg=(
            f"sriov_iommu_manage_boot: true, and the kernel runs with the IOMMU {result['effective']} where "
            f"sriov_iommu wants {hint['wanted']}, but this node has no boot loader configuration this module knows "
            f"({known}): it boots its kernel some other way (a VM booted with a direct kernel, as the lab's); "
            f"give the kernel {hint['args']} there, or set sriov_iommu_manage_boot: false"
        ),
        **result,
    )


def manage(module, loader, result, status, hint):
    """Plan the boot loader change, carry it out unless in check mode, and report."""
    wanted, vendor = hint["wanted"], hint["vendor"]
    result["boot_loader"] = loader.name
    try:
        plan = loader.plan(wanted, vendor)
        if plan["commands"] and not module.check_mode:
            loader.apply(plan, wanted, vendor)
    except BootError as error:
        module.fail_json(msg=str(error), **result)
    result["commands"] = plan["commands"]
    result["changed"] = bool(plan["commands"])
    # The boot configuration asks for wanted now; the running kernel neither has it nor was booted asking for it.
    result["reboot_required"] = wanted not in (result["effective"], hint["running_asks"])
    now = ", now" if result["changed"] else ""
    if result["reboot_required"]:
        message = f"{status}; the boot configuration ({loader.name}) asks for {wanted}{now}: a reboot applies it"
    else:
        message = f"{status}{hint['firmware']}; the boot configuration ({loader.name}) asks for {wanted}{now}"
    if module._diff and result["changed"]:
        header = loader.path if loader.name == "grub" else "grubby --info=ALL (kernel: args)"
        result["diff"] = {
            "before_header": header,
            "after_header": header,
            "before": plan["before"],
            "after": plan["after"],
        }
    module.exit_json(message=message, **result)


def main():
    module = AnsibleModule(
        argument_spec={
            "wanted": {"type": "str", "choices": list(WANTED), "default": "unmanaged"},
            "manage_boot": {"type": "bool", "default": False},
            "gds_pool": {"type": "bool", "default": False},
            "dgx": {"type": "bool", "default": False},
            "vfio_needed": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    wanted = params["wanted"]
    running = split_cmdline(_read(os.path.join(PROC, "cmdline")))
    vendor, vendor_id = cpu_vendor(_read(os.path.join(PROC, "cpuinfo")))
    effective = effective_state(SYS, running, vendor)
    result = {
        "changed": False,
        "effective": effective,
        "matches": True,
        "boot_args_wanted": [],
        "reboot_required": False,
        "boot_loader": None,
        "commands": [],
        "cpu_vendor": vendor_id,
    }
    problem = refusal(wanted, effective, params["gds_pool"], params["dgx"], params["vfio_needed"])
    if problem:
        module.fail_json(msg=problem, **result)
    if wanted == "unmanaged":
        message = f"sriov_iommu: unmanaged; the kernel runs with the IOMMU {effective}"
        if params["gds_pool"] and (effective == "on" or (effective == "pt" and not params["dgx"])):
            message += ", which GPUDirect Storage in this pool does not support (off, or pt on DGX systems)"
            module.warn(message)
        module.exit_json(message=message, **result)
    if vendor is None:
        module.fail_json(
            msg=(
                f"sriov_iommu: {wanted} needs the kernel arguments of an Intel or AMD CPU, and this node's CPU is "
                f"{vendor_id or 'not an x86 one (no vendor_id in /proc/cpuinfo)'}; set sriov_iommu: unmanaged "
                "and set the IOMMU by hand"
            ),
            **result,
        )
    result.update(boot_args_wanted=BOOT_ARGS[vendor][wanted], matches=effective == wanted)
    hint = {
        "wanted": wanted,
        "vendor": vendor,
        "running_asks": asked_state(running, vendor),
        "args": " ".join(BOOT_ARGS[vendor][wanted]) or "no amd_iommu=off or iommu=off",
        "firmware": "",
    }
    if effective != wanted and hint["running_asks"] == wanted:
        hint["firmware"] = (
            f"; the kernel was booted with {shown(running)}, so the IOMMU (Intel VT-d, AMD-Vi) is off in the "
            "system firmware: enable it in the firmware setup"
        )
    status = f"sriov_iommu: {wanted}, and the kernel runs with the IOMMU {effective}"
    if not params["manage_boot"]:
        leave_boot_alone(module, result, status, hint)
    loader = boot_loader(module)
    if loader is None:
        no_boot_loader(module, result, status, hint)
    manage(module, loader, result, status, hint)


if __name__ == "__main__":
    main()
