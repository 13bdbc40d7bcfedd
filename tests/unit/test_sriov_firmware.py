"""sriov_firmware and the mlxconfig lab stub: parsing mlxconfig's real output, the plan, idempotence, check mode.

The module runs twice over: against canned answers in the shapes the real mlxconfig prints (a fake
runner), and against the lab stub itself (LAB STUB of mlxconfig, lab/guest/usr/local/sbin), run as
a program with its state in a temporary directory, which also shows what the stub keeps and refuses.
"""

import json
import os
import subprocess
import sys

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath import mlxconfig
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load

sriov_firmware = _load("sriov_firmware", ROOT / "library" / "sriov_firmware.py")
STUB = ROOT / "lab" / "guest" / "usr" / "local" / "sbin" / "mlxconfig"
MST = "/dev/mst/mt4125_pciconf0"
PCI = "0000:3b:00.0"

# As a ConnectX prints it with -e: the device's description, then the table in the tool's order
# (not the order asked), the '*' marking a pending or non-default value, the footnote.
REAL = """
Device #1:
----------

Device type:    ConnectX6DX
Name:           MCX623106AN-CDA_Ax
Description:    ConnectX-6 Dx EN adapter card; 100GbE; Dual-port QSFP56; PCIe 4.0 x16; No Crypto
Device:         {device}

Configurations:                              Default         Current         Next Boot
{num_star}        NUM_OF_VFS                          {num[0]:<16}{num[1]:<16}{num[2]}
{en_star}        SRIOV_EN                            {en[0]:<16}{en[1]:<16}{en[2]}
The '*' shows parameters with next value different from default/current value.
"""


def real(device=MST, num=(8, 8, 8), en=("True(1)", "True(1)", "True(1)")):
    num_star = "*" if num[2] != num[0] or num[2] != num[1] else " "
    en_star = "*" if en[2] != en[0] or en[2] != en[1] else " "
    return REAL.format(device=device, num=num, en=en, num_star=num_star, en_star=en_star)


SET_OUTPUT = """
Device #1:
----------

Device type:    ConnectX6DX
Device:         {device}

Configurations:                              Next Boot       New
         SRIOV_EN                            False(0)        True(1)
         NUM_OF_VFS                          0               8

 Apply new Configuration? (y/n) [n] : y
Applying... Done!
-I- Please reboot machine to load new configurations.
"""


# --- parsing ------------------------------------------------------------------------------------


def test_parse_the_real_table():
    values, warnings = mlxconfig.parse_query(real(num=(8, 8, 16), en=("False(0)", "True(1)", "True(1)")))
    assert values == {
        "NUM_OF_VFS": {"default": 8, "current": 8, "next_boot": 16},
        "SRIOV_EN": {"default": False, "current": True, "next_boot": True},
    }
    assert warnings == []
    assert mlxconfig.column(values, "next_boot") == {"NUM_OF_VFS": 16, "SRIOV_EN": True}
    assert mlxconfig.pending(values)


