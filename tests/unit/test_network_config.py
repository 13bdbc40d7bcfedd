"""network_config: the module against a fake node in tmp_path and fake commands.

/etc/NetworkManager and /etc/netplan live under tmp_path (the constants of network.py, which the
providers read, and the ones network_config imported by name); ip, busctl, nmcli, systemctl,
systemd-run and netplan are one fake run_command that records every command line.
"""

import configparser
import fcntl
import json
import os
import time

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath import network
from ansible.module_utils.hpc_datapath.network import (
    APPLY_BUDGET,
    NM_ACTIVATION_WAIT,
    Netplan,
    NetworkManager,
    rail_interfaces,
)
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load

network_config = _load("network_config", ROOT / "library" / "network_config.py")
CHECKPOINT = "/org/freedesktop/NetworkManager/Checkpoint/3"


def rails(*netdevs, gateway=None):
    """RoCE rails with source routing, as roce_fabric hands them to rail_interfaces."""
    planned = []
    for index, netdev in enumerate(("enp0s8", "enp0s9")):
        if netdev in netdevs:
            planned.append(
                {
                    "netdev": netdev,
                    "address": f"10.30.{index}.1",
                    "prefix": 24,
                    "network": f"10.30.{index}.0/24",
                    "gateway": gateway if index == 1 else None,
                    "source_routing": True,
                    "table": 100 + index,
                    "rule_priority": 1000 + index,
                }
            )
    return rail_interfaces(planned, 9000)


def bond():
    return [
        {
            "name": "bond0",
            "kind": "bond",
            "mtu": 9000,
            "members": ["enp0s3", "enp0s4"],
            "bond": {"mode": "802.3ad", "miimon": 100, "lacp_rate": "fast", "xmit_hash_policy": "layer3+4"},
            "addresses": ["10.10.0.2/24"],
            "routes": [],
            "ipv6": "manual",
        },
        {
            "name": "bond0.100",
            "kind": "vlan",
            "mtu": 9000,
            "vlan": {"id": 100, "link": "bond0"},
            "addresses": ["10.100.0.2/24"],
            "routes": [],
            "ipv6": "manual",
        },
    ]


def links_of(interfaces):
    """`ip -j addr show` of a node that runs the interfaces as the model says."""
    links = []
    for interface in interfaces:
        info = []
        for address in interface.get("addresses", []):
            local, prefixlen = address.split("/")
            info.append({"family": "inet", "local": local, "prefixlen": int(prefixlen), "scope": "global"})
        links.append({"ifname": interface["name"], "mtu": interface["mtu"], "addr_info": info})
        links += [
            {"ifname": m, "mtu": interface["mtu"], "master": interface["name"]} for m in interface.get("members", [])
        ]
    return links


