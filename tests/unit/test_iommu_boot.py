"""iommu_boot: the IOMMU state a command line asks for, the one the kernel runs, the refusals, and the boot
loader (grubby, GRUB's drop-in) against a fake node: /proc and /sys under a temporary root, a fake grubby
that edits its entries as grubby does, GRUB's files sourced by the real /bin/sh as grub-mkconfig does.
"""

import json
import subprocess

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath import iommu
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load
from fake_sysfs import write

iommu_boot = _load("iommu_boot", ROOT / "library" / "iommu_boot.py")
INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel name\t: Intel(R) Xeon(R) Platinum 8358\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
ARM = "processor\t: 0\nBogoMIPS\t: 200.00\nCPU implementer\t: 0x48\n"
RHEL_ARGS = "ro crashkernel=1G-4G:192M,4G-64G:256M resume=/dev/mapper/rl-swap rd.lvm.lv=rl/root rhgb quiet"


# --- what a command line asks for ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "vendor", "state"),
    [
        ("ro quiet", "intel", "default"),  # the build decides (CONFIG_INTEL_IOMMU_DEFAULT_ON)
        ("ro intel_iommu=on", "intel", "on"),
        ("intel_iommu=on iommu=pt", "intel", "pt"),
        ("intel_iommu=on,sm_on iommu=pt", "intel", "pt"),
        ("intel_iommu=on iommu.passthrough=1", "intel", "pt"),
        ("intel_iommu=on iommu=pt iommu=nopt", "intel", "on"),  # the last pass-through switch wins
        ("intel_iommu=on iommu=pt iommu.passthrough=0", "intel", "on"),
        ("intel_iommu=off intel_iommu=on", "intel", "on"),  # the last one wins
        ("intel_iommu=on intel_iommu=off iommu=pt", "intel", "off"),
        ("intel_iommu=on iommu=off", "intel", "off"),  # no IOMMU at all
        ("intel_iommu=igfx_off", "intel", "default"),
        ("ro quiet", "amd", "on"),  # AMD comes up by itself
        ("amd_iommu=on", "amd", "on"),  # not an option the kernel knows: changes nothing
        ("iommu=pt", "amd", "pt"),
        ("amd_iommu=fullflush,off iommu=pt", "amd", "off"),
        ("amd_iommu=off", "intel", "default"),  # the other vendor's switch
        ("iommu=soft,pt", "amd", "pt"),
        ("iommu.passthrough=y", None, "pt"),
        ("ro", None, "on"),
    ],
)
def test_asked_state_reads_arguments_as_the_kernel_does(line, vendor, state):
    assert iommu.asked_state(iommu.split_cmdline(line), vendor) == state


def test_a_quoted_argument_keeps_its_blanks():
    assert iommu.split_cmdline('BOOT_IMAGE=/vmlinuz ro acpi_osi="!Windows 2020" intel_iommu=on\n') == [
        "BOOT_IMAGE=/vmlinuz",
        "ro",
        'acpi_osi="!Windows 2020"',
        "intel_iommu=on",
    ]


@pytest.mark.parametrize(
    ("cpuinfo", "vendor"),
    [
        (INTEL, ("intel", "GenuineIntel")),
        (AMD, ("amd", "AuthenticAMD")),
        ("vendor_id\t: HygonGenuine\n", ("amd", "HygonGenuine")),
        ("vendor_id\t: CentaurHauls\n", (None, "CentaurHauls")),
        (ARM, (None, None)),
    ],
)
def test_cpu_vendor(cpuinfo, vendor):
    assert iommu.cpu_vendor(cpuinfo) == vendor


def fake_iommu(sys_root, units=("dmar0",), types=("DMA-FQ",)):
    for unit in units:
        (sys_root / "class" / "iommu" / unit).mkdir(parents=True)
    for index, kind in enumerate(types):
        write(sys_root / "kernel" / "iommu_groups" / str(index) / "type", kind)


