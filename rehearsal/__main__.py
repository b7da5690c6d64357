"""python -m rehearsal [--env NAME[,NAME]]: boot every kind of server and report, one line each."""

import argparse
import sys

from rehearsal.run import main

parser = argparse.ArgumentParser(prog="python -m rehearsal", description=__doc__)
parser.add_argument("--env", help="environments, comma-separated (default: dev, stage2, staging, prod)")
args = parser.parse_args()
sys.exit(main(args.env.split(",") if args.env else None))