def rules_of(interfaces):
    return [
        {"priority": r["priority"], "src": r["from"].split("/")[0], "table": str(r["table"])}
        for i in interfaces
        for r in i.get("rules", [])
    ]


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A node under tmp_path: its paths, and the fake commands' state and record."""
    paths = {
        "profiles": tmp_path / "etc/NetworkManager/system-connections",
        "conf": tmp_path / "etc/NetworkManager/conf.d",
        "netplan": tmp_path / "etc/netplan",
        "rollback": tmp_path / "var/lib/hpc-datapath/netplan-rollback",
    }
    for key in ("profiles", "conf", "netplan"):
        paths[key].mkdir(parents=True)
    monkeypatch.setattr(network, "NM_PROFILES", str(paths["profiles"]))
    monkeypatch.setattr(network, "NM_CONF", str(paths["conf"]))
    monkeypatch.setattr(network, "NETPLAN", str(paths["netplan"]))
    monkeypatch.setattr(network_config, "NM_CONF", str(paths["conf"]))
    monkeypatch.setattr(network_config, "NETPLAN", str(paths["netplan"]))
    monkeypatch.setattr(network_config, "ARM_LOCK", str(tmp_path.parent / f"{tmp_path.name}.lock"))
    state = {
        **paths,
        "commands": [],
        "links": [],
        "rules": [],
        "checkpoints": [],
        "broken": set(),
        "active_units": "",
        "nm_active": True,
        "netplan_works": True,
        "seen": {},
    }

    def ip(argv):
        reads = {
            ("addr", "show"): state["links"],
            ("-N", "-4", "rule", "show"): state["rules"],
            ("-N", "-6", "rule", "show"): [],
        }
        if argv[1] == "-j":
            return 0, json.dumps(reads[tuple(argv[2:])]), ""
        return 0, "", ""  # rule del, route flush, address flush, link delete

    def busctl(argv):
        if argv[1] == "get-property":
            return 0, f"ao {len(state['checkpoints'])} " + " ".join(f'"{c}"' for c in state["checkpoints"]), ""
        method = argv[5]
        if method == "CheckpointCreate":
            state["checkpoints"].append(CHECKPOINT)
            return 0, f'o "{CHECKPOINT}"', ""
        if method == "CheckpointRollback":
            state["checkpoints"].remove(argv[-1])
        return 0, "", ""  # CheckpointAdjustRollbackTimeout

    def nmcli(argv):
        if argv[-1] in state["broken"]:
            return 4, "", f"Error: Connection activation failed: {argv[-1]}"
        return 0, "", ""

    def systemctl(argv):
        if argv[1] == "list-units":
            return 0, state["active_units"], ""
        if argv[1] == "is-active":
            return (0 if state["nm_active"] else 3), "", ""
        return 0, "", ""  # reset-failed, reload

    def systemd_run(_argv):
        state["seen"]["deadline at systemd-run"] = (paths["rollback"] / "deadline").read_text()
        return 0, "", ""

    def netplan(argv):
        assert argv == ["netplan", "apply"]
        state["seen"]["netplan at apply"] = sorted(p.name for p in paths["netplan"].iterdir())
        return (0, "", "") if state["netplan_works"] else (1, "", "Error in network definition")

    programs = {"ip": ip, "busctl": busctl, "nmcli": nmcli, "systemctl": systemctl, "systemd-run": systemd_run}
    programs["netplan"] = netplan

    def run_command(_module, argv, **_kwargs):
        state["commands"].append(argv)
        return programs[argv[0]](argv)

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda _module, name, **_kw: name)
    return state


def run(capsys, **args):
    args.setdefault("rollback_dir", args.pop("_rollback_dir", None))
    with patch_module_args({k: v for k, v in args.items() if v is not None}), pytest.raises(SystemExit):
        network_config.main()
    return json.loads(capsys.readouterr().out)


def install(node, provider, owner, interfaces):
    """The files of an earlier run, as the provider wrote them; and the node running them."""
    for path, text in provider.files(owner, interfaces).items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)


def snapshot(root):
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def actions(node):
    """The commands that act: all but reading the node (ip -j, the checkpoint list, units)."""
    reads = (["ip", "-j"], ["busctl", "get-property"], ["systemctl", "list-units"], ["systemctl", "is-active"])
    return [c for c in node["commands"] if c[:2] not in reads]


# --- preview -------------------------------------------------------------------------------------


def test_preview_reports_changed_and_removed_files_and_changes_nothing(node, tmp_path, capsys):
    install(node, NetworkManager(), "roce", rails("enp0s8", "enp0s9"))
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    before = snapshot(tmp_path)
    result = run(
        capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8", gateway=None), state="preview"
    )
    assert result["changed"] is True
    assert result["changed_files"] == []
    assert result["removed_files"] == [str(node["profiles"] / "hpc-roce-enp0s9.nmconnection")]
    assert result["drift"] == []
    # Nothing to bring up: the budget is the reload's; the controller waits for twice that.
    assert result["clock"] == {
        "rollback_timeout": 90,
        "apply_budget": APPLY_BUDGET,
        "rollback_wait": 90 + 2 * APPLY_BUDGET,
    }
    assert snapshot(tmp_path) == before
    assert actions(node) == []


def test_preview_of_a_new_owner_lists_every_file(node, tmp_path, capsys):
    node["links"] = links_of(bond())
    result = run(capsys, owner="bond", backend="networkmanager", interfaces=bond())
    assert sorted(result["changed_files"]) == sorted(
        str(node["profiles"] / f"hpc-bond-{d}.nmconnection") for d in ("bond0", "enp0s3", "enp0s4", "bond0.100")
    )
    assert result["removed_files"] == []
    assert not any(node["profiles"].iterdir())


