"""Time `make deploy-local` for every environment (python -m bench.deploy_local):

  cold: no emulator running -> emulator start + cdk bootstrap + cdk deploy + checks
  warm: the second run -> reuse the emulator, bootstrap skipped, deploy with no changes, checks

Each run is the real `make deploy-local` (so `make setup`'s up-to-date check is in the wall
time); the phase figures come from `.local/last-run.json`, which the tool writes. The cold
run stops a running emulator first, and the emulator is stopped again at the end.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("start", "bootstrap", "deploy", "checks")


def make(*targets: str, env: str | None = None) -> tuple[float, str]:
    command = ["make", "--no-print-directory", *targets] + ([f"ENV={env}"] if env else [])
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "MAKEFLAGS": ""})
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return elapsed, done.stdout


def last_run() -> dict:
    return json.loads((ROOT / ".local" / "last-run.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="one environment instead of all")
    parser.add_argument("--keep", action="store_true", help="leave the emulator running afterwards")
    args = parser.parse_args(argv)

    make("setup")                      # installs are not part of the figure
    make("local-down")
    rows = []
    for label in ("cold", "warm"):
        wall, printed = make("deploy-local", env=args.env)
        run = last_run()
        checks = next((line for line in printed.splitlines() if line.startswith("checks:")), "")
        rows.append((label, wall, run["phases"], ", ".join(run["environments"]), checks))
    if not args.keep:
        make("local-down")

    print(f"`make deploy-local{' ENV=' + args.env if args.env else ''}` on {os.cpu_count()} cores "
          f"({rows[0][3]})\n")
    print("| run | " + " | ".join(PHASES) + " | tool total | make wall time |")
    print("|---|" + "---:|" * (len(PHASES) + 2))
    for label, wall, phases, _, _ in rows:
        cells = " | ".join(f"{phases.get(p, 0):.1f} s" for p in PHASES)
        print(f"| {label} | {cells} | {phases['total']:.1f} s | {wall:.1f} s |")
    print()
    for label, *_, checks in rows:
        print(f"{label}: {checks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
