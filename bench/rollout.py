"""The deploy benchmark (python -m bench.rollout, make bench-rollout [RUNS=n]): the good-version
rollout of a 3-server fleet, as the deploy rehearsal runs it (rehearsal/deploy.py: real servers
with systemd behind HAProxy, the template's instance refresh, steady load), measured against the
same fleet's own baseline in the same run (p99 latency before the rollout).

Prints, per run and as the median of the runs: failed requests, the minimum share of capacity in
service, p99 during / p99 before (the ratio), and the total rollout time (template durations divided
by the rehearsal's time scale: warm-up, drain and bake are 20x shorter than in AWS; server boots
are real). Needs root, like the rehearsal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / ".local" / "rehearsal" / "deploy" / "figures.json"


def one_run() -> dict:
    FIGURES.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "rehearsal.deploy", "--only", "good"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("deploy rehearsal:")]
    if done.returncode != 0 or not FIGURES.exists():
        sys.exit("bench.rollout: the rollout failed:\n" + "\n".join(lines[-6:]) + done.stderr[-2000:])
    return json.loads(FIGURES.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    print("| run | servers | requests | failed | min capacity in service | p99 before (ms) | p99 during (ms) "
          "| p99 ratio | rollout (s) | per server (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, f in enumerate(runs, 1):
        print(f"| {i} | {f['servers']} | {f['requests']} | {f['failed']} | {f['min_capacity_share']:.0%} "
              f"| {f['p99_before_ms']} | {f['p99_during_ms']} | {f['p99_during_ms'] / f['p99_before_ms']:.2f} "
              f"| {f['seconds_total']} | {', '.join(str(s) for s in f['seconds_per_server'])} |")
    if len(runs) > 1:
        ratio = statistics.median(f["p99_during_ms"] / f["p99_before_ms"] for f in runs)
        print(f"median of {len(runs)}: failed {statistics.median(f['failed'] for f in runs)}, "
              f"min capacity {min(f['min_capacity_share'] for f in runs):.0%}, p99 ratio {ratio:.2f}, "
              f"rollout {statistics.median(f['seconds_total'] for f in runs):.0f} s")
    print(f"(durations / {runs[0]['time_scale']}: a rollout on AWS adds the full warm-up, drain and bake times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
