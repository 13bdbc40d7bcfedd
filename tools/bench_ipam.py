#!/usr/bin/env python3
"""Benchmark roce_ipam_assign at cluster scale (a benchmark, not a test: it asserts nothing).

  tools/bench_ipam.py [--hosts 10000] [--rails 8] [--aligned]

Allocates every rail of every host from an empty ledger, then adds one host to the full ledger,
and prints the wall time (best and median of 5 runs) and the peak Python memory (tracemalloc)
of each step.
"""

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "filter_plugins"))
from roce_ipam import roce_ipam_assign


def measure(label, function, runs=5):
    """Best and median of several untimed-by-tracing runs, then one traced run for peak memory."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    function()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(
        f"{label}: best {min(times):.3f} s, median {statistics.median(times):.3f} s over {runs} runs; "
        f"peak Python memory {peak / 2**20:.1f} MiB"
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--rails", type=int, default=8)
    parser.add_argument("--aligned", action="store_true")
    args = parser.parse_args()
    pools = [
        {"name": f"rail{r}", "subnet": f"10.{100 + r}.0.0/16", "gateway": f"10.{100 + r}.255.254"}
        for r in range(args.rails)
    ]

    def requests_for(hosts):
        return [
            {"host": f"node{h:05d}", "device": f"mlx5_{r}", "pool": f"rail{r}"}
            for h in hosts
            for r in range(args.rails)
        ]

    everyone = requests_for(range(args.hosts))
    print(f"{args.hosts} hosts x {args.rails} rails = {len(everyone)} requests, aligned={args.aligned}")
    full = measure("from an empty ledger", lambda: roce_ipam_assign(None, pools, everyone, aligned=args.aligned))
    one_more = everyone + requests_for([args.hosts])
    result = measure(
        "one host added to the full ledger",
        lambda: roce_ipam_assign(full["ledger"], pools, one_more, aligned=args.aligned),
    )
    print(f"new host got {result['allocations'][f'node{args.hosts:05d}']['mlx5_0']['address']} on rail0")


if __name__ == "__main__":
    main()
