"""nm_checkpoint: arming and applying are one step; a failed activation rolls back at once."""

import json

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load

nm_checkpoint = _load("nm_checkpoint", ROOT / "library" / "nm_checkpoint.py")
CHECKPOINT = "/org/freedesktop/NetworkManager/Checkpoint/7"


@pytest.fixture
def nm(monkeypatch):
    """A fake NetworkManager: records commands; activating a profile in `broken` fails."""
    state = {"checkpoints": [], "commands": [], "broken": set()}

    def run_command(_module, argv, **_kwargs):
        state["commands"].append(argv)
        if argv[:2] == ["busctl", "get-property"]:
            return 0, f"ao {len(state['checkpoints'])} " + " ".join(f'"{c}"' for c in state["checkpoints"]), ""
        if argv[:2] == ["busctl", "call"]:
            method = argv[5]
            if method == "CheckpointCreate":
                state["checkpoints"].append(CHECKPOINT)
                return 0, f'o "{CHECKPOINT}"', ""
            state["checkpoints"].remove(argv[-1])  # CheckpointRollback, CheckpointDestroy
            return 0, "", ""
        if argv[0] == "nmcli":
            return (10, "", f"Error: {argv[-1]} failed") if argv[-1] in state["broken"] else (0, "", "")
        raise AssertionError(f"unexpected command {argv}")

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda _module, name, **_kw: name)
    return state


def run(capsys, **args):
    with patch_module_args(args), pytest.raises(SystemExit):
        nm_checkpoint.main()
    return json.loads(capsys.readouterr().out)


def test_arms_then_reloads_and_activates_in_order(nm, capsys):
    result = run(capsys, state="present", rollback_timeout=45, activate=["hpc-bond0", "hpc-bond0.100"])
    assert (result["path"], result["exists"], result["changed"]) == (CHECKPOINT, True, True)
    create = nm["commands"][1]
    assert create[5:] == ["CheckpointCreate", "aouu", "0", "45", "6"]
    assert nm["commands"][2:] == [
        ["nmcli", "connection", "reload"],
        ["nmcli", "--wait", "60", "connection", "up", "id", "hpc-bond0"],
        ["nmcli", "--wait", "60", "connection", "up", "id", "hpc-bond0.100"],
    ]


def test_a_failed_activation_rolls_back_at_once(nm, capsys):
    nm["broken"] = {"hpc-bond0.100"}
    result = run(capsys, state="present", activate=["hpc-bond0", "hpc-bond0.100"])
    assert result["failed"] is True
    assert (
        "connection up id hpc-bond0.100 failed (rc 10): Error: hpc-bond0.100 failed; rolled back at once"
        in (result["msg"])
    )
    assert nm["commands"][-1][5:] == ["CheckpointRollback", "o", CHECKPOINT]
    assert nm["checkpoints"] == []


def test_a_pending_checkpoint_refuses_a_new_change(nm, capsys):
    nm["checkpoints"] = ["/org/freedesktop/NetworkManager/Checkpoint/1"]
    result = run(capsys, state="present", activate=["hpc-bond0"])
    assert result["failed"] is True
    assert "another change waits for confirmation" in result["msg"]
    assert not any(command[0] == "nmcli" for command in nm["commands"])


def test_query_without_a_path_asks_for_any_checkpoint(nm, capsys):
    assert run(capsys, state="query")["exists"] is False
    nm["checkpoints"] = [CHECKPOINT]
    assert run(capsys, state="query")["exists"] is True
    assert run(capsys, state="query", path="/org/freedesktop/NetworkManager/Checkpoint/2")["exists"] is False


def test_a_zero_timeout_is_refused_since_networkmanager_takes_it_as_never(nm, capsys):
    result = run(capsys, state="present", rollback_timeout=0, activate=["hpc-bond0"])
    assert result["failed"] is True
    assert result["msg"] == "rollback_timeout must be at least 1 s, got 0"
    assert nm["checkpoints"] == []
