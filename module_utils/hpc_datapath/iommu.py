# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The IOMMU state of a node: what a kernel command line asks for, what the kernel runs, what a pool wants.

Pure functions with injectable /proc and /sys roots, tested without a node. Runs on the targets:
Python 3.8 or newer, standard library only.

States: "on" (DMA translated by the IOMMU), "pt" (IOMMU on, host devices in pass-through: an
identity mapping; a device given to vfio-pci still gets its own translated domain), "off" (no IOMMU
initialised). The kernel's parsers decide, and this module reads arguments as they do:
- intel_iommu= takes comma-separated options; on and off set one switch, the last one wins. Without
  either, the build decides (CONFIG_INTEL_IOMMU_DEFAULT_ON, on in some distribution kernels): the
  command line then asks for "default", which this project never writes.
- amd_iommu= knows off (and fullflush, force_enable, force_isolation, ...), no "on": the AMD IOMMU
  comes up by itself wherever the firmware's IVRS table describes one. off cannot be undone later
  on the line.
- iommu= (x86) takes comma-separated options: off (no IOMMU at all, Intel or AMD, not undone
  later), pt and nopt (default domain identity or translated, the last one wins).
- iommu.passthrough= (any architecture) takes a boolean, and shares that switch with iommu=pt/nopt.
"""

from __future__ import annotations

import os
import re

from ansible.module_utils.hpc_datapath.sysfs import listdir, read

STATES = ("on", "pt", "off")
WANTED = ("unmanaged", *STATES)
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}  # Hygon runs the AMD driver
# The arguments this project writes, by CPU vendor and wanted state. AMD "on" needs none.
BOOT_ARGS = {
    "intel": {"on": ["intel_iommu=on"], "pt": ["intel_iommu=on", "iommu=pt"], "off": ["intel_iommu=off"]},
    "amd": {"on": [], "pt": ["iommu=pt"], "off": ["amd_iommu=off"]},
}
# Arguments that ask for an IOMMU state in one of the forms this project writes or overrides; a
# boot loader change removes those that are not wanted.
MANAGED = (
    "intel_iommu=on",
    "intel_iommu=off",
    "amd_iommu=off",
    "iommu=pt",
    "iommu=nopt",
    "iommu=off",
    "iommu.passthrough=0",
    "iommu.passthrough=1",
)
# The arguments that bear on the IOMMU state, by key.
KEYS = ("intel_iommu", "amd_iommu", "iommu", "iommu.passthrough")
TRUE, FALSE = ("1", "y", "yes", "on", "true"), ("0", "n", "no", "off", "false")
CMDLINE_WORD = re.compile(r'(?:[^\s"]|"[^"]*")+')


def split_cmdline(text):
    """The words of a kernel command line; a double-quoted part keeps its blanks, as the kernel reads it."""
    return CMDLINE_WORD.findall(text or "")


def cpu_vendor(cpuinfo):
    """("intel" | "amd" | None, the vendor_id as /proc/cpuinfo prints it, or None)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "vendor_id":
            return VENDORS.get(value.strip()), value.strip()
    return None, None


def _options(value):
    return [option for option in value.split(",") if option]


def asked_state(args, vendor):
    """The IOMMU state a command line's arguments ask for on this CPU: on, pt, off or default (see above)."""
    intel, amd_off, no_iommu, passthrough = None, False, False, None
    for arg in args:
        key, _sep, value = arg.partition("=")
        if key == "intel_iommu":
            for option in _options(value):
                if option in ("on", "off"):
                    intel = option == "on"
        elif key == "amd_iommu":
            amd_off = amd_off or "off" in _options(value)
        elif key == "iommu":
            for option in _options(value):
                if option == "off":
                    no_iommu = True
                elif option in ("pt", "nopt"):
                    passthrough = option == "pt"
        elif key == "iommu.passthrough" and value.lower() in TRUE + FALSE:
            passthrough = value.lower() in TRUE
    if no_iommu or (vendor == "intel" and intel is False) or (vendor == "amd" and amd_off):
        return "off"
    if vendor == "intel" and intel is None:
        return "default"
    return "pt" if passthrough else "on"


def iommu_units(sys_root):
    """The IOMMU units the kernel runs (dmar0, ivhd0, ...): none when no IOMMU is on."""
    return listdir(os.path.join(sys_root, "class", "iommu"))


def group_types(sys_root):
    """The default domain type of each IOMMU group (identity, DMA, DMA-FQ, ...), where the kernel shows it (5.6+)."""
    base = os.path.join(sys_root, "kernel", "iommu_groups")
    types = (read(os.path.join(base, group, "type")) for group in listdir(base))
    return [kind for kind in types if kind]


def effective_state(sys_root, cmdline_args, vendor):
    """What the kernel runs now: off without an IOMMU unit; else pt or on.

    The groups' default domains say which where the kernel shows them: all identity is pt, none
    identity is on. Mixed (an untrusted device kept translated under pt, a quirk kept identity
    under on) or not shown, the running command line's pass-through switch decides.
    """
    if not iommu_units(sys_root):
        return "off"
    types = set(group_types(sys_root))
    if types == {"identity"}:
        return "pt"
    if types and "identity" not in types:
        return "on"
    return "pt" if asked_state(cmdline_args, vendor) == "pt" else "on"


def refusal(wanted, effective, gds_pool, dgx, vfio_needed):
    """Why this pool must not have this IOMMU state, as a sentence that starts with the variable; or None."""
    if gds_pool and (wanted == "on" or (wanted == "pt" and not dgx)):
        allowed = "off, or pt on NVIDIA DGX systems" if not dgx else "off or pt"
        return (
            f"sriov_iommu: {wanted} is refused in a pool marked for GPUDirect Storage (sriov_gds_pool): GDS moves "
            "data between NVMe or NIC and GPU memory by PCIe peer-to-peer, which a translating IOMMU sends through "
            "the root complex or blocks, and NVIDIA supports pt for GDS on DGX systems only (sriov_dgx); "
            f"set sriov_iommu to {allowed}"
        )
    if vfio_needed and wanted == "off":
        return (
            "sriov_iommu: off, but VFs of this node are to be bound to vfio-pci, which needs the IOMMU "
            "(vfio refuses a device without an IOMMU group); set sriov_iommu to on or pt"
        )
    if vfio_needed and wanted == "unmanaged" and effective == "off":
        return (
            "sriov_iommu: unmanaged, and this kernel runs without an IOMMU, but VFs of this node are to be "
            "bound to vfio-pci, which needs one; set sriov_iommu to on or pt (and "
            "sriov_iommu_manage_boot: true to let the role change the boot loader), or enable it by hand"
        )
    return None


def relevant(args):
    """The arguments that bear on the IOMMU state."""
    return [arg for arg in args if arg.partition("=")[0] in KEYS]


def unusual(args):
    """The arguments on the IOMMU state in a form this project neither writes nor removes (intel_iommu=on,sm_on)."""
    return [arg for arg in relevant(args) if arg not in MANAGED]


def without_unwanted(args, wanted, vendor):
    """A command line's arguments without the managed ones the wanted state does not use, plus the wanted ones."""
    keep = BOOT_ARGS[vendor][wanted]
    result = [arg for arg in args if arg not in MANAGED or arg in keep]
    return result + [arg for arg in keep if arg not in result]
