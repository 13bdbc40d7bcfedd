"""k8s_fabric_plan: each manifest field by field against the documented formats, and each refusal.

The documents checked against (roles/k8s_fabric/README.md says why these versions):
- sriov-network-device-plugin v3.11.0, README "Config parameters" and "Device selectors": the
  ConfigMap's config.json is {"resourceList": [...]}, each entry resourceName, optional
  resourcePrefix and deviceType ("netDevice" is the default), and "selectors" as a list of
  selector objects (the preferred syntax since v3.6.0) holding vendors, devices, drivers, pfNames,
  rootDevices (string lists) and isRdma (a selector field since v3.3, not a top-level one).
  pfNames/rootDevices take "<PF>#<N>,<FIRST>-<LAST>" (0-based, inclusive).
- sriov-cni v2.10.0, docs/configuration-reference.md: name, type "sriov", vlan (int 0-4094),
  vlanQoS (int 0-7, needs a vlan), spoofchk and trust ("on"/"off" strings), link_state
  (auto/enable/disable), min_tx_rate and max_tx_rate (int, Mbps).
- whereabouts v0.9.4, README "Core Parameters": ipam type "whereabouts", range (CIDR), range_start,
  range_end, exclude (CIDRs), gateway, routes ([{dst, gw}], the static IPAM plugin's).
- Network Plumbing WG spec, NetworkAttachmentDefinition k8s.cni.cncf.io/v1: spec.config is the
  CNI configuration as a JSON string; annotation k8s.v1.cni.cncf.io/resourceName: <prefix>/<name>.
"""

import copy
import ipaddress
import json
import re
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from conftest import ROOT, _load

fabric = _load("k8s_fabric", ROOT / "filter_plugins" / "k8s_fabric.py")
ipam = _load("roce_ipam", ROOT / "filter_plugins" / "roce_ipam.py")
plan = fabric.k8s_fabric_plan

POOLS = [
    {"name": "pods", "subnet": "10.50.0.0/24", "gateway": "10.50.0.254", "pod_range": "10.50.0.128/26"},
    {"name": "hosts-only", "subnet": "10.30.0.0/24"},
]
# roce_ipam_pod_networks' answer for POOLS (its contract: range, exclude, gateway, subnet, prefix).
POD_NETWORKS = {
    "pods": {
        "range": "10.50.0.128/26",
        "exclude": ["10.50.0.130/32"],
        "gateway": "10.50.0.254",
        "subnet": "10.50.0.0/24",
        "prefix": 24,
    }
}
IGB = {"name": "igb_vfs", "vendors": ["8086"], "devices": ["10ca"], "drivers": ["igbvf"], "pf_names": ["enp1s0#0-2"]}
MLX = {
    "name": "mlx_rdma",
    "prefix": "nvidia.com",
    "vendors": ["15b3"],
    "devices": ["101e"],
    "drivers": ["mlx5_core"],
    "root_devices": ["0000:86:00.0#0-7"],
    "rdma": True,
}
NET = {"name": "rail0-pods", "pool": "pods", "resource": "igb_vfs"}


def run(networks=None, resources=None, pod_networks=None, pools=None, **kwargs):
    kwargs.setdefault("cluster", "lab")
    return plan(
        [NET] if networks is None else networks,
        [IGB] if resources is None else resources,
        POD_NETWORKS if pod_networks is None else pod_networks,
        POOLS if pools is None else pools,
        **kwargs,
    )


def good(**kwargs):
    result = run(**kwargs)
    assert result["problems"] == []
    return result


def problems(**kwargs):
    result = run(**kwargs)
    assert result["problems"], "expected a refusal"
    assert result["objects"] == [] and result["text"] == ""
    return result["problems"]


def refused(expected, **kwargs):
    """One problem, starting with the variable's path and holding the reason."""
    found = problems(**kwargs)
    assert len(found) == 1, found
    where, reason = expected
    assert found[0].startswith(where), found
    assert reason in found[0], found
    return found[0]


