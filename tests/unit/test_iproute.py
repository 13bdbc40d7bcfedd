"""The iproute2 readers the modules share, against a fake `ip`."""

import json

from ansible.module_utils.hpc_datapath import iproute


class FakeModule:
    def __init__(self, outputs):
        self.outputs = outputs

    def get_bin_path(self, name, required=False):
        return f"/usr/sbin/{name}"

    def run_command(self, argv):
        return self.outputs.get(tuple(argv[2:]), (1, "", "Cannot find device"))


ADDR = [
    {
        "ifname": "ens1",
        "addr_info": [
            {"family": "inet", "local": "10.31.0.1", "prefixlen": 24, "scope": "global"},
            {"family": "inet", "local": "10.30.0.1", "prefixlen": 24, "scope": "global"},
            {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"},
        ],
    }
]


def test_global_addresses_sorted():
    module = FakeModule({("-4", "addr", "show", "dev", "ens1"): (0, json.dumps(ADDR), "")})
    assert iproute.addresses_of(module, "ens1", ("-4",)) == ["10.30.0.1/24", "10.31.0.1/24"]
    assert iproute.addresses_of(module, "ens9", ("-4",)) == []


def test_default_routes_of_both_families():
    module = FakeModule(
        {
            ("-4", "route", "show", "default"): (0, '[{"dst": "default", "gateway": "10.0.2.2", "dev": "mgmt0"}]', ""),
            ("-6", "route", "show", "default"): (0, '[{"dst": "default", "gateway": "fe80::1", "dev": "mgmt1"}]', ""),
        }
    )
    assert iproute.default_route_netdevs(module) == {"mgmt0", "mgmt1"}


def test_route_to_an_address():
    module = FakeModule({("route", "get", "10.0.0.5"): (0, '[{"dst": "10.0.0.5", "dev": "ens1"}]', "")})
    assert iproute.route_netdev(module, "10.0.0.5") == "ens1"
    assert iproute.route_netdev(module, "nas.example.com") is None