@pytest.mark.parametrize(
    ("units", "types", "line", "state"),
    [
        ((), ("identity",), "intel_iommu=on iommu=pt", "off"),  # no unit: off, whatever was asked
        (("dmar0", "dmar1"), ("identity", "identity"), "intel_iommu=on", "pt"),  # the groups tell
        (("dmar0",), ("DMA-FQ", "DMA"), "intel_iommu=on iommu=pt", "on"),
        (("dmar0",), ("identity", "DMA"), "intel_iommu=on iommu=pt", "pt"),  # mixed: the command line
        (("dmar0",), ("identity", "DMA"), "intel_iommu=on", "on"),
        (("dmar0",), (), "intel_iommu=on iommu=pt", "pt"),  # no type files (before 5.6)
        (("ivhd0",), (), "ro", "on"),
    ],
)
def test_effective_state(tmp_path, units, types, line, state):
    fake_iommu(tmp_path, units, types)
    assert iommu.effective_state(str(tmp_path), iommu.split_cmdline(line), "intel") == state


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (("on", "on", True, False, False), "sriov_iommu: on is refused in a pool marked for GPUDirect Storage"),
        (("pt", "pt", True, False, False), "sriov_iommu: pt is refused in a pool marked for GPUDirect Storage"),
        (("pt", "pt", True, True, False), None),  # DGX
        (("on", "on", True, True, False), "sriov_iommu: on is refused in a pool marked for GPUDirect Storage"),
        (("off", "off", True, False, False), None),
        (("off", "on", False, False, True), "sriov_iommu: off, but VFs of this node are to be bound to vfio-pci"),
        (("unmanaged", "off", False, False, True), "sriov_iommu: unmanaged, and this kernel runs without an IOMMU"),
        (("unmanaged", "pt", False, False, True), None),
        (("pt", "off", False, False, True), None),  # the boot loader can still bring it
    ],
)
def test_refusals(args, refused):
    problem = iommu.refusal(*args)
    assert (problem is None) if refused is None else problem.startswith(refused), problem


def test_the_gds_refusal_says_what_is_allowed():
    assert iommu.refusal("pt", "pt", True, False, False).endswith("set sriov_iommu to off, or pt on NVIDIA DGX systems")
    assert "sriov_iommu_manage_boot: true" in iommu.refusal("unmanaged", "off", False, False, True)


# --- the module on a fake node -----------------------------------------------------------------------


class FakeGrubby:
    """grubby --info=ALL and --update-kernel=ALL --args/--remove-args over a list of kernel entries."""

    def __init__(self, args, kernels=("5.14.0-362.el9.x86_64", "0-rescue-0123456789abcdef")):
        self.entries = [[f"/boot/vmlinuz-{kernel}", args.split()] for kernel in kernels]
        self.output = None  # replaces what --info=ALL prints, when set

    def __call__(self, argv):
        if argv[1:] == ["--info=ALL"]:
            if self.output is not None:
                return 0, self.output, ""
            text = ""
            for index, (kernel, args) in enumerate(self.entries):
                text += f'index={index}\nkernel="{kernel}"\nargs="{" ".join(args)}"\nroot="/dev/mapper/rl-root"\n'
                text += f'initrd="/boot/initramfs.img $tuned_initrd"\ntitle="Rocky Linux ({kernel})"\nid="{index}"\n'
            return 0, text, ""
        assert argv[1] == "--update-kernel=ALL", argv
        option, _sep, value = argv[2].partition("=")
        for entry in self.entries:
            if option == "--remove-args":
                entry[1] = [arg for arg in entry[1] if arg not in value.split()]
            else:
                assert option == "--args", argv
                for arg in value.split():
                    key = arg.partition("=")[0]
                    entry[1] = [old for old in entry[1] if old.partition("=")[0] != key] + [arg]
        return 0, "", ""