def device_plugin_config(result):
    configmap = result["objects"][0]
    return json.loads(configmap["data"]["config.json"])


def cni_config(result, index=0):
    return json.loads(result["objects"][1 + index]["spec"]["config"])


# --- the device plugin's ConfigMap ----------------------------------------------------------------


def test_configmap_object():
    configmap = good()["objects"][0]
    assert configmap["apiVersion"] == "v1"
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["name"] == "sriovdp-config"
    assert configmap["metadata"]["namespace"] == "kube-system"
    assert configmap["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "hpc-datapath"}
    # The device plugin's DaemonSet mounts the ConfigMap's key config.json as /etc/pcidp/config.json.
    assert list(configmap["data"]) == ["config.json"]
    assert isinstance(configmap["data"]["config.json"], str)


def test_configmap_name_and_namespace_are_settable():
    configmap = good(configmap="sriov-dp", configmap_namespace="sriov")["objects"][0]
    assert (configmap["metadata"]["name"], configmap["metadata"]["namespace"]) == ("sriov-dp", "sriov")


def test_resource_list_entry_field_by_field():
    config = device_plugin_config(good())
    assert list(config) == ["resourceList"]
    (entry,) = config["resourceList"]
    assert entry == {
        "resourceName": "igb_vfs",
        # Written always, so the NAD's annotation agrees whatever the plugin's -resource-prefix is.
        "resourcePrefix": "intel.com",
        "deviceType": "netDevice",
        # The list syntax of v3.6.0 and newer: one selector object.
        "selectors": [{"vendors": ["8086"], "devices": ["10ca"], "drivers": ["igbvf"], "pfNames": ["enp1s0#0-2"]}],
    }


def test_rdma_resource_sets_is_rdma_in_its_selector_object_with_root_devices():
    config = device_plugin_config(good(resources=[IGB, MLX]))
    igb, mlx = config["resourceList"]
    assert "isRdma" not in igb and "isRdma" not in igb["selectors"][0]
    assert "isRdma" not in mlx  # a selector field since v3.3, not a resource field
    assert mlx["resourcePrefix"] == "nvidia.com"
    assert mlx["selectors"] == [
        {
            "vendors": ["15b3"],
            "devices": ["101e"],
            "drivers": ["mlx5_core"],
            "rootDevices": ["0000:86:00.0#0-7"],
            "isRdma": True,
        }
    ]


def test_selectors_hold_only_what_is_given():
    only_pf = {"name": "any_on_pf", "pf_names": ["ens1f0", "ens1f1#0,2-3,5"]}
    (entry,) = device_plugin_config(good(networks=[], resources=[only_pf]))["resourceList"]
    assert entry["selectors"] == [{"pfNames": ["ens1f0", "ens1f1#0,2-3,5"]}]


def test_vf_lists_are_written_canonically():
    resource = {**IGB, "pf_names": ["enp1s0#002-03,7"], "num_vfs": 8}
    (entry,) = device_plugin_config(good(resources=[resource]))["resourceList"]
    assert entry["selectors"][0]["pfNames"] == ["enp1s0#2-3,7"]


def test_resource_prefix_default_is_settable():
    result = good(resource_prefix="example.com")
    assert device_plugin_config(result)["resourceList"][0]["resourcePrefix"] == "example.com"
    annotation = result["objects"][1]["metadata"]["annotations"]
    assert annotation == {"k8s.v1.cni.cncf.io/resourceName": "example.com/igb_vfs"}


def test_resources_without_networks_are_still_written():
    result = good(networks=[], resources=[IGB, MLX])
    assert [obj["kind"] for obj in result["objects"]] == ["ConfigMap"]
    assert len(device_plugin_config(result)["resourceList"]) == 2


# --- the NetworkAttachmentDefinitions ------------------------------------------------------------


def test_network_attachment_definition_object():
    result = good()
    nad = result["objects"][1]
    assert nad["apiVersion"] == "k8s.cni.cncf.io/v1"
    assert nad["kind"] == "NetworkAttachmentDefinition"
    assert nad["metadata"]["name"] == "rail0-pods"
    assert nad["metadata"]["namespace"] == "default"
    assert nad["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/resourceName": "intel.com/igb_vfs"}
    assert list(nad["spec"]) == ["config"]
    assert isinstance(nad["spec"]["config"], str)  # a JSON string, not an object


def test_sriov_cni_config_minimal():
    config = cni_config(good())
    assert config == {
        "cniVersion": "1.0.0",
        "name": "rail0-pods",
        "type": "sriov",
        "ipam": {
            "type": "whereabouts",
            "range": "10.50.0.0/24",
            "range_start": "10.50.0.128",
            "range_end": "10.50.0.191",
            "exclude": ["10.50.0.130/32"],
            "gateway": "10.50.0.254",
        },
    }


def test_sriov_cni_config_every_field():
    network = {
        **NET,
        "namespace": "training",
        "vlan": 100,
        "vlan_qos": 3,
        "spoofchk": False,
        "trust": "on",
        "link_state": "enable",
        "min_tx_rate": 100,
        "max_tx_rate": 25000,
        "routes": [{"dst": "10.60.0.0/16", "gw": "10.50.0.254"}, {"dst": "10.70.0.0/16"}],
    }
    result = good(networks=[network], cni_version="0.3.1")
    assert result["objects"][1]["metadata"]["namespace"] == "training"
    config = cni_config(result)
    assert config["cniVersion"] == "0.3.1"
    assert config["vlan"] == 100 and isinstance(config["vlan"], int)
    assert config["vlanQoS"] == 3
    assert config["spoofchk"] == "off"  # strings, as the SR-IOV CNI takes them
    assert config["trust"] == "on"
    assert config["link_state"] == "enable"
    assert (config["min_tx_rate"], config["max_tx_rate"]) == (100, 25000)
    assert config["ipam"]["routes"] == [{"dst": "10.60.0.0/16", "gw": "10.50.0.254"}, {"dst": "10.70.0.0/16"}]
    assert set(config) == {
        "cniVersion",
        "name",
        "type",
        "vlan",
        "vlanQoS",
        "spoofchk",
        "trust",
        "link_state",
        "min_tx_rate",
        "max_tx_rate",
        "ipam",
    }


def test_vlan_zero_is_written():
    assert cni_config(good(networks=[{**NET, "vlan": 0}]))["vlan"] == 0


def test_whereabouts_gives_pods_the_subnets_netmask_within_the_pod_range():
    """whereabouts hands an address the mask of its range: the range is the pool's subnet, and
    range_start/range_end hold the pods inside the pod range, clear of the hosts' addresses."""
    ipam_block = cni_config(good())["ipam"]
    subnet = ipaddress.ip_network(ipam_block["range"])
    start, end = (ipaddress.ip_address(ipam_block[key]) for key in ("range_start", "range_end"))
    assert subnet.prefixlen == POD_NETWORKS["pods"]["prefix"]
    assert ipaddress.ip_network(POD_NETWORKS["pods"]["range"]) == next(
        net for net in ipaddress.summarize_address_range(start, end)
    )
    assert ipaddress.ip_address(ipam_block["gateway"]) in subnet
    assert not start <= ipaddress.ip_address(ipam_block["gateway"]) <= end


def test_pool_without_gateway_or_exclusions_leaves_them_out():
    pods = {"pods": {"range": "10.50.0.0/25", "exclude": [], "subnet": "10.50.0.0/24", "prefix": 24}}
    ipam_block = cni_config(good(pod_networks=pods))["ipam"]
    assert "gateway" not in ipam_block and "exclude" not in ipam_block


def test_ipv6_pool():
    pods = {"v6": {"range": "fd00:50::8000/113", "exclude": [], "subnet": "fd00:50::/112", "prefix": 112}}
    pools = [{"name": "v6", "subnet": "fd00:50::/112", "pod_range": "fd00:50::8000/113"}]
    network = {**NET, "pool": "v6", "routes": [{"dst": "fd00:60::/64", "gw": "fd00:50::1"}]}
    ipam_block = cni_config(good(networks=[network], pod_networks=pods, pools=pools))["ipam"]
    assert (ipam_block["range"], ipam_block["range_start"], ipam_block["range_end"]) == (
        "fd00:50::/112",
        "fd00:50::8000",
        "fd00:50::ffff",
    )


def test_same_name_in_two_namespaces():
    networks = [NET, {**NET, "namespace": "training"}]
    result = good(networks=networks)
    assert [obj["metadata"]["namespace"] for obj in result["objects"][1:]] == ["default", "training"]


def test_two_networks_on_one_resource_and_pool():
    result = good(networks=[NET, {**NET, "name": "rail0-vlan200", "vlan": 200}])
    assert [cni_config(result, i)["name"] for i in (0, 1)] == ["rail0-pods", "rail0-vlan200"]


# --- the text ------------------------------------------------------------------------------------


def test_text_is_the_objects_as_yaml_documents_under_a_header():
    result = good(resources=[IGB, MLX], networks=[NET, {**NET, "name": "rail1-pods", "resource": "mlx_rdma"}])
    text = result["text"]
    assert text.startswith("# Written by hpc-datapath (roles/k8s_fabric) from the inventory of cluster lab")
    assert list(yaml.safe_load_all(text)) == result["objects"]
    # The JSON documents are literal blocks, readable in a review.
    assert "  config.json: |\n    {\n" in text
    assert "  config: |\n    {\n" in text


def test_same_input_same_text():
    assert run()["text"] == run()["text"]


def test_input_is_not_changed():
    networks, resources, pods = [copy.deepcopy(NET)], [copy.deepcopy(IGB)], copy.deepcopy(POD_NETWORKS)
    run(networks=networks, resources=resources, pod_networks=pods)
    assert (networks, resources, pods) == ([NET], [IGB], POD_NETWORKS)


# --- refusals: the resources ----------------------------------------------------------------------

R0 = "k8s_fabric_resources[0] (igb_vfs)"


@pytest.mark.parametrize(
    ("change", "where", "reason"),
    [
        ({"name": "igb-vfs"}, "k8s_fabric_resources[0] (igb-vfs).name", "no hyphen"),
        ({"name": "igb.vfs"}, "k8s_fabric_resources[0] (igb.vfs).name", "not a device plugin resource name"),
        ({"name": "_igb"}, "k8s_fabric_resources[0] (_igb).name", "starting and ending with a letter or digit"),
        ({"name": "x" * 64}, "k8s_fabric_resources[0] (" + "x" * 64 + ").name", "1 to 63"),
        ({"name": 7}, "k8s_fabric_resources[0].name", "not a device plugin resource name"),
        ({"prefix": "Intel.com"}, f"{R0}.prefix", "not a DNS subdomain"),
        ({"prefix": "intel.com/x"}, f"{R0}.prefix", "not a DNS subdomain"),
        ({"prefix": "kubernetes.io"}, f"{R0}.prefix", "reserved for Kubernetes"),
        ({"prefix": "sriov.kubernetes.io"}, f"{R0}.prefix", "reserved for Kubernetes"),
        ({"vendors": [8086]}, f"{R0}.vendors[0]", "quote it"),
        ({"vendors": ["15B3"]}, f"{R0}.vendors[0]", "4 lower-case hex digits"),
        ({"vendors": ["0x8086"]}, f"{R0}.vendors[0]", "4 lower-case hex digits"),
        ({"devices": ["10c"]}, f"{R0}.devices[0]", "not a PCI device id"),
        ({"devices": "10ca"}, f"{R0}.devices", "non-empty list"),
        ({"devices": []}, f"{R0}.devices", "non-empty list"),
        ({"drivers": ["igbvf", "igbvf"]}, f"{R0}.drivers", "twice"),
        ({"drivers": ["vfio pci"]}, f"{R0}.drivers[0]", "not a kernel driver name"),
        ({"pf_names": ["enp1s0f0np0123456"]}, f"{R0}.pf_names[0]", "not a Linux interface name"),
        ({"pf_names": ["ens1/0"]}, f"{R0}.pf_names[0]", "not a Linux interface name"),
        ({"pf_names": ["ens1:0"]}, f"{R0}.pf_names[0]", "not a Linux interface name"),
        ({"pf_names": ["ens 1"]}, f"{R0}.pf_names[0]", "not a Linux interface name"),
        ({"pf_names": [".."]}, f"{R0}.pf_names[0]", "not a Linux interface name"),
        ({"pf_names": ["#0-1"]}, f"{R0}.pf_names[0]", "not a Linux interface name"),
        ({"pf_names": ["enp1s0#"]}, f"{R0}.pf_names[0]", "is not N or FIRST-LAST"),
        ({"pf_names": ["enp1s0#0-"]}, f"{R0}.pf_names[0]", "is not N or FIRST-LAST"),
        ({"pf_names": ["enp1s0#0, 2"]}, f"{R0}.pf_names[0]", "no spaces"),
        ({"pf_names": ["enp1s0#0-1#2"]}, f"{R0}.pf_names[0]", "is not N or FIRST-LAST"),
        ({"pf_names": ["enp1s0#3-1"]}, f"{R0}.pf_names[0]", "runs backwards"),
        ({"pf_names": ["enp1s0#0-3,2"]}, f"{R0}.pf_names[0]", "names VF 2 twice"),
        ({"pf_names": ["enp1s0#65535"]}, f"{R0}.pf_names[0]", "0..65534"),
        ({"pf_names": ["enp1s0#0-4"], "num_vfs": 4}, f"{R0}.pf_names[0]", "VF 4 is out of range: VF indexes are 0..3"),
        ({"pf_names": ["enp1s0", "enp1s0#1"]}, f"{R0}.pf_names[1]", "reads only the first"),
        ({"pf_names": ["enp1s0", "ENP1S0"]}, f"{R0}.pf_names[1]", "reads only the first"),
        ({"pf_names": [7]}, f"{R0}.pf_names[0]", "not a string"),
        ({"root_devices": ["01:00.0"]}, f"{R0}.root_devices[0]", "not a PCI address as sysfs spells it"),
        ({"root_devices": ["0000:AF:00.0"]}, f"{R0}.root_devices[0]", "lower-case hex"),
        ({"root_devices": ["0000:af:00.8"]}, f"{R0}.root_devices[0]", "not a PCI address"),
        ({"num_vfs": 0}, f"{R0}.num_vfs", "not a number of VFs"),
        ({"num_vfs": "4"}, f"{R0}.num_vfs", "not a number of VFs"),
        ({"rdma": "yes"}, f"{R0}.rdma", "not a boolean"),
        ({"pfNames": ["enp1s0"]}, R0, "unknown keys ['pfNames']"),
    ],
)
def test_resource_refused(change, where, reason):
    resource = {**IGB, **change}
    refused((where, reason), networks=[], resources=[resource])


def test_resource_that_selects_nothing():
    refused(
        ("k8s_fabric_resources[0] (everything)", "selects nothing"), networks=[], resources=[{"name": "everything"}]
    )


def test_resource_not_a_dict():
    refused(("k8s_fabric_resources[0]", "must be a dict"), networks=[], resources=["igb_vfs"])


def test_two_resources_with_one_name():
    other = {**IGB, "pf_names": ["enp2s0"], "prefix": "example.com"}
    refused(("k8s_fabric_resources[1] (igb_vfs).name", "another resource is named igb_vfs"), resources=[IGB, other])


@pytest.mark.parametrize(
    "second",
    [
        {"name": "same_pf", "pf_names": ["enp1s0"]},
        {"name": "overlap", "pf_names": ["enp1s0#2-3"], "drivers": ["igbvf"]},
        {"name": "other_case", "pf_names": ["ENP1S0#1"]},
        # No PF selector: every igbvf VF of every PF.
        {"name": "every_pf", "drivers": ["igbvf"]},
    ],
)
def test_resources_that_may_share_vfs(second):
    found = refused(
        (f"k8s_fabric_resources[1] ({second['name']})", "may select the same VFs as"), resources=[IGB, second]
    )
    assert "k8s_fabric_resources[0] (igb_vfs)" in found


@pytest.mark.parametrize(
    "second",
    [
        {"name": "other_vfs", "pf_names": ["enp1s0#3"]},
        {"name": "other_pf", "pf_names": ["enp2s0"]},
        {"name": "dpdk", "pf_names": ["enp1s0"], "drivers": ["vfio-pci"]},
        {"name": "mellanox", "vendors": ["15b3"]},
        # Named by PCI address: it cannot be matched up with a PF name on the controller.
        {"name": "by_address", "root_devices": ["0000:01:00.0"]},
    ],
)
def test_resources_that_cannot_share_vfs(second):
    good(resources=[IGB, second])


def test_every_problem_is_reported_at_once():
    resource = {**IGB, "name": "igb-vfs", "vendors": [8086], "pf_names": ["enp1s0#3-1"]}
    network = {**NET, "name": "Rail0", "vlan": 4095, "resource": "igb-vfs"}
    found = problems(networks=[network], resources=[resource])
    assert len(found) == 5, found


# --- refusals: the networks -----------------------------------------------------------------------

N0 = "k8s_fabric_networks[0] (rail0-pods)"


@pytest.mark.parametrize(
    ("change", "where", "reason"),
    [
        ({"name": "Rail0"}, "k8s_fabric_networks[0] (Rail0).name", "not a DNS-1123 label"),
        ({"name": "rail_0"}, "k8s_fabric_networks[0] (rail_0).name", "not a DNS-1123 label"),
        ({"name": "rail0-"}, "k8s_fabric_networks[0] (rail0-).name", "no - at either end"),
        ({"name": "r" * 64}, "k8s_fabric_networks[0] (" + "r" * 64 + ").name", "1 to 63"),
        ({"name": None}, "k8s_fabric_networks[0].name", "not a DNS-1123 label"),
        ({"namespace": "Training"}, f"{N0}.namespace", "not a DNS-1123 label"),
        ({"resource": "nope"}, f"{N0}.resource", "not a resource of k8s_fabric_resources (known: igb_vfs)"),
        ({"resource": ["igb_vfs"]}, f"{N0}.resource", "not a resource"),
        ({"pool": "nope"}, f"{N0}.pool", "there is no IPAM pool nope in roce_ipam_pools"),
        ({"pool": "hosts-only"}, f"{N0}.pool", "IPAM pool hosts-only has no pod_range"),
        ({"pool": ""}, f"{N0}.pool", "not the name of an IPAM pool"),
        ({"vlan": 4095}, f"{N0}.vlan", "0..4094"),
        ({"vlan": -1}, f"{N0}.vlan", "0..4094"),
        ({"vlan": True}, f"{N0}.vlan", "0..4094"),
        ({"vlan": "100"}, f"{N0}.vlan", "0..4094"),
        ({"vlan_qos": 3}, f"{N0}.vlan_qos", "needs a vlan"),
        ({"vlan": 0, "vlan_qos": 3}, f"{N0}.vlan_qos", "needs a vlan"),
        ({"vlan": 10, "vlan_qos": 8}, f"{N0}.vlan_qos", "0..7"),
        ({"spoofchk": "yes"}, f"{N0}.spoofchk", "not true/false"),
        ({"trust": 1}, f"{N0}.trust", "not true/false"),
        ({"link_state": "up"}, f"{N0}.link_state", "auto, enable, disable"),
        ({"min_tx_rate": -5}, f"{N0}.min_tx_rate", "not a whole number"),
        ({"max_tx_rate": 1.5}, f"{N0}.max_tx_rate", "not a whole number"),
        ({"min_tx_rate": 200, "max_tx_rate": 100}, f"{N0}.min_tx_rate", "above max_tx_rate"),
        ({"routes": {"dst": "10.60.0.0/16"}}, f"{N0}.routes", "must be a list"),
        ({"routes": ["10.60.0.0/16"]}, f"{N0}.routes[0]", "is not {dst: CIDR}"),
        ({"routes": [{"dst": "10.60.0.0/16", "via": "10.50.0.254"}]}, f"{N0}.routes[0]", "is not {dst: CIDR}"),
        ({"routes": [{"dst": "10.60.0.0"}]}, f"{N0}.routes[0].dst", "not a CIDR"),
        ({"routes": [{"dst": "10.60.0.1/16"}]}, f"{N0}.routes[0].dst", "host bits"),
        ({"routes": [{"dst": "fd00::/64"}]}, f"{N0}.routes[0].dst", "IPv6, the pool is IPv4"),
        ({"routes": [{"dst": "10.60.0.0/16", "gw": "10.51.0.1"}]}, f"{N0}.routes[0].gw", "must be on-link"),
        ({"routes": [{"dst": "10.60.0.0/16", "gw": "gateway"}]}, f"{N0}.routes[0].gw", "not an IP address"),
        ({"vlna": 100}, N0, "unknown keys ['vlna']"),
    ],
)
def test_network_refused(change, where, reason):
    refused((where, reason), networks=[{**NET, **change}])


def test_pool_without_pod_range_is_refused_without_the_pools_too():
    result = plan([{**NET, "pool": "nope"}], [IGB], POD_NETWORKS, cluster="lab")
    assert len(result["problems"]) == 1
    assert result["problems"][0].startswith(f"{N0}.pool: IPAM pool nope has no pod_range")


def test_network_not_a_dict():
    refused(("k8s_fabric_networks[0]", "must be a dict"), networks=["rail0-pods"])


def test_two_networks_with_one_name_in_a_namespace():
    refused(
        ("k8s_fabric_networks[1] (rail0-pods)", "namespace default has a network rail0-pods already"),
        networks=[NET, {**NET, "vlan": 7}],
    )


def test_a_network_of_a_refused_resource_is_not_refused_again():
    found = problems(resources=[{**IGB, "vendors": [8086]}])
    assert len(found) == 1 and found[0].startswith("k8s_fabric_resources[0]"), found


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        ({**POD_NETWORKS["pods"], "gateway": "10.50.0.150"}, "the gateway 10.50.0.150 is inside the pod range"),
        ({**POD_NETWORKS["pods"], "range": "10.51.0.0/26"}, "is not inside the subnet"),
        ({"range": "10.50.0.128/26"}, "answer that is not"),
    ],
)
def test_unusable_pod_network_answer(pod, reason):
    refused((f"{N0}.pool", reason), pod_networks={"pods": pod})


