"""playbooks/k8s_fabric.yml for real on the controller, on a copy of the lab inventory.

The play runs on localhost only and touches no node: it plans the device plugin's ConfigMap and the
NetworkAttachmentDefinitions from the lab's values, writes them, and changes nothing on a second
run or in check mode. There is no Kubernetes API server here: the apply path is shown to reach
kubernetes.core.k8s (the kubernetes library imports, the arguments are accepted) and to fail on the
connection, nothing more.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from ansible_cli import ansible_run

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "k8s_fabric.yml"


@pytest.fixture
def lab(tmp_path):
    """A copy of the lab inventory whose ledger is the copy's own, and a directory for the manifests."""
    inventory = tmp_path / "lab"
    shutil.copytree(ROOT / "inventories" / "lab", inventory)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["vars"]["roce_ipam_ledger_path"] = str(inventory / "ipam" / "roce-ledger.yml")
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return inventory


def play(inventory, tmp_path, *args, **extra):
    """(rc, the json callback's report or None, all the output) of one run, manifests under tmp_path/out."""
    variables = {"k8s_fabric_manifest_dir": str(tmp_path / "out"), **extra}
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    run = ansible_run(
        "ansible-playbook",
        "-i",
        inventory,
        PLAYBOOK,
        f"--extra-vars=@{tmp_path / 'vars.json'}",
        *args,
        env={"ANSIBLE_STDOUT_CALLBACK": "json"},
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        report = None
    return run.returncode, report, run.stdout + run.stderr


def changed(report):
    return report["stats"]["localhost"]["changed"]


def results(report):
    """{task name without its role: localhost's result}."""
    return {
        task["task"]["name"].removeprefix("k8s_fabric : "): task["hosts"]["localhost"]
        for task in report["plays"][0]["tasks"]
    }


def failure(report):
    """The message of the task that failed the run (a block's rescue may have failed an earlier one)."""
    failed = [result["msg"] for result in results(report).values() if result.get("failed")]
    assert failed, "no task failed"
    return failed[-1]


def manifests(tmp_path):
    return list(yaml.safe_load_all((tmp_path / "out" / "manifests.yml").read_text()))


def test_writes_the_lab_manifests_then_changes_nothing(lab, tmp_path):
    rc, report, output = play(lab, tmp_path)
    assert rc == 0, output
    assert changed(report) == 2  # the directory, the file
    configmap, nad = manifests(tmp_path)
    assert (configmap["kind"], configmap["metadata"]["name"], configmap["metadata"]["namespace"]) == (
        "ConfigMap",
        "sriovdp-config",
        "kube-system",
    )
    (resource,) = json.loads(configmap["data"]["config.json"])["resourceList"]
    assert resource["resourceName"] == "lab_igb_vfs"
    assert resource["selectors"][0]["pfNames"] == ["enp1s0#0-2"]
    assert nad["kind"] == "NetworkAttachmentDefinition"
    assert nad["metadata"]["name"] == "lab-rail0-pods"
    assert nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] == "intel.com/lab_igb_vfs"
    ipam = json.loads(nad["spec"]["config"])["ipam"]
    assert (ipam["type"], ipam["range"], ipam["range_start"], ipam["range_end"], ipam["gateway"]) == (
        "whereabouts",
        "10.50.0.0/24",
        "10.50.0.128",
        "10.50.0.191",
        "10.50.0.254",
    )

    rc, report, output = play(lab, tmp_path)
    assert rc == 0, output
    assert changed(report) == 0

    rc, report, output = play(lab, tmp_path, "--check", "--diff")
    assert rc == 0, output
    assert changed(report) == 0


def test_check_mode_previews_and_writes_nothing(lab, tmp_path):
    rc, report, output = play(lab, tmp_path, "--check", "--diff")
    assert rc == 0, output
    assert changed(report) == 2
    assert not (tmp_path / "out").exists()

    # A changed input on a written file: shown as a change, the file keeps its text.
    play(lab, tmp_path)
    before = (tmp_path / "out" / "manifests.yml").read_text()
    networks = yaml.safe_load((lab / "group_vars" / "all" / "k8s_fabric.yml").read_text())["k8s_fabric_networks"]
    rc, report, output = play(lab, tmp_path, "--check", "--diff", k8s_fabric_networks=[{**networks[0], "vlan": 200}])
    assert rc == 0, output
    assert changed(report) == 1
    (diff,) = results(report)["Write the device plugin's ConfigMap and the NetworkAttachmentDefinitions"]["diff"]
    assert diff["before"] == before
    assert '      "vlan": 200,\n' in diff["after"]
    assert (tmp_path / "out" / "manifests.yml").read_text() == before