def test_parse_keeps_warnings_and_info_lines_aside():
    text = "-W- Firmware is older than this MFT expects\n" + real() + "-I- nothing pending\n"
    values, warnings = mlxconfig.parse_query(text)
    assert values["SRIOV_EN"]["next_boot"] is True
    assert warnings == ["-W- Firmware is older than this MFT expects", "-I- nothing pending"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (real().replace("         SRIOV_EN", "         LINK_TYPE_P1"), "the table shows LINK_TYPE_P1, which was not"),
        ("\n".join(line for line in real().splitlines() if "SRIOV_EN" not in line), "does not show SRIOV_EN"),
        (real(en=("True(1)", "True(1)", "N/A")), "SRIOV_EN has the value 'N/A', which is not a True(1) or False(0)"),
        (real(en=("True(1)", "True(1)", "True")), "SRIOV_EN has the value 'True'"),
        (real(num=(8, 8, "Array[0..7]")), "NUM_OF_VFS has the value 'Array[0..7]', which is not a number"),
        (real(num=(8, 8, -1)), "NUM_OF_VFS has the value '-1'"),
        # Without -e the table has one column: never read the only value as Next Boot of three.
        (
            "Configurations:                              Next Boot\n         SRIOV_EN      True(1)\n",
            "the table has the columns Next Boot, not Default, Current, Next Boot",
        ),
        (real().replace("Configurations:", "Device:"), "the output has no table of configurations"),
        ("", "the output has no table of configurations"),
        (real() + real(), "the output describes more than one device"),
        (real() + "Configurations:   Default  Current  Next Boot\n", "or holds a second table"),
        (real().replace("The '*' shows", "Something else"), "is not a row of the table"),
        (real().replace("         NUM_OF_VFS                          8", "         NUM_OF_VFS"), "is not a row"),
        (
            real() + "         SRIOV_EN                            True(1)         True(1)         True(1)\n",
            "the table shows SRIOV_EN twice",
        ),
        ("-E- Failed to open device: " + MST + "\n", "mlxconfig reports an error: -E- Failed to open device"),
        (real() + "-E- Failed to query device current configuration\n", "mlxconfig reports an error"),
    ],
    ids=[
        "other-parameter",
        "missing-parameter",
        "na",
        "bare-true",
        "array",
        "negative",
        "no-e-flag",
        "no-table",
        "empty",
        "two-devices",
        "two-tables",
        "junk-line",
        "short-row",
        "twice",
        "error-only",
        "error-after",
    ],
)
def test_output_that_cannot_be_read_exactly_is_an_error(text, error):
    with pytest.raises(mlxconfig.ParseError) as raised:
        mlxconfig.parse_query(text)
    assert error in str(raised.value), str(raised.value)


@pytest.mark.parametrize(
    ("next_boot", "num_vfs", "done"),
    [
        ({"SRIOV_EN": True, "NUM_OF_VFS": 8}, 8, True),
        ({"SRIOV_EN": True, "NUM_OF_VFS": 16}, 8, False),
        ({"SRIOV_EN": False, "NUM_OF_VFS": 8}, 8, False),
        ({"SRIOV_EN": False, "NUM_OF_VFS": 8}, 0, True),  # SR-IOV off: no VFs, whatever the count
        ({"SRIOV_EN": True, "NUM_OF_VFS": 0}, 0, True),  # a count of 0: no VFs either
        ({"SRIOV_EN": True, "NUM_OF_VFS": 8}, 0, False),
    ],
)
def test_what_counts_as_done(next_boot, num_vfs, done):
    assert mlxconfig.satisfied(next_boot, num_vfs) is done


def test_the_exact_commands():
    assert mlxconfig.query_argv("mlxconfig", PCI) == ["mlxconfig", "-d", PCI, "-e", "q", "SRIOV_EN", "NUM_OF_VFS"]
    assert mlxconfig.set_argv("mlxconfig", PCI, 8) == [
        "mlxconfig",
        "-d",
        PCI,
        "-y",
        "set",
        "SRIOV_EN=1",
        "NUM_OF_VFS=8",
    ]
    assert mlxconfig.set_argv("mlxconfig", PCI, 0) == ["mlxconfig", "-d", PCI, "-y", "set", "SRIOV_EN=0"]


