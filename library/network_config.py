#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one network layer: interfaces through NetworkManager or netplan, changed under a rollback."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: network_config
short_description: Configure interfaces through NetworkManager or netplan, changed under the node's own rollback
description:
  - Every role that configures a NIC describes its interfaces in one model (module_utils/hpc_datapath/network.py)
    and calls this module. The provider of the backend renders one file per interface, named by owner and
    interface. Files of the owner that the model no longer names are removed, and what they configured
    (addresses, policy routing rules and tables, software devices) goes with them.
  - C(state=preview) changes nothing. It reports the files that would change or go, the drift of the running
    state (existence, MTU, addresses, bond ports, routing rules) and the rollback clock.
  - C(state=applied) does the change in one step on the node, meant to run detached (async). It refuses while
    another change waits for confirmation, arms the rollback (a NetworkManager checkpoint, or a saved copy of
    /etc/netplan with a transient rollback unit), writes and removes the files, keeps NetworkManager off the
    devices netplan keeps (one unmanaged list for every owner, read from every owner's netplan files), applies
    the change, and only then restarts the rollback clock (C(rollback_timeout) + the apply budget; the controller
    confirms a batch only once it has collected its slowest node) and takes away what removed interfaces
    configured. network_confirm confirms it, or rolls it back at once when the check targets stay silent.
  - One change at a time on a node (a lock, and any pending change of either backend refuses), one owner per device,
    one backend per owner (moving between backends is refused; neither rollback covers both).
options:
  owner: {description: The role the interfaces belong to (a lower-case word)., type: str, required: true}
  backend: {description: The backend that keeps the interfaces., type: str, required: true,
    choices: [networkmanager, netplan]}
  interfaces: {description: The interfaces in the model of module_utils/hpc_datapath/network.py., type: list,
    elements: dict, required: true}
  drift: {description: Drift the role's own inspection found; the change is applied even without a file to change.,
    type: list, elements: str, default: []}
  state: {description: What to do., type: str, choices: [preview, applied], default: preview}
  rollback_timeout: {description: Seconds after the change is in place until an unconfirmed change undoes itself.,
    type: int, default: 90}
  rollback_program: {description: The netplan rollback script on the node., type: path,
    default: /usr/local/sbin/hpc-netplan-rollback}
  rollback_dir: {description: Where the netplan rollback keeps its saved copy and its deadline., type: path,
    default: /var/lib/hpc-datapath/netplan-rollback}
  retired: {description: Files of an earlier layout of the owner (glob patterns), removed under the same change.,
    type: list, elements: str, default: []}
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: What the change would do
  network_config:
    owner: roce
    backend: netplan
    interfaces: "{{ __roce_plan.network }}"
  register: preview

- name: Arm the rollback and apply, detached from the SSH session
  network_config:
    owner: roce
    backend: netplan
    interfaces: "{{ __roce_plan.network }}"
    state: applied
    rollback_timeout: 90
  async: "{{ preview.clock.apply_budget + 90 }}"
  poll: 0
"""

RETURN = r"""
needed: {description: Whether anything differs (changed, kept when the caller overrides changed)., returned: always,
  type: bool}
changed_files: {description: Files that are written., returned: always, type: list, elements: str}
removed_files: {description: Files that are removed., returned: always, type: list, elements: str}
drift: {description: Where the running state differs., returned: always, type: list, elements: str}
clock: {description: "The rollback clock: rollback_timeout, apply_budget, and rollback_wait, the most a rollback
  can take from the start of the change.", returned: always, type: dict}
path: {description: The NetworkManager checkpoint (applied)., returned: when applied through NetworkManager, type: str}
"""

import configparser
import fcntl
import glob
import os
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath.iproute import ip_json
from ansible.module_utils.hpc_datapath.netbackend import nm_call, nm_checkpoints
from ansible.module_utils.hpc_datapath.network import (
    APPLY_BUDGET,
    HEADER,
    NETPLAN,
    NM_ACTIVATION_WAIT,
    NM_CONF,
    PROVIDERS,
    UNMANAGED_FILE,
    check_model,
    devices_of,
    drift,
    unmanaged_conf,
)

# NetworkManager checkpoint flags: delete connections and disconnect devices made after it.
CREATE_FLAGS = 0x02 | 0x04
# Held by the applied step, so that two owners never arm at once (tmpfs: gone with a reboot).
ARM_LOCK = "/run/lock/hpc-network-change.lock"


def read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_text(path, text):
    """Atomically: a reader sees the old file or the new one, never half of it."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    mode = 0o644 if path.endswith(".conf") else 0o600  # profiles and netplan files may hold secrets
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".hpc-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _rules(interfaces):
    return {(int(r["priority"]), r["from"], int(r["table"])) for i in interfaces for r in i["rules"]}


def _table_routes(interfaces):
    return {(to, int(table)) for i in interfaces for to, table in i["table_routes"]}


class Change:
    """What the model asks of this node: files to write and to remove, and the drift."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.owner, self.interfaces = params["owner"], params["interfaces"]
        problems = check_model(self.owner, self.interfaces)
        if problems:
            module.fail_json(msg="; ".join(problems))
        self.provider = PROVIDERS[params["backend"]]()
        self.other = PROVIDERS["netplan" if params["backend"] == "networkmanager" else "networkmanager"]()
        self.wanted = self.provider.files(self.owner, self.interfaces)
        names = {i["name"] for i in self.interfaces}
        # Files of an earlier layout only go: they are never read as ours (a bond named data-bond had
        # 60-hpc-data-bond.yaml, which the owners' patterns would take for a file of owner data).
        self.retired = {p for pattern in params["retired"] for p in glob.glob(pattern)}
        owned = [p for p in self.provider.owned(self.owner) if p not in self.retired]
        stale = [p for p in owned if p not in self.wanted]
        # What a stale file configured goes with it; a file we cannot read back stops the run.
        self.removed_interfaces = [i for i in (self._read(self.provider, p) for p in stale) if i["name"] not in names]
        # Rules and routes of the owner's files as they are, less those of the files as they will be:
        # only what our files configured, never a whole table someone else may use.
        before = [self._read(self.provider, p) for p in owned]
        after = [self.provider.read(text) for text in self.wanted.values()]
        self.stale_rules = sorted(_rules(before) - _rules(after))
        self.stale_routes = sorted(_table_routes(before) - _table_routes(after))
        switched = [p for p in self.other.owned(self.owner) if p not in self.retired]
        if switched:
            # Neither rollback covers both backends: a checkpoint cannot bring back netplan files, and
            # the netplan rollback cannot bring back profiles. Moving is an operator's step.
            module.fail_json(
                msg=f"{self.owner}: the interfaces are kept by {self.other.name} ({', '.join(switched)}), not "
                f"{self.provider.name}: moving them between backends is not done under a rollback; remove those "
                "files and take the interfaces down (on the console or the management NIC), then run again"
            )
        self._refuse_foreign_devices()
        stale += self.retired
        unmanaged_path, unmanaged_text = self._unmanaged()
        if unmanaged_text is not None:
            self.wanted[unmanaged_path] = unmanaged_text
        elif unmanaged_path and os.path.exists(unmanaged_path):
            stale.append(unmanaged_path)
        self.changed_files = [path for path, text in self.wanted.items() if read_text(path) != text]
        self.removed_files = sorted(set(stale))
        self.drift = list(params["drift"]) + self._drift()

    def _refuse_foreign_devices(self):
        """A device another owner's files configure is not this owner's to configure too."""
        mine = set(devices_of(self.interfaces))
        own = set(self.provider.owned(self.owner)) | set(self.other.owned(self.owner)) | self.retired
        for provider in (self.provider, self.other):
            for path in provider.owned("*"):
                text = read_text(path)
                if path in own or text is None or not text.startswith(HEADER):
                    continue  # ours, or not written by the layer: nothing to compare with
                found = self._read(provider, path)
                taken = mine & {found["name"], *found.get("members", [])}
                if taken:
                    self.module.fail_json(
                        msg=f"{self.owner}: {', '.join(sorted(taken))} is configured by another role already "
                        f"({path}); one device, one owner"
                    )

    def _read(self, provider, path):
        try:
            return provider.read(read_text(path))
        except (AttributeError, KeyError, IndexError, TypeError, ValueError, configparser.Error) as error:
            self.module.fail_json(msg=f"{path}: cannot be read as the network layer writes it ({error}); move it away")

    def _unmanaged(self):
        """The unmanaged list, from every owner's netplan files as they will be (where NetworkManager is)."""
        if not os.path.isdir(NM_CONF):
            return None, None
        netplan = self.provider if self.provider.name == "netplan" else self.other
        devices = set()
        for path in sorted(glob.glob(f"{NETPLAN}/6[01]-hpc-*-*.yaml")):
            if os.path.basename(path)[3:].startswith(f"hpc-{self.owner}-") or path in self.retired:
                continue
            if not (read_text(path) or "").startswith(HEADER):
                continue  # another owner's file of an earlier layout: that owner retires it
            interface = self._read(netplan, path)
            devices.update([interface["name"], *interface["members"]])
        if self.provider.name == "netplan":
            devices.update(d for i in self.interfaces for d in (i["name"], *i.get("members", [])))
        return f"{NM_CONF}/{UNMANAGED_FILE}", unmanaged_conf(devices)

    def _drift(self):
        links = ip_json(self.module, ["addr", "show"])
        # -N: tables as numbers, as the files write them, whatever rt_tables names them.
        rules = [ip_json(self.module, ["-N", family, "rule", "show"]) for family in ("-4", "-6")]
        if links is None or None in rules:
            self.module.fail_json(msg="cannot read the node's interfaces and rules (ip -j addr show, ip -j rule show)")
        rules = [rule for family in rules for rule in family]
        return drift(self.interfaces, links, rules)

    @property
    def budget(self):
        """Seconds the apply may take: the reload and netplan apply, and each activation's wait."""
        return APPLY_BUDGET + NM_ACTIVATION_WAIT * len(self.activations())

    @property
    def needed(self):
        return bool(self.changed_files or self.removed_files or self.drift)

    def activations(self):
        """Top-level profiles whose files changed, or all of them where the running state drifted."""
        if self.drift:
            touched = self.interfaces
        else:
            touched = [
                i for i in self.interfaces if any(p in self.changed_files for p in self.provider.files(self.owner, [i]))
            ]
        return self.provider.activations(self.owner, touched)

    def write(self):
        for path in self.changed_files:
            write_text(path, self.wanted[path])
        for path in self.removed_files:
            os.unlink(path)

    def clean_up(self):
        """Take away what removed interfaces and changed files configured: the backends leave it behind."""
        run = self.module.run_command
        ip = self.module.get_bin_path("ip", required=True)
        for priority, source, table in self.stale_rules:
            run([ip, "rule", "del", "priority", str(priority), "from", source, "table", str(table)])
        for to, table in self.stale_routes:
            run([ip, "route", "del", to, "table", str(table)])
        for interface in self.removed_interfaces:
            if interface["kind"] in ("bond", "vlan"):
                run([ip, "link", "delete", "dev", interface["name"]])
            else:
                run([ip, "address", "flush", "dev", interface["name"], "scope", "global"])


def refuse_pending(module, busctl, systemctl):
    """Refuse while a change of any owner, through either backend, waits for confirmation or rolls back."""
    deadline = os.path.join(module.params["rollback_dir"], "deadline")
    rc, active, _err = module.run_command(
        [systemctl, "list-units", "--state=active", "--plain", "--no-legend", "hpc-*-rollback.service"]
    )
    checkpoints = nm_checkpoints(module, busctl) if busctl and nm_running(module, systemctl) else []
    if rc == 0 and not active.strip() and os.path.exists(deadline):
        # A deadline no unit watches: the node rebooted (the unit is transient) or the unit was
        # stopped while a change waited. Nothing will roll it back, and waiting would not help.
        module.fail_json(
            msg=f"{deadline} is left from a netplan change that was neither confirmed nor rolled back (the node "
            f"rebooted or its rollback unit was stopped while it waited): the network runs that change, and "
            f"{os.path.dirname(deadline)}/netplan holds /etc/netplan from before it. Check the node's network, put "
            f"/etc/netplan back if it is wrong, then remove {deadline} and run again"
        )
    if os.path.exists(deadline) or rc != 0 or active.strip() or checkpoints:
        pending = [p for p in (deadline if os.path.exists(deadline) else "", active.strip(), *checkpoints) if p]
        module.fail_json(
            msg=f"another change waits for confirmation or rolls back ({', '.join(pending) or 'unreadable'}); it "
            "rolls back by itself when its timeout ends, then run again"
        )


def nm_apply(module, change, busctl):
    nmcli = module.get_bin_path("nmcli", required=True)
    # Armed for the apply itself and, once the change is in place, for as long again: the controller
    # confirms a batch's nodes only once it has collected the slowest (its linear strategy).
    armed_for = module.params["rollback_timeout"] + 2 * change.budget
    rc, out, err = nm_call(module, busctl, "CheckpointCreate", "aouu", "0", str(armed_for), str(CREATE_FLAGS))
    created = out.split('"')[1] if rc == 0 and out.count('"') >= 2 else None
    if not created:
        module.fail_json(msg=f"cannot create a NetworkManager checkpoint: {(err or out).strip()}")

    def fail(msg):
        rolled_back = nm_call(module, busctl, "CheckpointRollback", "o", created)[0] == 0
        module.fail_json(
            msg=msg + ("; rolled back at once" if rolled_back else f"; {created} rolls back at its timeout")
        )

    try:
        change.write()
    except OSError as error:
        fail(f"cannot write the profiles: {error}")
    commands = [[nmcli, "connection", "reload"]]
    if f"{NM_CONF}/{UNMANAGED_FILE}" in change.changed_files + change.removed_files:
        commands.insert(0, [nmcli, "general", "reload", "conf"])
    wait = str(NM_ACTIVATION_WAIT)
    commands += [[nmcli, "--wait", wait, "connection", "up", "id", profile] for profile in change.activations()]
    for command in commands:
        rc, out, err = module.run_command(command)
        if rc != 0:
            fail(f"{' '.join(command[1:])} failed (rc {rc}): {(err or out).strip()}")
    # The change is in place: the clock starts now. What the removed interfaces configured goes only
    # while the checkpoint still holds the change (a rollback puts it back).
    after = str(module.params["rollback_timeout"] + change.budget)
    rc, _out, err = nm_call(module, busctl, "CheckpointAdjustRollbackTimeout", "ou", created, after)
    if rc != 0:
        module.fail_json(msg=f"the checkpoint {created} is gone before the change was in place: {err.strip()}")
    change.clean_up()
    return created


def netplan_apply(module, change, systemctl):
    params = module.params
    saved, timeout = params["rollback_dir"], params["rollback_timeout"]
    unit = f"hpc-{change.owner}-rollback"
    deadline = os.path.join(saved, "deadline")
    # A failed unit stays loaded unless it was collected, and systemd-run refuses a loaded unit's name.
    module.run_command([systemctl, "reset-failed", f"{unit}.service"])
    if os.path.exists(os.path.join(saved, "rollback-failed")):
        # The evidence of a rollback that failed (its saved /etc/netplan, its marker) is kept aside.
        os.rename(saved, f"{saved}.failed-{int(time.time())}")
    shutil.rmtree(saved, ignore_errors=True)
    os.makedirs(saved, mode=0o700)
    shutil.copytree(NETPLAN, os.path.join(saved, "netplan"), symlinks=True)
    new_devices = [i["name"] for i in change.interfaces if not os.path.exists(f"/sys/class/net/{i['name']}")]
    write_text(os.path.join(saved, "new-devices"), "".join(f"{d}\n" for d in new_devices))
    # A safety net until the change is in place: the run may die between writing and applying.
    write_text(deadline, f"{int(time.time()) + timeout + 2 * change.budget}\n")
    rc, out, err = module.run_command(
        [
            module.get_bin_path("systemd-run", required=True),
            "--collect",
            f"--unit={unit}",
            "--description=Roll back an unconfirmed netplan change",
            params["rollback_program"],
            saved,
            f"hpc-{change.owner}",
        ]
    )
    if rc != 0:
        module.fail_json(msg=f"cannot start the rollback timer {unit}: {(err or out).strip()}")

    def restart_clock(seconds, then=None):
        """Set the deadline to now + seconds and run then(), under the lock the rollback decides under,
        unless the rollback has begun: False then."""
        with open(os.path.join(saved, "lock"), "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(os.path.join(saved, "rolling-back")) or not os.path.exists(deadline):
                return False
            write_text(deadline + ".new", f"{int(time.time()) + seconds}\n")
            os.rename(deadline + ".new", deadline)
            if then:
                then()
            return True

    def fail(msg):
        # Nothing to wait for: the rollback runs now, not at the safety deadline.
        restart_clock(0)
        module.fail_json(msg=f"{msg}; rolling back at once")

    try:
        change.write()
    except OSError as error:
        fail(f"cannot write the netplan files: {error}")
    if f"{NM_CONF}/{UNMANAGED_FILE}" in change.changed_files + change.removed_files and nm_running(module, systemctl):
        # Before netplan applies: NetworkManager takes a device it lets go of down.
        rc, out, err = module.run_command([systemctl, "reload", "NetworkManager"])
        if rc != 0:
            fail(f"reloading NetworkManager failed: {(err or out).strip()}")
    rc, out, err = module.run_command([module.get_bin_path("netplan", required=True), "apply"])
    if rc != 0:
        fail(f"netplan apply failed (rc {rc}): {(err or out).strip()}")
    # The change is in place: the clock starts now (as for NetworkManager), and what the removed
    # interfaces configured goes, unless the rollback has begun (then it is no change applied).
    if not restart_clock(timeout + change.budget, then=change.clean_up):
        module.fail_json(msg="the rollback timer fired before the change was in place")


def nm_running(module, systemctl):
    return module.run_command([systemctl, "is-active", "--quiet", "NetworkManager"])[0] == 0


def main():
    module = AnsibleModule(
        argument_spec={
            "owner": {"type": "str", "required": True},
            "backend": {"type": "str", "required": True, "choices": ["networkmanager", "netplan"]},
            "interfaces": {"type": "list", "elements": "dict", "required": True},
            "drift": {"type": "list", "elements": "str", "default": []},
            "state": {"type": "str", "choices": ["preview", "applied"], "default": "preview"},
            "rollback_timeout": {"type": "int", "default": 90},
            "rollback_program": {"type": "path", "default": "/usr/local/sbin/hpc-netplan-rollback"},
            "rollback_dir": {"type": "path", "default": "/var/lib/hpc-datapath/netplan-rollback"},
            "retired": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["rollback_timeout"] < 1:
        module.fail_json(msg=f"rollback_timeout must be at least 1 s, got {params['rollback_timeout']}")
    change = Change(module)
    timeout = params["rollback_timeout"]
    result = {
        "changed": change.needed,
        "needed": change.needed,
        "changed_files": change.changed_files,
        "removed_files": change.removed_files,
        "drift": change.drift,
        # The controller's side of the clock: the apply may take apply_budget; once in place the
        # change waits rollback_timeout + apply_budget for its confirmation (the batch's slowest node
        # is collected first); rollback_wait bounds both, from the start of the apply.
        "clock": {
            "rollback_timeout": timeout,
            "apply_budget": change.budget,
            "rollback_wait": timeout + 2 * change.budget,
        },
    }
    if params["state"] == "preview" or module.check_mode or not change.needed:
        module.exit_json(**result)
    systemctl = module.get_bin_path("systemctl", required=True)
    busctl = module.get_bin_path("busctl")
    # One change at a time on a node, whichever owner and backend: held until this step ends.
    with open(ARM_LOCK, "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            module.fail_json(msg="another network change is being applied on this node; run again once it is done")
        refuse_pending(module, busctl, systemctl)
        if params["backend"] == "networkmanager":
            result["path"] = nm_apply(module, change, busctl or module.get_bin_path("busctl", required=True))
        else:
            netplan_apply(module, change, systemctl)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
