# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""k8s_fabric_plan: the Kubernetes side of SR-IOV pod networking, planned from the inventory.

A pure function of the inventory's device plugin resources, pod networks and the pods' ranges of
the IPAM pools (roce_ipam_pod_networks): it checks every input against what Kubernetes, the SR-IOV
network device plugin, the SR-IOV CNI and whereabouts accept, and returns the objects to apply and
their text, or the problems found, each naming the variable and the reason. Self-contained on
purpose: Ansible skips a filter file that imports the project's shared module code.

The formats, as documented upstream (the versions targeted, and why, are in
roles/k8s_fabric/README.md):
- sriov-network-device-plugin v3.11.0, README "Config parameters": the ConfigMap's config.json,
  {"resourceList": [{resourceName, resourcePrefix, deviceType, selectors: [{...}]}]}; the list of
  selector objects exists since v3.6.0, isRdma is a selector field since v3.3.
- sriov-cni v2.10.0, docs/configuration-reference.md: type sriov, vlan, vlanQoS, spoofchk, trust,
  link_state, min_tx_rate, max_tx_rate.
- whereabouts v0.9.4, README "Core Parameters": range, range_start, range_end, exclude, gateway,
  routes (those of the static IPAM plugin).
- Network Plumbing WG multi-net spec (k8s.cni.cncf.io/v1 NetworkAttachmentDefinition): spec.config
  is the CNI configuration as a JSON string; the device plugin resource is named by the annotation
  k8s.v1.cni.cncf.io/resourceName.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path

import yaml
from ansible.errors import AnsibleFilterError

CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
RESOURCE_NAME_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
MANAGED_BY = {"app.kubernetes.io/managed-by": "hpc-datapath"}
# The PCIe SR-IOV capability counts VFs in 16 bits (TotalVFs): VF indexes are 0..65534.
MAX_VF_INDEX = 65534
# An interface name as the kernel takes it (dev_valid_name: shorter than IFNAMSIZ, 16, not . or
# .., no / or : or white space), less the device plugin's own separators # and ,.
_IFNAME = re.compile(r"[^/:#,\s]{1,15}\Z")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
# The device plugin takes [a-zA-Z0-9_-] (utils.ValidResourceName), its README forbids hyphens, and
# Kubernetes' extended resource name (a qualified name) starts and ends with a letter or digit.
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_]{0,61}[A-Za-z0-9])?\Z")
# sysfs spells vendor and device ids as 4 lower-case hex digits; the plugin compares strings.
_PCI_ID = re.compile(r"[0-9a-f]{4}\Z")
_PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")
_DRIVER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}\Z")
_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_VF_ITEM = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?\Z")

NETWORK_KEYS = {
    "name",
    "namespace",
    "pool",
    "resource",
    "vlan",
    "vlan_qos",
    "spoofchk",
    "trust",
    "link_state",
    "min_tx_rate",
    "max_tx_rate",
    "routes",
}
RESOURCE_KEYS = {"name", "prefix", "vendors", "devices", "drivers", "pf_names", "root_devices", "rdma", "num_vfs"}
LINK_STATES = ("auto", "enable", "disable")