@pytest.mark.parametrize("device", [MST, "/dev/mst/mt4125_pciconf0.1", "/dev/mst/mt41686_pciconf0", PCI, "3b:00.1"])
def test_valid_devices(device):
    assert mlxconfig.check_devices([{"device": device, "num_vfs": 4}]) == []


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"device": "0000:3b:00.0; reboot", "num_vfs": 1}, "sriov_firmware[0]: device '0000:3b:00.0; reboot' is"),
        ({"device": "0000:3b:00.0\n", "num_vfs": 1}, "sriov_firmware[0]: device '0000:3b:00.0\\n' is neither"),
        # device 20 is past the 5 bits of a PCI device number (00..1f)
        ({"device": "0000:3b:20.0", "num_vfs": 1}, "sriov_firmware[0]: device '0000:3b:20.0' is neither"),
        ({"device": "0000:3b:00.8", "num_vfs": 1}, "sriov_firmware[0]: device '0000:3b:00.8' is neither"),
        ({"device": "/dev/mst/../sda", "num_vfs": 1}, "sriov_firmware[0]: device '/dev/mst/../sda' is neither"),
        ({"device": "-y", "num_vfs": 1}, "sriov_firmware[0]: device '-y' is neither"),
        ({"device": "mlx5_0", "num_vfs": 1}, "sriov_firmware[0]: device 'mlx5_0' is neither"),
        ({"device": PCI, "num_vfs": 128}, f"sriov_firmware[0] ({PCI}): num_vfs 128 is not a number in 0..127"),
        ({"device": PCI, "num_vfs": -1}, f"sriov_firmware[0] ({PCI}): num_vfs -1 is not a number in 0..127"),
        ({"device": PCI, "num_vfs": True}, f"sriov_firmware[0] ({PCI}): num_vfs True is not a number"),
        ({"device": PCI, "num_vfs": "8"}, f"sriov_firmware[0] ({PCI}): num_vfs '8' is not a number"),
        ({"device": PCI}, f"sriov_firmware[0] ({PCI}): num_vfs None is not a number"),
        ({"device": PCI, "num_vfs": 8, "trust": True}, "sriov_firmware[0]: {"),
    ],
)
def test_bad_entries_are_named(entry, problem):
    problems = mlxconfig.check_devices([entry])
    assert any(p.startswith(problem) for p in problems), problems


def test_a_device_listed_twice_is_refused_and_max_vfs_applies():
    problems = mlxconfig.check_devices([{"device": PCI, "num_vfs": 4}, {"device": PCI, "num_vfs": 8}])
    assert problems == [f"sriov_firmware[1] ({PCI}): is listed twice (also sriov_firmware[0])"]
    assert mlxconfig.check_devices([{"device": PCI, "num_vfs": 16}], max_vfs=15) == [
        f"sriov_firmware[0] ({PCI}): num_vfs 16 is not a number in 0..15"
    ]


# --- the module against canned real output -----------------------------------------------------


@pytest.fixture
def tool(monkeypatch, tmp_path):
    """A fake mlxconfig: each argv answers from a list, in order (the last answer repeats); calls recorded."""
    path = tmp_path / "mlxconfig"
    path.write_text("#!/bin/false\n")
    path.chmod(0o755)
    state = {"path": str(path), "answers": {}, "calls": []}

    def run_command(_module, argv, **_kwargs):
        state["calls"].append(argv)
        answers = state["answers"].get(tuple(argv[1:]))
        if answers is None:
            raise AssertionError(f"unexpected command {argv}")
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    return state


def query(device):
    return ("-d", device, "-e", "q", "SRIOV_EN", "NUM_OF_VFS")


def run(capsys, check_mode=False, diff=False, **args):
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        sriov_firmware.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


