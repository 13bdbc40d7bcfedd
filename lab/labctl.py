#!/usr/bin/env python3
"""Boot, reach and stop the project's QEMU hardware lab.

The lab is two Debian 12 nodes with their own kernels, wired like a pair of cluster nodes:

  mgmt0            virtio NIC on QEMU user networking; SSH forwarded to 127.0.0.1:<port>
  enp0s3, enp0s4   virtio NICs at 25 Gb/s full duplex, wired back-to-back to the other node
                   (the bond members)
  igb NIC          Intel 82576 (SR-IOV capable, up to 7 VFs), wired to the other node
  2 x NVMe         controllers with fixed serials LABN<node>NVME<k>, fresh empty disks

Commands:
  image    build the guest image unless the cache already holds it for this recipe
  up       build if needed, boot both nodes, wait for SSH, write .lab/ssh_config
  down     stop every QEMU process of this lab and delete its overlays and disks
  status   print the nodes and whether they run
  ssh      run ssh with the lab's config:  labctl.py ssh node1 [command...]
  link     pull or plug a data cable (both ends): labctl.py link data1 down|up

Environment:
  LAB_CACHE_DIR   image cache (default: $XDG_CACHE_HOME/hpc-datapath-lab or ~/.cache/...)
  LAB_STATE_DIR   per-checkout state: overlays, logs, ssh_config (default: <repo>/.lab)
  LAB_ACCEL       kvm | tcg (default: probe KVM with a timeout, fall back to TCG)
  LAB_SSH_PORT    SSH port of node1; node N listens on LAB_SSH_PORT + N - 1 (default 2221)
  LAB_MEMORY_MB   memory per node (default 1536)
  LAB_CPUS        vCPUs per node (default 2)
  LAB_BOOT_ATTEMPT_TIMEOUT, LAB_BOOT_ATTEMPTS
                  seconds one boot may take before the node is started afresh (240), boots (3)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent
REPO_DIR = LAB_DIR.parent
QEMU = "qemu-system-x86_64"
NODE_COUNT = 2
# Links wired back-to-back between node1 and node2: (name, PCI slot, QEMU device options).
DATA_LINKS = (
    ("data0", 0x3, "virtio-net-pci,speed=25000,duplex=full"),
    ("data1", 0x4, "virtio-net-pci,speed=25000,duplex=full"),
    ("sriov", None, "igb"),  # behind its own PCIe root port, where SR-IOV works
    # Two RoCE rails (Soft-RoCE on top in the lab), shaped like the 100G ConnectX rails.
    ("rail0", 0x8, "virtio-net-pci,speed=100000,duplex=full"),
    ("rail1", 0x9, "virtio-net-pci,speed=100000,duplex=full"),
)
NVME_PER_NODE = 2
NVME_SIZE = "4G"


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"labctl: {name} must be an integer, got {os.environ[name]!r}")


def cache_dir() -> Path:
    if "LAB_CACHE_DIR" in os.environ:
        return qemu_safe(Path(os.environ["LAB_CACHE_DIR"]), "LAB_CACHE_DIR")
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return qemu_safe(Path(base) / "hpc-datapath-lab", "XDG_CACHE_HOME")


def state_dir() -> Path:
    return qemu_safe(Path(os.environ.get("LAB_STATE_DIR", REPO_DIR / ".lab")).resolve(), "LAB_STATE_DIR")


def qemu_safe(path: Path, variable: str) -> Path:
    """A path that goes into QEMU's options, where a comma would start another option."""
    if "," in str(path):
        sys.exit(f"labctl: {variable}: {path} contains a comma, which QEMU reads as an option separator")
    return path


