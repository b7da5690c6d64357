"""`cdk deploy` for real, to a local AWS emulator, then checks through the AWS API.

    python -m tools.local_aws all    [--env NAME]   # up + deploy + verify (what `make deploy-local` runs)
    python -m tools.local_aws up     [--port P]     # start the emulator, or reuse the running one
    python -m tools.local_aws deploy [--env NAME]   # cdk bootstrap + cdk deploy -c target=emulator
    python -m tools.local_aws deploy --env NAME --app DIR  # deploy an assembly synthesized elsewhere
    python -m tools.local_aws verify [--env NAME]   # the post-deploy checks, one report per stack
    python -m tools.local_aws down                  # stop the emulator
    python -m tools.local_aws verify --aws --env prod  # the same checks in your real account

The real CDK CLI runs with `AWS_ENDPOINT_URL` pointing at the emulator and dummy
credentials, and every variable that could select a real account removed.
Every successful deploy is recorded with its assembly (tools/deploys.py: `make status`, `make rollback`).
Exit code: 0 when every deploy and check passed, 1 when a check failed, 2 when a deploy failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from envconfig import ConfigError, EnvironmentConfig, load_environments
from tools import ROOT, deploys
from tools.checks.deploy_checks import FAIL, NOT_SHOWN, PASS, StackReport, verify
from tools.local_aws import emulator as emu

CDK = ROOT / "node_modules" / ".bin" / "cdk"
BOOTSTRAP_STACK = "CDKToolkit"
# CloudFormation's CreateStack/UpdateStack instead of change sets: moto's change-set execution
# never evaluates the template's Outputs (so `Url` would be missing); direct deploys do.
DEPLOY_METHOD = "direct"
# For deploying a given assembly (a rollback, a changed app): parameters not given take their template
# defaults instead of UsePreviousValue, because moto's UpdateStack looks a previous value up in the stack's
# parameters, where it never stored the SSM-typed BootstrapVersion: the update failed with KeyError.
# Not for `deploy`: with it the CLI no longer skips an unchanged stack ("(no changes)").
UPDATE_PARAMETERS = "--no-previous-parameters"


class DeployError(RuntimeError):
    pass


def _say(message: str = "") -> None:
    print(message, flush=True)


def _cdk_environment(emulator: emu.Emulator, region: str) -> dict[str, str]:
    env = emulator.environment(region)
    # The pinned Node 22 and the venv's Python (the CDK app runs with `python` from cdk.json).
    env["PATH"] = os.pathsep.join([str(ROOT / "node_modules" / ".bin"), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    return env


def _run_cdk(args: list[str], emulator: emu.Emulator, region: str, log_path: Path, cwd: Path) -> None:
    if not CDK.exists():
        raise DeployError(f"{CDK} is missing: run `make setup`")
    emulator_log = Path(emulator.log)
    log_start = emulator_log.stat().st_size if emulator_log.exists() else 0
    with open(log_path, "w") as log:
        log.write("$ cdk " + " ".join(args) + "\n")
        log.flush()
        done = subprocess.run([str(CDK), *args], cwd=cwd, env=_cdk_environment(emulator, region), stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        tail = log_path.read_text().splitlines()[-30:]
        raise DeployError(f"`cdk {args[0]}` failed (exit {done.returncode}); last lines of {log_path}:\n  "
                          + "\n  ".join(tail) + _emulator_errors(emulator_log, log_start))


def _emulator_errors(emulator_log: Path, since: int) -> str:
    """The emulator's own exceptions during the failed command. When moto crashes on a request
    the SDK retries it, so the CLI often reports a misleading AlreadyExists instead."""
    try:
        with open(emulator_log, "rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    errors = list(dict.fromkeys(line.strip() for line in lines
                                if re.match(r"^[\w.]+(Error|Exception)\b.*:", line.strip())))
    return ("\nthe emulator raised (see " + str(emulator_log) + "):\n  " + "\n  ".join(errors[-5:])) if errors else ""


def bootstrap(emulator: emu.Emulator, regions: list[str], state_dir: Path) -> list[str]:
    """`cdk bootstrap` each region once; returns the environments it bootstrapped now."""
    done = []
    for region in regions:
        session = emulator.session(region)
        try:
            stack = session.client("cloudformation").describe_stacks(StackName=BOOTSTRAP_STACK)["Stacks"][0]
            if stack["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
                continue
        except session.client("cloudformation").exceptions.ClientError:
            pass
        target = f"aws://{emu.account_id(emulator, region)}/{region}"
        # Run outside the project so the CLI bootstraps without synthesizing the app first.
        _run_cdk(["bootstrap", target], emulator, region, state_dir / f"cdk-bootstrap-{region}.log", cwd=state_dir)
        done.append(target)
    return done


def deploy(emulator: emu.Emulator, configs: list[EnvironmentConfig], state_dir: Path, output: Path) -> None:
    """One `cdk deploy` for the chosen environments: one synth, stacks deployed one by one."""
    context = ["-c", "target=emulator"]
    if len(configs) == 1:
        context += ["-c", f"env={configs[0].name}"]
    stacks = [cfg.stack_name for cfg in configs]
    _run_cdk(["deploy", *context, *deploys.commit_context(), *stacks, "--require-approval", "never",
              "--method", DEPLOY_METHOD, "--output", str(output), "--progress", "events"],
             emulator, configs[0].region, state_dir / "cdk-deploy.log", cwd=ROOT)


def deploy_assembly(emulator: emu.Emulator, config: EnvironmentConfig, assembly: Path, state_dir: Path) -> None:
    """`cdk deploy --app <assembly>`: an assembly as it was synthesized (a rollback's, or one built in
    a test), nothing re-synthesized; its assets are published again if the emulator lacks them."""
    _run_cdk(["deploy", "--app", str(assembly), config.stack_name, "--require-approval", "never",
              "--method", DEPLOY_METHOD, UPDATE_PARAMETERS, "--progress", "events"],
             emulator, config.region, state_dir / "cdk-deploy.log", cwd=state_dir)


def record_deploys(configs: list[EnvironmentConfig], assembly: Path, state_dir: Path, how: str = "deploy") -> None:
    for config in configs:
        kept = deploys.record(config.name, assembly, config.stack_name, target="emulator", how=how,
                              deploys_dir=state_dir / "deploys")
        _say(f"recorded: {config.name} deploy {kept.number}, version {kept.version} ({kept.path})")


def print_report(report: StackReport) -> None:
    counts = report.counts()
    _say(f"{report.stack_name}  {report.status}  resources created {report.created_resources} "
         f"of {report.template_resources} in the template")
    _say(f"  Url: {report.url or '(none)'}")
    skipped = ", ".join(f"{t} x{n}" for t, n in report.skipped_types.items())
    _say(f"  skipped by the emulator: {skipped or 'none'}")
    width = max((len(c.name) for c in report.checks), default=0)
    for check in report.checks:
        _say(f"  {check.status:<4}  {check.name:<{width}}  {check.detail}")
    _say(f"  {report.environment}: {counts[PASS]} passed, {counts[FAIL]} failed, "
         f"{counts[NOT_SHOWN]} not shown by the emulator")
    _say()


def _configs(env: str | None) -> list[EnvironmentConfig]:
    names = [n for n in (env or "").replace(",", " ").split() if n]
    return load_environments(names or None)


def _write_timings(state_dir: Path, data: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "last-run.json").write_text(json.dumps(data, indent=2) + "\n")


def _verify_real_account(configs: list[EnvironmentConfig]) -> int:
    """The same checks after `make deploy`, with your own credentials (read-only calls), plus an
    HTTP smoke test of each stack's `Url` output (its health path and its root must answer 200)."""
    import boto3

    if os.environ.get("AWS_ENDPOINT_URL"):
        # Left over from pointing a shell at the emulator: it would check the emulator, not AWS.
        _say(f"AWS_ENDPOINT_URL is set ({os.environ['AWS_ENDPOINT_URL']}): unset it to check your real account")
        return 2
    reports = [verify(boto3.session.Session(region_name=cfg.region), [cfg], emulator=False, progress=print_report,
                      http_smoke=True)[0]
               for cfg in configs]
    failed = sum(len(r.failed) for r in reports)
    _say(f"checks: {sum(r.counts()[PASS] for r in reports)} passed, {failed} failed, across {len(reports)} stacks")
    return 0 if all(r.ok for r in reports) else 1