def test_sets_only_the_device_that_differs_and_reads_it_back(tool, capsys):
    fresh = real(PCI, num=(0, 0, 0), en=("False(0)",) * 3)
    tool["answers"] = {
        query(MST): [(0, real(MST), "")],
        query(PCI): [(0, fresh, ""), (0, real(PCI, num=(0, 0, 8), en=("False(0)", "False(0)", "True(1)")), "")],
        ("-d", PCI, "-y", "set", "SRIOV_EN=1", "NUM_OF_VFS=8"): [(0, SET_OUTPUT.format(device=PCI), "")],
    }
    devices = [{"device": MST, "num_vfs": 8}, {"device": PCI, "num_vfs": 8}]
    code, result = run(capsys, devices=devices, mlxconfig=tool["path"], diff=True)
    assert code == 0, result
    assert result["changed"] is True
    assert result["commands"] == [[tool["path"], "-d", PCI, "-y", "set", "SRIOV_EN=1", "NUM_OF_VFS=8"]]
    # Every device is read before anything is set, and the set device read back.
    assert [call[1:3] + call[4:5] for call in tool["calls"]] == [
        ["-d", MST, "q"],
        ["-d", PCI, "q"],
        ["-d", PCI, "set"],
        ["-d", PCI, "q"],
    ]
    first, second = result["devices"]
    assert (first["changed"], second["changed"]) == (False, True)
    assert second["current"] == {"SRIOV_EN": False, "NUM_OF_VFS": 0}
    assert second["next_boot"] == second["wanted"] == {"SRIOV_EN": True, "NUM_OF_VFS": 8}
    assert result["reboot_required"] == [PCI]
    assert result["diff"]["before"] == f"{MST}: SRIOV_EN=True NUM_OF_VFS=8\n{PCI}: SRIOV_EN=False NUM_OF_VFS=0\n"
    assert result["diff"]["after"] == f"{MST}: SRIOV_EN=True NUM_OF_VFS=8\n{PCI}: SRIOV_EN=True NUM_OF_VFS=8\n"


def test_a_pending_set_counts_as_done(tool, capsys):
    tool["answers"] = {query(PCI): [(0, real(PCI, num=(0, 0, 8), en=("False(0)", "False(0)", "True(1)")), "")]}
    code, result = run(capsys, devices=[{"device": PCI, "num_vfs": 8}], mlxconfig=tool["path"])
    assert (code, result["changed"], result["commands"]) == (0, False, [])
    assert result["reboot_required"] == [PCI]  # set before, not yet applied by a reset


def test_no_vfs_turns_sriov_off_and_leaves_a_card_without_vfs_alone(tool, capsys):
    tool["answers"] = {
        query(MST): [(0, real(MST, num=(8, 8, 8), en=("False(0)",) * 3), "")],  # off, count left at 8: done
        query(PCI): [(0, real(PCI), ""), (0, real(PCI, en=("True(1)", "True(1)", "False(0)")), "")],
        ("-d", PCI, "-y", "set", "SRIOV_EN=0"): [(0, "Applying... Done!\n", "")],
    }
    devices = [{"device": MST, "num_vfs": 0}, {"device": PCI, "num_vfs": 0}]
    code, result = run(capsys, devices=devices, mlxconfig=tool["path"])
    assert code == 0, result
    assert result["commands"] == [[tool["path"], "-d", PCI, "-y", "set", "SRIOV_EN=0"]]
    assert result["devices"][1]["wanted"] == {"SRIOV_EN": False}
    assert result["reboot_required"] == [PCI]


def test_check_mode_only_queries(tool, capsys):
    tool["answers"] = {query(PCI): [(0, real(PCI, num=(0, 0, 0), en=("False(0)",) * 3), "")]}
    code, result = run(capsys, check_mode=True, devices=[{"device": PCI, "num_vfs": 4}], mlxconfig=tool["path"])
    assert code == 0, result
    assert result["changed"] is True
    assert result["commands"] == [[tool["path"], "-d", PCI, "-y", "set", "SRIOV_EN=1", "NUM_OF_VFS=4"]]
    assert [call[4] for call in tool["calls"]] == ["q"]
    assert result["devices"][0]["next_boot"] == {"SRIOV_EN": True, "NUM_OF_VFS": 4}  # as it would be
    assert result["reboot_required"] == [PCI]


