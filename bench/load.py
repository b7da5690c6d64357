"""Load benchmark of the stage 4 layout, in one go on this machine (make bench-load):

  (a) the CPU-bound endpoint on one app process, direct
  (b) the same through nginx over N copies (N = cores), and the ratio b/a
  the nginx hop: p50 of the trivial /health direct to one copy vs through nginx

The cases take turns in rounds, so that other work on the machine skews them alike; the CPU
already busy before the run is printed with the figures.

Uses the lab (app_tier.lab), so it measures exactly what a server runs. wrk when installed,
else app_tier.loadgen (a Python generator that costs CPU of its own: expect lower figures).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from app_tier.lab import Lab, missing_tools
from app_tier.loadgen import Load

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def run_wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    threads = min(connections, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    failed = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)", out))
    return {"requests_per_sec": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(percentiles["50"]), "p99_ms": _ms(percentiles["99"]), "failed": failed}


def busy_cpu_fraction(seconds: float = 2) -> float:
    """How busy the CPUs are before the run: other work on the machine skews every figure."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def run_python(url: str, seconds: int, connections: int) -> dict[str, float]:
    with Load(url, connections=connections) as load:
        time.sleep(seconds)
    return load.summary()


def _combine(rounds: list[dict[str, float]]) -> dict[str, float]:
    combined = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    combined["failed"] = sum(r["failed"] for r in rounds)
    return combined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per case, over all rounds")
    parser.add_argument("--rounds", type=int, default=5,
                        help="cases take turns this many times, so background load hits each alike")
    parser.add_argument("--n", type=int, default=200_000, help="work per request (/work?n=)")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--connections", type=int, default=None, help="default: 4 per copy")
    args = parser.parse_args(argv)
    missing = missing_tools(stage=4)
    if missing:
        print("\n".join(f"bench: {m}" for m in missing), file=sys.stderr)
        return 2
    run, tool = (run_wrk, "wrk") if shutil.which("wrk") else (run_python, "app_tier.loadgen (wrk not found)")
    connections = args.connections or 4 * args.processes
    work = f"/work?n={args.n}"
    busy = busy_cpu_fraction()
    with Lab(stage=4, processes=args.processes, port=0) as lab:
        one_copy = lab.app_urls()[0]
        cases = [
            (f"(a) `{work}`, one app process direct", one_copy + work, connections),
            (f"(b) `{work}`, nginx over {lab.processes} copies", lab.url + work, connections),
            ("`/health`, one copy direct, 1 connection", one_copy + "/health", 1),
            ("`/health`, through nginx, 1 connection", lab.url + "/health", 1),
        ]
        per_round = max(1, round(args.seconds / args.rounds))
        results: list[list[dict[str, float]]] = [[] for _ in cases]
        for turn in range(args.rounds):
            print(f"bench: round {turn + 1}/{args.rounds}, {len(cases)} cases x {per_round} s", file=sys.stderr)
            for (_, url, conns), case_results in zip(cases, results, strict=False):
                case_results.append(run(url, per_round, conns))
        rows = [(label, conns, _combine(r)) for (label, _, conns), r in zip(cases, results, strict=False)]
    a, b, direct, proxied = (row[2] for row in rows)
    print(f"\nLoad benchmark: {os.cpu_count()} cores, {tool}, {args.rounds} rounds x {per_round} s per case "
          f"(figures: median of the rounds); CPU already busy with other work before the run: {busy:.0%}\n")
    print("| case | connections | requests/s | p50 ms | p99 ms | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, conns, r in rows:
        print(f"| {label} | {conns} | {r['requests_per_sec']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['failed']:.0f} |")
    print(f"\n- throughput ratio b/a: **{b['requests_per_sec'] / a['requests_per_sec']:.2f}** "
          f"(target >= 1.8 on 2 cores; the limit is the core count)")
    print(f"- nginx hop at p50 on /health: **{proxied['p50_ms'] - direct['p50_ms']:+.3f} ms** (target <= 1 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
