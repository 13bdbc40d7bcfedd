# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What iproute2 says about a node's addresses and routes, for the modules (`ip -j`)."""

from __future__ import annotations

import json


def ip_json(module, args):
    """`ip -j <args>` parsed, or None where ip fails (a device that does not exist)."""
    ip = module.get_bin_path("ip", required=True)
    rc, out, _err = module.run_command([ip, "-j", *args])
    return json.loads(out or "[]") if rc == 0 else None


def addresses_of(module, device, family=()):
    """The global addresses of a device as address/prefix, sorted; family ("-4",) for IPv4 only."""
    links = ip_json(module, [*family, "addr", "show", "dev", device]) or []
    return sorted(
        f"{info['local']}/{info['prefixlen']}"
        for link in links
        for info in link.get("addr_info", [])
        if info.get("scope") == "global"
    )


def default_route_netdevs(module):
    """The netdevs that carry an IPv4 or IPv6 default route: the node's management path."""
    return {
        route.get("dev")
        for family in ("-4", "-6")
        for route in ip_json(module, [family, "route", "show", "default"]) or []
    }


def route_netdev(module, address):
    """The netdev the kernel sends to an address through, or None."""
    routes = ip_json(module, ["route", "get", address])
    return routes[0].get("dev") if routes else None