def test_output_that_cannot_be_read_fails_before_any_set(tool, capsys):
    tool["answers"] = {
        query(MST): [(0, real(MST, num=(0, 0, 0)), "")],  # would need a set
        query(PCI): [(0, "\n".join(line for line in real(PCI).splitlines() if "NUM_OF_VFS" not in line), "")],
    }
    devices = [{"device": MST, "num_vfs": 8}, {"device": PCI, "num_vfs": 8}]
    code, result = run(capsys, devices=devices, mlxconfig=tool["path"])
    assert code == 1
    asked = f"-d {PCI} -e q SRIOV_EN NUM_OF_VFS"
    assert result["msg"].startswith(f"sriov_firmware[1] ({PCI}): the answer to mlxconfig {asked} cannot be read")
    assert "the table does not show NUM_OF_VFS" in result["msg"]
    assert "It said: Device #1:\n----------" in result["msg"]  # the text seen
    assert all(call[4] == "q" for call in tool["calls"])


def test_a_failed_query_fails_with_what_mlxconfig_said(tool, capsys):
    tool["answers"] = {query(PCI): [(1, "", f"-E- Failed to open device: {PCI}. No such file or directory")]}
    code, result = run(capsys, devices=[{"device": PCI, "num_vfs": 8}], mlxconfig=tool["path"])
    assert code == 1
    assert result["msg"] == (
        f"sriov_firmware[0] ({PCI}): -d {PCI} -e q SRIOV_EN NUM_OF_VFS failed (exit 1): "
        f"-E- Failed to open device: {PCI}. No such file or directory"
    )


def test_a_set_that_does_not_take_fails(tool, capsys):
    old = real(PCI, num=(0, 0, 0), en=("False(0)",) * 3)
    tool["answers"] = {
        query(PCI): [(0, old, ""), (0, old, "")],
        ("-d", PCI, "-y", "set", "SRIOV_EN=1", "NUM_OF_VFS=8"): [(0, "Applying... Done!\n", "")],
    }
    code, result = run(capsys, devices=[{"device": PCI, "num_vfs": 8}], mlxconfig=tool["path"])
    assert code == 1
    assert result["msg"] == (
        f"sriov_firmware[0] ({PCI}): after -d {PCI} -y set SRIOV_EN=1 NUM_OF_VFS=8 the firmware's Next Boot holds "
        f"{PCI}: SRIOV_EN=False NUM_OF_VFS=0, not 8 VFs"
    )


def test_a_failed_set_fails(tool, capsys):
    tool["answers"] = {
        query(PCI): [(0, real(PCI, num=(0, 0, 0), en=("False(0)",) * 3), "")],
        ("-d", PCI, "-y", "set", "SRIOV_EN=1", "NUM_OF_VFS=200"): [(3, "", "-E- NUM_OF_VFS: value out of range")],
    }
    code, result = run(capsys, devices=[{"device": PCI, "num_vfs": 200}], max_vfs=255, mlxconfig=tool["path"])
    assert code == 1
    assert result["msg"].endswith("failed (exit 3): -E- NUM_OF_VFS: value out of range")
    assert result["commands"] == [[tool["path"], "-d", PCI, "-y", "set", "SRIOV_EN=1", "NUM_OF_VFS=200"]]


def test_bad_input_fails_before_any_command(tool, capsys):
    code, result = run(capsys, devices=[{"device": "0000:3b:00.0 -y", "num_vfs": 8}], mlxconfig=tool["path"])
    assert code == 1
    assert result["msg"].startswith("sriov_firmware[0]: device '0000:3b:00.0 -y' is neither")
    assert tool["calls"] == []


def test_missing_mlxconfig_is_named(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda _module, _name, **_kw: None)
    code, result = run(capsys, devices=[{"device": PCI, "num_vfs": 8}])
    assert code == 1
    assert result["msg"].startswith("sriov_firmware: 1 ConnectX device(s) listed, but mlxconfig is not installed")
    assert "NVIDIA MFT" in result["msg"]
    code, result = run(capsys, devices=[{"device": PCI, "num_vfs": 8}], mlxconfig=str(tmp_path / "mlxconfig"))
    assert result["msg"].startswith(f"sriov_firmware: 1 ConnectX device(s) listed, but {tmp_path}/mlxconfig is not")


def test_no_devices_needs_no_mlxconfig(monkeypatch, capsys):
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda _module, _name, **_kw: None)
    code, result = run(capsys, devices=[])
    assert (code, result["changed"], result["devices"], result["reboot_required"]) == (0, False, [], [])