def test_check_mode_of_applied_changes_nothing(node, tmp_path, capsys):
    before = snapshot(tmp_path)
    result = run(
        capsys, owner="bond", backend="networkmanager", interfaces=bond(), state="applied", _ansible_check_mode=True
    )
    assert result["changed"] is True
    assert "bond0 does not exist" in result["drift"]
    assert snapshot(tmp_path) == before
    assert actions(node) == []


# --- applied through NetworkManager --------------------------------------------------------------


def test_nm_applied_runs_the_steps_in_order_and_brings_up_touched_profiles_only(node, capsys):
    install(node, NetworkManager(), "roce", rails("enp0s8", "enp0s9"))
    node["links"], node["rules"] = links_of(rails("enp0s8", "enp0s9")), rules_of(rails("enp0s8", "enp0s9"))
    # enp0s9 gains a gateway in its table: its file changes; nothing drifts.
    wanted = rails("enp0s8", "enp0s9", gateway="10.30.1.254")
    result = run(
        capsys, owner="roce", backend="networkmanager", interfaces=wanted, state="applied", rollback_timeout=45
    )
    assert result["changed"] is True, result
    assert result["path"] == CHECKPOINT
    assert result["changed_files"] == [str(node["profiles"] / "hpc-roce-enp0s9.nmconnection")]
    service, path = "org.freedesktop.NetworkManager", "/org/freedesktop/NetworkManager"
    budget = APPLY_BUDGET + NM_ACTIVATION_WAIT  # one profile to bring up
    assert [c for c in node["commands"] if c[:2] != ["ip", "-j"]] == [
        # Nothing pending, through either backend
        ["systemctl", "list-units", "--state=active", "--plain", "--no-legend", "hpc-*-rollback.service"],
        ["systemctl", "is-active", "--quiet", "NetworkManager"],
        ["busctl", "get-property", service, path, service, "Checkpoints"],
        # Armed for the apply and the batch's slowest node; once in place, the clock restarts.
        ["busctl", "call", service, path, service, "CheckpointCreate", "aouu", "0", str(45 + 2 * budget), "6"],
        ["nmcli", "connection", "reload"],
        ["nmcli", "--wait", "60", "connection", "up", "id", "hpc-roce-enp0s9"],
        [
            "busctl",
            "call",
            service,
            path,
            service,
            "CheckpointAdjustRollbackTimeout",
            "ou",
            CHECKPOINT,
            str(45 + budget),
        ],
    ]
    assert (node["profiles"] / "hpc-roce-enp0s9.nmconnection").read_text() == NetworkManager().profile(
        "roce", wanted[1]
    )


def test_nm_applied_reloads_the_conf_first_when_the_unmanaged_list_changes(node, capsys):
    # Another owner's netplan files: NetworkManager must keep off their devices.
    install(node, Netplan(), "bond", bond())
    node["links"] = links_of(rails("enp0s8"))
    node["rules"] = rules_of(rails("enp0s8"))
    result = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8"), state="applied")
    conf = node["conf"] / network.UNMANAGED_FILE
    assert str(conf) in result["changed_files"]
    nmcli = [c for c in node["commands"] if c[0] == "nmcli"]
    assert nmcli == [
        ["nmcli", "general", "reload", "conf"],
        ["nmcli", "connection", "reload"],
        ["nmcli", "--wait", "60", "connection", "up", "id", "hpc-roce-enp0s8"],
    ]
    assert "unmanaged-devices=interface-name:bond0;interface-name:bond0.100;interface-name:enp0s3;" in (
        conf.read_text()
    )
    assert oct(conf.stat().st_mode & 0o777) == "0o644"
    assert oct((node["profiles"] / "hpc-roce-enp0s8.nmconnection").stat().st_mode & 0o777) == "0o600"