class _Problems(list):
    def add(self, where, reason):
        self.append(f"{where}: {reason}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _dns_subdomain(text):
    """A DNS-1123 subdomain, as Kubernetes checks object names and resource prefixes."""
    return isinstance(text, str) and 0 < len(text) <= 253 and all(_DNS_LABEL.match(label) for label in text.split("."))


def _kind(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return {dict: "a dict", list: "a list"}.get(type(value), f"a {type(value).__name__}")


def _reason_not_string(value):
    hint = " (YAML reads an unquoted 8086 or 1018 as a number: quote it)" if _is_int(value) else ""
    return f"{value!r} is {_kind(value)}, not a string{hint}"


def _json(value, indent=""):
    """JSON text, two spaces a level, a list of plain values on one line (as the upstream examples)."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {_json(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        return "[\n" + ",\n".join(f"{inner}{_json(item, inner)}" for item in value) + f"\n{indent}]"
    return json.dumps(value)


# --- the device plugin's resources -----------------------------------------------------------------


def _vf_indexes(spec, bound, where, problems):
    """(the set of VF indexes, the canonical text) of '0,2-7,9' (at most bound), or (None, None) after
    adding the problem."""
    indexes = set()
    items = []
    for item in spec.split(","):
        match = _VF_ITEM.match(item)
        if match is None:
            problems.add(where, f"VF list {spec!r}: {item!r} is not N or FIRST-LAST (digits, no spaces)")
            return None, None
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first > last:
            problems.add(where, f"VF range {item} runs backwards")
            return None, None
        if last > bound:
            problems.add(where, f"VF {last} is out of range: VF indexes are 0..{bound}")
            return None, None
        wanted = set(range(first, last + 1))
        if indexes & wanted:
            problems.add(where, f"VF list {spec!r} names VF {min(indexes & wanted)} twice")
            return None, None
        indexes |= wanted
        items.append(str(first) if first == last else f"{first}-{last}")
    return indexes, ",".join(items)


def _function_selectors(values, kind, bound, where, problems):
    """[(parent as the plugin compares it, VF indexes or None for all, canonical text)] of pfNames or rootDevices."""
    parsed, seen = [], {}
    for index, value in enumerate(values):
        at = f"{where}[{index}]"
        if not isinstance(value, str):
            problems.add(at, _reason_not_string(value))
            continue
        parent, sep, spec = value.partition("#")
        if kind == "pf_names":
            valid = _IFNAME.match(parent) and parent not in {".", ".."}
            reason = "is not a Linux interface name (1 to 15 characters, none of / : # , or white space)"
        else:
            valid = _PCI_ADDRESS.match(parent)
            reason = "is not a PCI address as sysfs spells it (0000:86:00.0, lower-case hex)"
        if not valid:
            problems.add(at, f"{parent!r} {reason}")
            continue
        # The plugin finds a PF's entry case-insensitively and uses the first one only.
        key = parent.lower()
        if key in seen:
            problems.add(at, f"{parent} is listed again (after [{seen[key]}]); the device plugin reads only the first")
            continue
        seen[key] = index
        if not sep:
            parsed.append((key, None, parent))
            continue
        indexes, canonical = _vf_indexes(spec, bound, at, problems)
        if indexes is not None:
            parsed.append((key, indexes, f"{parent}#{canonical}"))
    return parsed


# The selectors that are lists of ids or names, in the order the plugin applies them.
_ID_SELECTORS = {
    "vendors": (_PCI_ID, "is not a PCI vendor id (4 lower-case hex digits)"),
    "devices": (_PCI_ID, "is not a PCI device id (4 lower-case hex digits)"),
    "drivers": (_DRIVER, "is not a kernel driver name"),
}
_FUNCTION_SELECTORS = {"pf_names": "pfNames", "root_devices": "rootDevices"}


def _string_list(resource, key, where, problems):
    pattern, reason = _ID_SELECTORS[key]
    values = resource[key]
    if not isinstance(values, list) or not values:
        problems.add(f"{where}.{key}", "must be a non-empty list when given")
        return None
    good = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            problems.add(f"{where}.{key}[{index}]", _reason_not_string(value))
        elif not pattern.match(value):
            problems.add(f"{where}.{key}[{index}]", f"{value!r} {reason}")
        else:
            good.append(value)
    if len(set(good)) != len(good):
        problems.add(f"{where}.{key}", "lists a value twice")
    return good if len(good) == len(values) else None


def _resource_settings(resource, where, default_prefix, problems):
    """(prefix, highest VF index, rdma) of a resource, adding the problems of its other keys."""
    unknown = sorted(set(resource) - RESOURCE_KEYS, key=str)
    if unknown:
        problems.add(where, f"unknown keys {unknown} (known: {', '.join(sorted(RESOURCE_KEYS))})")
    name = resource.get("name")
    if not isinstance(name, str) or not _RESOURCE_NAME.match(name):
        problems.add(
            f"{where}.name",
            f"{name!r} is not a device plugin resource name: letters, digits and _ (no hyphen), 1 to 63, "
            "starting and ending with a letter or digit",
        )
    prefix = resource.get("prefix", default_prefix)
    _check_prefix(prefix, f"{where}.prefix" if "prefix" in resource else "k8s_fabric_resource_prefix", problems)
    num_vfs = resource.get("num_vfs", MAX_VF_INDEX + 1)
    if not _is_int(num_vfs) or not 1 <= num_vfs <= MAX_VF_INDEX + 1:
        problems.add(f"{where}.num_vfs", f"{num_vfs!r} is not a number of VFs (1..{MAX_VF_INDEX + 1})")
        num_vfs = MAX_VF_INDEX + 1
    rdma = resource.get("rdma", False)
    if not isinstance(rdma, bool):
        problems.add(f"{where}.rdma", f"{rdma!r} is not a boolean")
    if not any(key in resource for key in (*_ID_SELECTORS, *_FUNCTION_SELECTORS)):
        problems.add(where, "selects nothing: give vendors, devices, drivers, pf_names or root_devices")
    return prefix, num_vfs - 1, rdma


def _resource(resource, index, default_prefix, problems):
    """The checked resource: its resourceList entry, and what overlap checks need; None if refused."""
    where = f"k8s_fabric_resources[{index}]"
    if not isinstance(resource, dict):
        problems.add(where, f"must be a dict ({{name, vendors, devices, drivers, pf_names, ...}}), not {resource!r}")
        return None
    name = resource.get("name")
    if isinstance(name, str) and name:
        where = f"{where} ({name})"
    before = len(problems)
    prefix, bound, rdma = _resource_settings(resource, where, default_prefix, problems)
    ids = {key: _string_list(resource, key, where, problems) if key in resource else None for key in _ID_SELECTORS}
    functions = {}
    for key in _FUNCTION_SELECTORS:
        values = resource.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or not values:
            problems.add(f"{where}.{key}", "must be a non-empty list when given")
            continue
        functions[key] = _function_selectors(values, key, bound, f"{where}.{key}", problems)
    if len(problems) > before:
        return None
    selector = {key: list(values) for key, values in ids.items() if values is not None}
    for key, field in _FUNCTION_SELECTORS.items():
        if key in functions:
            selector[field] = [text for _, _, text in functions[key]]
    if rdma:
        selector["isRdma"] = True
    entry = {"resourceName": name, "resourcePrefix": prefix, "deviceType": "netDevice", "selectors": [selector]}
    return {
        "where": where,
        "name": name,
        "full_name": f"{prefix}/{name}",
        "entry": entry,
        "ids": ids,
        "functions": functions,
    }


def _check_prefix(prefix, where, problems):
    # requests.<prefix>/<name> must be a qualified name as well: the prefix leaves room for "requests.".
    if not _dns_subdomain(prefix) or len(prefix) > 244:
        problems.add(where, f"{prefix!r} is not a DNS subdomain (lower-case letters, digits, - and ., at most 244)")
    elif prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io"):
        problems.add(where, f"{prefix} is reserved for Kubernetes' own resources")


def _may_share_devices(first, second):
    """Whether a VF can match both resources' selectors (the device plugin gives it to the first only)."""
    for key in ("vendors", "devices", "drivers"):
        a, b = first["ids"][key], second["ids"][key]
        if a is not None and b is not None and not set(a) & set(b):
            return False
    if not first["functions"] or not second["functions"]:
        return True
    # Like with like: a PF named by one resource and addressed by PCI address in another cannot be
    # matched up on the controller, and is taken for two PFs.
    for key in ("pf_names", "root_devices"):
        for parent, indexes, _ in first["functions"].get(key, ()):
            for other, other_indexes, _ in second["functions"].get(key, ()):
                if parent == other and (indexes is None or other_indexes is None or indexes & other_indexes):
                    return True
    return False


# --- the networks ----------------------------------------------------------------------------------


def _on_off(network, key, where, problems):
    value = network.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if value in ("on", "off"):
        return value
    problems.add(f"{where}.{key}", f"{value!r} is not true/false (or 'on'/'off')")
    return None


# The SR-IOV CNI's whole-number fields: VLAN id, VLAN priority, rates in Mbps (uint32 in the kernel).
_INT_FIELDS = {"vlan": (0, 4094), "vlan_qos": (0, 7), "min_tx_rate": (0, 2**32 - 1), "max_tx_rate": (0, 2**32 - 1)}


def _int_field(network, key, where, problems):
    value = network.get(key)
    low, high = _INT_FIELDS[key]
    if value is not None and (not _is_int(value) or not low <= value <= high):
        problems.add(f"{where}.{key}", f"{value!r} is not a whole number in {low}..{high}")
        return None
    return value


def _cni_fields(network, where, problems):
    """The SR-IOV CNI's settings of a network, in the reference's spelling, those given only."""
    vlan = _int_field(network, "vlan", where, problems)
    qos = _int_field(network, "vlan_qos", where, problems)
    if qos is not None and not vlan:
        problems.add(f"{where}.vlan_qos", "needs a vlan from 1 to 4094 (the SR-IOV CNI refuses it otherwise)")
    link_state = network.get("link_state")
    if link_state is not None and link_state not in LINK_STATES:
        problems.add(f"{where}.link_state", f"{link_state!r} is not one of {', '.join(LINK_STATES)}")
    low = _int_field(network, "min_tx_rate", where, problems)
    high = _int_field(network, "max_tx_rate", where, problems)
    if low and high and low > high:
        problems.add(f"{where}.min_tx_rate", f"{low} Mbps is above max_tx_rate {high} Mbps")
    fields = {
        "vlan": vlan,
        "vlanQoS": qos,
        "spoofchk": _on_off(network, "spoofchk", where, problems),
        "trust": _on_off(network, "trust", where, problems),
        "link_state": link_state,
        "min_tx_rate": low,
        "max_tx_rate": high,
    }
    return {key: value for key, value in fields.items() if value is not None}


def _routes(routes, subnet, where, problems):
    if routes is None:
        return None
    if not isinstance(routes, list):
        problems.add(f"{where}.routes", "must be a list of {dst, gw}")
        return None
    checked = []
    for index, route in enumerate(routes):
        at = f"{where}.routes[{index}]"
        if not isinstance(route, dict) or "dst" not in route or set(route) - {"dst", "gw"}:
            problems.add(at, f"{route!r} is not {{dst: CIDR}} or {{dst: CIDR, gw: address}}")
            continue
        if not isinstance(route["dst"], str):
            problems.add(f"{at}.dst", _reason_not_string(route["dst"]))
            continue
        try:
            # A CNI route's dst is parsed as a CIDR: the prefix length is not optional.
            dst = ipaddress.ip_network(route["dst"]) if "/" in route["dst"] else None
        except ValueError as error:
            problems.add(f"{at}.dst", f"{route['dst']!r} is not a CIDR with its host bits clear ({error})")
            continue
        if dst is None:
            problems.add(f"{at}.dst", f"{route['dst']!r} is not a CIDR (address/prefix length)")
            continue
        if subnet is not None and dst.version != subnet.version:
            problems.add(f"{at}.dst", f"{dst} is IPv{dst.version}, the pool is IPv{subnet.version}")
            continue
        out = {"dst": str(dst)}
        if "gw" in route:
            try:
                gw = ipaddress.ip_address(route["gw"]) if isinstance(route["gw"], str) else None
            except ValueError:
                gw = None
            if gw is None:
                problems.add(f"{at}.gw", f"{route['gw']!r} is not an IP address")
                continue
            if subnet is not None and gw not in subnet:
                problems.add(f"{at}.gw", f"{gw} is not on the pods' subnet {subnet}: a next hop must be on-link")
                continue
            out["gw"] = str(gw)
        checked.append(out)
    return checked


def _covered(first, last, networks):
    """Whether the networks together hold every address from first to last."""
    at = first
    for net in sorted(networks, key=lambda net: net.network_address):
        if net.network_address > at:
            break
        if net.broadcast_address >= at:
            if net.broadcast_address >= last:
                return True
            at = net.broadcast_address + 1
    return False


def _pod_range_problem(pool, subnet, pod_range, exclude, gateway):
    """Why whereabouts would not hand out exactly the pod range of this pool, or None."""
    if pod_range.version != subnet.version or not pod_range.subnet_of(subnet):
        return f"pool {pool}: pod range {pod_range} is not inside the subnet {subnet}"
    first, last = pod_range.network_address, pod_range.broadcast_address
    # whereabouts (iphelpers.GetIPRange) hands out the subnet's addresses but its first and last,
    # and silently ignores a range_start or range_end outside them: a pod range of only those
    # would give pods the whole subnet, the hosts' addresses with it. A /31 or /32 (/127, /128)
    # has no address it hands out at all.
    if subnet.num_addresses <= 2:
        return f"pool {pool}: whereabouts hands out no address in a /{subnet.prefixlen} ({subnet})"
    usable_first, usable_last = max(first, subnet.network_address + 1), min(last, subnet.broadcast_address - 1)
    if usable_first > usable_last:
        return (
            f"pool {pool}: the pod range {pod_range} holds only the first or last address of {subnet}, which "
            "whereabouts never hands out; it would ignore range_start and range_end and hand pods the whole subnet"
        )
    if _covered(usable_first, usable_last, [net for net in exclude if net.version == subnet.version]):
        return (
            f"pool {pool}: every address whereabouts could hand out in the pod range {pod_range} is excluded "
            f"({', '.join(str(net) for net in exclude)}): no pod would get one"
        )
    if gateway is not None and first <= gateway <= last and not any(gateway in net for net in exclude):
        return f"pool {pool}: the gateway {gateway} is inside the pod range {pod_range}"
    return _ipv6_problem(pool, subnet, pod_range)


def _ipv6_problem(pool, subnet, pod_range):
    """whereabouts' README: in an IPv6 range of /64 or wider, only the first /65 is addressable."""
    if subnet.version != 6 or subnet.prefixlen > 64:
        return None
    addressable = next(subnet.subnets(new_prefix=65))
    if pod_range.subnet_of(addressable):
        return None
    return f"pool {pool}: whereabouts addresses only {addressable} of {subnet}; the pod range {pod_range} is not in it"


def _whereabouts(pod, pool, where, problems):
    """The whereabouts IPAM block of a pool's pod range (roce_ipam_pod_networks' answer for it)."""
    try:
        subnet = ipaddress.ip_network(pod["subnet"])
        pod_range = ipaddress.ip_network(pod["range"])
        exclude = [ipaddress.ip_network(cidr) for cidr in pod.get("exclude") or []]
        gateway = ipaddress.ip_address(pod["gateway"]) if pod.get("gateway") is not None else None
    except (KeyError, TypeError, ValueError) as error:
        problems.add(
            where, f"roce_ipam_pod_networks gave pool {pool} an answer that is not {{range, subnet, ...}}: {error}"
        )
        return None, None
    problem = _pod_range_problem(pool, subnet, pod_range, exclude, gateway)
    if problem:
        problems.add(where, problem)
        return None, None
    first, last = pod_range.network_address, pod_range.broadcast_address
    # The range is the pool's subnet, so that pods get the subnet's netmask (whereabouts gives an
    # address the mask of its range) and reach the hosts and the gateway on-link; range_start and
    # range_end keep them inside the pod range.
    ipam = {"type": "whereabouts", "range": str(subnet), "range_start": str(first), "range_end": str(last)}
    if exclude:
        ipam["exclude"] = [str(net) for net in exclude]
    if gateway is not None:
        ipam["gateway"] = str(gateway)
    return ipam, subnet


def _pool_ipam(network, where, context, problems):
    """(whereabouts IPAM block, the pods' subnet) of the network's pool, or (None, None)."""
    pool = network.get("pool")
    if not isinstance(pool, str) or not pool:
        problems.add(f"{where}.pool", f"{pool!r} is not the name of an IPAM pool")
    elif context["pool_names"] is not None and pool not in context["pool_names"]:
        problems.add(f"{where}.pool", f"there is no IPAM pool {pool} in roce_ipam_pools")
    elif pool not in context["pod_networks"]:
        problems.add(
            f"{where}.pool",
            f"IPAM pool {pool} has no pod_range: add one to it in roce_ipam_pools (the CIDR whereabouts hands pods "
            "addresses from, which the host ledger never takes)",
        )
    else:
        return _whereabouts(context["pod_networks"][pool], pool, f"{where}.pool", problems)
    return None, None


def _network(network, index, context, problems):
    where = f"k8s_fabric_networks[{index}]"
    if not isinstance(network, dict):
        problems.add(where, f"must be a dict ({{name, pool, resource, ...}}), not {network!r}")
        return None
    name = network.get("name")
    if isinstance(name, str) and name:
        where = f"{where} ({name})"
    before = len(problems)
    unknown = sorted(set(network) - NETWORK_KEYS, key=str)
    if unknown:
        problems.add(where, f"unknown keys {unknown} (known: {', '.join(sorted(NETWORK_KEYS))})")
    if not isinstance(name, str) or not _DNS_LABEL.match(name):
        problems.add(f"{where}.name", f"{name!r} is not a DNS-1123 label (a-z, 0-9 and -, 1 to 63, no - at either end)")
    namespace = network.get("namespace", context["namespace"])
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        at = f"{where}.namespace" if "namespace" in network else "k8s_fabric_namespace"
        problems.add(at, f"{namespace!r} is not a DNS-1123 label (a namespace name)")
    resource = network.get("resource")
    refused = isinstance(resource, str) and resource in context["refused"]  # named under k8s_fabric_resources
    if not refused and (not isinstance(resource, str) or resource not in context["resources"]):
        known = ", ".join(sorted(context["resources"])) or "none"
        problems.add(f"{where}.resource", f"{resource!r} is not a resource of k8s_fabric_resources (known: {known})")
    ipam, subnet = _pool_ipam(network, where, context, problems)
    config = {"cniVersion": context["cni_version"], "name": name, "type": "sriov"}
    config.update(_cni_fields(network, where, problems))
    routes = _routes(network.get("routes"), subnet, where, problems)
    if len(problems) > before or refused:
        return None
    if routes:
        ipam["routes"] = routes
    config["ipam"] = ipam
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {RESOURCE_NAME_ANNOTATION: context["resources"][resource]},
        },
        "spec": {"config": _Literal(_json(config) + "\n")},
    }


