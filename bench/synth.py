"""Synth time of the real app against an empty CDK app, both through the same CLI (make bench-synth):

  app:   `cdk synth --quiet` of app.py (cdk.json's "app"): every environment, every stack
  empty: `cdk synth --quiet --app "<venv python> bench/empty_app.py"`: one empty stack

Same pinned CLI (node_modules/.bin/cdk), same venv, same cdk.json context, each run into its own
temporary output directory. The cases take turns, in an order that reverses every round, so other
work on this shared machine skews them alike; the load average is printed with the figures.
Prints the medians and the ratio app / empty (issue 9's target: <= 1.6). A comparison within one
run, not a test: nothing fails on a slow machine.

Both apps are also timed with `--no-validation`, the CLI's switch for CDK's built-in CloudFormation
validation. That validator starts a WebAssembly engine in every CDK app that has a stack, the
empty one included, and is most of the empty app's time; the second ratio is the app's own work
over an empty app's, whatever app.py decides about the validator.

Then one more run of app.py, still launched by the CLI (so with the CLI's own context and
environment), split into phases in-process: importing aws_cdk (which starts the jsii kernel in
Node), importing the app's modules, loading config, building the constructs, and app.synth(),
with the cdk-nag pass and CDK's built-in CloudFormation validation taken out of the synth.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CDK = ROOT / "node_modules" / ".bin" / "cdk"
PYTHON = ROOT / ".venv" / "bin" / "python"
TARGET = 1.6
# The CLI passes this file to the app; aws-cdk-lib writes its own counters there only when a synth
# takes longer per stack than @aws-cdk/core.slowSynthThreshold (ms), so the breakdown sets it to 0.
PERF_COUNTERS = "performance-counters.json"
PHASES_ENV = "BENCH_SYNTH_PHASES_FILE"


def cli_env() -> dict[str, str]:
    # What the Makefile exports for `make synth`: the pinned Node and CLI first on PATH, no telemetry,
    # no .pyc writes (so every run compiles the project's modules, as `make synth` does).
    return {**os.environ,
            "PATH": f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{ROOT / '.venv' / 'bin'}{os.pathsep}"
                    f"{os.environ.get('PATH', '')}",
            "CDK_DISABLE_CLI_TELEMETRY": "true", "PYTHONDONTWRITEBYTECODE": "1"}


CASES = (("empty", ()), ("app", ()), ("empty", ("--no-validation",)), ("app", ("--no-validation",)))


def synth(case: str, outdir: str, *extra: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall time and CPU time (the CLI, Python and Node together) of one `cdk synth --quiet`.

    The CLI binary directly, not `npx --no-install cdk`: npx's own start-up (about 0.3 s) is the
    same for both apps and would only dilute the ratio."""
    command = [str(CDK), "synth", "--quiet", "--output", outdir, *extra]
    if case == "empty":
        command += ["--app", f"{PYTHON} {ROOT / 'bench' / 'empty_app.py'}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env or cli_env(), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"bench.synth: `{' '.join(command)}` failed (exit {done.returncode}):\n"
                 f"{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def timed_rounds(runs: int) -> dict[tuple[str, tuple[str, ...]], list[tuple[float, float]]]:
    times: dict[tuple[str, tuple[str, ...]], list[tuple[float, float]]] = {case: [] for case in CASES}
    for round_no in range(runs):
        for case in CASES if round_no % 2 == 0 else reversed(CASES):
            outdir = tempfile.mkdtemp(prefix=f"bench-synth-{case[0]}-")
            try:
                times[case].append(synth(case[0], outdir, *case[1]))
            finally:
                shutil.rmtree(outdir, ignore_errors=True)
        print(f"  round {round_no + 1}/{runs}: " + ", ".join(
            f"{name}{' ' + ' '.join(flags) if flags else ''} {times[(name, flags)][-1][0]:.2f} s"
            for name, flags in CASES), file=sys.stderr)
    return times


# --- the breakdown: this module again, as the app the CLI runs -------------------------------------

def _process_age() -> float | None:
    """Seconds since this process started (Linux), i.e. the interpreter's own start-up so far."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def phases_child() -> None:
    """Runs app.main() as the CLI's app, timing its phases; writes them to $BENCH_SYNTH_PHASES_FILE."""
    marks: list[tuple[str, float]] = [("start", time.perf_counter())]
    startup = _process_age()
    import aws_cdk  # noqa: F401  (starts Node, the jsii kernel, and loads aws-cdk-lib)
    marks.append(("import aws_cdk (jsii kernel start)", time.perf_counter()))

    import cdk_nag
    nag_seconds: list[float] = []

    class TimedAwsSolutionsChecks(cdk_nag.AwsSolutionsChecks):
        """The same checks; CDK calls validate() back into Python, which times the pass."""

        def validate(self, context):
            started = time.perf_counter()
            try:
                return super().validate(context)
            finally:
                nag_seconds.append(time.perf_counter() - started)

    # Before the app's modules import it by name.
    cdk_nag.AwsSolutionsChecks = TimedAwsSolutionsChecks
    sys.path.insert(0, str(ROOT))
    import stacks
    built: list[float] = []
    add_environments = stacks.add_environments

    def timed_add_environments(*args, **kwargs):
        built.append(time.perf_counter())
        try:
            return add_environments(*args, **kwargs)
        finally:
            built.append(time.perf_counter())

    stacks.add_environments = timed_add_environments
    import app
    marks.append(("import the app's modules (cdk-nag, stacks, constructs)", time.perf_counter()))
    app.main()
    done = time.perf_counter()
    if len(built) != 2:
        sys.exit("bench.synth: app.main() did not call stacks.add_environments once; update the breakdown")
    marks += [("App(), load config", built[0]), ("build the constructs", built[1]), ("app.synth()", done)]
    # What jsii otherwise does at interpreter exit: tell Node to exit and wait for it. Timed here
    # because Node can take a while to exit once CDK's validator has run (see the README).
    try:
        from jsii._runtime import kernel
        kernel.provider._process.stop()
        marks.append(("jsii kernel shutdown (Node exits)", time.perf_counter()))
    except (ImportError, AttributeError):
        pass    # jsii's internals moved: the shutdown stays in the CLI's share
    Path(os.environ[PHASES_ENV]).write_text(json.dumps({
        "startup": startup,
        "phases": [(name, end - start) for (_, start), (name, end) in itertools.pairwise(marks)],
        "nag": nag_seconds}))


def breakdown() -> list[str]:
    outdir = tempfile.mkdtemp(prefix="bench-synth-phases-")
    phases_file = Path(outdir) / "phases.json"
    try:
        wall, _ = synth("phases", outdir, "--app", f"{PYTHON} -m bench.synth --phases-child",
                     "--context", "@aws-cdk/core.slowSynthThreshold=0",
                     env={**cli_env(), PHASES_ENV: str(phases_file)})
        result = json.loads(phases_file.read_text())
        counters_file = Path(outdir) / PERF_COUNTERS
        counters = json.loads(counters_file.read_text())["counters"] if counters_file.exists() else {}
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    phases = dict(result["phases"])
    in_app = sum(phases.values()) + (result["startup"] or 0)
    lines = ["| phase (one run of app.py under the CLI) | s |", "| --- | ---: |",
             f"| `cdk synth` wall time | {wall:.2f} |",
             f"| the CLI around the app (its Node start, cdk.json, reading the assembly; Python's exit) "
             f"| {wall - in_app:.2f} |"]
    synth_s = phases["app.synth()"]
    nag = sum(result["nag"])
    parts = [f"| - cdk-nag AwsSolutions ({len(result['nag'])} pass) | {nag:.2f} |"]
    validate_ms = counters.get("validateTemplates")
    if validate_ms is None:
        parts.append("| - (aws-cdk-lib wrote no performance counters: the rest not split) | |")
    elif "CloudFormationValidate.validate" not in counters:
        parts += ["| - CDK's built-in CloudFormation validation | off |",
                  f"| - the rest (aspects, resolve, templates, assets) | {synth_s - nag:.2f} |"]
    else:
        templates = counters["CloudFormationValidate.validate"] / 1000
        builtin = validate_ms / 1000 - nag
        parts += [f"| - CDK's built-in CloudFormation validation: its engine's start-up | {builtin - templates:.2f} |",
                  f"| - CDK's built-in CloudFormation validation: the templates | {templates:.2f} |",
                  f"| - the rest (aspects, resolve, templates, assets) | {synth_s - validate_ms / 1000:.2f} |"]
    if result["startup"] is not None:
        lines.append(f"| Python start-up | {result['startup']:.2f} |")
    for name, seconds in result["phases"]:
        lines.append(f"| {name} | {seconds:.2f} |")
        if name == "app.synth()":
            lines += parts
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="synths of each app (default 5)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process phase split")
    parser.add_argument("--phases-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phases_child:
        phases_child()
        return 0
    if args.runs < 1:
        parser.error(f"--runs: got {args.runs}; allowed: 1 or more")
    for needed in (CDK, PYTHON):
        if not needed.exists():
            sys.exit(f"bench.synth: {needed.relative_to(ROOT)} is missing; run `make setup` first")

    load_before = os.getloadavg()[0]
    times = timed_rounds(args.runs)
    load_after = os.getloadavg()[0]
    print(f"`cdk synth --quiet`, every environment vs an empty app, {args.runs} runs of each case, taking turns, "
          f"on {os.cpu_count()} cores (load average {load_before:.2f} before, {load_after:.2f} after)\n")
    print("| app | CDK's built-in validation | median s | min s | max s | CPU s (median) |\n"
          "| --- | --- | ---: | ---: | ---: | ---: |")
    labels = {"empty": "empty app (one empty stack)", "app": "app.py (every environment)"}
    for name, flags in CASES:
        wall = [w for w, _ in times[(name, flags)]]
        cpu = [c for _, c in times[(name, flags)]]
        print(f"| {labels[name]} | {'off (`--no-validation`)' if flags else 'as the app sets it'} | "
              f"{statistics.median(wall):.2f} | {min(wall):.2f} | {max(wall):.2f} | {statistics.median(cpu):.2f} |")

    def ratio(flags: tuple[str, ...], index: int = 0) -> float:
        return (statistics.median(t[index] for t in times[("app", flags)]) /
                statistics.median(t[index] for t in times[("empty", flags)]))

    figure = ratio(())
    print(f"\napp / empty = **{figure:.2f}** (wall-time medians; target <= {TARGET}: "
          f"{'met' if figure <= TARGET else 'NOT met'}; CPU time {ratio((), 1):.2f})")
    print(f"with `--no-validation` for both: {ratio(('--no-validation',)):.2f} "
          f"(CPU time {ratio(('--no-validation',), 1):.2f}): the app's own work over an empty app's")
    if not args.no_breakdown:
        print()
        print("\n".join(breakdown()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