def refused(lab, tmp_path, **extra):
    """Run with a bad input over a manifests file: the run fails, and the file survives as it was."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifests.yml").write_text("# marker: written before the refused run\n")
    rc, report, output = play(lab, tmp_path, **extra)
    assert rc != 0, output
    assert (tmp_path / "out" / "manifests.yml").read_text() == "# marker: written before the refused run\n"
    return failure(report)


def test_every_bad_input_is_named(lab, tmp_path):
    resources = [{"name": "lab-igb", "vendors": [8086], "pf_names": ["enp1s0#0-9"], "num_vfs": 4}]
    networks = [
        {"name": "Lab_Pods", "pool": "lab-pods", "resource": "lab-igb", "vlan": 4095},
        {"name": "rail0-pods", "pool": "lab-rail0", "resource": "lab-igb"},
    ]
    message = refused(lab, tmp_path, k8s_fabric_resources=resources, k8s_fabric_networks=networks)
    assert message.startswith("lab: ")
    for part in (
        "k8s_fabric_resources[0] (lab-igb).name: 'lab-igb' is not a device plugin resource name",
        "k8s_fabric_resources[0] (lab-igb).vendors[0]: 8086 is a number, not a string",
        "k8s_fabric_resources[0] (lab-igb).pf_names[0]: VF 9 is out of range: VF indexes are 0..3",
        "k8s_fabric_networks[0] (Lab_Pods).name: 'Lab_Pods' is not a DNS-1123 label",
        "k8s_fabric_networks[0] (Lab_Pods).vlan: 4095 is not a whole number in 0..4094",
        "k8s_fabric_networks[1] (rail0-pods).pool: IPAM pool lab-rail0 has no pod_range",
    ):
        assert part in message, message


def test_a_pod_range_over_a_host_address_of_the_ledger_is_refused(lab, tmp_path):
    # node1 and node2 hold 10.30.0.1 and 10.30.0.2 of lab-rail0 in the lab's ledger.
    pools = yaml.safe_load((lab / "group_vars" / "all" / "ipam.yml").read_text())["roce_ipam_pools"]
    pools = [{**pool, "pod_range": "10.30.0.0/28"} if pool["name"] == "lab-rail0" else pool for pool in pools]
    message = refused(lab, tmp_path, roce_ipam_pools=pools)
    ledger = lab / "ipam" / "roce-ledger.yml"
    assert message.startswith(f"lab: k8s_fabric_pools (roce_ipam_pools), ledger {ledger}: roce_ipam_pod_networks: "), (
        message
    )
    assert "10.30.0.1" in message, message


def test_a_missing_ledger_is_refused(lab, tmp_path):
    message = refused(lab, tmp_path, k8s_fabric_ledger_path=str(tmp_path / "nowhere.yml"))
    assert message.startswith(f"lab: k8s_fabric_ledger_path: {tmp_path / 'nowhere.yml'} is not a file"), message


def test_the_apply_path_reaches_kubernetes_and_fails_without_an_api_server(lab, tmp_path):
    """No Kubernetes API server exists in this project's lab: this proves the module and its Python
    library run with the role's arguments, and that a cluster out of reach fails the run."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "none", "user": {"token": "none"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    rc, report, output = play(lab, tmp_path, k8s_fabric_kubeconfig=str(kubeconfig))
    assert rc != 0, output
    applied = results(report)["Apply them to the cluster"]
    assert applied["failed"]
    # The client asked the server (its /version, first thing kubernetes.core does) and was refused.
    assert "host='127.0.0.1', port=9" in applied["msg"], applied["msg"]
    assert "Connection refused" in applied["msg"], applied["msg"]
    # The manifests were written before the apply.
    assert (tmp_path / "out" / "manifests.yml").exists()