class Node:
    """A fake node: /proc, /sys and /etc/default under a temporary root, the boot tools it has, the commands run."""

    def __init__(self, root, monkeypatch):
        self.root = root
        self.tools = {}  # name -> path
        self.commands = []
        self.update_grub_rc = 0
        self.grubby = None
        self.cmdline("BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=/dev/vda1 ro quiet")
        self.cpu(INTEL)
        (root / "sys").mkdir()
        monkeypatch.setattr(iommu_boot, "PROC", str(root / "proc"))
        monkeypatch.setattr(iommu_boot, "SYS", str(root / "sys"))
        monkeypatch.setattr(iommu_boot, "GRUB_DEFAULT", str(root / "etc" / "default" / "grub"))
        monkeypatch.setattr(iommu_boot, "GRUB_DROPIN_DIR", str(root / "etc" / "default" / "grub.d"))
        monkeypatch.setattr(iommu_boot, "find_tool", lambda _module, name: self.tools.get(name))
        monkeypatch.setattr(AnsibleModule, "run_command", lambda _module, argv, **_kw: self.run(argv))

    def cmdline(self, text):
        write(self.root / "proc" / "cmdline", text)

    def cpu(self, text):
        write(self.root / "proc" / "cpuinfo", text)

    def iommu(self, units=("dmar0",), types=("DMA-FQ",)):
        fake_iommu(self.root / "sys", units, types)

    def with_grubby(self, args=RHEL_ARGS):
        self.tools["grubby"] = "/usr/sbin/grubby"
        self.grubby = FakeGrubby(args)

    def with_grub(self, linux="", default="quiet", tool="update-grub"):
        write(
            self.root / "etc" / "default" / "grub",
            f'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="{default}"\nGRUB_CMDLINE_LINUX="{linux}"\n',
        )
        self.tools[tool] = f"/usr/sbin/{tool}"

    def dropin(self):
        path = self.root / "etc" / "default" / "grub.d" / "90-hpc-iommu.cfg"
        return path.read_text() if path.exists() else None

    def run(self, argv):
        if argv[0] == "/bin/sh":  # GRUB's files, sourced for real
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            return done.returncode, done.stdout, done.stderr
        self.commands.append(argv)
        if argv[0] == "/usr/sbin/grubby":
            return self.grubby(argv)
        if argv[0] in ("/usr/sbin/update-grub", "/usr/sbin/grub-mkconfig"):
            return self.update_grub_rc, "", "error: out of disk space" if self.update_grub_rc else ""
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def node(tmp_path, monkeypatch):
    return Node(tmp_path, monkeypatch)


def run(capsys, check_mode=False, diff=False, **args):
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        iommu_boot.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


def test_unmanaged_reads_and_changes_nothing(node, capsys):
    node.iommu(types=("identity",))
    node.with_grubby()
    code, result = run(capsys)
    assert code == 0, result
    assert (result["effective"], result["matches"], result["changed"]) == ("pt", True, False)
    assert result["message"] == "sriov_iommu: unmanaged; the kernel runs with the IOMMU pt"
    assert node.commands == []


def test_unmanaged_in_a_gds_pool_warns_about_a_translating_iommu(node, capsys, monkeypatch):
    # Recorded at the call: where controller code was imported in the same process (other tests),
    # ansible-core hands module warnings to the controller's display instead of the result.
    warned = []
    monkeypatch.setattr(AnsibleModule, "warn", lambda _module, warning, **_kw: warned.append(warning))
    node.iommu()
    code, result = run(capsys, gds_pool=True)
    assert code == 0
    assert "which GPUDirect Storage in this pool does not support" in result["message"]
    assert warned == [result["message"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"wanted": "on", "gds_pool": True}, "sriov_iommu: on is refused in a pool marked for GPUDirect Storage"),
        ({"wanted": "pt", "gds_pool": True}, "sriov_iommu: pt is refused in a pool marked for GPUDirect Storage"),
        ({"wanted": "off", "vfio_needed": True}, "sriov_iommu: off, but VFs of this node are to be bound to vfio-pci"),
        ({"vfio_needed": True}, "sriov_iommu: unmanaged, and this kernel runs without an IOMMU"),
    ],
)
def test_refusals_stop_the_run_before_the_boot_loader_is_read(node, capsys, args, message):
    node.with_grubby()
    code, result = run(capsys, manage_boot=True, **args)
    assert code == 1
    assert result["msg"].startswith(message), result["msg"]
    assert result["effective"] == "off"
    assert node.commands == []


def test_pt_in_a_gds_pool_on_a_dgx_goes_ahead(node, capsys):
    node.iommu(types=("identity",))
    node.cmdline("ro intel_iommu=on iommu=pt")
    code, result = run(capsys, wanted="pt", gds_pool=True, dgx=True)
    assert (code, result["matches"]) == (0, True), result


