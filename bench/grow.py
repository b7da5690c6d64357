"""The growth benchmark (python -m bench.grow, make bench-grow): dev grown 1 -> 2 with about 1 GiB of
data, as the growth rehearsal does it (rehearsal/grow.py: real servers with systemd, the carry of
app_tier/carry.py), against the floor measured in the same run on the same two servers: a plain
`pg_dump | psql` of the same data.

Prints: the seconds of errors a client polling `/` every 100 ms saw, the carry's time (stop the app,
pg_dump | pg_restore in one transaction, every table's row count on both sides, retire the local
copy), the copy's throughput against the floor's (the ratio), and the total from the new metadata
to the app serving from the new database. Needs root, like the rehearsal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / ".local" / "rehearsal" / "grow" / "bench-figures.json"
ONE_GIB_EVENTS = 4_300_000  # about 250 bytes a row on disk, with the other tables: about 1 GiB


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grow", description=__doc__)
    parser.add_argument("--events", type=int, default=ONE_GIB_EVENTS)
    args = parser.parse_args()
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "rehearsal.grow", "--only-first", "--floor", "--events",
                           str(args.events), "--figures", str(FIGURES)], cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("growth rehearsal")]
    if done.returncode != 0 or not FIGURES.exists():
        sys.exit("bench.grow: the growth failed:\n" + "\n".join(lines[-8:]) + done.stderr[-2000:])
    f = json.loads(FIGURES.read_text())
    mib = f["database_bytes"] / 2**20
    carry, floor = f["carry_seconds"], f["floor_seconds"]
    print("| rows | database | client errors (s) | failed polls | carry (s) | carry MiB/s | floor (s) "
          "| floor MiB/s | carry / floor throughput | metadata to served (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {f['rows']:,} | {mib:,.0f} MiB | {f['error_seconds']} | {f['failed_polls']} of {f['polls']} | {carry} "
          f"| {mib / carry:.1f} | {floor:.1f} | {mib / floor:.1f} | {floor / carry:.2f} | {f['metadata_to_served_seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
