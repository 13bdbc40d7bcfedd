"""The hardware_inventory module end to end: arguments in, facts out, nothing changed."""

import json
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load
from test_sysfs import sys_root  # noqa: F401  (fixture)

module = _load("hardware_inventory", ROOT / "library" / "hardware_inventory.py")


def run(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 0
    return json.loads(capsys.readouterr().out)


def test_reports_facts_and_changes_nothing(capsys, sys_root: Path):  # noqa: F811
    result = run(capsys, {"sysfs_root": str(sys_root), "_ansible_check_mode": True})
    assert result["changed"] is False
    hardware = result["ansible_facts"]["hpc_hardware"]
    assert [nic["name"] for nic in hardware["nics"]] == ["enp0s3", "enp1s0", "enp1s0v0"]
    assert [ns["serial"] for ns in hardware["nvme"]] == ["LABN1NVME0", "LABN1NVME1"]
    assert [dev["name"] for dev in hardware["rdma"]] == ["rxe0"]


def test_rejects_unknown_option(capsys):
    with patch_module_args({"bogus": 1}), pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 1
    assert "bogus" in json.loads(capsys.readouterr().out)["msg"]
