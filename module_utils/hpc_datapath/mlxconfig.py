# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ConnectX firmware SR-IOV settings through NVIDIA's mlxconfig: names, the query's output, the plan.

Pure functions, tested without a node. Runs on the targets: Python 3.8 or newer, standard library only.

`mlxconfig -d DEV -e q SRIOV_EN NUM_OF_VFS` prints the device's description, then a table:

    Configurations:                              Default         Current         Next Boot
    *        NUM_OF_VFS                          0               0               8
    *        SRIOV_EN                            False(0)        False(0)        True(1)
    The '*' shows parameters with next value different from default/current value.

Default is the firmware's own, Current what the device runs now, Next Boot what it runs after the
next firmware reset or power cycle (a set writes Next Boot only). Rows come in the tool's order,
not the order asked. Anything else in that table is an error, never a value read as "unset".
"""

from __future__ import annotations

import re

PARAMS = ("SRIOV_EN", "NUM_OF_VFS")
COLUMNS = ("default", "current", "next_boot")
# The sriov role's variable that lists these devices; every message about an entry starts with it.
VARIABLE = "sriov_firmware"
# ConnectX-4 and newer firmware allow up to 127 VFs per PF (NUM_OF_VFS); some cards fewer.
MAX_VFS = 127

# What `mlxconfig -d` takes: an MST device node (mst start: /dev/mst/mt4125_pciconf0, a second
# function as .1) or a PCI address, with or without its domain (bus:device.function, device 0..1f,
# function 0..7). Nothing else reaches the command line. \Z: $ would pass a trailing newline.
MST_DEVICE = re.compile(r"/dev/mst/mt\d{4,6}_pci(?:conf|_cr)\d{1,3}(?:\.\d{1,3})?\Z")
PCI_ADDRESS = re.compile(r"(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[01][0-9a-fA-F]\.[0-7]\Z")

HEADER = "Configurations:"
HEADER_COLUMNS = ["Default", "Current", "Next", "Boot"]
FOOTNOTE = "The '*' shows parameters"
ROW = re.compile(r"\s*(?:\*\s+)?([A-Z][A-Z0-9_]*)\s+(\S+)\s+(\S+)\s+(\S+)\Z")
BOOLEANS = {"True(1)": True, "False(0)": False}
NUMBER = re.compile(r"\d{1,4}\Z")


class ParseError(Exception):
    """mlxconfig printed something this module cannot read exactly."""


def valid_device(device):
    return isinstance(device, str) and bool(MST_DEVICE.match(device) or PCI_ADDRESS.match(device))


def check_devices(devices, max_vfs=MAX_VFS):
    """Problems of the entries, as sentences that start with the variable (sriov_firmware[0] (DEVICE): ...)."""
    problems, seen = [], {}
    for index, entry in enumerate(devices):
        label = f"{VARIABLE}[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"device", "num_vfs"}:
            problems.append(f"{label}: {entry!r} must be a dict of device and num_vfs")
            continue
        device, num_vfs = entry.get("device"), entry.get("num_vfs")
        if not valid_device(device):
            problems.append(
                f"{label}: device {device!r} is neither an MST device (/dev/mst/mt4125_pciconf0) "
                "nor a PCI address (0000:3b:00.0)"
            )
            continue
        label = f"{label} ({device})"
        # bool is an int in Python: true must not pass as 1 VF.
        if type(num_vfs) is not int or not 0 <= num_vfs <= max_vfs:
            problems.append(f"{label}: num_vfs {num_vfs!r} is not a number in 0..{max_vfs}")
        if device in seen:
            problems.append(f"{label}: is listed twice (also {VARIABLE}[{seen[device]}])")
        seen.setdefault(device, index)
    return problems


def _value(name, text):
    if name == "SRIOV_EN" and text in BOOLEANS:
        return BOOLEANS[text]
    if name == "NUM_OF_VFS" and NUMBER.match(text):
        return int(text)
    form = "True(1) or False(0)" if name == "SRIOV_EN" else "number"
    raise ParseError(f"{name} has the value {text!r}, which is not a {form}")


def parse_query(text, params=PARAMS):
    """{param: {default, current, next_boot}} from `mlxconfig -e q` output, and its warnings.

    Raises ParseError on an error line, a missing or second table, another header, a line of the
    table that is not a row, a parameter not asked for or asked for and missing, a value of
    another form.
    """
    values, warnings, in_table = {}, [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-E-"):
            raise ParseError(f"mlxconfig reports an error: {stripped}")
        if stripped.startswith(("-W-", "-I-")):
            warnings.append(stripped)
            continue
        if in_table and (stripped.startswith(HEADER) or stripped.startswith("Device #")):
            raise ParseError("the output describes more than one device, or holds a second table")
        if stripped.startswith(HEADER):
            columns = stripped[len(HEADER) :].split()
            if columns != HEADER_COLUMNS:
                raise ParseError(
                    f"the table has the columns {' '.join(columns) or 'none'}, not Default, Current, Next Boot (-e)"
                )
            in_table = True
            continue
        if not in_table or not stripped or stripped.startswith(FOOTNOTE):
            continue  # the device's description before the table; blank lines; the footnote
        row = ROW.match(line)
        if not row:
            raise ParseError(f"the line {stripped!r} is not a row of the table")
        name, cells = row.group(1), row.groups()[1:]
        if name not in params:
            raise ParseError(f"the table shows {name}, which was not asked for")
        if name in values:
            raise ParseError(f"the table shows {name} twice")
        values[name] = {COLUMNS[index]: _value(name, cells[index]) for index in range(len(COLUMNS))}
    if not in_table:
        raise ParseError("the output has no table of configurations")
    missing = [name for name in params if name not in values]
    if missing:
        raise ParseError(f"the table does not show {', '.join(missing)}")
    return values, warnings


def column(values, name):
    """One column of parse_query's answer: {param: value}."""
    return {param: cells[name] for param, cells in values.items()}


def wanted(num_vfs):
    """What a set writes for num_vfs VFs.

    No VFs turns SR-IOV off in the firmware (SRIOV_EN=0: the PF then offers no SR-IOV capability at
    all) and leaves NUM_OF_VFS as it is, since the firmware ignores it while SR-IOV is off.
    """
    return {"SRIOV_EN": True, "NUM_OF_VFS": num_vfs} if num_vfs else {"SRIOV_EN": False}


def satisfied(config, num_vfs):
    """Whether a configuration (one column) gives num_vfs VFs.

    For 0, SR-IOV off or a count of 0 both give no VFs: a card that already offers none is not
    written (and needs no reset) for nothing.
    """
    if num_vfs == 0:
        return not config["SRIOV_EN"] or config["NUM_OF_VFS"] == 0
    return config["SRIOV_EN"] is True and config["NUM_OF_VFS"] == num_vfs


def query_argv(mlxconfig, device):
    return [mlxconfig, "-d", device, "-e", "q", *PARAMS]


def set_argv(mlxconfig, device, num_vfs):
    """The one set command: -y answers mlxconfig's prompt; SRIOV_EN first, as the lab asserts."""
    values = wanted(num_vfs)
    return [mlxconfig, "-d", device, "-y", "set", *(f"{name}={int(values[name])}" for name in PARAMS if name in values)]


def pending(values):
    """Whether Next Boot differs from Current: a firmware reset or power cycle is due."""
    return any(cells["next_boot"] != cells["current"] for cells in values.values())


def render(device, config):
    """One line for a diff: the device and a configuration column."""
    return f"{device}: " + " ".join(f"{name}={config[name]}" for name in PARAMS if name in config) + "\n"
