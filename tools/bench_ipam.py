#!/usr/bin/env python3
"""Benchmark the IPAM play at fleet scale, next to the bare allocation filter (asserts nothing).

  tools/bench_ipam.py [--hosts 1000 5000 10000] [--rails 8]      (make bench-ipam)

For each size, in a temporary directory: an inventory shaped like inventories/example with one
group of N A800 hosts, listed one per line, and R rails on /16 pools; then
  floor     ansible-playbook --list-hosts playbooks/ipam.yml: start, inventory and playbook parsing
  first     ansible-playbook playbooks/ipam.yml with no ledger: every address taken, ledger written
  no-op     the same again: nothing to change
  +1 host   one host more in the inventory: its rails taken, the ledger rewritten
each a fresh process, with its wall time, its CPU time (user and system, workers included: on a
busy machine the steadier figure) and its peak memory: the largest resident set of
ansible-playbook and of every worker it forked (getrusage of the waited-for children, what
/usr/bin/time -v reports); then the bare roce_ipam_assign filter on the same requests, from an
empty ledger and again on the full one (best of 3), and the backend's own work for the host
added, as the action does it (allocate_file; best of 3, wall and CPU seconds): read the ledger
file, allocate, write it, with the cache a run before it left (the second run's case: only the
new host is allocated and its lines spliced in) and with none (the full check of every entry);
or, for PostgreSQL (a scratch server, tools/scratch_postgresql.py), one transaction that locks,
reads the rows, allocates and writes the difference. The difference is what the play costs
around the filter. The play's runs keep their cache in the temporary directory ($XDG_CACHE_HOME).
  --backend file|postgresql|both (default both) Timings on a busy machine vary: run it when nothing else does.
"""

import argparse
import importlib.util
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
import roce_ipam  # noqa: E402
from roce_ipam import roce_ipam_assign  # noqa: E402

_spec = importlib.util.spec_from_file_location("ipam_ledger", ROOT / "library" / "ipam_ledger.py")
ipam_ledger = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ipam_ledger)
_spec = importlib.util.spec_from_file_location("roce_ipam_allocate", ROOT / "action_plugins" / "roce_ipam_allocate.py")
_action = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_action)
allocate_file = _action.allocate_file
_spec = importlib.util.spec_from_file_location("ipam_postgresql", ROOT / "library" / "ipam_postgresql.py")
store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store)
sys.path.insert(0, str(ROOT / "tools"))
import scratch_postgresql  # noqa: E402

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
    write_hosts(directory, count)
    (directory / "group_vars" / "all" / "ipam.yml").write_text(yaml.safe_dump({"roce_ipam_pools": pools(rails)}))
    rail_list = [{"device": f"mlx5_{r}", "netdev": f"ens{108 + r}np0", "pool": f"a800-rail{r}"} for r in range(rails)]
    (directory / "group_vars" / "hpc_a800" / "rails.yml").write_text(yaml.safe_dump({"roce_rails": rail_list}))


def write_hosts(directory, count):
    hosts = "".join(f"            {name}:\n" for name in host_names(count))
    ledger = directory / "ipam" / "roce-ledger.yml"
    (directory / "hosts.yml").write_text(
        f"all:\n  vars:\n    roce_ipam_ledger_path: {ledger}\n"
        "  children:\n    pool_hpc:\n      children:\n        hpc_a800:\n          hosts:\n" + hosts
    )


