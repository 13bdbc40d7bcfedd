"""Arm, confirm or inspect a NetworkManager checkpoint: the node's own network rollback timer."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nm_checkpoint
short_description: NetworkManager checkpoints, so that a network change undoes itself unless confirmed
description:
  - C(state=present) creates a checkpoint of every device with a rollback timeout, then reloads the
    profiles from disk and activates the C(activate) profiles, in one step on the node, so that the
    clock starts only where the change starts and never runs across a controller round trip.
    Unless the checkpoint is destroyed in time, NetworkManager itself restores the devices and
    connection profiles as they were, deletes connections created since and removes new software
    devices such as a bond. No SSH connection is needed for that; the timer runs inside
    NetworkManager on the node. When the reload or an activation fails, the module rolls back at
    once and fails with nmcli's output.
  - C(state=absent) destroys the checkpoint, which confirms the change; it fails when the
    checkpoint is gone, because then NetworkManager has already rolled the change back.
  - C(state=query) reports whether the checkpoint still exists; without C(path), whether any does.
  - Talks to NetworkManager's D-Bus API with C(busctl), which every systemd system has.
options:
  state: {description: What to do., type: str, choices: [present, absent, query], required: true}
  rollback_timeout: {description: Seconds until NetworkManager rolls back (present)., type: int, default: 90}
  activate:
    description: Profiles (ids) to activate in this order after the reload (present).
    type: list
    elements: str
    default: []
  path: {description: "D-Bus path of the checkpoint (absent; query).", type: str}
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Arm the rollback timer and apply the change, detached from the SSH session
  nm_checkpoint:
    state: present
    rollback_timeout: 90
    activate: [hpc-bond0, hpc-bond0.100]
  async: 90
  poll: 0
  register: apply_job

- name: Confirm the change
  nm_checkpoint:
    state: absent
    path: "{{ applied.path }}"
"""

RETURN = r"""
path: {description: The checkpoint's D-Bus path., returned: success, type: str}
exists: {description: Whether the checkpoint (any checkpoint, for a query without path) exists now., returned: always,
  type: bool}
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.netbackend import nm_call, nm_checkpoints

# DELETE_NEW_CONNECTIONS | DISCONNECT_NEW_DEVICES: a rollback also removes what the change created.
CREATE_FLAGS = 0x02 | 0x04


def arm_and_apply(module, busctl, existing):
    if existing:
        module.fail_json(
            msg=(
                f"NetworkManager already holds checkpoint(s) {', '.join(existing)}: another change waits for "
                "confirmation or its run died; it rolls back when its timeout ends, then run again"
            ),
            exists=True,
        )
    if module.params["rollback_timeout"] < 1:
        # NetworkManager takes 0 as "never roll back".
        module.fail_json(msg=f"rollback_timeout must be at least 1 s, got {module.params['rollback_timeout']}")
    if module.check_mode:
        module.exit_json(changed=True, path=None, exists=False)
    timeout = str(module.params["rollback_timeout"])
    rc, out, err = nm_call(module, busctl, "CheckpointCreate", "aouu", "0", timeout, str(CREATE_FLAGS))
    created = re.search(r'"([^"]+)"', out)
    if rc != 0 or not created:
        module.fail_json(msg=f"cannot create a NetworkManager checkpoint: {(err or out).strip()}")
    path = created.group(1)
    nmcli = module.get_bin_path("nmcli", required=True)
    commands = [[nmcli, "connection", "reload"]]
    commands += [[nmcli, "--wait", "60", "connection", "up", "id", profile] for profile in module.params["activate"]]
    for command in commands:
        rc, out, err = module.run_command(command)
        if rc != 0:
            rolled_back = nm_call(module, busctl, "CheckpointRollback", "o", path)[0] == 0
            module.fail_json(
                msg=(
                    f"{' '.join(command[1:])} failed (rc {rc}): {(err or out).strip()}; "
                    + ("rolled back at once" if rolled_back else f"checkpoint {path} rolls back at its timeout")
                ),
                path=path,
                exists=not rolled_back,
            )
    module.exit_json(changed=True, path=path, exists=True)


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent", "query"], "required": True},
            "rollback_timeout": {"type": "int", "default": 90},
            "activate": {"type": "list", "elements": "str", "default": []},
            "path": {"type": "str"},
        },
        required_if=[("state", "absent", ["path"])],
        supports_check_mode=True,
    )
    state, path = module.params["state"], module.params["path"]
    busctl = module.get_bin_path("busctl", required=True)
    existing = nm_checkpoints(module, busctl)

    if state == "query":
        module.exit_json(changed=False, path=path, exists=path in existing if path else bool(existing))
    if state == "present":
        arm_and_apply(module, busctl, existing)
    if path not in existing:
        module.fail_json(
            msg=f"checkpoint {path} is gone: NetworkManager has rolled the change back", path=path, exists=False
        )
    if not module.check_mode:
        rc, _out, err = nm_call(module, busctl, "CheckpointDestroy", "o", path)
        if rc != 0:
            module.fail_json(msg=f"cannot confirm checkpoint {path}: {err.strip()}", path=path, exists=True)
    module.exit_json(changed=True, path=path, exists=False)


if __name__ == "__main__":
    main()