def test_nm_a_failing_connection_up_rolls_back_at_once_and_fails(node, capsys):
    node["links"] = []
    node["broken"] = {"hpc-bond-bond0.100"}
    result = run(capsys, owner="bond", backend="networkmanager", interfaces=bond(), state="applied")
    assert result["failed"] is True
    assert "connection up id hpc-bond-bond0.100 failed (rc 4)" in result["msg"]
    assert result["msg"].endswith("; rolled back at once")
    acting = actions(node)
    assert acting[-2] == ["nmcli", "--wait", "60", "connection", "up", "id", "hpc-bond-bond0.100"]
    assert acting[-1][5:] == ["CheckpointRollback", "o", CHECKPOINT]
    assert not any(c[0] == "ip" for c in acting)  # no clean-up after a failure
    assert not any("CheckpointAdjustRollbackTimeout" in c for c in acting)
    assert node["checkpoints"] == []


def test_nm_an_existing_checkpoint_refuses_before_anything_is_written(node, tmp_path, capsys):
    node["checkpoints"] = ["/org/freedesktop/NetworkManager/Checkpoint/1"]
    before = snapshot(tmp_path)
    result = run(capsys, owner="bond", backend="networkmanager", interfaces=bond(), state="applied")
    assert result["failed"] is True
    assert (
        "another change waits for confirmation or rolls back (/org/freedesktop/NetworkManager/Checkpoint/1)"
        in (result["msg"])
    )
    assert snapshot(tmp_path) == before
    assert actions(node) == []


def test_nm_a_removed_rail_goes_with_its_rule_table_and_address(node, capsys):
    install(node, NetworkManager(), "roce", rails("enp0s8", "enp0s9"))
    node["links"] = links_of(rails("enp0s8", "enp0s9"))
    node["rules"] = rules_of(rails("enp0s8", "enp0s9"))
    result = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8"), state="applied")
    gone = node["profiles"] / "hpc-roce-enp0s9.nmconnection"
    assert result["removed_files"] == [str(gone)]
    assert not gone.exists()
    assert (node["profiles"] / "hpc-roce-enp0s8.nmconnection").exists()
    acting = actions(node)
    # The clock restarts first: what the rail configured goes only while the checkpoint holds the change.
    assert acting[1:] == [
        ["nmcli", "connection", "reload"],
        acting[2],
        ["ip", "rule", "del", "priority", "1001", "from", "10.30.1.1/32", "table", "101"],
        ["ip", "route", "del", "10.30.1.0/24", "table", "101"],  # its own route, never the whole table
        ["ip", "address", "flush", "dev", "enp0s9", "scope", "global"],
    ]
    assert acting[2][5:] == ["CheckpointAdjustRollbackTimeout", "ou", CHECKPOINT, str(90 + APPLY_BUDGET)]


def test_nm_a_removed_vlan_is_deleted(node, capsys):
    install(node, NetworkManager(), "bond", bond())
    node["links"] = links_of(bond())
    run(capsys, owner="bond", backend="networkmanager", interfaces=bond()[:1], state="applied")
    assert ["ip", "link", "delete", "dev", "bond0.100"] in node["commands"]


def test_a_second_run_with_nothing_changed_reports_no_change(node, capsys):
    node["links"] = links_of(rails("enp0s8", "enp0s9"))
    node["rules"] = rules_of(rails("enp0s8", "enp0s9"))
    first = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8", "enp0s9"), state="applied")
    assert first["changed"] is True
    node["commands"].clear()
    node["checkpoints"].clear()  # confirmed by network_confirm
    second = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8", "enp0s9"), state="applied")
    assert (second["changed"], second["changed_files"], second["removed_files"], second["drift"]) == (
        False,
        [],
        [],
        [],
    )
    assert actions(node) == []
    assert not any(c[0] == "busctl" for c in node["commands"])


def test_drift_alone_applies_and_brings_up_every_profile(node, capsys):
    install(node, NetworkManager(), "roce", rails("enp0s8", "enp0s9"))
    node["links"] = links_of(rails("enp0s8"))  # enp0s9 is not up
    node["rules"] = rules_of(rails("enp0s8", "enp0s9"))
    result = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8", "enp0s9"), state="applied")
    assert (result["changed_files"], result["drift"]) == ([], ["enp0s9 does not exist"])
    ups = [c[-1] for c in node["commands"] if c[:4] == ["nmcli", "--wait", "60", "connection"]]
    assert ups == ["hpc-roce-enp0s8", "hpc-roce-enp0s9"]