# --- the plan --------------------------------------------------------------------------------------


class _Literal(str):
    """A JSON document inside a manifest: written as a YAML literal block, readable as JSON."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Literal,
    lambda dumper, text: dumper.represent_scalar(yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG, text, style="|"),
)


def _plain(value, literal=str):
    """The value in Python's own types. Ansible passes its values tagged (subclasses of str, int,
    ...), which YAML's safe dumper refuses; a _Literal becomes literal(text)."""
    if isinstance(value, dict):
        return {_plain(key): _plain(item, literal) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, literal) for item in value]
    if isinstance(value, str):
        return (literal if isinstance(value, _Literal) else str)(str.__str__(value))
    if _is_int(value):
        return int(value)
    return value


HEADER = (
    "# Written by hpc-datapath (roles/k8s_fabric) from the inventory of cluster {cluster}: the SR-IOV\n"
    "# network device plugin's ConfigMap and one NetworkAttachmentDefinition per pod network.\n"
    "# Edit the inventory, not this file: the next run writes it again.\n"
)


def _check_settings(settings, problems):
    """The problems of the role's scalar settings (cluster, namespace, CNI version, ConfigMap)."""
    if not isinstance(settings["cluster"], str) or not _CLUSTER.match(settings["cluster"]):
        problems.add(
            "k8s_fabric_cluster", f"{settings['cluster']!r} is not a cluster name (letters, digits, _ . -, 1 to 63)"
        )
    for variable, key in (
        ("k8s_fabric_namespace", "namespace"),
        ("k8s_fabric_device_plugin_namespace", "configmap_namespace"),
    ):
        if not isinstance(settings[key], str) or not _DNS_LABEL.match(settings[key]):
            problems.add(variable, f"{settings[key]!r} is not a DNS-1123 label (a namespace name)")
    if settings["cni_version"] not in CNI_VERSIONS:
        problems.add(
            "k8s_fabric_cni_version",
            f"{settings['cni_version']!r} is not a CNI spec version ({', '.join(CNI_VERSIONS)})",
        )
    if not _dns_subdomain(settings["configmap"]):
        problems.add("k8s_fabric_device_plugin_configmap", f"{settings['configmap']!r} is not a DNS-1123 subdomain")


