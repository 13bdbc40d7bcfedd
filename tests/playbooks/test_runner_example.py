"""examples/runner, run for real by ansible-runner as AWX runs a job (issue 13).

The private data directory is a copy elsewhere, with the example inventory copied into it: the
project comes from --project-dir, the inventory from a directory that is not the project's. The
smoke playbook connects to no node. ANSIBLE_CONFIG is unset, so the configuration in force is the
one Ansible finds from the project directory, as under AWX.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from ansible_cli import ansible_run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "runner"
PLAYBOOK = "examples/runner/smoke.yml"
REPORT = "Report what the run sees for this host"


@pytest.fixture
def private_data_dir(tmp_path):
    # Links followed: the inventory becomes a directory of its own, and the playbook stays behind,
    # so that a run that found either in the project instead would show it.
    copy = tmp_path / "job"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("smoke.yml", "artifacts"))
    assert (copy / "inventory").is_dir() and not (copy / "inventory").is_symlink()
    return copy


def run_example(private_data_dir):
    """(the run's status, {host: the report's message}, the output) of one ansible-runner run."""
    run = ansible_run(
        "ansible-runner",
        "run",
        private_data_dir,
        "--project-dir",
        ROOT,
        "-p",
        PLAYBOOK,
        "--ident",
        "smoke",
        env={"ANSIBLE_CONFIG": None},
    )
    artifacts = private_data_dir / "artifacts" / "smoke"
    reports = {}
    for path in (artifacts / "job_events").glob("*.json"):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and data.get("task") == REPORT:
            reports[data["host"]] = data["res"]["msg"]
    return (artifacts / "status").read_text(), reports, run.stdout + run.stderr


def test_the_example_runs_the_project_with_the_inventory_of_the_private_data_directory(private_data_dir):
    listing = ansible_run("ansible-inventory", "-i", ROOT / "inventories" / "example", "--list")
    assert listing.returncode == 0, listing.stderr
    expected = {
        host: [rail["device"] for rail in variables.get("roce_rails", [])]
        for host, variables in json.loads(listing.stdout)["_meta"]["hostvars"].items()
    }

    status, reports, output = run_example(private_data_dir)

    assert status == "successful", output
    assert {host: report["rails"] for host, report in reports.items()} == expected
    assert any(expected.values())
    for report in reports.values():
        assert report["config"] == str(ROOT / "ansible.cfg")
        assert report["inventory_dir"] == str(private_data_dir / "inventory")


def test_a_failed_check_fails_the_run_naming_host_and_variable(private_data_dir):
    host_vars = private_data_dir / "inventory" / "host_vars"
    host_vars.mkdir()
    (host_vars / "v100-002.dc1.example.com.yml").write_text(
        yaml.safe_dump({"roce_rails": [{"device": "mlx5_0", "netdev": "ens1f0", "pool": "no-such-pool"}]})
    )

    status, reports, output = run_example(private_data_dir)

    assert status == "failed"
    assert "v100-002.dc1.example.com: roce_rails: pools not in roce_ipam_pools: no-such-pool" in output
    assert "v100-002.dc1.example.com" not in reports
    assert "v100-001.dc1.example.com" in reports