def test_an_owner_netplan_file_that_cannot_be_read_stops_the_run_naming_it(node, tmp_path, capsys):
    garbage = node["netplan"] / "60-hpc-roce-enp0s9.yaml"
    garbage.write_text("network:\n  ethernets: {enp0s9: {dhcp4: true}}\n")
    before = snapshot(tmp_path)
    result = run(capsys, owner="roce", backend="netplan", interfaces=rails("enp0s8"), state="applied")
    assert result["failed"] is True
    assert result["msg"].startswith(f"{garbage}: cannot be read as the network layer writes it")
    assert snapshot(tmp_path) == before


def test_another_owners_netplan_file_that_cannot_be_read_stops_the_run_naming_it(node, capsys):
    garbage = node["netplan"] / "60-hpc-bond-bond0.yaml"
    garbage.write_text(network.HEADER + "{not json")
    result = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8"))
    assert result["failed"] is True
    assert result["msg"].startswith(f"{garbage}: cannot be read as the network layer writes it")


def test_another_owners_file_of_an_earlier_layout_is_left_to_that_owner(node, capsys):
    # A bond named data-bond kept 60-hpc-data-bond.yaml (YAML, no header) before the layer: the
    # bond's run retires it; the rails' run neither reads it nor tells anyone to move it away.
    (node["netplan"] / "60-hpc-data-bond.yaml").write_text("network:\n  bonds: {data-bond: {}}\n")
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    result = run(capsys, owner="roce", backend="netplan", interfaces=rails("enp0s8"))
    assert not result.get("failed"), result


def test_an_owner_keyfile_that_cannot_be_read_stops_the_run_naming_it(node, capsys):
    garbage = node["profiles"] / "hpc-roce-enp0s9.nmconnection"
    garbage.write_text("garbage\n")
    result = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8"))
    assert result["failed"] is True
    assert result["msg"].startswith(f"{garbage}: cannot be read as the network layer writes it")


def test_retired_files_are_removed_under_the_change(node, capsys):
    old = [node["profiles"] / "hpc-bond0.nmconnection", node["profiles"] / "hpc-bond0-port-enp0s3.nmconnection"]
    old.append(node["conf"] / "90-hpc-bond0-unmanaged.conf")
    for path in old:
        path.write_text("[connection]\nid=old\n")
    node["links"] = links_of(bond())
    retired = [
        str(node["profiles"] / "hpc-bond0.nmconnection"),
        str(node["profiles"] / "hpc-bond0-port-*.nmconnection"),
        str(node["conf"] / "90-hpc-bond0-unmanaged.conf"),
        str(node["netplan"] / "60-hpc-bond0.yaml"),  # not there: nothing to remove
    ]
    preview = run(capsys, owner="bond", backend="networkmanager", interfaces=bond(), retired=retired)
    assert preview["removed_files"] == sorted(str(p) for p in old)
    assert all(path.exists() for path in old)
    node["commands"].clear()
    run(capsys, owner="bond", backend="networkmanager", interfaces=bond(), retired=retired, state="applied")
    assert not any(path.exists() for path in old)
    # Retired files configure nothing the layer knows of: no clean-up command for them.
    assert not any(c[0] == "ip" and c[1] != "-j" for c in node["commands"])


def test_a_retired_file_that_looks_like_an_owners_file_is_removed_not_read(node, capsys):
    # A bond named bond-x kept /etc/netplan/60-hpc-bond-x.yaml before the layer; the owners'
    # patterns (6[01]-hpc-<owner>-*.yaml) would read it as owner bond's, and it is not our JSON.
    old = node["netplan"] / "60-hpc-bond-x.yaml"
    old.write_text("network:\n  version: 2\n  bonds: {bond-x: {interfaces: [enp0s3]}}\n")
    node["links"] = links_of(bond())
    retired = [str(node["netplan"] / "60-hpc-bond-x.yaml")]
    result = run(capsys, owner="bond", backend="netplan", interfaces=bond(), retired=retired)
    assert not result.get("failed"), result
    assert result["removed_files"] == [str(old)]
    # Another owner's run does not take it for a file of owner "bond" either once it is named.
    result = run(capsys, owner="roce", backend="netplan", interfaces=rails("enp0s8"), retired=retired)
    assert not result.get("failed"), result


