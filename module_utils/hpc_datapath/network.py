# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one network layer: interfaces in one model, rendered by a provider per backend.

A role (the owner: bond, roce, ...) describes the interfaces it wants as a list of dicts:

  name           the kernel's name
  kind           ethernet | bond | vlan
  mtu            int
  members        bond: the names of its ethernet ports (they get port profiles / netplan ethernets)
  bond           bond: {mode, miimon, lacp_rate, xmit_hash_policy} (None: the kernel's default)
  vlan           vlan: {id, link}
  addresses      ["10.0.0.1/24", "fd00::1/64"]; none: no IP on the interface
  routes         [{to, via, metric, table, from, scope}]; to is a CIDR ("0.0.0.0/0" for default)
  rules          [{from, table, priority}]: policy routing rules (source routing of rails)
  ipv6           manual (the addresses above, no autoconfiguration) | ignore (left to the kernel)
  never_default  bool: a gateway here is never the default route of the main table
  autoconnect_priority  int or None (NetworkManager: above made-up profiles for unconfigured NICs)

Each provider writes one file per interface, named by owner and interface, so that an owner's files
are found by name and a removed interface's file is removed. Validation of what a role asks for
stays with the role's own module (bond_inspect, roce_fabric); check_model here only guards what
ends up in file names and file contents.
"""

from __future__ import annotations

import configparser
import glob
import io
import ipaddress
import json
import re
import uuid

NM_PROFILES = "/etc/NetworkManager/system-connections"
NM_CONF = "/etc/NetworkManager/conf.d"
NETPLAN = "/etc/netplan"
UNMANAGED_FILE = "90-hpc-unmanaged.conf"
# The first line of every file the layer writes: a file without it is not ours to read.
HEADER = "# Written by hpc-datapath (the network layer); changes here are replaced.\n"
# Profile UUIDs are derived from profile ids, so that a profile keeps its UUID across runs.
UUID_NAMESPACE = uuid.UUID("7c1f4ad2-52a3-4c0e-9b8e-2f6c0b1d9e41")

# The rollback clock, in one place (network_config). The apply may take its budget: APPLY_BUDGET
# for the reload or netplan apply, plus NM_ACTIVATION_WAIT for each profile NetworkManager brings
# up. A change is armed for rollback_timeout + twice the budget; once it is in place the node
# restarts the clock at rollback_timeout + the budget, since the controller confirms a batch's nodes
# only once it has collected the slowest (Ansible's linear strategy). A slow node changes how long
# things take, never what is reported; network_confirm rolls a change back at once when the node
# cannot reach its check targets, so an unconfirmed change does not wait for the clock.
NM_ACTIVATION_WAIT = 60
APPLY_BUDGET = 60

OWNER = re.compile(r"[a-z][a-z0-9]{0,15}\Z")
IFNAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,15}\Z")
KINDS = ("ethernet", "bond", "vlan")
BOND_OPTIONS = ("mode", "miimon", "lacp_rate", "xmit_hash_policy")
BOND_OPTION_VALUE = re.compile(r"[A-Za-z0-9+.]{1,32}\Z")


def _ifname(value):
    return isinstance(value, str) and IFNAME.match(value) is not None


def _written_verbatim_problems(name, interface):
    """The VLAN's link and id and the autoconnect priority go into the files as they are."""
    problems = []
    vlan = interface.get("vlan") or {}
    if interface.get("kind") == "vlan" and not _ifname(vlan.get("link")):
        problems.append(f"{name}: the VLAN has no valid link")
    if interface.get("kind") == "vlan" and (type(vlan.get("id")) is not int or not 0 <= vlan["id"] <= 4094):
        problems.append(f"{name}: VLAN id {vlan.get('id')!r} is not a number from 0 to 4094")
    priority = interface.get("autoconnect_priority")
    if priority is not None and type(priority) is not int:
        problems.append(f"{name}: autoconnect_priority {priority!r} is not a number")
    return problems


def _interface_problems(interface):
    name = interface["name"]
    problems = []
    if interface.get("kind") not in KINDS:
        problems.append(f"{name}: kind {interface.get('kind')!r} is not one of {', '.join(KINDS)}")
    if type(interface.get("mtu")) is not int:
        problems.append(f"{name}: mtu {interface.get('mtu')!r} is not a number")
    problems += [
        f"{name}: member {member!r} is not a valid interface name"
        for member in interface.get("members", [])
        if not _ifname(member)
    ]
    problems += [
        f"{name}: bond option {key}={value!r} cannot be written"
        for key, value in (interface.get("bond") or {}).items()
        if key not in BOND_OPTIONS or (value is not None and not BOND_OPTION_VALUE.match(str(value)))
    ]
    problems += _written_verbatim_problems(name, interface)
    try:
        for address in interface.get("addresses", []):
            ipaddress.ip_interface(address)
        for route in interface.get("routes", []):
            ipaddress.ip_network(route["to"])
            for key in ("via", "from"):
                if route.get(key) is not None:
                    ipaddress.ip_address(route[key])
            for key in ("metric", "table"):
                if route.get(key) is not None and type(route[key]) is not int:
                    raise ValueError(f"route {key} {route[key]!r} is not a number")
        for rule in interface.get("rules", []):
            ipaddress.ip_network(rule["from"])
            if type(rule["table"]) is not int or type(rule["priority"]) is not int:
                raise ValueError(f"rule {rule!r} needs numbers for table and priority")
    except (KeyError, TypeError, ValueError) as error:
        problems.append(f"{name}: {error}")
    return problems


def check_model(owner, interfaces):
    """Problems of the model as sentences; [] when it can be rendered safely."""
    problems = []
    if not OWNER.match(str(owner)):
        problems.append(f"owner {owner!r} is not a lower-case word of at most 16 characters")
    names = []
    for interface in interfaces:
        if not _ifname(interface.get("name")):
            problems.append(f"interface name {interface.get('name')!r} is not a valid interface name")
            continue
        names += [interface["name"], *interface.get("members", [])]
        problems += _interface_problems(interface)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        problems.append(f"interfaces configured twice: {', '.join(twice)}")
    return problems


def _family(address):
    return ipaddress.ip_interface(address).version


def _routes_of(interface, version):
    return [r for r in interface.get("routes", []) if ipaddress.ip_network(r["to"]).version == version]


def _keyfile(sections):
    """A keyfile from [(section, [(key, value)])], values None left out."""
    out = io.StringIO()
    out.write(HEADER)
    for section, items in sections:
        out.write(f"[{section}]\n")
        for key, value in items:
            if value is not None:
                out.write(f"{key}={value}\n")
        out.write("\n")
    return out.getvalue()


class NetworkManager:
    """Keyfiles in /etc/NetworkManager/system-connections, one per interface and per bond port."""

    name = "networkmanager"

    def __init__(self, root=""):
        self.root = root

    def profile_id(self, owner, device):
        return f"hpc-{owner}-{device}"

    def path(self, owner, device):
        return f"{self.root}{NM_PROFILES}/{self.profile_id(owner, device)}.nmconnection"

    def owned(self, owner):
        return sorted(glob.glob(f"{self.root}{NM_PROFILES}/hpc-{owner}-*.nmconnection"))

    def files(self, owner, interfaces):
        files = {}
        for interface in interfaces:
            files[self.path(owner, interface["name"])] = self.profile(owner, interface)
            for member in interface.get("members", []):
                files[self.path(owner, member)] = self.port(owner, interface, member)
        return files

    def activations(self, owner, interfaces):
        """The profiles to bring up, in order (a bond brings up its ports: autoconnect-ports)."""
        return [self.profile_id(owner, interface["name"]) for interface in interfaces]

    def _connection(self, owner, device, kind, interface):
        profile = self.profile_id(owner, device)
        return [
            ("id", profile),
            ("uuid", str(uuid.uuid5(UUID_NAMESPACE, profile))),
            ("type", kind),
            ("interface-name", device),
            ("autoconnect", "true"),
            ("autoconnect-priority", interface.get("autoconnect_priority")),
        ]

    def port(self, owner, bond, member):
        connection = self._connection(owner, member, "ethernet", {"autoconnect_priority": 100})
        connection += [("master", bond["name"]), ("slave-type", "bond")]
        return _keyfile([("connection", connection), ("ethernet", [("mtu", bond["mtu"])])])

    def profile(self, owner, interface):
        kind = interface["kind"]
        connection = self._connection(owner, interface["name"], kind, interface)
        sections = []
        if kind == "bond":
            connection.append(("autoconnect-slaves", "1"))
        sections.append(("connection", connection))
        sections.append(("ethernet", [("mtu", interface["mtu"])]))
        if kind == "bond":
            options = interface.get("bond") or {}
            sections.append(("bond", [(key, options.get(key)) for key in BOND_OPTIONS]))
        if kind == "vlan":
            sections.append(("vlan", [("id", interface["vlan"]["id"]), ("parent", interface["vlan"]["link"])]))
        for version in (4, 6):
            sections.append((f"ipv{version}", self._ip(interface, version)))
        return _keyfile(sections)

    def read(self, text):
        """What a profile of ours configures, for cleaning up after it: the model's keys it holds."""
        profile = parse_keyfile(text)
        connection = profile["connection"]
        found = {"name": connection["interface-name"], "kind": connection["type"], "addresses": [], "rules": []}
        found["tables"], found["table_routes"] = [], []
        for family in ("ipv4", "ipv6"):
            for key, value in sorted(profile.get(family, {}).items()):
                if re.match(r"address\d+\Z", key):
                    found["addresses"].append(value.split(",")[0])
                elif re.match(r"routing-rule\d+\Z", key):
                    words = value.split()
                    found["rules"].append({"priority": int(words[1]), "from": words[3], "table": int(words[5])})
                elif re.match(r"route\d+_options\Z", key):
                    tables = [int(o[6:]) for o in value.split(",") if o.startswith("table=")]
                    found["tables"] += tables
                    route = profile[family].get(key[: -len("_options")], "")
                    found["table_routes"] += [[route.split(",")[0], table] for table in tables]
        return found

    def _ip(self, interface, version):
        addresses = [a for a in interface.get("addresses", []) if _family(a) == version]
        if version == 6 and interface.get("ipv6") == "ignore":
            return [("method", "ignore")]
        if not addresses:
            return [("method", "disabled")]
        items = [("method", "manual")]
        items += [(f"address{n}", str(ipaddress.ip_interface(a))) for n, a in enumerate(addresses, 1)]
        if interface.get("never_default"):
            items.append(("never-default", "true"))
        for n, route in enumerate(_routes_of(interface, version), 1):
            value = route["to"]
            if route.get("via") or route.get("metric") is not None:
                # to,gateway,metric: an empty gateway keeps a metric from being read as an IPv4 gateway.
                value += f",{route.get('via') or ''}"
            value += f",{route['metric']}" if route.get("metric") is not None else ""
            items.append((f"route{n}", value))
            options = [f"table={route['table']}"] if route.get("table") is not None else []
            options += [f"src={route['from']}"] if route.get("from") else []
            if options:
                items.append((f"route{n}_options", ",".join(options)))
        for n, rule in enumerate(r for r in interface.get("rules", []) if _family(r["from"]) == version):
            items.append(
                (f"routing-rule{n + 1}", f"priority {rule['priority']} from {rule['from']} table {rule['table']}")
            )
        return items


class Netplan:
    """One netplan file per interface (systemd-networkd renders it); a bond's file holds its ports."""

    name = "netplan"

    def __init__(self, root=""):
        self.root = root

    def path(self, owner, device, kind="ethernet"):
        # netplan reads its files in name order and refuses a VLAN whose link it has not read yet.
        order = 61 if kind == "vlan" else 60
        return f"{self.root}{NETPLAN}/{order}-hpc-{owner}-{device}.yaml"

    def owned(self, owner):
        return sorted(glob.glob(f"{self.root}{NETPLAN}/6[01]-hpc-{owner}-*.yaml"))

    def files(self, owner, interfaces):
        return {self.path(owner, i["name"], i["kind"]): self.render(i) for i in interfaces}

    def activations(self, owner, interfaces):
        return []

    def read(self, text):
        """What a file of ours configures (its one interface), for cleanup and the unmanaged list."""
        network = json.loads(text.split("\n", 1)[1])["network"]
        (section,) = [key for key in ("bonds", "vlans", "ethernets") if key in network and key != "ethernets"] or [
            "ethernets"
        ]
        ((name, settings),) = network[section].items()
        return {
            "name": name,
            "kind": {"bonds": "bond", "vlans": "vlan", "ethernets": "ethernet"}[section],
            "members": list(network.get("ethernets", {})) if section == "bonds" else [],
            "addresses": settings.get("addresses", []),
            "rules": settings.get("routing-policy", []),
            "tables": [route["table"] for route in settings.get("routes", []) if "table" in route],
            "table_routes": [[r["to"], r["table"]] for r in settings.get("routes", []) if "table" in r],
        }

    def render(self, interface):
        section = {"bond": "bonds", "vlan": "vlans", "ethernet": "ethernets"}[interface["kind"]]
        network = {"version": 2, "renderer": "networkd"}
        settings = {"mtu": interface["mtu"], "dhcp4": False, "dhcp6": False, "accept-ra": False}
        if interface.get("ipv6") == "ignore":
            settings["link-local"] = []
        if interface["kind"] == "bond":
            members = interface.get("members", [])
            network["ethernets"] = {
                m: {"mtu": interface["mtu"], "dhcp4": False, "dhcp6": False, "accept-ra": False} for m in members
            }
            settings["interfaces"] = list(members)
            options = interface.get("bond") or {}
            parameters = {"mode": options.get("mode"), "mii-monitor-interval": options.get("miimon")}
            parameters["lacp-rate"] = options.get("lacp_rate")
            parameters["transmit-hash-policy"] = options.get("xmit_hash_policy")
            settings["parameters"] = {k: v for k, v in parameters.items() if v is not None}
        if interface["kind"] == "vlan":
            settings.update(id=interface["vlan"]["id"], link=interface["vlan"]["link"])
        if interface.get("addresses"):
            settings["addresses"] = [str(ipaddress.ip_interface(a)) for a in interface["addresses"]]
        routes = []
        for route in interface.get("routes", []):
            entry = {"to": route["to"]}
            for key in ("via", "from", "scope", "metric", "table"):
                if route.get(key) is not None:
                    entry[key] = route[key]
            routes.append(entry)
        if routes:
            settings["routes"] = routes
        rules = [
            {"from": r["from"], "table": r["table"], "priority": r["priority"]} for r in interface.get("rules", [])
        ]
        if rules:
            settings["routing-policy"] = rules
        network[section] = {interface["name"]: settings}
        # JSON is YAML: one line a key, nothing for a YAML writer to get wrong on the node.
        return HEADER + json.dumps({"network": network}, indent=2) + "\n"


PROVIDERS = {"networkmanager": NetworkManager, "netplan": Netplan}


def devices_of(interfaces):
    """Every device the interfaces name: themselves and bond ports."""
    return [device for i in interfaces for device in (i["name"], *i.get("members", []))]


def unmanaged_conf(devices):
    """NetworkManager's unmanaged list of the devices netplan keeps, one list for every owner."""
    if not devices:
        return None
    return (
        "# Written by hpc-datapath (the network layer): the devices that netplan (systemd-networkd)\n"
        "# keeps, of every role. One list, so that no role's file replaces another's.\n"
        "[keyfile]\nunmanaged-devices=" + ";".join(f"interface-name:{d}" for d in sorted(devices)) + "\n"
    )


def parse_keyfile(text):
    """A keyfile as {section: {key: value}} (tests and drift)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


def _rules_present(rules):
    """(priority, source network, table) of the rules `ip -j -N rule show` prints: iproute2 leaves
    srclen out for a host address, and prints "all" for a rule from anywhere."""
    present = set()
    for rule in rules:
        source = rule.get("src")
        try:
            host = ipaddress.ip_address(source).max_prefixlen
            network = ipaddress.ip_network(f"{source}/{rule.get('srclen', host)}", strict=False)
        except (TypeError, ValueError):
            continue
        present.add((rule.get("priority"), str(network), str(rule.get("table"))))
    return present


def drift(interfaces, links, rules):
    """Where the running state differs from the interfaces: links and rules as `ip -j` prints them."""
    by_name = {link["ifname"]: link for link in links}
    found = []
    for interface in interfaces:
        link = by_name.get(interface["name"])
        if link is None:
            found.append(f"{interface['name']} does not exist")
            continue
        if link.get("mtu") != interface["mtu"]:
            found.append(f"{interface['name']} has MTU {link.get('mtu')}, not {interface['mtu']}")
        families = {4, 6} if interface.get("ipv6") != "ignore" else {4}
        running = sorted(
            f"{info['local']}/{info['prefixlen']}"
            for info in link.get("addr_info", [])
            if info.get("scope") == "global" and _family(info["local"]) in families
        )
        wanted = sorted(str(ipaddress.ip_interface(a)) for a in interface.get("addresses", []))
        if running != wanted:
            found.append(f"{interface['name']} has addresses {running}, not {wanted}")
        ports = sorted(name for name, port in by_name.items() if port.get("master") == interface["name"])
        if interface["kind"] == "bond" and ports != sorted(interface.get("members", [])):
            found.append(f"{interface['name']} has ports {ports}, not {sorted(interface['members'])}")
        present = _rules_present(rules)
        for rule in interface.get("rules", []):
            source = str(ipaddress.ip_network(rule["from"]))
            if (rule["priority"], source, str(rule["table"])) not in present:
                found.append(f"{interface['name']} lacks the rule from {rule['from']} table {rule['table']}")
    return found


def rail_interfaces(rails, mtu):
    """RoCE rails with a netdev in the model: the address, and source routing where the plan says."""
    interfaces = []
    for rail in rails:
        if not rail.get("netdev"):
            continue  # an Ascend NPU port: hccn_tool keeps it
        interface = {
            "name": rail["netdev"],
            "kind": "ethernet",
            "mtu": mtu,
            "addresses": [f"{rail['address']}/{rail['prefix']}"],
            "routes": [],
            "rules": [],
            "ipv6": "ignore",
            "never_default": True,
            "autoconnect_priority": 100,  # above the profiles NetworkManager makes up for unconfigured NICs
        }
        if rail["source_routing"]:
            # Traffic from this port's address leaves through this port: its own table, chosen by source.
            table = rail["table"]
            interface["routes"].append(
                {"to": rail["network"], "scope": "link", "from": rail["address"], "table": table}
            )
            if rail.get("gateway"):
                interface["routes"].append({"to": "0.0.0.0/0", "via": rail["gateway"], "table": table})
            interface["rules"].append(
                {"from": f"{rail['address']}/32", "table": table, "priority": rail["rule_priority"]}
            )
        interfaces.append(interface)
    return interfaces


SYSCTL_LINE = re.compile(r"net\.ipv4\.conf\.([A-Za-z0-9_/-]{1,15})\.([a-z_]+)\s*=")


def stale_netdev_sysctls(text, netdevs, names, default_of):
    """Lines of a sysctl.d file about netdevs no longer configured: [{key, netdev, default}].

    A netdev's dots are written as slashes (sysctl.d(5)); default_of(name) reads the kernel's value
    for new interfaces (net.ipv4.conf.default.<name>), what the netdev goes back to.
    """
    stale = []
    for line in (text or "").splitlines():
        match = SYSCTL_LINE.match(line.strip())
        if match and match.group(2) in names and match.group(1).replace("/", ".") not in netdevs:
            key = line.split("=", 1)[0].strip()
            stale.append(
                {"key": key, "netdev": match.group(1).replace("/", "."), "default": default_of(match.group(2))}
            )
    return stale