# --- the lab stub, run as a program ---------------------------------------------------------------


@pytest.fixture
def stub(tmp_path, monkeypatch):
    """The stub with its log, state and device list under a temporary root, knowing MST and PCI."""
    monkeypatch.setenv("MLXCONFIG_STUB_ROOT", str(tmp_path))
    (tmp_path / "etc" / "lab-stubs").mkdir(parents=True)
    (tmp_path / "etc" / "lab-stubs" / "mlxconfig-devices").write_text(f"# the lab's NICs\n{MST}\n3b:00.0\n")

    class Stub:
        root = tmp_path

        @staticmethod
        def __call__(*args, stdin=""):
            return subprocess.run(
                [sys.executable, STUB, *args],
                input=stdin,
                capture_output=True,
                text=True,
                check=False,
                env=dict(os.environ),
            )

        @staticmethod
        def log():
            return (tmp_path / "var" / "log" / "lab-stubs" / "mlxconfig.log").read_text().splitlines()

        @staticmethod
        def state(device):
            name = device.replace("/", "_") + ".json"
            return json.loads((tmp_path / "var" / "lib" / "lab-stubs" / "mlxconfig" / name).read_text())

    return Stub()


def test_the_stub_prints_what_the_module_reads_and_keeps_state(stub):
    done = stub("-d", PCI, "-e", "q", "SRIOV_EN", "NUM_OF_VFS")
    assert done.returncode == 0, done.stderr
    values, _ = mlxconfig.parse_query(done.stdout)
    assert values == {
        name: dict.fromkeys(mlxconfig.COLUMNS, value) for name, value in (("SRIOV_EN", False), ("NUM_OF_VFS", 0))
    }
    done = stub("-d", "3b:00.0", "-y", "set", "SRIOV_EN=1", "NUM_OF_VFS=8")  # the same device without its domain
    assert done.returncode == 0, done.stderr
    assert "Applying... Done!" in done.stdout
    values, _ = mlxconfig.parse_query(stub("-d", PCI, "-e", "q").stdout)
    assert mlxconfig.column(values, "next_boot") == {"SRIOV_EN": True, "NUM_OF_VFS": 8}
    assert mlxconfig.column(values, "current") == {"SRIOV_EN": False, "NUM_OF_VFS": 0}  # no reset seen
    assert stub.state(PCI)["next_boot"] == {"SRIOV_EN": True, "NUM_OF_VFS": 8}
    assert stub.log() == [
        f"-d {PCI} -e q SRIOV_EN NUM_OF_VFS",
        "-d 3b:00.0 -y set SRIOV_EN=1 NUM_OF_VFS=8",
        f"-d {PCI} -e q",
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("-d", PCI, "-e", "q", "LINK_TYPE_P1"), "can query SRIOV_EN and NUM_OF_VFS"),
        (("-d", PCI, "-e", "q", "SRIOV_EN", "SRIOV_EN"), "can query SRIOV_EN and NUM_OF_VFS (each once)"),
        (("-d", PCI, "-y", "set", "LINK_TYPE_P1=2"), "set takes SRIOV_EN=... and NUM_OF_VFS=..."),
        (("-d", PCI, "-y", "set", "NUM_OF_VFS=128"), "NUM_OF_VFS takes a number in 0..127"),
        (("-d", PCI, "-y", "set", "SRIOV_EN=maybe"), "SRIOV_EN takes 1, 0, True or False"),
        (("-d", PCI, "-y", "set", "SRIOV_EN=1", "SRIOV_EN=0"), "set names a parameter twice"),
        (("-d", PCI, "-y", "set"), "set needs PARAM=VALUE"),
        (("-d", PCI, "-y", "q"), "-y belongs to set"),
        (("-d", PCI, "-e", "-y", "set", "SRIOV_EN=1"), "-e belongs to a query"),
        (("-d", PCI, "--force", "-y", "set", "SRIOV_EN=1"), "unsupported option '--force'"),
        (("-d", PCI, "reset"), "takes -d DEVICE [-e] [-y] q|query"),
        (("-e", "q"), "takes -d DEVICE"),
        (("-d", PCI, "-d", MST, "q"), "unsupported option '-d'"),
    ],
)
def test_the_stub_refuses_what_it_does_not_know_and_changes_nothing(stub, args, error):
    done = stub(*args)
    assert done.returncode != 0
    assert done.stderr.startswith("mlxconfig (lab stub): ") and error in done.stderr, done.stderr
    assert stub.log() == [" ".join(args)]  # recorded all the same
    assert not (stub.root / "var" / "lib" / "lab-stubs" / "mlxconfig").exists()