def test_moving_an_owner_to_the_other_backend_is_refused_before_anything_changes(node, tmp_path, capsys):
    # Neither rollback covers both backends: a checkpoint cannot bring back netplan files.
    install(node, Netplan(), "roce", rails("enp0s8"))
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    before = snapshot(tmp_path)
    result = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8"), state="applied")
    assert result["failed"] is True
    assert result["msg"].startswith(
        f"roce: the interfaces are kept by netplan ({node['netplan'] / '60-hpc-roce-enp0s8.yaml'}), not networkmanager"
    )
    assert snapshot(tmp_path) == before
    assert actions(node) == []


def test_a_device_of_another_owner_is_refused(node, tmp_path, capsys):
    # A rail on a port of the bond: NetworkManager would hold two profiles for enp0s3.
    install(node, NetworkManager(), "bond", bond())
    before = snapshot(tmp_path)
    rail = dict(rails("enp0s8")[0], name="enp0s3")
    result = run(capsys, owner="roce", backend="networkmanager", interfaces=[rail], state="applied")
    assert result.get("failed") is True, result
    assert result["msg"] == (
        f"roce: enp0s3 is configured by another role already ({node['profiles'] / 'hpc-bond-enp0s3.nmconnection'});"
        " one device, one owner"
    )
    assert snapshot(tmp_path) == before


# --- the unmanaged list on netplan ---------------------------------------------------------------


def test_the_unmanaged_list_holds_every_owners_netplan_devices_in_one_sorted_list(node, capsys):
    install(node, Netplan(), "bond", bond())
    node["links"], node["rules"] = links_of(rails("enp0s8", "enp0s9")), rules_of(rails("enp0s8", "enp0s9"))
    result = run(capsys, owner="roce", backend="netplan", interfaces=rails("enp0s9", "enp0s8"))
    conf = str(node["conf"] / network.UNMANAGED_FILE)
    assert conf in result["changed_files"]
    node["commands"].clear()
    run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s9", "enp0s8"),
        _rollback_dir=str(node["rollback"]),
        state="applied",
    )
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string((node["conf"] / network.UNMANAGED_FILE).read_text())
    assert parser.sections() == ["keyfile"]
    assert dict(parser["keyfile"]) == {
        "unmanaged-devices": ";".join(
            f"interface-name:{d}" for d in ("bond0", "bond0.100", "enp0s3", "enp0s4", "enp0s8", "enp0s9")
        )
    }
    # NetworkManager runs: it lets go of the devices before netplan applies.
    acting = actions(node)
    assert acting.index(["systemctl", "reload", "NetworkManager"]) < acting.index(["netplan", "apply"])


def test_the_unmanaged_list_goes_when_no_netplan_file_is_left(node, capsys):
    # The rails' netplan files were retired by hand (moved to NetworkManager as the refusal asks).
    conf = node["conf"] / network.UNMANAGED_FILE
    conf.write_text(network.unmanaged_conf({"enp0s8"}))
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    result = run(capsys, owner="roce", backend="networkmanager", interfaces=rails("enp0s8"), state="applied")
    assert str(conf) in result["removed_files"]
    assert not conf.exists()
    assert ["nmcli", "general", "reload", "conf"] in node["commands"]


# --- applied through netplan ---------------------------------------------------------------------