def test_without_manage_boot_a_mismatch_is_reported_and_nothing_read(node, capsys):
    node.with_grubby()
    code, result = run(capsys, wanted="pt", vfio_needed=True)
    assert code == 0, result
    assert (result["effective"], result["matches"], result["reboot_required"], result["changed"]) == (
        "off",
        False,
        False,
        False,
    )
    assert result["boot_args_wanted"] == ["intel_iommu=on", "iommu=pt"]
    assert result["message"] == (
        "sriov_iommu: pt, and the kernel runs with the IOMMU off; sriov_iommu_manage_boot is false, so the boot "
        "loader is left alone: boot with intel_iommu=on iommu=pt (or set sriov_iommu_manage_boot: true to let the "
        "role write it)"
    )
    assert node.commands == []


def test_no_boot_loader_fails_when_a_change_is_needed(node, capsys):
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 1
    assert result["msg"].startswith(
        "sriov_iommu_manage_boot: true, and the kernel runs with the IOMMU off where sriov_iommu wants on, but this "
        "node has no boot loader configuration this module knows"
    )
    assert "a VM booted with a direct kernel" in result["msg"]
    assert "give the kernel intel_iommu=on there, or set sriov_iommu_manage_boot: false" in result["msg"]


def test_no_boot_loader_is_fine_when_the_kernel_already_runs_as_wanted(node, capsys):
    node.iommu()
    node.cmdline("root=/dev/vda1 console=ttyS0 intel_iommu=on")  # the lab's direct kernel boot
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert (code, result["matches"], result["changed"], result["boot_loader"]) == (0, True, False, None), result
    assert "its kernel command line is set elsewhere" in result["message"]


def test_a_cpu_that_is_not_x86_takes_unmanaged_only(node, capsys):
    node.cpu(ARM)
    code, result = run(capsys, wanted="pt", manage_boot=True)
    assert code == 1
    assert result["msg"].startswith("sriov_iommu: pt needs the kernel arguments of an Intel or AMD CPU")
    assert run(capsys)[0] == 0


def test_a_firmware_with_the_iommu_off_is_named_not_rebooted_for(node, capsys):
    node.cmdline("ro intel_iommu=on")  # asked for, and no unit: VT-d off in the firmware
    node.with_grubby(RHEL_ARGS + " intel_iommu=on")
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 0, result
    assert (result["matches"], result["changed"], result["reboot_required"]) == (False, False, False)
    assert "is off in the system firmware: enable it in the firmware setup" in result["message"]


# grubby (RHEL family)


def test_grubby_adds_the_arguments_then_a_reboot_is_due(node, capsys):
    node.with_grubby()
    code, result = run(capsys, wanted="pt", manage_boot=True, vfio_needed=True, diff=True)
    assert code == 0, result
    assert result["commands"] == [["/usr/sbin/grubby", "--update-kernel=ALL", "--args=intel_iommu=on iommu=pt"]]
    assert node.commands == [
        ["/usr/sbin/grubby", "--info=ALL"],
        ["/usr/sbin/grubby", "--update-kernel=ALL", "--args=intel_iommu=on iommu=pt"],
        ["/usr/sbin/grubby", "--info=ALL"],  # read back
    ]
    assert all(args[-2:] == ["intel_iommu=on", "iommu=pt"] for _kernel, args in node.grubby.entries)
    assert (result["changed"], result["reboot_required"], result["boot_loader"]) == (True, True, "grubby")
    assert result["message"] == (
        "sriov_iommu: pt, and the kernel runs with the IOMMU off; the boot configuration (grubby) asks for pt, now: "
        "a reboot applies it"
    )
    assert result["diff"]["before"].startswith(f"/boot/vmlinuz-5.14.0-362.el9.x86_64: {RHEL_ARGS}\n")
    assert result["diff"]["after"].startswith(f"/boot/vmlinuz-5.14.0-362.el9.x86_64: {RHEL_ARGS} intel_iommu=on")

    node.commands.clear()
    code, result = run(capsys, wanted="pt", manage_boot=True)  # before the reboot
    assert (code, result["changed"], result["reboot_required"]) == (0, False, True)
    assert node.commands == [["/usr/sbin/grubby", "--info=ALL"]]
    assert result["message"].endswith("the boot configuration (grubby) asks for pt: a reboot applies it")

    node.cmdline(f"BOOT_IMAGE=(hd0,gpt2)/vmlinuz {RHEL_ARGS} intel_iommu=on iommu=pt")  # after it
    node.iommu(types=("identity",))
    code, result = run(capsys, wanted="pt", manage_boot=True)
    assert (code, result["matches"], result["changed"], result["reboot_required"]) == (0, True, False, False)


