"""roce_ipam_allocate: what the action keeps for the lookup, and how it reads the ledger file."""

import json

import pytest
from ansible.errors import AnsibleActionFail
from conftest import ROOT, _load

action = _load("roce_ipam_allocate", ROOT / "action_plugins" / "roce_ipam_allocate.py")
lookup = _load("roce_ipam_addresses", ROOT / "lookup_plugins" / "roce_ipam_addresses.py")


def test_each_host_is_kept_as_one_json_text_under_the_name_the_lookup_reads():
    allocations = {"node1": {"mlx5_0": {"address": "10.0.0.1", "prefix": 24, "pool": "rail0", "gateway": None}}}
    facts = action.published(allocations, ["rail0 node1 mlx5_0 10.0.0.1"], [])
    assert action.ADDRESSES_FACT == lookup.ADDRESSES_FACT
    assert json.loads(facts[action.ADDRESSES_FACT]["node1"]) == allocations["node1"]
    assert facts[action.CHANGE_FACT] == {"taken": ["rail0 node1 mlx5_0 10.0.0.1"], "freed": []}


def test_a_large_change_is_shown_in_part_with_its_count():
    taken = [f"rail0 node{n} mlx5_0 10.0.{n // 256}.{n % 256}" for n in range(1, 80_001)]
    change = action.published({}, taken, taken[:3])[action.CHANGE_FACT]
    assert change["taken"] == [
        *taken[: action.CHANGE_LINES_SHOWN],
        f"... and {80_000 - action.CHANGE_LINES_SHOWN} more (the task's result and the ledger's diff list them all)",
    ]
    assert change["freed"] == taken[:3]


def test_the_ledger_is_read_as_text_or_absent_and_anything_else_fails(tmp_path):
    path = tmp_path / "roce-ledger.yml"
    assert action.read_ledger_text(str(path)) is None
    path.write_text("version: 1\n")
    assert action.read_ledger_text(str(path)) == "version: 1\n"
    path.write_bytes(b"version: 1\n# \xff\n")
    with pytest.raises(AnsibleActionFail, match=r"is not UTF-8 text \(invalid start byte at byte 13\)"):
        action.read_ledger_text(str(path))
    with pytest.raises(AnsibleActionFail, match=r"cannot read the ledger .*: Is a directory"):
        action.read_ledger_text(str(tmp_path))