def file_backend_plus_one(ledger, count, rails, cache):
    """((wall, CPU) seconds, best of 3) of the file backend's work for one host more, as the action
    does it (allocate_file: read the ledger, allocate, write it): with the cache a run before it
    left (cache, a directory), and with none (the full check, as on a cache miss)."""
    pristine = ledger.read_bytes()
    options = {"release": [], "aligned": False, "hold_days": 7, "now": "2026-01-01T00:00:00Z"}
    modules = {"ipam": roce_ipam, "ledger_module": ipam_ledger}

    def requests(hosts):
        return [
            {"host": h, "device": f"mlx5_{r}", "pool": f"a800-rail{r}"} for h in host_names(hosts) for r in range(rails)
        ]

    # The run before: the inventory as it was (the no-op run of the play), which leaves the cache.
    shutil.rmtree(cache, ignore_errors=True)
    allocate_file(str(ledger), pools(rails), requests(count), options, cache=str(cache), **modules)
    kept = {path: path.read_bytes() for path in cache.iterdir()}
    grown = requests(count + 1)

    def once(directory):
        ledger.write_bytes(pristine)
        for path, data in kept.items():
            path.write_bytes(data)
        started, cpu = time.perf_counter(), time.process_time()
        allocated, written = allocate_file(str(ledger), pools(rails), grown, options, cache=directory, **modules)
        elapsed = time.perf_counter() - started, time.process_time() - cpu
        if len(written["added"]) != rails:
            sys.exit(f"+1 host: {len(written['added'])} allocations added, not {rails}")
        if ("entries" in allocated) != (directory is not None):  # the cache's path, or the full one
            sys.exit(f"+1 host: the {'full' if directory else 'cached'} path was not taken")
        return elapsed

    cached = [once(str(cache)) for _ in range(3)]
    full = [once(None) for _ in range(3)]
    ledger.write_bytes(pristine)
    shutil.rmtree(cache)
    return [(min(wall for wall, _ in runs), min(cpu for _, cpu in runs)) for runs in (cached, full)]


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


def bench_postgresql(count, rails, workdir):
    """The same runs against a scratch PostgreSQL 15 (roce_ipam_backend: postgresql)."""
    import psycopg  # noqa: PLC0415

    inventory = workdir / f"inventory-pg-{count}"
    write_inventory(inventory, count, rails)
    with (inventory / "group_vars" / "all" / "backend.yml").open("w") as out:
        out.write("roce_ipam_backend: postgresql\n")
    playbook = ["ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks" / "ipam.yml")]
    with scratch_postgresql.scratch_server(os.urandom(8).hex()) as environment:
        os.environ.update(environment)

        def stored():
            with psycopg.connect("", autocommit=True) as connection:
                return connection.execute("SELECT count(*) FROM roce_ipam_allocation").fetchone()[0]

        first = measured(*playbook, "-e", "roce_ipam_ledger_init=true")
        if stored() != count * rails:
            sys.exit(f"{count} hosts: the database holds {stored()} allocations, not {count * rails}")
        noop = measured(*playbook)
        names = host_names(count + 1)
        requests = [{"host": h, "device": f"mlx5_{r}", "pool": f"a800-rail{r}"} for h in names for r in range(rails)]

        def plus_one_in_store():
            return store.allocate(
                "", lambda base: roce_ipam_assign(base, pools(rails), requests, now="2026-01-01T00:00:00Z")["ledger"]
            )

        backend_plus_one, _ = best_of(1, plus_one_in_store)
        if stored() != (count + 1) * rails:
            sys.exit(f"{count} hosts: +1 host in the store left {stored()} allocations")
        with psycopg.connect("", autocommit=True) as connection:  # back to N hosts for the play's +1 run
            connection.execute("DELETE FROM roce_ipam_allocation WHERE host = %s", (names[-1],))
        write_hosts(inventory, count + 1)
        plus_one = measured(*playbook)
        if stored() != (count + 1) * rails:
            sys.exit(f"{count} hosts: the +1 host run left {stored()} allocations")
        for key in environment:
            del os.environ[key]
    shutil.rmtree(inventory)
    return first, noop, plus_one, backend_plus_one


