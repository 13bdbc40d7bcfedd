# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which network backend keeps a node's configuration: NetworkManager or netplan (systemd-networkd)."""

from __future__ import annotations

import re


def choose_backend(variable, wanted, nm_running, has_netplan):
    """The backend to use and, where none fits, why (as a problem sentence naming the variable)."""
    if wanted == "networkmanager" and not nm_running:
        return None, f"{variable}: networkmanager is asked for, but NetworkManager is not running"
    if wanted == "netplan" and not has_netplan:
        return None, f"{variable}: netplan is asked for, but the netplan command is not installed"
    if wanted == "auto":
        if nm_running:
            return "networkmanager", None
        if has_netplan:
            return "netplan", None
        return None, f"{variable}: neither NetworkManager runs nor netplan is installed; no supported backend"
    return wanted, None


def detect(module, variable, wanted):
    """(backend, problem or None, nm_installed, nm_running) on the node an AnsibleModule runs on."""
    nm_installed = bool(module.get_bin_path("NetworkManager", opt_dirs=["/usr/sbin"]))
    systemctl = module.get_bin_path("systemctl")
    nm_running = bool(systemctl) and module.run_command([systemctl, "is-active", "--quiet", "NetworkManager"])[0] == 0
    backend, problem = choose_backend(variable, wanted, nm_running, bool(module.get_bin_path("netplan")))
    return backend, problem, nm_installed, nm_running


# NetworkManager checkpoints over D-Bus (busctl, which every systemd system has): the node's own
# rollback timer, armed by network_config and disarmed by network_confirm.
NM_SERVICE = "org.freedesktop.NetworkManager"
NM_OBJECT = "/org/freedesktop/NetworkManager"


def nm_call(module, busctl, method, signature, *args):
    """(rc, out, err) of a method call on NetworkManager's main object."""
    return module.run_command([busctl, "call", NM_SERVICE, NM_OBJECT, NM_SERVICE, method, signature, *args])


def nm_checkpoints(module, busctl):
    """The D-Bus paths of the checkpoints NetworkManager holds; fails the module when unreadable."""
    rc, out, err = module.run_command([busctl, "get-property", NM_SERVICE, NM_OBJECT, NM_SERVICE, "Checkpoints"])
    if rc != 0:
        module.fail_json(msg=f"cannot read NetworkManager's checkpoints: {err.strip()}")
    return re.findall(r'"([^"]+)"', out)
