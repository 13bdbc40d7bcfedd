#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a NetworkManager checkpoint (the node's network rollback timer) still exists."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nm_checkpoint
short_description: Whether a NetworkManager checkpoint still exists, that is, has not rolled back yet
description:
  - C(network_config) arms a checkpoint for each change through NetworkManager, and C(network_confirm)
    destroys it to confirm the change. This module only looks. With C(path), whether that
    checkpoint still exists (it is gone once NetworkManager rolled back or the change was
    confirmed); without, whether any does.
  - Talks to NetworkManager's D-Bus API with C(busctl), which every systemd system has.
options:
  path: {description: "D-Bus path of the checkpoint.", type: str}
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Wait until NetworkManager has rolled back
  nm_checkpoint:
    path: "{{ applied.path }}"
  register: left
  until: not left.exists
  retries: 30
  delay: 5
"""

RETURN = r"""
exists: {description: Whether the checkpoint (any checkpoint, without path) exists now., returned: always, type: bool}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.netbackend import nm_checkpoints


def main():
    module = AnsibleModule(argument_spec={"path": {"type": "str"}}, supports_check_mode=True)
    path = module.params["path"]
    existing = nm_checkpoints(module, module.get_bin_path("busctl", required=True))
    module.exit_json(changed=False, path=path, exists=path in existing if path else bool(existing))


if __name__ == "__main__":
    main()
