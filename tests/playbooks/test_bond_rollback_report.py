"""What the network layer says after an unconfirmed change (roles/network_change/tasks/rollback_report.yml).

Run as the bond role calls it (owner bond, label bond0). The role's own task file runs on this
machine, once per state a node can be in after its rollback timer left: one inventory host per
state, each with its own saved directory and markers as the rollback script leaves them, and a
`systemctl` stub that answers `systemctl show` for that host (the real unit is transient and
collected, so it is usually "not-found"). Only a rolled-back marker may read as a rollback.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FAILURE = "check targets unreachable from the node: 10.10.0.1"
GONE = "LoadState=not-found\nActiveState=inactive\nResult=success"
WHEN = "2026-01-01T00:00:45Z"
STUB = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
if [ "${FAKE_SHOW_RC:-0}" != 0 ]; then echo "$FAKE_SHOW_ERR" >&2; exit "$FAKE_SHOW_RC"; fi
printf '%s\\n' "$FAKE_SHOW"
"""

HOSTS = {
    "rolled_back": {"markers": {"rolled-back": WHEN}, "show": GONE},
    "apply_failed": {"markers": {"rollback-failed": f"{WHEN} netplan apply failed (exit 1)"}, "show": GONE},
    "both_markers": {"markers": {"rolled-back": WHEN, "rollback-failed": f"{WHEN} x failed (exit 2)"}, "show": GONE},
    "unit_failed": {"markers": {}, "show": "LoadState=loaded\nActiveState=failed\nResult=exit-code"},
    "no_result": {"markers": {}, "show": GONE},
    "still_running": {"markers": {}, "show": "LoadState=loaded\nActiveState=active\nResult=success"},
    "unreadable": {"markers": {"rolled-back": "x"}, "show": "", "show_rc": 1, "show_err": "Failed to connect to bus"},
    "unreachable": {"markers": {"rolled-back": "x"}, "show": GONE, "back_failed": True},
    "networkmanager": {"markers": {}, "show": GONE, "backend": "networkmanager"},
}

PLAYBOOK = """
- name: Report an unconfirmed change as the network layer does for the bond
  hosts: all
  gather_facts: false
  environment:
    PATH: "{{ stubs }}:{{ lookup('env', 'PATH') }}"
    FAKE_LOG: "{{ out }}/{{ inventory_hostname }}.systemctl"
    FAKE_SHOW: "{{ show }}"
    FAKE_SHOW_RC: "{{ show_rc | default(0) }}"
    FAKE_SHOW_ERR: "{{ show_err | default('') }}"
  tasks:
    - name: Make the saved directory of this host
      ansible.builtin.file:
        path: "{{ out }}/{{ inventory_hostname }}"
        state: directory
        mode: "0700"

    - name: Leave the markers of this host
      ansible.builtin.copy:
        content: "{{ item.value }}\\n"
        dest: "{{ out }}/{{ inventory_hostname }}/{{ item.key }}"
        mode: "0644"
      loop: "{{ markers | dict2items }}"

    - name: Run the role's report
      block:
        - name: Report
          ansible.builtin.include_role:
            name: network_change
            tasks_from: rollback_report.yml
          vars:
            network_change_owner: bond
            network_change_label: bond0
            network_change_backend: "{{ backend }}"
            network_change_rollback_dir: "{{ out }}/{{ inventory_hostname }}"

        - name: It must fail
          ansible.builtin.copy:
            content: "(no failure)"
            dest: "{{ out }}/{{ inventory_hostname }}.msg"
            mode: "0644"
      rescue:
        - name: Keep the message
          ansible.builtin.copy:
            content: "{{ ansible_failed_result.msg }}"
            dest: "{{ out }}/{{ inventory_hostname }}.msg"
            mode: "0644"
"""