def run(command: str, env: str | None = None, port: int | None = None, state_dir: Path = emu.DEFAULT_STATE_DIR,
        output: Path | None = None, real_aws: bool = False, app: Path | None = None) -> int:
    state_dir = state_dir.resolve()
    output = (output or ROOT / "cdk.out.emulator").resolve()
    if command == "down":
        stopped = emu.stop(state_dir)
        _say(f"stopped the emulator on port {stopped.port} (pid {stopped.pid})" if stopped
             else "no emulator was running")
        return 0

    configs = _configs(env) if command != "up" else []
    phases: dict[str, float] = {}
    started = time.monotonic()
    if command in ("up", "all", "deploy"):
        emulator, fresh = emu.start(state_dir, port)
        phases["start"] = time.monotonic() - started
        _say(f"emulator: {'started' if fresh else 'reusing the one'} on port {emulator.port} "
             f"(pid {emulator.pid}, log {emulator.log})")
    elif real_aws:
        return _verify_real_account(configs)
    else:
        emulator = emu.running(state_dir)
        if emulator is None:
            _say("no emulator is running: run `make deploy-local` (or `python -m tools.local_aws up`)")
            return 2
    ok = True
    try:
        if command in ("all", "deploy"):
            t = time.monotonic()
            bootstrapped = bootstrap(emulator, sorted({c.region for c in configs}), state_dir)
            phases["bootstrap"] = time.monotonic() - t
            _say(f"bootstrap: {', '.join(bootstrapped) if bootstrapped else 'already bootstrapped'} "
                 f"({phases['bootstrap']:.1f} s)")
            t = time.monotonic()
            if app is not None:
                _say(f"deploy: {configs[0].stack_name} from the assembly {app} ...")
                deploy_assembly(emulator, configs[0], app.resolve(), state_dir)
            else:
                _say(f"deploy: {', '.join(c.stack_name for c in configs)} with -c target=emulator ...")
                deploy(emulator, configs, state_dir, output)
            phases["deploy"] = time.monotonic() - t
            record_deploys(configs, app.resolve() if app is not None else output, state_dir)
            _say(f"deploy: done ({phases['deploy']:.1f} s, log {state_dir / 'cdk-deploy.log'})")
            _say()
        if command in ("all", "verify"):
            t = time.monotonic()
            session = emulator.session(configs[0].region)
            reports = verify(session, configs, emulator=True, progress=print_report)
            phases["checks"] = time.monotonic() - t
            ok = all(r.ok for r in reports)
            totals = {s: sum(r.counts()[s] for r in reports) for s in (PASS, FAIL, NOT_SHOWN)}
            bad = [r.environment for r in reports if not r.ok]
            _say(f"checks: {totals[PASS]} passed, {totals[FAIL]} failed, {totals[NOT_SHOWN]} not shown by the "
                 f"emulator, across {len(reports)} stacks" + (f"; failing: {', '.join(bad)}" if bad else ""))
    except DeployError as err:
        _say(f"deploy FAILED: {err}")
        _write_timings(state_dir, {"command": command, "ok": False, "phases": phases})
        return 2
    finally:
        _say(f"AWS_ENDPOINT_URL={emulator.endpoint_url}")
    phases["total"] = time.monotonic() - started
    _write_timings(state_dir, {"command": command, "ok": ok, "environments": [c.name for c in configs],
                               "phases": phases})
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local_aws", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("all", "up", "deploy", "verify", "down"))
    parser.add_argument("--env", help="environment name(s), comma-separated (default: every config/*.toml)")
    parser.add_argument("--port", type=int, help="emulator port (default: a free one)")
    parser.add_argument("--state-dir", type=Path, default=emu.DEFAULT_STATE_DIR,
                        help="where the emulator's pid/port file and logs go (default: .local/)")
    parser.add_argument("--output", type=Path, help="cdk output directory (default: cdk.out.emulator)")
    parser.add_argument("--app", type=Path,
                        help="deploy only, one --env: deploy this synthesized assembly instead of synthesizing")
    parser.add_argument("--aws", action="store_true",
                        help="verify only: check the stacks in your real AWS account (after `make deploy`)")
    args = parser.parse_args(argv)
    if args.aws and args.command != "verify":
        parser.error("--aws goes with `verify` only: deploy to AWS with `make deploy ENV=name`")
    if args.app and (args.command != "deploy" or not args.env or "," in args.env):
        parser.error("--app goes with `deploy` and one --env")
    try:
        return run(args.command, args.env, args.port, args.state_dir, args.output, real_aws=args.aws, app=args.app)
    except (ConfigError, emu.EmulatorError, deploys.DeployRecordError) as err:
        _say(f"error: {err}")
        return 2