def test_netplan_applied_arms_the_rollback_applies_and_pushes_the_deadline(node, capsys):
    (node["netplan"] / "50-cloud-init.yaml").write_text("network: {version: 2}\n")
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    node["nm_active"] = False
    started = time.time()
    result = run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        rollback_timeout=60,
        _rollback_dir=str(node["rollback"]),
    )
    assert result["changed"] is True, result
    saved = node["rollback"]
    # Armed for the apply and the batch's slowest node before the files were written.
    first = int(node["seen"]["deadline at systemd-run"])
    assert int(started) + 60 + 2 * APPLY_BUDGET <= first <= int(time.time()) + 60 + 2 * APPLY_BUDGET
    # The saved copy is /etc/netplan before the change.
    assert sorted(p.name for p in (saved / "netplan").iterdir()) == ["50-cloud-init.yaml"]
    assert (saved / "new-devices").exists()
    acting = actions(node)
    run_unit = next(c for c in acting if c[0] == "systemd-run")
    assert run_unit == [
        "systemd-run",
        "--collect",
        "--unit=hpc-roce-rollback",
        "--description=Roll back an unconfirmed netplan change",
        "/usr/local/sbin/hpc-netplan-rollback",
        str(saved),
        "hpc-roce",
    ]
    assert acting[0][:2] == ["systemctl", "reset-failed"]
    assert acting.index(run_unit) < acting.index(["netplan", "apply"])
    # netplan applies the new files.
    assert node["seen"]["netplan at apply"] == ["50-cloud-init.yaml", "60-hpc-roce-enp0s8.yaml"]
    # NetworkManager does not run: no reload, but the list is written for when it starts.
    assert ["systemctl", "reload", "NetworkManager"] not in acting
    # Restarted at rollback_timeout + the budget once the change is in place.
    pushed = int((saved / "deadline").read_text())
    assert int(started) + 60 + APPLY_BUDGET <= pushed <= int(time.time()) + 60 + APPLY_BUDGET
    assert not (saved / "deadline.new").exists()
    written = node["netplan"] / "60-hpc-roce-enp0s8.yaml"
    assert written.read_text() == Netplan().render(rails("enp0s8")[0])
    assert oct(written.stat().st_mode & 0o777) == "0o600"


def test_netplan_a_removed_rail_is_cleaned_up_after_the_apply(node, capsys):
    install(node, Netplan(), "roce", rails("enp0s8", "enp0s9"))
    node["links"], node["rules"] = links_of(rails("enp0s8", "enp0s9")), rules_of(rails("enp0s8", "enp0s9"))
    run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        _rollback_dir=str(node["rollback"]),
    )
    assert not (node["netplan"] / "60-hpc-roce-enp0s9.yaml").exists()
    acting = actions(node)
    apply = acting.index(["netplan", "apply"])
    assert acting[apply + 1 :] == [
        ["ip", "rule", "del", "priority", "1001", "from", "10.30.1.1/32", "table", "101"],
        ["ip", "route", "del", "10.30.1.0/24", "table", "101"],
        ["ip", "address", "flush", "dev", "enp0s9", "scope", "global"],
    ]


def test_a_change_being_applied_on_the_node_refuses_another(node, tmp_path, capsys):
    # Two owners applying at once (bond and rails in parallel plays): the second waits for nothing
    # and arms nothing while the first holds the node's lock.
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    with open(network_config.ARM_LOCK, "w", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        before = snapshot(tmp_path)
        result = run(
            capsys,
            owner="roce",
            backend="netplan",
            interfaces=rails("enp0s8"),
            state="applied",
            _rollback_dir=str(node["rollback"]),
        )
    assert result["failed"] is True
    assert result["msg"] == "another network change is being applied on this node; run again once it is done"
    assert snapshot(tmp_path) == before
    assert actions(node) == []


def test_a_checkpoint_of_networkmanager_refuses_a_netplan_change(node, tmp_path, capsys):
    node["checkpoints"] = [CHECKPOINT]
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    before = snapshot(tmp_path)
    result = run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        _rollback_dir=str(node["rollback"]),
    )
    assert result["failed"] is True
    assert CHECKPOINT in result["msg"]
    assert snapshot(tmp_path) == before


def test_netplan_a_pending_deadline_refuses(node, tmp_path, capsys):
    node["rollback"].mkdir(parents=True)
    (node["rollback"] / "deadline").write_text(f"{int(time.time()) + 30}\n")
    node["active_units"] = "hpc-bond-rollback.service loaded active running Roll back an unconfirmed netplan change\n"
    before = snapshot(tmp_path)
    result = run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        _rollback_dir=str(node["rollback"]),
    )
    assert result["failed"] is True
    assert "another change waits for confirmation or rolls back" in result["msg"]
    assert snapshot(tmp_path) == before
    assert not any(c[0] in ("systemd-run", "netplan") for c in node["commands"])


def test_a_deadline_no_unit_watches_is_reported_as_what_it_is(node, tmp_path, capsys):
    # The node rebooted while a change waited: the transient unit is gone, the deadline stays, and
    # nothing will ever roll the change back; "it rolls back by itself" would be false.
    node["rollback"].mkdir(parents=True)
    deadline = node["rollback"] / "deadline"
    deadline.write_text(f"{int(time.time()) - 3600}\n")
    before = snapshot(tmp_path)
    result = run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        _rollback_dir=str(node["rollback"]),
    )
    assert result["failed"] is True
    assert result["msg"].startswith(f"{deadline} is left from a netplan change that was neither confirmed nor rolled")
    assert f"then remove {deadline} and run again" in result["msg"]
    assert "rolls back by itself" not in result["msg"]
    assert snapshot(tmp_path) == before