@pytest.fixture(scope="module")
def messages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bond-report")
    out, stubs = tmp / "out", tmp / "stubs"
    out.mkdir()
    stubs.mkdir()
    (stubs / "systemctl").write_text(STUB)
    (stubs / "systemctl").chmod(0o755)
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "out": str(out),
                "stubs": str(stubs),
                "network_change_rollback_timeout": 45,
                "__network_change_failure": FAILURE,
            },
            "hosts": {
                name: {
                    "markers": host["markers"],
                    "show": host["show"],
                    "show_rc": host.get("show_rc", 0),
                    "show_err": host.get("show_err", ""),
                    "__network_change_back": {"failed": host.get("back_failed", False)},
                    "backend": host.get("backend", "netplan"),
                }
                for name, host in HOSTS.items()
            },
        }
    }
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp / "play.yml").write_text(PLAYBOOK)
    run = subprocess.run(
        ["ansible-playbook", "-i", str(tmp / "hosts.yml"), str(tmp / "play.yml")],
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    stats = json.loads(run.stdout)["stats"]
    assert all(stats[name]["rescued"] == 1 for name in HOSTS), stats

    def message(name):
        return (out / f"{name}.msg").read_text()

    message.saved = lambda name: out / name
    message.systemctl = lambda name: (
        (out / f"{name}.systemctl").read_text().splitlines() if (out / f"{name}.systemctl").exists() else []
    )
    return message


def head(name):
    return f"{name}: bond0: {FAILURE}. The change was not confirmed, "


UNKNOWN = "the state of its network is unknown; see journalctl -t hpc-bond and journalctl -u hpc-bond-rollback.service"


def test_a_rollback_that_left_its_marker_is_reported_as_rolled_back(messages):
    assert messages("rolled_back") == head("rolled_back") + (
        "so the node rolled its network back to the previous configuration by itself (rollback timer 45 s) "
        "and is reachable again."
    )
    assert messages.systemctl("rolled_back") == [
        "show --property=LoadState,ActiveState,Result hpc-bond-rollback.service"
    ]


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("apply_failed", "2026-01-01T00:00:45Z netplan apply failed (exit 1)"),
        ("both_markers", "2026-01-01T00:00:45Z x failed (exit 2)"),
        ("unit_failed", "unit result exit-code"),
    ],
)
def test_a_failed_rollback_says_so_with_the_step_the_state_and_where_to_look(messages, name, what):
    assert messages(name) == head(name) + (
        f"and the node's own rollback failed ({what}): the node is reachable, but its network is still in the "
        "changed configuration or only partly restored. The previous /etc/netplan is saved in "
        f"{messages.saved(name)}/netplan; see journalctl -t hpc-bond and journalctl -u hpc-bond-rollback.service "
        "on the node."
    )


def test_no_marker_is_not_a_rollback(messages):
    assert messages("no_result") == head("no_result") + (
        "and the node's rollback left no result (neither rolled-back nor rollback-failed in "
        f"{messages.saved('no_result')}): {UNKNOWN} on the node."
    )


def test_a_timer_still_running_is_not_a_rollback(messages):
    assert messages("still_running") == head("still_running") + (
        f"and the node's rollback timer (hpc-bond-rollback.service) is still active after the wait: {UNKNOWN} on the "
        "node."
    )


def test_a_state_that_cannot_be_read_is_not_a_rollback_even_with_a_marker(messages):
    assert messages("unreadable") == head("unreadable") + (
        f"and what the node's rollback left could not be read (Failed to connect to bus): {UNKNOWN} on the node."
    )


def test_an_unreachable_node_is_reported_and_not_read(messages):
    assert messages("unreachable") == head("unreachable") + (
        "so the node should have rolled back by itself, but it is still unreachable: check its console."
    )
    assert messages.systemctl("unreachable") == []


def test_networkmanager_rolls_back_through_its_checkpoint_and_reads_no_marker(messages):
    assert "rolled its network back to the previous configuration by itself" in messages("networkmanager")
    assert messages.systemctl("networkmanager") == []
