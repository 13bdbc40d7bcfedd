#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set a NIC's ring sizes and offloads with ethtool, only where they differ."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ethtool_settings
short_description: Set ring sizes and offload features of a NIC, idempotently
description:
  - Reads the current rings (C(ethtool -g)) and features (C(ethtool -k)) and changes only what
    differs, then reads them back and fails if the driver did not take a value.
  - Supports check mode. Runtime only; persistence across reboots is the caller's (the bond role
    writes a udev rule with the resolved values).
options:
  device: {description: Interface name., type: str, required: true}
  rings:
    description: Ring sizes by ethtool name (C(rx), C(tx), C(rx-jumbo), C(rx-mini)); C(max) means the
      driver's preset maximum.
    type: dict
    default: {}
  features:
    description: Features to switch on (true) or off (false), by ethtool's long name
      (C(generic-receive-offload)) or short alias (C(gro)).
    type: dict
    default: {}
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Largest rings and GRO on
  ethtool_settings:
    device: enp0s3
    rings: {rx: max, tx: max}
    features: {gro: true, lro: false}
"""

RETURN = r"""
rings:
  description: The ring sizes after the change (for the keys asked for), as numbers.
  returned: always
  type: dict
features:
  description: The features after the change (for the keys asked for), by long name, as booleans.
  returned: always
  type: dict
commands:
  description: The ethtool command lines run (or that would run in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

RING_LABELS = {"rx": "RX", "rx-mini": "RX Mini", "rx-jumbo": "RX Jumbo", "tx": "TX"}
ALIASES = {
    "rx": "rx-checksumming",
    "tx": "tx-checksumming",
    "sg": "scatter-gather",
    "tso": "tcp-segmentation-offload",
    "gso": "generic-segmentation-offload",
    "gro": "generic-receive-offload",
    "lro": "large-receive-offload",
    "rxvlan": "rx-vlan-offload",
    "txvlan": "tx-vlan-offload",
    "ntuple": "ntuple-filters",
    "rxhash": "receive-hashing",
}
SHORT = {long: short for short, long in ALIASES.items()}


def parse_rings(text):
    """{'max': {'rx': 256, ...}, 'current': {...}} from `ethtool -g`; n/a values are left out."""
    section, result = None, {"max": {}, "current": {}}
    labels = {label: key for key, label in RING_LABELS.items()}
    for line in text.splitlines():
        if line.startswith("Pre-set maximums"):
            section = "max"
        elif line.startswith("Current hardware settings"):
            section = "current"
        elif section and ":" in line:
            label, value = (part.strip() for part in line.split(":", 1))
            if label in labels and value.isdigit():
                result[section][labels[label]] = int(value)
    return result


def parse_features(text):
    """{'generic-receive-offload': {'on': True, 'fixed': False}, ...} from `ethtool -k`."""
    features = {}
    for line in text.splitlines()[1:]:
        name, _, state = line.strip().partition(": ")
        if state:
            features[name] = {"on": state.startswith("on"), "fixed": "[fixed]" in state}
    return features


def onoff(value):
    return "on" if value else "off"


def plan_rings(wanted, rings):
    """Ring sizes to reach ('max' resolved) and the ethtool -G arguments for those that differ."""
    sizes = {}
    for key, value in wanted.items():
        if key not in RING_LABELS:
            raise ValueError(f"ring {key!r} is not one of {', '.join(RING_LABELS)}")
        limit = rings["max"].get(key)
        if limit is None:
            raise ValueError(f"the driver has no {key} ring to size")
        size = limit if value == "max" else int(value)
        if not 1 <= size <= limit:
            raise ValueError(f"ring {key} {size} is outside 1..{limit} (the driver's maximum)")
        sizes[key] = size
    return sizes, [f"{key} {size}" for key, size in sizes.items() if rings["current"].get(key) != size]


def plan_features(wanted, features):
    """Features by long name and the ethtool -K arguments for those that differ."""
    states, changes = {}, []
    for key, on in wanted.items():
        name = ALIASES.get(key, key)
        if name not in features:
            raise ValueError(f"no feature {key!r} (ethtool -k lists the names)")
        states[name] = on
        if features[name]["on"] != on:
            if features[name]["fixed"]:
                raise ValueError(f"{name} is fixed {onoff(features[name]['on'])} by the driver")
            changes.append(f"{SHORT.get(name, name)} {onoff(on)}")
    return states, changes


def main():
    module = AnsibleModule(
        argument_spec={
            "device": {"type": "str", "required": True},
            "rings": {"type": "dict", "default": {}},
            "features": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    device = module.params["device"]
    ethtool = module.get_bin_path("ethtool", required=True)

    def run(*args):
        rc, out, err = module.run_command([ethtool, *args])
        if rc != 0:
            module.fail_json(msg=f"{device}: ethtool {' '.join(args)} failed: {(err or out).strip()}")
        return out

    try:
        rings = parse_rings(run("-g", device)) if module.params["rings"] else None
        wanted_rings, ring_changes = plan_rings(module.params["rings"], rings)
        features = parse_features(run("-k", device)) if module.params["features"] else None
        wanted_features, feature_changes = plan_features(
            {key: module.boolean(value) for key, value in module.params["features"].items()}, features
        )
    except ValueError as error:
        module.fail_json(msg=f"{device}: {error}")
    commands = []
    if ring_changes:
        commands.append(f"-G {device} {' '.join(ring_changes)}")
    if feature_changes:
        commands.append(f"-K {device} {' '.join(feature_changes)}")

    if commands and not module.check_mode:
        for command in commands:
            run(*command.split())
        after = parse_rings(run("-g", device))["current"] if wanted_rings else {}
        refused = [f"ring {k} is {after.get(k)}, not {v}" for k, v in wanted_rings.items() if after.get(k) != v]
        now = parse_features(run("-k", device)) if wanted_features else {}
        refused += [
            f"{n} stayed {'on' if now[n]['on'] else 'off'}" for n, on in wanted_features.items() if now[n]["on"] != on
        ]
        if refused:
            module.fail_json(
                msg=f"{device}: the driver did not take the change: {'; '.join(refused)}", commands=commands
            )
    module.exit_json(
        changed=bool(commands),
        rings=wanted_rings,
        features=wanted_features,
        commands=[f"ethtool {command}" for command in commands],
    )


if __name__ == "__main__":
    main()