def bench(count, rails, workdir):
    inventory = workdir / f"inventory-{count}"
    write_inventory(inventory, count, rails)
    ledger = inventory / "ipam" / "roce-ledger.yml"
    playbook = ["ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks" / "ipam.yml")]
    floor = measured(*playbook, "--list-hosts")
    first = measured(*playbook, "-e", "roce_ipam_ledger_init=true")
    written = ledger.read_bytes()
    allocations = len(re.findall(rb"^  - \{", written, flags=re.MULTILINE))
    if allocations != count * rails:
        sys.exit(f"{count} hosts: the ledger holds {allocations} allocations, not {count * rails}")
    noop = measured(*playbook)
    if ledger.read_bytes() != written:
        sys.exit(f"{count} hosts: the no-op run changed the ledger")
    backend_plus_one = file_backend_plus_one(ledger, count, rails, workdir / "ipam-cache")
    write_hosts(inventory, count + 1)
    plus_one = measured(*playbook)
    grown = len(re.findall(rb"^  - \{", ledger.read_bytes(), flags=re.MULTILINE))
    if grown != (count + 1) * rails:
        sys.exit(f"{count} hosts: +1 host left {grown} allocations, not {(count + 1) * rails}")

    names = host_names(count)
    requests = [{"host": host, "device": f"mlx5_{r}", "pool": f"a800-rail{r}"} for host in names for r in range(rails)]
    filter_first, result = best_of(3, lambda: roce_ipam_assign(None, pools(rails), requests))
    filter_noop, _ = best_of(3, lambda: roce_ipam_assign(result["ledger"], pools(rails), requests))
    shutil.rmtree(inventory)
    return floor, first, noop, plus_one, filter_first, filter_noop, *backend_plus_one


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--rails", type=int, default=8)
    parser.add_argument(
        "--backend", choices=["file", "postgresql", "both"], default="both", help="postgresql: a scratch server"
    )
    args = parser.parse_args()
    os.environ["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    os.chdir(ROOT)
    print(f"ansible-playbook playbooks/ipam.yml, {args.rails} rails per host, /16 pools; {os.cpu_count()} CPUs")
    print("wall s / CPU s / peak MiB of ansible-playbook; the filter alone: best of 3; the backend: wall s / CPU s")
    header = ["floor (--list-hosts)", "first run", "no-op run", "+1 host run"]
    header += ["filter first", "filter no-op", "backend +1 host", "+1 host, no cache"]
    print("backend    |  hosts | " + " | ".join(f"{name:>24}" for name in header[:4]) + " | " + " | ".join(header[4:]))
    with tempfile.TemporaryDirectory(prefix="bench-ipam-") as workdir:
        # The play's own cache (roce_ipam_allocate): fresh, and not the user's.
        os.environ["XDG_CACHE_HOME"] = str(Path(workdir) / "xdg-cache")
        for count in args.hosts:
            if args.backend in {"file", "both"}:
                floor, first, noop, plus_one, filter_first, filter_noop, *backend = bench(
                    count, args.rails, Path(workdir)
                )
                runs = (floor, first, noop, plus_one)
                cells = [f"{wall:6.2f} / {cpu:6.2f} / {peak:4.0f}".rjust(24) for wall, cpu, peak in runs]
                cells += [f"{seconds:10.2f} s" for seconds in (filter_first, filter_noop)]
                cells += [
                    f"{wall:.2f} / {cpu:.2f} s".rjust(width)
                    for (wall, cpu), width in zip(backend, (15, 17), strict=True)
                ]
                print(f"file       | {count:6d} | " + " | ".join(cells))
            if args.backend in {"postgresql", "both"}:
                first, noop, plus_one, store_plus_one = bench_postgresql(count, args.rails, Path(workdir))
                cells = ["-".rjust(24)]
                cells += [
                    f"{wall:6.2f} / {cpu:6.2f} / {peak:4.0f}".rjust(24) for wall, cpu, peak in (first, noop, plus_one)
                ]
                cells += ["-".rjust(12), "-".rjust(12), f"{store_plus_one:13.2f} s", "-".rjust(17)]
                print(f"postgresql | {count:6d} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
