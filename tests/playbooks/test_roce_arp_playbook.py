"""The roce role's ARP settings (tasks/arp.yml) on a netdev whose name has a dot, as VLAN netdevs do.

Runs on this machine, in a network namespace of its own (`unshare -rn`), where a veth pair stands in
for a port and its VLAN: `ens1f0.100` is the name the kernel and sysctl see, which is what matters
here (a real VLAN needs the 8021q module, which a test machine may not load; the lab case in
molecule/default/cases/roce.yml uses one). The settings file is a temporary one. Nothing outside
the namespace and the temporary directory is touched.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLAN, PORT = "ens1f0.100", "ens1f0"
KEYS = ("arp_ignore", "arp_announce", "rp_filter")
SYSTEMD_SYSCTL = next(
    (path for path in ("/usr/lib/systemd/systemd-sysctl", "/lib/systemd/systemd-sysctl") if os.path.exists(path)),
    None,
)

PLAYBOOK = f"""
- name: The roce role's ARP settings on a dotted netdev
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Set them as the role does
      ansible.builtin.include_role:
        name: roce
        tasks_from: arp.yml
      vars:
        __roce_netdev_rails:
          - {{netdev: {VLAN}, source_routing: true}}
          - {{netdev: {PORT}, source_routing: false}}
"""

# In the namespace: the two netdevs, two runs of the role's task, then the file read back the way
# the node reads it at boot (sysctl -p, systemd-sysctl) and at hotplug (udev's systemd-sysctl
# --prefix=/net/ipv4/conf/<netdev>), each after the values were put back to 0.
SCRIPT = r"""
set -eu
ip link add "$VLAN" type veth peer name "$PORT"
values() { for key in $KEYS; do cat /proc/sys/net/ipv4/conf/"$1"/$key; done | paste -sd' '; }
reset() { for key in $KEYS; do echo 0 > /proc/sys/net/ipv4/conf/"$VLAN"/$key; done; }
reset
for run in 1 2; do
  rc=0; ansible-playbook "$@" > "$OUT/run$run.json" || rc=$?
  echo $rc > "$OUT/run$run.rc"
  values "$VLAN" > "$OUT/run$run.vlan"; values "$PORT" > "$OUT/run$run.port"
done
[ -e "$FILE" ] || exit 0
reset; sysctl -q -p "$FILE"; values "$VLAN" > "$OUT/sysctl-p.vlan"
if [ -n "$SYSTEMD_SYSCTL" ]; then
  reset; "$SYSTEMD_SYSCTL" "$FILE"; values "$VLAN" > "$OUT/systemd-sysctl.vlan"
  reset; "$SYSTEMD_SYSCTL" --prefix=/net/ipv4/conf/"$VLAN" "$FILE"; values "$VLAN" > "$OUT/hotplug.vlan"
fi
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rn", "true"], check=False).returncode:
        pytest.skip("needs a network namespace of its own: unshare -rn (user namespaces) does not work here")
    tmp = tmp_path_factory.mktemp("roce-arp")
    out, conf = tmp / "out", tmp / "90-hpc-roce.conf"
    out.mkdir()
    (tmp / "play.yml").write_text(PLAYBOOK)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "VLAN": VLAN,
        "PORT": PORT,
        "KEYS": " ".join(KEYS),
        "OUT": str(out),
        "FILE": str(conf),
        "SYSTEMD_SYSCTL": SYSTEMD_SYSCTL or "",
    }
    args = [
        "--inventory=localhost,",
        "--connection=local",
        f"--extra-vars={json.dumps({'ansible_python_interpreter': sys.executable, '__roce_sysctl_file': str(conf)})}",
        str(tmp / "play.yml"),
    ]
    shell = subprocess.run(
        ["unshare", "-rn", "bash", "-c", SCRIPT, "script", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if "veth" in shell.stderr and not (out / "run1.rc").exists():
        pytest.skip(f"cannot make a veth pair in a namespace here: {shell.stderr.strip()}")
    assert shell.returncode == 0, shell.stdout + shell.stderr

    def read(name):
        path = out / name
        return path.read_text().strip() if path.exists() else None

    return {"read": read, "conf": conf}


def report(runs, number):
    text = runs["read"](f"run{number}.json")
    return json.loads(text) if text else None


def test_the_first_run_sets_the_vlan_netdev_live_and_in_the_file(runs):
    assert runs["read"]("run1.rc") == "0", runs["read"]("run1.json")
    assert report(runs, 1)["stats"]["localhost"]["changed"] == 1
    assert runs["read"]("run1.vlan") == "1 2 2"
    # The rail without source routing is left alone.
    assert runs["read"]("run1.port") == "0 0 0"
    assert runs["conf"].read_text().splitlines() == [
        "net.ipv4.conf.ens1f0/100.arp_ignore=1",
        "net.ipv4.conf.ens1f0/100.arp_announce=2",
        "net.ipv4.conf.ens1f0/100.rp_filter=2",
    ]


def test_the_second_run_changes_nothing(runs):
    assert runs["read"]("run2.rc") == "0", runs["read"]("run2.json")
    stats = report(runs, 2)["stats"]["localhost"]
    assert (stats["changed"], stats["failures"]) == (0, 0)
    assert runs["read"]("run2.vlan") == "1 2 2"


def test_the_file_sets_the_vlan_netdev_at_boot_and_hotplug(runs):
    assert runs["read"]("sysctl-p.vlan") == "1 2 2"
    if not SYSTEMD_SYSCTL:
        pytest.skip("no systemd-sysctl on this machine")
    assert runs["read"]("systemd-sysctl.vlan") == "1 2 2"
    assert runs["read"]("hotplug.vlan") == "1 2 2"