def _check_resources(resources, default_prefix, problems):
    """(the checked resources, {name: prefix/name, or None for one refused})."""
    checked, names = [], {}
    for index, resource in enumerate(resources):
        result = _resource(resource, index, default_prefix, problems)
        if result is None:
            if isinstance(resource, dict) and isinstance(resource.get("name"), str):
                names.setdefault(resource["name"], None)
            continue
        # Networks name their resource by name alone (the device plugin would take one name under
        # two prefixes).
        if result["name"] in names:
            problems.add(f"{result['where']}.name", f"another resource is named {result['name']} too")
            continue
        other = next((other for other in checked if _may_share_devices(other, result)), None)
        if other is not None:
            problems.add(
                result["where"],
                f"may select the same VFs as {other['where']}; the device plugin gives such a VF to the first "
                "resource only (narrow pf_names/root_devices by VF index, or make vendors, devices or drivers "
                "disjoint)",
            )
        names[result["name"]] = result["full_name"]
        checked.append(result)
    return checked, names


def _check_networks(networks, context, problems):
    attachments, seen = [], {}
    for index, network in enumerate(networks):
        attachment = _network(network, index, context, problems)
        if attachment is None:
            continue
        key = (attachment["metadata"]["namespace"], attachment["metadata"]["name"])
        if key in seen:
            problems.add(
                f"k8s_fabric_networks[{index}] ({key[1]})",
                f"namespace {key[0]} has a network {key[1]} already ({seen[key]})",
            )
            continue
        seen[key] = f"k8s_fabric_networks[{index}]"
        attachments.append(attachment)
    return attachments