def test_grubby_removes_what_the_wanted_state_does_not_use(node, capsys):
    node.with_grubby(RHEL_ARGS + " intel_iommu=on iommu=pt")
    node.cmdline(f"ro {RHEL_ARGS} intel_iommu=on iommu=pt")
    node.iommu(types=("identity",))
    code, result = run(capsys, wanted="off", manage_boot=True)
    assert code == 0, result
    assert result["commands"] == [
        ["/usr/sbin/grubby", "--update-kernel=ALL", "--remove-args=intel_iommu=on iommu=pt"],
        ["/usr/sbin/grubby", "--update-kernel=ALL", "--args=intel_iommu=off"],
    ]
    assert node.grubby.entries[0][1] == [*RHEL_ARGS.split(), "intel_iommu=off"]
    assert (result["effective"], result["reboot_required"]) == ("pt", True)


def test_grubby_in_check_mode_reads_only(node, capsys):
    node.with_grubby()
    code, result = run(capsys, check_mode=True, wanted="on", manage_boot=True)
    assert (code, result["changed"], result["reboot_required"]) == (0, True, True), result
    assert result["commands"] == [["/usr/sbin/grubby", "--update-kernel=ALL", "--args=intel_iommu=on"]]
    assert node.commands == [["/usr/sbin/grubby", "--info=ALL"]]
    assert node.grubby.entries[0][1] == RHEL_ARGS.split()


def test_grubby_on_amd_on_only_removes(node, capsys):
    node.cpu(AMD)
    node.with_grubby(RHEL_ARGS + " amd_iommu=off")
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 0, result
    assert result["boot_args_wanted"] == []
    assert result["commands"] == [["/usr/sbin/grubby", "--update-kernel=ALL", "--remove-args=amd_iommu=off"]]


def test_grubby_arguments_of_another_form_are_left_to_the_operator(node, capsys):
    node.with_grubby(RHEL_ARGS + " intel_iommu=off,sm_on")
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 1
    assert result["msg"] == (
        "sriov_iommu: on, but kernel /boot/vmlinuz-5.14.0-362.el9.x86_64 has intel_iommu=off,sm_on, which this "
        "module does not edit (grubby --args would replace it whole, options and all): change it by hand with "
        "grubby --update-kernel"
    )
    assert node.commands == [["/usr/sbin/grubby", "--info=ALL"]]


@pytest.mark.parametrize(
    "output",
    ["", 'index=0\nkernel="/boot/vmlinuz"\n', "garbage\n", 'kernel="/boot/vmlinuz"\nargs="ro"\n'],
    ids=["empty", "no-args", "garbage", "no-index"],
)
def test_grubby_output_that_cannot_be_read_fails(node, capsys, output):
    node.with_grubby()
    node.grubby.output = output
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 1
    assert result["msg"].startswith("sriov_iommu_manage_boot: grubby --info=ALL "), result["msg"]


# GRUB's drop-in (Debian, Ubuntu)

DROPIN_PT = (
    "# Managed by hpc-datapath (iommu_boot, the sriov role's sriov_iommu): the IOMMU state of this pool.\n"
    "# update-grub reads it after /etc/default/grub; it takes effect at the next boot.\n"
    'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu=pt"\n'
)


def test_grub_gets_a_drop_in_and_update_grub_once(node, capsys):
    node.with_grub()
    code, result = run(capsys, wanted="pt", manage_boot=True, diff=True)
    assert code == 0, result
    assert node.dropin() == DROPIN_PT
    assert node.commands == [["/usr/sbin/update-grub"]]
    assert (result["changed"], result["reboot_required"], result["boot_loader"]) == (True, True, "grub")
    assert result["diff"]["before"] == ""
    assert result["diff"]["after"] == DROPIN_PT
    assert oct((node.root / "etc" / "default" / "grub.d" / "90-hpc-iommu.cfg").stat().st_mode & 0o777) == "0o644"

    code, result = run(capsys, wanted="pt", manage_boot=True)
    assert (code, result["changed"], result["reboot_required"]) == (0, False, True)
    assert node.commands == [["/usr/sbin/update-grub"]]  # not again


