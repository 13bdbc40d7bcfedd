"""network_confirm: the node confirms a network change only while it is still in place."""

import json

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load

confirm = _load("network_confirm", ROOT / "library" / "network_confirm.py")
CHECKPOINT = "/org/freedesktop/NetworkManager/Checkpoint/3"


@pytest.fixture
def node(monkeypatch):
    """A fake node: ping answers for the targets in `up`; `on_ping` runs before each ping."""
    state = {"up": set(), "pings": [], "on_ping": None, "checkpoints": [CHECKPOINT], "destroyed": [], "rolled_back": []}

    def run_command(_module, argv, **_kwargs):
        if argv[0] == "ping":
            if state["on_ping"]:
                state["on_ping"](len(state["pings"]))
            state["pings"].append(argv[-1])
            return (0 if argv[-1] in state["up"] else 1), "", ""
        if argv[:2] == ["busctl", "get-property"]:
            return 0, f"ao {len(state['checkpoints'])} " + " ".join(f'"{c}"' for c in state["checkpoints"]), ""
        if argv[:2] == ["busctl", "call"] and argv[5] == "CheckpointRollback":
            state["checkpoints"].remove(argv[-1])
            state["rolled_back"].append(argv[-1])
            return 0, "", ""
        if argv[:2] == ["busctl", "call"] and argv[5] == "CheckpointDestroy":
            if state.get("rollback_at_destroy"):
                state["checkpoints"] = []
            if argv[-1] not in state["checkpoints"]:
                return 1, "", "no such checkpoint"
            state["checkpoints"].remove(argv[-1])
            state["destroyed"].append(argv[-1])
            return 0, "", ""
        raise AssertionError(f"unexpected command {argv}")

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda _module, name, **_kw: name)
    monkeypatch.setattr(confirm.time, "sleep", lambda _seconds: None)
    return state


def run(capsys, **args):
    with patch_module_args(args), pytest.raises(SystemExit):
        confirm.main()
    return json.loads(capsys.readouterr().out)


def netplan_timer(tmp_path):
    (tmp_path / "deadline").write_text("2000000000\n")
    return {"backend": "netplan", "rollback_dir": str(tmp_path)}


def test_targets_that_answer_confirm_the_netplan_change(tmp_path, node, capsys):
    node["up"] = {"10.10.0.2", "fd00:10::2"}
    result = run(capsys, targets=["10.10.0.2", "fd00:10::2"], **netplan_timer(tmp_path))
    assert (result["confirmed"], result["rolled_back"], result["unanswered"], result["changed"]) == (
        True,
        False,
        [],
        True,
    )
    assert not (tmp_path / "deadline").exists()
    assert (tmp_path / "confirmed").read_text() == "2000000000\n"


def test_a_silent_target_starts_the_netplan_rollback_at_once(tmp_path, node, capsys):
    node["up"] = {"10.10.0.2"}
    result = run(capsys, targets=["10.10.0.2", "10.10.0.9"], timeout=0, **netplan_timer(tmp_path))
    assert (result["confirmed"], result["rolled_back"], result["unanswered"]) == (False, False, ["10.10.0.9"])
    # The deadline is now: the rollback script fires within a second; the caller waits for it.
    assert (tmp_path / "deadline").read_text() == "0\n"
    assert not (tmp_path / "confirmed").exists()


def test_a_silent_target_rolls_networkmanager_back_at_once(node, capsys):
    result = run(capsys, backend="networkmanager", checkpoint=CHECKPOINT, targets=["10.10.0.9"], timeout=0)
    assert (result["confirmed"], result["rolled_back"], result["unanswered"]) == (False, True, ["10.10.0.9"])
    assert node["rolled_back"] == [CHECKPOINT]
    assert node["checkpoints"] == []


def test_a_target_that_answers_only_after_the_rollback_confirms_nothing(tmp_path, node, capsys):
    def timer_fires_after_the_first_round(pings_so_far):
        if pings_so_far == 1:  # the node rolled back: its old network answers again
            (tmp_path / "deadline").rename(tmp_path / "rolling-back")
            node["up"] = {"10.10.0.2"}

    node["on_ping"] = timer_fires_after_the_first_round
    result = run(capsys, targets=["10.10.0.2"], timeout=60, **netplan_timer(tmp_path))
    assert (result["confirmed"], result["rolled_back"], result["unanswered"]) == (False, True, ["10.10.0.2"])
    assert node["pings"] == ["10.10.0.2", "10.10.0.2"]  # the second answer came after the rollback
    assert not (tmp_path / "confirmed").exists()


def test_the_timer_firing_between_the_answer_and_the_confirmation_is_a_rollback(node, capsys):
    node["up"] = {"10.10.0.2"}
    node["rollback_at_destroy"] = True
    result = run(capsys, backend="networkmanager", checkpoint=CHECKPOINT, targets=["10.10.0.2"])
    assert (result["confirmed"], result["rolled_back"], result["unanswered"]) == (False, True, [])
    assert node["destroyed"] == []


def test_networkmanager_checkpoint_is_destroyed_once_the_targets_answer(node, capsys):
    node["up"] = {"10.10.0.2"}
    result = run(capsys, backend="networkmanager", checkpoint=CHECKPOINT, targets=["10.10.0.2"])
    assert result["confirmed"] is True
    assert node["destroyed"] == [CHECKPOINT]


def test_a_timer_gone_before_any_round_blames_no_target(node, capsys):
    node["checkpoints"] = []
    result = run(capsys, backend="networkmanager", checkpoint=CHECKPOINT, targets=["10.10.0.2"])
    assert (result["rolled_back"], result["unanswered"]) == (True, [])
    assert node["pings"] == []


@pytest.mark.parametrize("target", ["-V", "peer.example.org", "10.10.0.2; reboot"])
def test_a_target_that_is_not_an_ip_address_is_refused_before_any_ping(tmp_path, node, capsys, target):
    result = run(capsys, targets=[target], **netplan_timer(tmp_path))
    assert result["failed"] is True
    assert result["msg"] == f"targets: {target!r} is not an IP address"
    assert node["pings"] == []
    assert (tmp_path / "deadline").exists()
