"""The mirror keys travel with the inventory as variables, and the inventory still parses (issue 13).

A key kept as keys/doca.asc in the inventory directory, as the example once suggested, stopped
every run: Ansible reads each file there outside group_vars/ and host_vars/ as an inventory source,
and any_unparsed_is_failed (ansible.cfg) fails on the first it cannot parse. The example keeps
each key as the text of rdma_stack_repo_key instead; these tests read the example from another
directory, as AWX and ansible-runner hand a job its inventory.
"""

import json
import shutil
from pathlib import Path

import pytest
from ansible_cli import ansible_run

ROOT = Path(__file__).resolve().parents[2]
ARMOUR = ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n", "-----END PGP PUBLIC KEY BLOCK-----\n")


@pytest.fixture
def inventory(tmp_path):
    copy = tmp_path / "elsewhere" / "example"
    shutil.copytree(ROOT / "inventories" / "example", copy)
    return copy


def test_the_example_parses_with_every_file_read_from_another_directory(inventory):
    run = ansible_run("ansible-inventory", "-i", inventory, "--list", env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"})
    assert run.returncode == 0, run.stderr
    hostvars = json.loads(run.stdout)["_meta"]["hostvars"]
    assert {host for host, variables in hostvars.items() if variables.get("rdma_stack_provider") == "doca"} == {
        f"a800-00{i}.dc1.example.com" for i in range(1, 5)
    }


def test_every_vendor_stack_host_gets_its_mirror_key_from_the_inventory(inventory):
    listing = ansible_run("ansible-inventory", "-i", inventory, "--list")
    assert listing.returncode == 0, listing.stderr
    vendor = {
        host
        for host, variables in json.loads(listing.stdout)["_meta"]["hostvars"].items()
        if variables.get("rdma_stack_provider") in {"doca", "mofed"}
    }
    assert vendor, "the example has no vendor-stack host"
    # The value as a role sees it, templated on the controller (debug connects to no node).
    run = ansible_run(
        "ansible",
        "-i",
        inventory,
        ",".join(sorted(vendor)),
        "-m",
        "ansible.builtin.debug",
        "-a",
        "var=rdma_stack_repo_key",
        env={"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]
    assert set(results) == vendor
    for host, result in results.items():
        key = result["rdma_stack_repo_key"]
        assert key.startswith(ARMOUR[0]) and key.endswith(ARMOUR[1]), (host, key)
