"""Confirm a network change from the node, while it is still in place, or say that it rolled back."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: network_confirm
short_description: Confirm a network change once the node reaches its check targets, in one step on the node
description:
  - Pings every check target from the node, once a second, for at most C(timeout) seconds. Before
    and after each round it looks whether the change is still armed; once the rollback timer has
    fired it stops, and answers of that round do not count, so that a target that answers only
    because the node rolled back never confirms anything.
  - When all targets answered, it confirms at once, in the same step, by disarming the rollback
    timer - destroying the NetworkManager checkpoint or renaming away the deadline file of the
    netplan rollback timer. If the timer fired first, the change is reported as rolled back.
  - When a target stays silent for C(timeout) seconds, it starts the rollback at once (NetworkManager's
    CheckpointRollback, or the netplan deadline moved to now); the node's own clock runs long enough
    for the slowest node of a batch to be collected, and a change judged unconfirmed need not wait
    for it. It never fails on an unconfirmed change; the caller judges, from C(confirmed),
    C(rolled_back) and C(unanswered), and waits for the node's rollback. C(unanswered) lists the
    targets that stayed silent in the rounds that counted; it is empty when the timer fired before
    any did.
  - With no targets, the change is confirmed as soon as the module runs; the controller reaching
    the node again is then the only check.
options:
  backend: {description: Which rollback timer the change runs under., type: str, required: true,
    choices: [networkmanager, netplan]}
  checkpoint: {description: "D-Bus path of the NetworkManager checkpoint (networkmanager).", type: str}
  rollback_dir: {description: "Directory of the netplan rollback timer, holding its deadline file (netplan).",
    type: path}
  targets: {description: IP addresses that must answer a ping from the node., type: list, elements: str,
    required: true}
  timeout: {description: Seconds to wait for the targets., type: int, default: 20}
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Confirm the bond change once the other node answers
  network_confirm:
    backend: networkmanager
    checkpoint: "{{ applied.path }}"
    targets: [10.10.0.2]
    timeout: 20
  register: confirmed
"""

RETURN = r"""
confirmed: {description: The targets answered and the rollback timer is disarmed., returned: always, type: bool}
rolled_back: {description: The rollback timer fired before the change could be confirmed., returned: always,
  type: bool}
# Not named "unreachable": Ansible reads a true value under that key as the host being unreachable.
unanswered: {description: Targets that had not answered when the wait ended., returned: always, type: list,
  elements: str}
"""

import fcntl
import ipaddress
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.netbackend import nm_call, nm_checkpoints


class NetworkManagerTimer:
    def __init__(self, module, checkpoint):
        self.module, self.checkpoint = module, checkpoint
        self.busctl = module.get_bin_path("busctl", required=True)

    def armed(self):
        return self.checkpoint in nm_checkpoints(self.module, self.busctl)

    def disarm(self):
        return nm_call(self.module, self.busctl, "CheckpointDestroy", "o", self.checkpoint)[0] == 0

    def roll_back_now(self):
        return nm_call(self.module, self.busctl, "CheckpointRollback", "o", self.checkpoint)[0] == 0


class NetplanTimer:
    """hpc-netplan-rollback: whoever renames the deadline file first, confirmation or rollback, wins."""

    def __init__(self, directory):
        self.directory = directory
        self.deadline = os.path.join(directory, "deadline")
        self.confirmed = os.path.join(directory, "confirmed")

    def armed(self):
        return os.path.exists(self.deadline)

    def disarm(self):
        try:
            os.rename(self.deadline, self.confirmed)
        except FileNotFoundError:
            return False
        return True

    def roll_back_now(self):
        """Move the deadline to now, under the lock the rollback script decides under; it fires within 1 s."""
        with open(os.path.join(self.directory, "lock"), "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(self.deadline):
                return False  # confirmed or rolling back already
            with open(self.deadline + ".new", "w", encoding="utf-8") as out:
                out.write("0\n")
            os.rename(self.deadline + ".new", self.deadline)
        return False  # begun, not done: the caller waits for the script


def main():
    module = AnsibleModule(
        argument_spec={
            "backend": {"type": "str", "required": True, "choices": ["networkmanager", "netplan"]},
            "checkpoint": {"type": "str"},
            "rollback_dir": {"type": "path"},
            "targets": {"type": "list", "elements": "str", "required": True},
            "timeout": {"type": "int", "default": 20},
        },
        required_if=[("backend", "networkmanager", ["checkpoint"]), ("backend", "netplan", ["rollback_dir"])],
    )
    params = module.params
    timer = (
        NetworkManagerTimer(module, params["checkpoint"])
        if params["backend"] == "networkmanager"
        else NetplanTimer(params["rollback_dir"])
    )
    for target in params["targets"]:
        try:
            ipaddress.ip_address(target)
        except ValueError:
            module.fail_json(msg=f"targets: {target!r} is not an IP address")
    ping = module.get_bin_path("ping", required=True)
    pending = list(params["targets"])
    counted = False  # whether a round ran and finished with the change still armed
    give_up = time.monotonic() + params["timeout"]
    while timer.armed():
        silent = [target for target in pending if module.run_command([ping, "-c", "1", "-W", "1", target])[0] != 0]
        if not timer.armed():
            break  # an answer in this round may come from the rolled-back network: it does not count
        pending, counted = silent, True
        if not pending:
            confirmed = timer.disarm()
            module.exit_json(changed=confirmed, confirmed=confirmed, rolled_back=not confirmed, unanswered=[])
        if time.monotonic() >= give_up:
            # Judged: nothing is gained by waiting for the node's clock (it runs long enough for the
            # slowest node of the batch to be collected); the rollback starts now.
            rolled_back = timer.roll_back_now()
            module.exit_json(changed=True, confirmed=False, rolled_back=rolled_back, unanswered=pending)
        time.sleep(1)
    module.exit_json(changed=False, confirmed=False, rolled_back=True, unanswered=pending if counted else [])


if __name__ == "__main__":
    main()
