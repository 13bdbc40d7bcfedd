"""playbooks/ipam.yml end to end on a copy of the example inventory (it connects to no node)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
A800 = [f"a800-00{i}.dc1.example.com" for i in range(1, 5)]


@pytest.fixture
def inventory(tmp_path):
    copy = tmp_path / "example"
    shutil.copytree(ROOT / "inventories" / "example", copy)
    shutil.rmtree(copy / "ipam", ignore_errors=True)
    return copy


def playbook(inventory, *args):
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json"}
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks" / "ipam.yml"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    try:
        return run.returncode, json.loads(run.stdout), run.stdout + run.stderr
    except json.JSONDecodeError:
        return run.returncode, None, run.stdout + run.stderr


def changed_total(report):
    return sum(stats["changed"] for stats in report["stats"].values())


def ledger(inventory):
    return yaml.safe_load((inventory / "ipam" / "roce-ledger.yml").read_text())


def addresses(inventory):
    return {(e["host"], e["device"]): e["ip"] for e in ledger(inventory)["allocations"]}


def test_allocates_every_rail_once_then_changes_nothing(inventory):
    rc, report, output = playbook(inventory)
    assert rc == 0, output
    assert changed_total(report) == 1  # the one ledger write
    allocated = addresses(inventory)
    assert len(allocated) == 4 * 8 + 2 * 8 + 2 * 1
    assert allocated[(A800[2], "mlx5_7")] == "10.200.7.3"
    assert allocated[("ascend-002.dc1.example.com", "npu0")] == "10.210.0.9"
    rc, report, output = playbook(inventory)
    assert rc == 0, output
    assert changed_total(report) == 0


def test_each_host_gets_its_addresses_as_a_fact(inventory):
    rc, _, output = playbook(inventory)
    assert rc == 0, output
    probe = inventory.parent / "probe.yml"
    probe.write_text(f"""
- name: Read the facts the RoCE role will use
  hosts: hpc_v100
  gather_facts: false
  roles:
    - role: {ROOT / "roles" / "roce_ipam"}
  tasks:
    - name: Each V100 host has its own address on its rail
      ansible.builtin.assert:
        that:
          - roce_ipam_addresses.mlx5_0.address == expected[inventory_hostname]
          - roce_ipam_addresses.mlx5_0.prefix == 24
          - roce_ipam_addresses.mlx5_0.gateway == '10.220.0.254'
      vars:
        expected: {{v100-001.dc1.example.com: 10.220.0.1, v100-002.dc1.example.com: 10.220.0.2}}
""")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(probe)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_limit_changes_nothing(inventory, tmp_path):
    rc, _, output = playbook(inventory, "--limit", A800[3])
    assert rc == 0, output
    limited = addresses(inventory)
    (inventory / "ipam" / "roce-ledger.yml").unlink()
    rc, _, output = playbook(inventory)
    assert rc == 0, output
    assert addresses(inventory) == limited


def test_check_mode_previews_a_new_host_and_writes_nothing(inventory):
    assert playbook(inventory)[0] == 0
    before = (inventory / "ipam" / "roce-ledger.yml").read_text()
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["pool_hpc"]["children"]["hpc_v100"]["hosts"]["v100-003.dc1.example.com"] = None
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    rc, _, output = playbook(inventory, "--check", "--diff")
    assert rc == 0, output
    assert "v100-rail0 v100-003.dc1.example.com mlx5_0 10.220.0.3" in output
    assert (inventory / "ipam" / "roce-ledger.yml").read_text() == before


def remove_host(inventory, host):
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["pool_hpc"]["children"]["hpc_a800"]["hosts"] = dict.fromkeys(sorted(set(A800) - {host}))
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))


def test_removed_host_keeps_its_addresses_until_released(inventory):
    assert playbook(inventory)[0] == 0
    before = addresses(inventory)
    remove_host(inventory, A800[0])
    rc, report, output = playbook(inventory)
    assert rc == 0, output
    assert changed_total(report) == 0
    assert addresses(inventory) == before  # absence is not a release
    release = json.dumps({"roce_ipam_release": [{"host": A800[0]}]})
    rc, _, output = playbook(inventory, "-e", release, "--limit", A800[1])
    assert rc == 0, output
    assert addresses(inventory) == {key: ip for key, ip in before.items() if key[0] != A800[0]}


def test_rail_with_an_unknown_pool_fails_and_writes_nothing(inventory):
    assert playbook(inventory)[0] == 0
    before = (inventory / "ipam" / "roce-ledger.yml").read_text()
    (inventory / "group_vars" / "hpc_v100" / "rails.yml").write_text(
        "roce_rails:\n  - {device: mlx5_0, netdev: ens5f0np0, pool: v100-rail9}\n"
    )
    rc, _, output = playbook(inventory)
    assert rc != 0
    assert "unknown pool v100-rail9 requested by v100-001.dc1.example.com, v100-002.dc1.example.com" in output
    assert (inventory / "ipam" / "roce-ledger.yml").read_text() == before


def test_rail_without_a_pool_names_host_and_variable(inventory):
    (inventory / "group_vars" / "hpc_v100" / "rails.yml").write_text("roce_rails:\n  - {device: mlx5_0}\n")
    rc, _, output = playbook(inventory)
    assert rc != 0
    assert "host v100-001.dc1.example.com: roce_rails[0] needs a device and a pool" in output
    assert not (inventory / "ipam").exists()