def k8s_fabric_plan(
    networks,
    resources,
    pod_networks,
    pools=None,
    *,
    cluster,
    namespace="default",
    resource_prefix="intel.com",
    cni_version="1.0.0",
    configmap="sriovdp-config",
    configmap_namespace="kube-system",
):
    """{problems, objects, text}: the device plugin's ConfigMap and a NetworkAttachmentDefinition per
    network, or every problem found (then no objects, and text is empty)."""
    problems = _Problems()
    settings = {
        "cluster": cluster,
        "namespace": namespace,
        "cni_version": cni_version,
        "configmap": configmap,
        "configmap_namespace": configmap_namespace,
    }
    _check_settings(settings, problems)
    if not isinstance(pod_networks, dict):
        problems.add("roce_ipam_pod_networks", f"expected {{pool: {{range, exclude, ...}}}}, got {_kind(pod_networks)}")
        pod_networks = {}
    for variable, value in (("k8s_fabric_networks", networks), ("k8s_fabric_resources", resources)):
        if not isinstance(value, list):
            problems.add(variable, f"must be a list, not {_kind(value)}")
    if not isinstance(networks, list) or not isinstance(resources, list):
        return {"problems": list(dict.fromkeys(problems)), "objects": [], "text": ""}

    checked, names = _check_resources(resources, resource_prefix, problems)
    pool_names = None
    if pools is not None:
        pool_names = (
            {pool.get("name") for pool in pools if isinstance(pool, dict)} if isinstance(pools, list) else set()
        )
    context = {
        "namespace": namespace,
        "cni_version": cni_version,
        "resources": {name: full for name, full in names.items() if full is not None},
        # Refused above: their networks are not refused a second time for naming them.
        "refused": {name for name, full in names.items() if full is None},
        "pool_names": pool_names,
        "pod_networks": pod_networks,
    }
    attachments = _check_networks(networks, context, problems)
    if problems:
        return {"problems": list(dict.fromkeys(problems)), "objects": [], "text": ""}

    config = {"resourceList": [resource["entry"] for resource in checked]}
    configmap_object = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap, "namespace": configmap_namespace, "labels": dict(MANAGED_BY)},
        "data": {"config.json": _Literal(_json(config) + "\n")},
    }
    objects = [configmap_object, *attachments]
    text = HEADER.format(cluster=cluster) + yaml.dump_all(
        _plain(objects, _Literal),
        Dumper=_Dumper,
        explicit_start=True,
        sort_keys=False,
        default_flow_style=False,
        width=1 << 16,
    )
    return {"problems": [], "objects": _plain(objects), "text": text}


# The project: the directory above filter_plugins/, which holds ansible.cfg, playbooks/ and
# inventories/ (as the IPAM's action finds it).
PROJECT = Path(__file__).resolve().parents[1]


def k8s_fabric_project_path(path):
    """An absolute path: ~ expanded, a relative one taken relative to the project, never to the
    current directory (an AWX job runs elsewhere)."""
    if not isinstance(path, str) or not path:
        raise AnsibleFilterError(f"k8s_fabric_project_path: {path!r} is not a path")
    path = os.path.expanduser(path)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(PROJECT, path))


class FilterModule:
    def filters(self):
        return {"k8s_fabric_plan": k8s_fabric_plan, "k8s_fabric_project_path": k8s_fabric_project_path}