def test_ipv6_pod_range_beyond_what_whereabouts_addresses():
    pods = {"v6": {"range": "fd00:50::8000:0:0:0/66", "exclude": [], "subnet": "fd00:50::/64", "prefix": 64}}
    pools = [{"name": "v6", "subnet": "fd00:50::/64"}]
    refused(
        (f"{N0}.pool", "whereabouts addresses only fd00:50::/65"),
        networks=[{**NET, "pool": "v6"}],
        pod_networks=pods,
        pools=pools,
    )


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"cluster": ""}, "k8s_fabric_cluster"),
        ({"cluster": "lab/prod"}, "k8s_fabric_cluster"),
        ({"namespace": "Default"}, "k8s_fabric_namespace"),
        ({"cni_version": "0.2.0"}, "k8s_fabric_cni_version"),
        ({"cni_version": 1.0}, "k8s_fabric_cni_version"),
        ({"configmap": "SRIOV"}, "k8s_fabric_device_plugin_configmap"),
        ({"configmap_namespace": "kube.system"}, "k8s_fabric_device_plugin_namespace"),
        ({"resource_prefix": "intel_com"}, "k8s_fabric_resource_prefix"),
        ({"pod_networks": []}, "roce_ipam_pod_networks"),
    ],
)
def test_settings_refused(kwargs, where):
    found = problems(**kwargs)
    assert found[0].startswith(where + ":"), found