def test_the_evidence_of_a_failed_rollback_is_kept_aside(node, capsys):
    saved = node["rollback"]
    (saved / "netplan").mkdir(parents=True)
    (saved / "netplan" / "60-hpc-bond-bond0.yaml").write_text("before the failed change\n")
    (saved / "rollback-failed").write_text("2026-11-30T10:00:00Z netplan apply failed (exit 78)\n")
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    result = run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        _rollback_dir=str(saved),
    )
    assert result["changed"] is True, result
    (kept,) = saved.parent.glob(f"{saved.name}.failed-*")
    assert (kept / "rollback-failed").read_text().endswith("netplan apply failed (exit 78)\n")
    assert (kept / "netplan" / "60-hpc-bond-bond0.yaml").read_text() == "before the failed change\n"
    assert not (saved / "rollback-failed").exists()  # the new change's directory starts empty


def test_netplan_an_active_rollback_unit_of_another_owner_refuses(node, tmp_path, capsys):
    node["active_units"] = "hpc-bond-rollback.service loaded active running Roll back an unconfirmed netplan change\n"
    before = snapshot(tmp_path)
    result = run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        _rollback_dir=str(node["rollback"]),
    )
    assert result["failed"] is True
    assert "hpc-bond-rollback.service" in result["msg"]
    assert snapshot(tmp_path) == before


def test_netplan_a_rollback_that_began_is_not_reported_applied(node, capsys, monkeypatch):
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    original = AnsibleModule.run_command

    def rollback_fires_during_apply(module, argv, **kwargs):
        if argv == ["netplan", "apply"]:
            os.rename(node["rollback"] / "deadline", node["rollback"] / "rolling-back")
        return original(module, argv, **kwargs)

    monkeypatch.setattr(AnsibleModule, "run_command", rollback_fires_during_apply)
    result = run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        _rollback_dir=str(node["rollback"]),
    )
    assert result["failed"] is True
    assert result["msg"] == "the rollback timer fired before the change was in place"
    assert not (node["rollback"] / "deadline").exists()


def test_netplan_a_failing_apply_rolls_back_at_once(node, capsys):
    node["links"], node["rules"] = links_of(rails("enp0s8")), rules_of(rails("enp0s8"))
    node["netplan_works"] = False
    result = run(
        capsys,
        owner="roce",
        backend="netplan",
        interfaces=rails("enp0s8"),
        state="applied",
        _rollback_dir=str(node["rollback"]),
    )
    assert result["failed"] is True
    assert result["msg"] == "netplan apply failed (rc 1): Error in network definition; rolling back at once"
    # The deadline is now: the rollback unit starts at its next look instead of after the apply budget.
    assert int((node["rollback"] / "deadline").read_text()) <= int(time.time())
    assert not any(c[0] == "ip" and c[1] != "-j" for c in node["commands"])  # no clean-up


def test_netplan_a_bond_with_a_vlan_is_written_and_cleaned_up_by_owner(node, capsys):
    node["links"] = links_of(bond())
    run(
        capsys, owner="bond", backend="netplan", interfaces=bond(), state="applied", _rollback_dir=str(node["rollback"])
    )
    files = sorted(p.name for p in node["netplan"].iterdir())
    assert len(files) == 2
    assert all(name.endswith(("-hpc-bond-bond0.yaml", "-hpc-bond-bond0.100.yaml")) for name in files)
    node["commands"].clear()
    (node["rollback"] / "deadline").unlink()  # confirmed
    run(
        capsys,
        owner="bond",
        backend="netplan",
        interfaces=bond()[:1],
        state="applied",
        _rollback_dir=str(node["rollback"]),
    )
    assert [p.name for p in node["netplan"].iterdir() if "bond0.100" in p.name] == []
    assert ["ip", "link", "delete", "dev", "bond0.100"] in node["commands"]
