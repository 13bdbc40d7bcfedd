#!/usr/bin/env python3
"""Benchmark the IPAM play at fleet scale, next to the bare allocation filter (asserts nothing).

  tools/bench_ipam.py [--hosts 1000 5000 10000] [--rails 8]      (make bench-ipam)

For each size, in a temporary directory: an inventory shaped like inventories/example with one
group of N A800 hosts, listed one per line, and R rails on /16 pools; then
  floor     ansible-playbook --list-hosts playbooks/ipam.yml: start, inventory and playbook parsing
  first     ansible-playbook playbooks/ipam.yml with no ledger: every address taken, ledger written
  no-op     the same again: nothing to change
each a fresh process, with its wall time, its CPU time (user and system, workers included: on a
busy machine the steadier figure) and its peak memory: the largest resident set of
ansible-playbook and of every worker it forked (getrusage of the waited-for children, what
/usr/bin/time -v reports); then the bare roce_ipam_assign filter on the same requests, from an
empty ledger and again on the full one (best of 3). The difference is what the play costs
around the filter. Timings on a busy machine vary: run it when nothing else does.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "filter_plugins"))
from roce_ipam import roce_ipam_assign  # noqa: E402

# Runs a command; reports the CPU seconds and the peak resident set (KiB) of it and its descendants.
MEASURE = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime, usage.ru_maxrss, rc)
"""


def pools(rails):
    return [
        {"name": f"a800-rail{r}", "subnet": f"10.{100 + r}.0.0/16", "gateway": f"10.{100 + r}.255.254"}
        for r in range(rails)
    ]


def host_names(count):
    return [f"a800-{n:05d}.dc1.example.com" for n in range(1, count + 1)]


def write_inventory(directory, count, rails):
    """An inventory shaped like inventories/example: one A800 group, its rails, the pools in all."""
    (directory / "group_vars" / "all").mkdir(parents=True)
    (directory / "group_vars" / "hpc_a800").mkdir()
    hosts = "".join(f"            {name}:\n" for name in host_names(count))
    (directory / "hosts.yml").write_text(
        "all:\n  children:\n    pool_hpc:\n      children:\n        hpc_a800:\n          hosts:\n" + hosts
    )
    (directory / "group_vars" / "all" / "ipam.yml").write_text(yaml.safe_dump({"roce_ipam_pools": pools(rails)}))
    rail_list = [{"device": f"mlx5_{r}", "netdev": f"ens{108 + r}np0", "pool": f"a800-rail{r}"} for r in range(rails)]
    (directory / "group_vars" / "hpc_a800" / "rails.yml").write_text(yaml.safe_dump({"roce_rails": rail_list}))


def measured(*command):
    """(wall seconds, CPU seconds, peak resident set in MiB) of one run of the command, which must pass."""
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    cpu, peak_kib, rc = run.stdout.split()
    if rc != "0":
        sys.exit(f"{' '.join(command)} failed (rc {rc}); run it by hand to see why")
    return wall, float(cpu), int(peak_kib) / 1024


def best_of(runs, function):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


def bench(count, rails, workdir):
    inventory = workdir / f"inventory-{count}"
    write_inventory(inventory, count, rails)
    ledger = inventory / "ipam" / "roce-ledger.yml"
    playbook = ["ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks" / "ipam.yml")]
    floor = measured(*playbook, "--list-hosts")
    first = measured(*playbook)
    written = ledger.read_bytes()
    allocations = len(re.findall(rb"^  - \{", written, flags=re.MULTILINE))
    if allocations != count * rails:
        sys.exit(f"{count} hosts: the ledger holds {allocations} allocations, not {count * rails}")
    noop = measured(*playbook)
    if ledger.read_bytes() != written:
        sys.exit(f"{count} hosts: the no-op run changed the ledger")

    names = host_names(count)
    requests = [{"host": host, "device": f"mlx5_{r}", "pool": f"a800-rail{r}"} for host in names for r in range(rails)]
    filter_first, result = best_of(3, lambda: roce_ipam_assign(None, pools(rails), requests))
    filter_noop, _ = best_of(3, lambda: roce_ipam_assign(result["ledger"], pools(rails), requests))
    shutil.rmtree(inventory)
    return floor, first, noop, filter_first, filter_noop


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--rails", type=int, default=8)
    args = parser.parse_args()
    os.environ["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    os.chdir(ROOT)
    print(f"ansible-playbook playbooks/ipam.yml, {args.rails} rails per host, /16 pools; {os.cpu_count()} CPUs")
    print("wall s / CPU s / peak MiB of ansible-playbook; the filter alone: best of 3")
    header = ["floor (--list-hosts)", "first run", "no-op run", "filter first", "filter no-op"]
    print(" hosts | " + " | ".join(f"{name:>24}" for name in header[:3]) + " | " + " | ".join(header[3:]))
    with tempfile.TemporaryDirectory(prefix="bench-ipam-") as workdir:
        for count in args.hosts:
            floor, first, noop, filter_first, filter_noop = bench(count, args.rails, Path(workdir))
            cells = [f"{wall:6.2f} / {cpu:6.2f} / {peak:4.0f}".rjust(24) for wall, cpu, peak in (floor, first, noop)]
            cells += [f"{filter_first:10.2f} s", f"{filter_noop:10.2f} s"]
            print(f"{count:6d} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