def test_lists_refused():
    assert plan({}, [IGB], POD_NETWORKS, cluster="lab")["problems"] == [
        "k8s_fabric_networks: must be a list, not a dict"
    ]


# --- the lab's inventory, with the IPAM's own filter -----------------------------------------------


def test_lab_inventory_plan_is_clear_of_every_host_address_of_the_lab_ledger():
    group_vars = ROOT / "inventories" / "lab" / "group_vars" / "all"
    pools = yaml.safe_load((group_vars / "ipam.yml").read_text())["roce_ipam_pools"]
    fabric_vars = yaml.safe_load((group_vars / "k8s_fabric.yml").read_text())
    ledger_text = (ROOT / "inventories" / "lab" / "ipam" / "roce-ledger.yml").read_text()
    pod_networks = ipam.roce_ipam_pod_networks(pools, ledger_text)
    result = plan(
        fabric_vars["k8s_fabric_networks"],
        fabric_vars["k8s_fabric_resources"],
        pod_networks,
        pools,
        cluster=fabric_vars["k8s_fabric_cluster"],
    )
    assert result["problems"] == []
    (entry,) = device_plugin_config(result)["resourceList"]
    assert entry["selectors"] == [
        {"vendors": ["8086"], "devices": ["10ca"], "drivers": ["igbvf"], "pfNames": ["enp1s0#0-2"]}
    ]
    ipam_block = cni_config(result)["ipam"]
    assert ipam_block["range"] == "10.50.0.0/24"
    start, end = ipaddress.ip_address(ipam_block["range_start"]), ipaddress.ip_address(ipam_block["range_end"])
    taken = [ipaddress.ip_address(e["ip"]) for e in ipam.roce_ipam_ledger(ledger_text)["allocations"]]
    assert not [address for address in taken if start <= address <= end]


def test_a_pod_range_over_a_host_address_of_the_ledger_is_refused_by_the_ipam_filter():
    pools = [{"name": "pods", "subnet": "10.50.0.0/24", "pod_range": "10.50.0.0/26"}]
    ledger = {"version": 1, "allocations": [{"pool": "pods", "host": "node1", "device": "mlx5_0", "ip": "10.50.0.1"}]}
    with pytest.raises(AnsibleFilterError, match=re.escape("10.50.0.1")):
        ipam.roce_ipam_pod_networks(pools, ledger)


# --- k8s_fabric_project_path ----------------------------------------------------------------------


def test_project_path():
    project_path = fabric.k8s_fabric_project_path
    assert project_path(".cache/k8s-fabric/lab") == str(ROOT / ".cache" / "k8s-fabric" / "lab")
    assert project_path("/etc/kube/config") == "/etc/kube/config"
    assert project_path("~/kubeconfig") == str(Path.home() / "kubeconfig")
    assert project_path("inventories/lab/../lab/ipam") == str(ROOT / "inventories" / "lab" / "ipam")
    for bad in ("", None, 7):
        with pytest.raises(AnsibleFilterError, match="is not a path"):
            project_path(bad)
