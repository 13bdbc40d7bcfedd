#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Report a node's data-path hardware (NICs, NVMe, RDMA devices) as facts."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hardware_inventory
short_description: Report the NICs, NVMe namespaces and RDMA devices of a node
description:
  - Reads sysfs only; changes nothing, so it runs the same in check mode.
  - Sets the fact C(hpc_hardware) with three lists, C(nics), C(nvme) and C(rdma).
  - NICs are interfaces backed by a device (physical functions and SR-IOV VFs); bonds, bridges,
    VLANs and loopback are left out.
options:
  sysfs_root:
    description: Root of the sysfs tree to read; only tests change it.
    type: path
    default: /sys
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Gather the data-path hardware
  hardware_inventory:

- name: Show the NVMe serials
  ansible.builtin.debug:
    msg: "{{ hpc_hardware.nvme | map(attribute='serial') | list }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts set by the module.
  returned: always
  type: dict
  contains:
    hpc_hardware:
      description: The node's hardware.
      type: dict
      contains:
        nics:
          description: >-
            One entry per NIC with name, mac, driver, pci_address, speed_mbps (null while the link
            is down), mtu, operstate, numa_node, sriov_totalvfs, sriov_numvfs and is_vf.
          type: list
          elements: dict
        nvme:
          description: >-
            One entry per NVMe namespace with name, controller, serial, model, firmware,
            transport, pci_address, numa_node, namespace_id, size_bytes, logical_block_size.
          type: list
          elements: dict
        rdma:
          description: One entry per RDMA device with name, node_type, driver, parent and ports.
          type: list
          elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.sysfs import nics, nvme_namespaces, rdma_devices


def main():
    module = AnsibleModule(
        argument_spec={"sysfs_root": {"type": "path", "default": "/sys"}},
        supports_check_mode=True,
    )
    root = module.params["sysfs_root"]
    hardware = {"nics": nics(root), "nvme": nvme_namespaces(root), "rdma": rdma_devices(root)}
    module.exit_json(changed=False, ansible_facts={"hpc_hardware": hardware})


if __name__ == "__main__":
    main()