def recipe_key() -> str:
    """Hash of everything that shapes the image: the builder and every guest file."""
    digest = hashlib.sha256()
    files = [LAB_DIR / "build-image.sh", *sorted(p for p in (LAB_DIR / "guest").rglob("*") if p.is_file())]
    for path in files:
        digest.update(str(path.relative_to(LAB_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_dir() -> Path:
    return cache_dir() / f"debian12-{recipe_key()}"


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_image() -> Path:
    target = image_dir()
    with locked(cache_dir() / ".build.lock"):
        if (target / "root.qcow2").exists():
            print(f"lab image: cached at {target}")
            return target
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        subprocess.run([str(LAB_DIR / "build-image.sh"), str(staging)], check=True)
        staging.rename(target)
        print(f"lab image: built in {time.monotonic() - started:.0f} s")
        return target


def kvm_works(image: Path, timeout: float = 20.0) -> bool:
    """Boot the lab kernel under KVM without a root disk and wait for its panic.

    Opening /dev/kvm is not enough: on some hosts it opens but guests never run. A kernel that
    reaches 'VFS: Unable to mount root fs' within the timeout proves that guest code executes.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cmd = [
        QEMU,
        "-accel",
        "kvm",
        "-machine",
        "q35",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(image / "vmlinuz"),
        "-append",
        "console=ttyS0 panic=-1 root=/dev/nonexistent",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return False
    return b"Kernel panic" in output or b"VFS:" in output


def choose_accel(image: Path) -> str:
    """LAB_ACCEL if set, else the probe's verdict, remembered until the host reboots."""
    wanted = os.environ.get("LAB_ACCEL", "")
    if wanted in ("kvm", "tcg"):
        return wanted
    if wanted:
        sys.exit(f"labctl: LAB_ACCEL must be kvm or tcg, got {wanted!r}")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    remembered = cache_dir() / "accel-probe.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        verdict = json.loads(remembered.read_text())
        if verdict["boot_id"] == boot_id:
            return verdict["accel"]
    accel = "kvm" if kvm_works(image) else "tcg"
    remembered.parent.mkdir(parents=True, exist_ok=True)
    remembered.write_text(json.dumps({"boot_id": boot_id, "accel": accel}) + "\n")
    return accel


@dataclass(frozen=True)
class Node:
    index: int  # 1-based

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def ssh_port(self) -> int:
        return env_int("LAB_SSH_PORT", 2221) + self.index - 1

    @property
    def machine_id(self) -> str:
        return hashlib.md5(f"hpc-datapath-lab-{self.name}".encode(), usedforsecurity=False).hexdigest()

    def mac(self, nic: int) -> str:
        return f"52:54:00:10:{self.index:02x}:{nic:02x}"

    def nvme_serial(self, k: int) -> str:
        return f"LABN{self.index}NVME{k}"


def link_ports(link: int, node: Node) -> tuple[int, int]:
    """UDP (local, remote) ports on 127.0.0.1 that wire one data link between the two nodes."""
    base = env_int("LAB_SSH_PORT", 2221) + 1000 + 2 * link
    mine, peer = (base, base + 1) if node.index == 1 else (base + 1, base)
    return mine, peer


def qemu_command(node: Node, image: Path, accel: str, state: Path) -> list[str]:
    run = state / node.name
    cmd = [
        QEMU,
        "-name",
        f"hpc-datapath-lab-{node.name},process=hpc-lab-{node.name}",
        "-accel",
        accel,
        "-machine",
        "q35",
        "-cpu",
        "host" if accel == "kvm" else "max",
        "-smp",
        str(env_int("LAB_CPUS", 2)),
        "-m",
        str(env_int("LAB_MEMORY_MB", 1536)),
        "-nodefaults",
        "-display",
        "none",
        "-daemonize",
        "-pidfile",
        str(run / "qemu.pid"),
        "-serial",
        f"file:{run / 'console.log'}",
        "-kernel",
        str(image / "vmlinuz"),
        "-initrd",
        str(image / "initrd.img"),
        "-append",
        f"root=/dev/vda rw console=ttyS0 systemd.hostname={node.name} systemd.machine_id={node.machine_id}",
        # Without host entropy both nodes, booted from one image, draw the same "random" MACs:
        # two bonds with one system ID, and LACP takes its partner for a loop.
        "-device",
        "virtio-rng-pci",
        "-qmp",
        f"unix:{run / 'qmp.sock'},server=on,wait=off",
        "-drive",
        f"file={run / 'root.qcow2'},if=virtio,format=qcow2",
        "-netdev",
        # restrict: the nodes reach nothing beyond the lab (slirp would even fake ICMP replies
        # from any address); only the forwarded SSH port comes in.
        f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{node.ssh_port}-:22",
        "-device",
        f"virtio-net-pci,netdev=mgmt,mac={node.mac(1)},addr=0x2",
    ]
    for link, (name, slot, device) in enumerate(DATA_LINKS):
        local, remote = link_ports(link, node)
        cmd += [
            "-netdev",
            f"dgram,id={name},local.type=inet,local.host=127.0.0.1,local.port={local},"
            f"remote.type=inet,remote.host=127.0.0.1,remote.port={remote}",
        ]
        nic = f"{device},netdev={name},mac={node.mac(link + 2)}"
        if slot is None:
            cmd += ["-device", f"pcie-root-port,id=rp_{name},chassis={link + 1},slot={link + 1}"]
            nic += f",bus=rp_{name}"
        else:
            nic += f",addr={slot:#x}"
        cmd += ["-device", nic]
    for k in range(NVME_PER_NODE):
        cmd += [
            "-drive",
            f"file={run / f'nvme{k}.qcow2'},if=none,id=nvme{k},format=qcow2",
            "-device",
            f"nvme,serial={node.nvme_serial(k)},drive=nvme{k},addr={0x6 + k:#x}",
        ]
    return cmd


def lab_processes(state: Path) -> list[int]:
    """PIDs of every QEMU process of this lab: its -pidfile is <state>/<node>/qemu.pid, exactly.

    Not a substring match: another lab whose state dir merely contains this one's path is not ours.
    """
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(QEMU.encode()) or b"-pidfile" not in argv[:-1]:
            continue
        pidfile = Path(os.fsdecode(argv[argv.index(b"-pidfile") + 1]))
        if pidfile.name == "qemu.pid" and pidfile.parent.parent == state:
            pids.append(int(proc.name))
    return pids


def ssh_base(state: Path) -> list[str]:
    return ["ssh", "-F", str(state / "ssh_config")]


def wait_for_ssh(node: Node, state: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", node.ssh_port), timeout=2):
            probe = subprocess.run(
                [*ssh_base(state), "-o", "ConnectTimeout=5", node.name, "true"], check=False, capture_output=True
            )
            if probe.returncode == 0:
                return True
        time.sleep(2)
    return False


def stop_node(node: Node, state: Path) -> None:
    pidfile = state / node.name / "qemu.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.2)


def wait_booted(node: Node, image: Path, accel: str, state: Path) -> None:
    """Wait until a started node answers SSH, starting it afresh when its boot hangs.

    Under TCG an early boot now and then stalls for good (RCU stall, a vCPU's timer never fires);
    a second boot of the same disk goes through. Each attempt gets LAB_BOOT_ATTEMPT_TIMEOUT seconds.
    """
    attempts = env_int("LAB_BOOT_ATTEMPTS", 3)
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            stop_node(node, state)
            console = state / node.name / "console.log"
            console.rename(console.with_name(f"console.attempt{attempt - 1}.log"))
            print(f"lab: {node.name} hung while booting; starting it again (attempt {attempt} of {attempts})")
            subprocess.run(qemu_command(node, image, accel, state), check=True)
        if wait_for_ssh(node, state, time.monotonic() + env_int("LAB_BOOT_ATTEMPT_TIMEOUT", 240)):
            return
    console = (state / node.name / "console.log").read_text(errors="replace")[-3000:]
    raise SystemExit(f"labctl: {node.name} did not answer SSH in {attempts} boots; console tail:\n{console}")


def write_ssh_files(image: Path, state: Path, nodes: list[Node]) -> None:
    host_key = (image / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    known = "".join(f"[127.0.0.1]:{n.ssh_port} {' '.join(host_key)}\n" for n in nodes)
    (state / "known_hosts").write_text(known)
    key = state / "id_ed25519"  # ssh refuses a key readable by others; the cache copy may be
    shutil.copyfile(image / "id_ed25519", key)
    key.chmod(0o600)
    config = "".join(
        f"Host {n.name}\n  HostName 127.0.0.1\n  Port {n.ssh_port}\n  User root\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {state / 'known_hosts'}\n"
        f"  StrictHostKeyChecking yes\n  LogLevel ERROR\n\n"
        for n in nodes
    )
    (state / "ssh_config").write_text(config)


# What labctl writes into the state dir, and so all it removes from there.
STATE_FILES = ("ssh_config", "known_hosts", "id_ed25519", "state.json")


def clear_state(state: Path, nodes: list[Node]) -> None:
    """Remove what an earlier lab left in the state dir, and nothing that labctl did not write."""
    state.mkdir(parents=True, exist_ok=True)
    for name in STATE_FILES:
        (state / name).unlink(missing_ok=True)
    for node in nodes:
        shutil.rmtree(state / node.name, ignore_errors=True)


def up(_args: argparse.Namespace) -> None:
    state = state_dir()
    if lab_processes(state):
        if (state / "state.json").exists():
            print(f"lab: already running in {state} ('labctl.py down' stops it)")
            return
        sys.exit(f"labctl: a half-started lab runs in {state}; run 'labctl.py down' first")
    image = ensure_image()
    accel = choose_accel(image)
    nodes = [Node(i) for i in range(1, NODE_COUNT + 1)]
    clear_state(state, nodes)
    write_ssh_files(image, state, nodes)
    started = time.monotonic()
    for node in nodes:
        run = state / node.name
        run.mkdir()
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(image / "root.qcow2"),
                str(run / "root.qcow2"),
            ],
            check=True,
        )
        for k in range(NVME_PER_NODE):
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(run / f"nvme{k}.qcow2"), NVME_SIZE], check=True
            )
    for node in nodes:  # side by side
        subprocess.run(qemu_command(node, image, accel, state), check=True)
    for node in nodes:
        wait_booted(node, image, accel, state)
    record = {
        "accel": accel,
        "image": str(image),
        "boot_seconds": round(time.monotonic() - started, 1),
        "nodes": [{"name": n.name, "ssh_port": n.ssh_port} for n in nodes],
    }
    (state / "state.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"lab: {len(nodes)} nodes up under {accel.upper()} in {record['boot_seconds']} s")
    for node in nodes:
        print(f"  {node.name}: ssh -F {state / 'ssh_config'} {node.name}")


def down(_args: argparse.Namespace) -> None:
    state = state_dir()
    pids = lab_processes(state)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while lab_processes(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in lab_processes(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    if left := lab_processes(state):
        sys.exit(f"labctl: QEMU processes {left} survived SIGKILL")
    for node_dir in state.glob("node*"):
        shutil.rmtree(node_dir)
    print(f"lab: stopped {len(pids)} QEMU process(es)")


def status(_args: argparse.Namespace) -> None:
    state = state_dir()
    running = lab_processes(state)
    print(f"image: {image_dir()} ({'cached' if (image_dir() / 'root.qcow2').exists() else 'not built'})")
    print(f"state: {state}; {len(running)} QEMU process(es) running")
    with contextlib.suppress(FileNotFoundError):
        record = json.loads((state / "state.json").read_text())
        print(f"accelerator: {record['accel']}; booted in {record['boot_seconds']} s")
        for entry in record["nodes"] if running else []:
            print(f"  {entry['name']}: ssh -F {state / 'ssh_config'} {entry['name']}  (127.0.0.1:{entry['ssh_port']})")


def ssh(args: argparse.Namespace) -> None:
    os.execvp("ssh", [*ssh_base(state_dir()), args.node, *args.command])  # noqa: S606


def qmp(node: Node, command: dict) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(state_dir() / node.name / "qmp.sock"))
        stream = sock.makefile("rw")
        stream.readline()  # the greeting
        for request in ({"execute": "qmp_capabilities"}, command):
            stream.write(json.dumps(request) + "\n")
            stream.flush()
            reply = json.loads(stream.readline())
            while "event" in reply:
                reply = json.loads(stream.readline())
            if "error" in reply:
                sys.exit(f"labctl: {node.name}: {request['execute']}: {reply['error'].get('desc')}")


def set_link(args: argparse.Namespace) -> None:
    """Pull or plug the cable of a data link: its carrier goes down or up at both nodes' ends."""
    names = [name for name, _slot, _device in DATA_LINKS]
    if args.link not in names:
        sys.exit(f"labctl: no data link {args.link!r}; the links are {', '.join(names)}")
    for node in (Node(i) for i in range(1, NODE_COUNT + 1)):
        qmp(node, {"execute": "set_link", "arguments": {"name": args.link, "up": args.state == "up"}})
    print(f"lab: {args.link} {args.state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command_name", required=True)
    sub.add_parser("image").set_defaults(func=lambda _a: print(ensure_image()))
    sub.add_parser("up").set_defaults(func=up)
    sub.add_parser("down").set_defaults(func=down)
    sub.add_parser("status").set_defaults(func=status)
    ssh_parser = sub.add_parser("ssh")
    ssh_parser.add_argument("node")
    ssh_parser.add_argument("command", nargs=argparse.REMAINDER)
    ssh_parser.set_defaults(func=ssh)
    link_parser = sub.add_parser("link", help="pull or plug a data cable: labctl.py link data0 down")
    link_parser.add_argument("link")
    link_parser.add_argument("state", choices=["up", "down"])
    link_parser.set_defaults(func=set_link)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