def test_the_stub_fails_for_a_device_it_does_not_know(stub):
    done = stub("-d", "0000:af:00.0", "-e", "q")
    assert done.returncode == 1
    assert "-E- Failed to open device: 0000:af:00.0" in done.stderr
    (stub.root / "etc" / "lab-stubs" / "mlxconfig-devices").unlink()
    assert stub("-d", PCI, "-e", "q").returncode == 1  # no list: no device


def test_the_stub_asks_without_y_and_a_no_changes_nothing(stub):
    done = stub("-d", PCI, "set", "SRIOV_EN=1", stdin="n\n")
    assert done.returncode == 1
    assert "Apply new Configuration? (y/n) [n] :" in done.stdout
    assert not (stub.root / "var" / "lib" / "lab-stubs" / "mlxconfig").exists()
    assert stub("-d", PCI, "set", "SRIOV_EN=1", stdin="y\n").returncode == 0
    assert stub.state(PCI)["next_boot"]["SRIOV_EN"] is True


def test_the_module_against_the_stub_changes_once(stub, capsys):
    devices = [{"device": PCI, "num_vfs": 4}, {"device": MST, "num_vfs": 0}]
    code, result = run(capsys, check_mode=True, devices=devices, mlxconfig=str(STUB))
    assert (code, result["changed"]) == (0, True), result
    assert not [line for line in stub.log() if " set " in line]  # check mode: queries only

    code, result = run(capsys, devices=devices, mlxconfig=str(STUB))
    assert (code, result["changed"]) == (0, True), result
    # A fresh card has SR-IOV off: 0 VFs is already so; 4 VFs is one set.
    assert [line for line in stub.log() if " set " in line] == [f"-d {PCI} -y set SRIOV_EN=1 NUM_OF_VFS=4"]
    assert result["reboot_required"] == [PCI]

    code, result = run(capsys, devices=devices, mlxconfig=str(STUB))
    assert (code, result["changed"], result["commands"]) == (0, False, [])
    assert len([line for line in stub.log() if " set " in line]) == 1
    assert result["reboot_required"] == [PCI]  # until a power cycle


def test_the_module_against_the_stub_after_a_power_cycle(stub, capsys):
    devices = [{"device": PCI, "num_vfs": 4}]
    assert run(capsys, devices=devices, mlxconfig=str(STUB))[1]["changed"] is True
    path = stub.root / "var" / "lib" / "lab-stubs" / "mlxconfig" / f"{PCI}.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps(dict(state, current=state["next_boot"])))  # what a power cycle does
    code, result = run(capsys, devices=devices, mlxconfig=str(STUB))
    assert (code, result["changed"], result["reboot_required"]) == (0, False, [])
    assert result["devices"][0]["current"] == {"SRIOV_EN": True, "NUM_OF_VFS": 4}


def test_the_module_against_the_stub_fails_for_an_unknown_device(stub, capsys):
    code, result = run(capsys, devices=[{"device": "0000:af:00.0", "num_vfs": 4}], mlxconfig=str(STUB))
    assert code == 1
    assert "failed (exit 1): -E- Failed to open device: 0000:af:00.0" in result["msg"]
