"""nm_checkpoint: whether a checkpoint still exists (arming moved to network_config)."""

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


def test_query_without_a_path_asks_for_any_checkpoint(nm, capsys):
    assert run(capsys)["exists"] is False
    nm["checkpoints"] = [CHECKPOINT]
    assert run(capsys)["exists"] is True
    assert run(capsys, path="/org/freedesktop/NetworkManager/Checkpoint/2")["exists"] is False