def test_grub_in_check_mode_writes_nothing(node, capsys):
    node.with_grub()
    code, result = run(capsys, check_mode=True, diff=True, wanted="pt", manage_boot=True)
    assert (code, result["changed"]) == (0, True), result
    assert result["commands"] == [["/usr/sbin/update-grub"]]
    assert result["diff"]["after"] == DROPIN_PT
    assert node.dropin() is None
    assert node.commands == []


def test_grub_already_asking_by_hand_is_left_alone(node, capsys):
    node.with_grub(default="quiet intel_iommu=on iommu=pt")
    code, result = run(capsys, wanted="pt", manage_boot=True)
    assert (code, result["changed"], result["reboot_required"]) == (0, False, True), result
    assert node.dropin() is None


def test_grub_without_update_grub_runs_grub_mkconfig(node, capsys):
    node.with_grub(tool="grub-mkconfig")
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 0, result
    assert result["commands"] == [["/usr/sbin/grub-mkconfig", "-o", "/boot/grub/grub.cfg"]]


def test_grub_on_overrides_a_pass_through_before_the_drop_in(node, capsys):
    node.with_grub(linux="iommu=pt")
    code, _result = run(capsys, wanted="on", manage_boot=True)
    assert code == 0
    assert node.dropin().endswith('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu=nopt"\n')


def test_grub_default_after_the_drop_in_is_named(node, capsys):
    node.with_grub(default="quiet intel_iommu=off")
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 1
    assert result["msg"].startswith(
        "sriov_iommu: on, but GRUB's kernel command line would still ask for the IOMMU off with "
    )
    assert "(intel_iommu=on intel_iommu=off)" in result["msg"]
    assert "GRUB_CMDLINE_LINUX_DEFAULT comes after the drop-in" in result["msg"]
    assert node.dropin() is None
    assert node.commands == []


def test_grub_amd_off_cannot_be_undone_later_on_the_line(node, capsys):
    node.cpu(AMD)
    node.with_grub(linux="amd_iommu=off")
    code, result = run(capsys, wanted="pt", manage_boot=True)
    assert code == 1
    assert "would still ask for the IOMMU off" in result["msg"]


def test_grub_drop_in_removed_when_amd_on_needs_no_argument(node, capsys):
    node.cpu(AMD)
    node.with_grub()
    node.iommu(units=("ivhd0",), types=("identity",))
    node.cmdline("ro iommu=pt")
    assert run(capsys, wanted="pt", manage_boot=True)[0] == 0
    assert node.dropin().endswith('"$GRUB_CMDLINE_LINUX iommu=pt"\n')
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert (code, result["changed"], result["reboot_required"]) == (0, True, True), result
    assert node.dropin() is None
    assert node.commands == [["/usr/sbin/update-grub"], ["/usr/sbin/update-grub"]]


def test_grub_later_file_is_sourced_in_order(node, capsys):
    node.with_grub()
    write(node.root / "etc" / "default" / "grub.d" / "99-local.cfg", 'GRUB_CMDLINE_LINUX="console=ttyS0"')
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 1  # 99-local.cfg replaces GRUB_CMDLINE_LINUX after the drop-in
    assert "a later file of" in result["msg"]


def test_grub_that_cannot_be_sourced_fails(node, capsys):
    node.with_grub()
    (node.root / "etc" / "default" / "grub").write_text('GRUB_CMDLINE_LINUX="unterminated\n')
    code, result = run(capsys, wanted="on", manage_boot=True)
    assert code == 1
    assert result["msg"].startswith("sriov_iommu_manage_boot: reading GRUB's kernel command line from ")


def test_grub_update_failure_puts_the_drop_in_back(node, capsys):
    node.with_grub()
    node.update_grub_rc = 1
    code, result = run(capsys, wanted="pt", manage_boot=True)
    assert code == 1
    assert result["msg"] == (
        "sriov_iommu_manage_boot: /usr/sbin/update-grub failed (exit 1: error: out of disk space); "
        f"{node.root}/etc/default/grub.d/90-hpc-iommu.cfg is back as it was"
    )
    assert node.dropin() is None
