"""App versions, recorded deploys, `make status` and `make rollback`.

    python -m tools.deploys commit                          # the git commit to synthesize with (empty without git)
    python -m tools.deploys record --env NAME --assembly DIR  # keep a deployed assembly (after `make deploy`)
    python -m tools.deploys status --env NAME               # stack status, AppVersion, each server's version, history
    python -m tools.deploys rollback --env NAME [--to N]    # deploy the previous recorded assembly again

Every successful deploy through our tooling keeps its cloud assembly under
.local/deploys/<env>/<n>-<version>/, the last KEEP per target. A rollback deploys a kept assembly
with `cdk deploy --app <dir>`: nothing is rebuilt or re-synthesized, and its assets are already
published, so the template's own rollout (in place on stages 1-2, the group's update policy on
3-4) applies. With AWS_ENDPOINT_URL set (what `make deploy-local` prints), status and rollback go
to the local emulator and use the emulator's records; without it, to AWS with your credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from envconfig import ConfigError, EnvironmentConfig, load_environment
from tools import ROOT

# stacks.web_service (the names of the version output, tag and context) is imported where it is
# needed: importing the CDK starts Node, seconds that `commit` (run by make on every deploy) does not need.
DEPLOYS_DIR = ROOT / ".local" / "deploys"
KEEP = 5
RECORD_FILE = "deploy.json"
TARGETS = ("aws", "emulator")


class DeployRecordError(RuntimeError):
    pass


def git_commit(root: Path = ROOT) -> str | None:
    """`git rev-parse --short HEAD`, with "-dirty" when tracked files differ from it (as `git describe
    --dirty` counts it: untracked files are not in the commit, but the asset hash covers the app's)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)

    try:
        head = git("rev-parse", "--short", "HEAD")
    except OSError:   # no git installed
        return None
    if head.returncode != 0:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def commit_context(root: Path = ROOT) -> list[str]:
    """The CDK CLI arguments that put the commit into the AppVersion (none without git)."""
    from stacks.web_service import COMMIT_CONTEXT

    commit = git_commit(root)
    return ["-c", f"{COMMIT_CONTEXT}={commit}"] if commit else []


def _template(assembly: Path, stack_name: str) -> dict:
    manifest = json.loads((assembly / "manifest.json").read_text())
    artifact = manifest.get("artifacts", {}).get(stack_name)
    if not artifact or artifact.get("type") != "aws:cloudformation:stack":
        raise DeployRecordError(f"{assembly} has no stack {stack_name!r}")
    return json.loads((assembly / artifact["properties"]["templateFile"]).read_text())


def assembly_version(assembly: Path, stack_name: str) -> str:
    """The AppVersion output the assembly's template declares."""
    from stacks.web_service import APP_VERSION_OUTPUT

    outputs = _template(assembly, stack_name).get("Outputs", {})
    if APP_VERSION_OUTPUT not in outputs:
        raise DeployRecordError(f"{stack_name} in {assembly} has no {APP_VERSION_OUTPUT} output "
                                "(synthesized before versions were recorded)")
    return str(outputs[APP_VERSION_OUTPUT]["Value"])


@dataclass(frozen=True)
class Record:
    number: int
    version: str
    path: Path
    target: str
    stack_name: str
    deployed_at: str
    how: str

    @property
    def assembly(self) -> Path:
        return self.path / "assembly"


def history(env: str, target: str, deploys_dir: Path = DEPLOYS_DIR) -> list[Record]:
    """The recorded deploys of one environment to one target, oldest first."""
    found = []
    for meta in (deploys_dir / env).glob(f"*/{RECORD_FILE}"):
        data = json.loads(meta.read_text())
        if data.get("target") == target:
            found.append(Record(number=data["number"], version=data["version"], path=meta.parent, target=target,
                                stack_name=data["stack_name"], deployed_at=data["deployed_at"], how=data["how"]))
    return sorted(found, key=lambda r: r.number)


def record(env: str, assembly: Path, stack_name: str, *, target: str, how: str = "deploy",
           deploys_dir: Path = DEPLOYS_DIR, keep: int = KEEP) -> Record:
    """Keep a copy of an assembly that was just deployed; drop the oldest beyond `keep` for this target."""
    if target not in TARGETS:
        raise DeployRecordError(f"target {target!r}; allowed: {', '.join(TARGETS)}")
    version = assembly_version(assembly, stack_name)
    env_dir = deploys_dir / env
    numbers = [int(m.group(1)) for p in env_dir.glob("*") if (m := re.match(r"^(\d+)-", p.name))]
    number = max(numbers, default=0) + 1
    path = env_dir / f"{number}-{version}"
    # The copy is what a rollback deploys; the nested cdk.out of an earlier copy is not part of it.
    shutil.copytree(assembly, path / "assembly", ignore=shutil.ignore_patterns("cdk.out"))
    meta = {"number": number, "version": version, "target": target, "stack_name": stack_name, "how": how,
            "deployed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (path / RECORD_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    for old in history(env, target, deploys_dir)[:-keep]:
        shutil.rmtree(old.path)
    return history(env, target, deploys_dir)[-1]


def previous(env: str, target: str, deploys_dir: Path = DEPLOYS_DIR, to: int | None = None) -> Record:
    """The deploy a rollback returns to: the latest recorded one whose version differs from the
    latest's (so a rollback after a rollback goes back again), or record number `to`."""
    records = history(env, target, deploys_dir)
    where = f"{deploys_dir / env} (target {target})"
    if to is not None:
        chosen = [r for r in records if r.number == to]
        if not chosen:
            raise DeployRecordError(f"environment {env!r}: no recorded deploy number {to} in {where}; recorded: "
                                    + (", ".join(str(r.number) for r in records) or "none"))
        return chosen[0]
    if not records:
        raise DeployRecordError(f"environment {env!r}: no recorded deploy in {where}: nothing to roll back to")
    current = records[-1].version
    earlier = [r for r in records[:-1] if r.version != current]
    if not earlier:
        raise DeployRecordError(f"environment {env!r}: no previous deploy to roll back to: every recorded deploy in "
                                f"{where} runs version {current}")
    return earlier[-1]


# --- talking to the target ----------------------------------------------------------------------


def _emulator_for_endpoint(state_dir: Path):
    """The running emulator AWS_ENDPOINT_URL points at, or a clear error."""
    from tools.local_aws import emulator as emu

    endpoint = os.environ["AWS_ENDPOINT_URL"].rstrip("/")
    running = emu.running(state_dir)
    if running is None or running.endpoint_url != endpoint:
        raise DeployRecordError(f"AWS_ENDPOINT_URL is {endpoint}, but no emulator this checkout started answers there "
                                f"(state in {state_dir}): run `make deploy-local`, or unset AWS_ENDPOINT_URL for AWS")
    return running


def target_now() -> str:
    return "emulator" if os.environ.get("AWS_ENDPOINT_URL") else "aws"


def _session(config: EnvironmentConfig, state_dir: Path):
    if target_now() == "emulator":
        return _emulator_for_endpoint(state_dir).session(config.region)
    import boto3

    return boto3.session.Session(region_name=config.region)


def status(config: EnvironmentConfig, *, state_dir: Path, deploys_dir: Path) -> dict:
    """The stack's status, its AppVersion, each app server's version, and the recorded history."""
    from stacks.web_service import APP_VERSION_OUTPUT, APP_VERSION_TAG

    session = _session(config, state_dir)
    stack = session.client("cloudformation").describe_stacks(StackName=config.stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    pages = session.client("ec2").get_paginator("describe_instances").paginate(Filters=[
        # The stack's own tags (Tags.of(stack) in stacks/web_service.py) mark every server it runs.
        {"Name": "tag:project", "Values": [config.project]}, {"Name": "tag:environment", "Values": [config.name]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    servers = []
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                servers.append({"id": instance["InstanceId"], "state": instance["State"]["Name"],
                                "name": tags.get("Name", ""), "version": tags.get(APP_VERSION_TAG)})
    updated = stack.get("LastUpdatedTime") or stack.get("CreationTime")
    return {"stack": config.stack_name, "status": stack["StackStatus"],
            "updated": updated.isoformat() if hasattr(updated, "isoformat") else str(updated),
            "version": outputs.get(APP_VERSION_OUTPUT), "servers": sorted(servers, key=lambda s: s["name"]),
            "history": history(config.name, target_now(), deploys_dir)}


def print_status(shown: dict) -> None:
    from stacks.web_service import APP_VERSION_TAG

    print(f"{shown['stack']}  {shown['status']}  last updated {shown['updated']}")
    print(f"  AppVersion: {shown['version'] or '(no output: deployed before versions were recorded)'}")
    app_servers = [s for s in shown["servers"] if s["version"]]
    for server in app_servers:
        mark = "" if server["version"] == shown["version"] else "   <- differs from the stack's AppVersion"
        print(f"  server {server['id']}  {server['state']:<8} {server['version']}  {server['name']}{mark}")
    if not app_servers:
        print(f"  no app server found (no instance with the {APP_VERSION_TAG} tag)")
    print("  deploys recorded here (newest last):" if shown["history"] else "  no deploys recorded here")
    for r in shown["history"]:
        print(f"    {r.number:>3}  {r.deployed_at}  {r.version}  ({r.how})")


def rollback(config: EnvironmentConfig, *, state_dir: Path, deploys_dir: Path, to: int | None = None) -> Record:
    """Deploy the previous recorded assembly as it is, and record that as a deploy."""
    target = target_now()
    chosen = previous(config.name, target, deploys_dir, to)
    print(f"rollback: {config.stack_name} to deploy {chosen.number} (version {chosen.version}, "
          f"deployed {chosen.deployed_at}) from {chosen.assembly}", flush=True)
    if target == "emulator":
        from tools.local_aws import cli as local_aws

        emulator = _emulator_for_endpoint(state_dir)
        local_aws.deploy_assembly(emulator, config, chosen.assembly, state_dir)
    else:
        cdk = ROOT / "node_modules" / ".bin" / "cdk"
        done = subprocess.run([str(cdk), "deploy", "--app", str(chosen.assembly), config.stack_name,
                               "--require-approval", "broadening"], cwd=ROOT, check=False)
        if done.returncode != 0:
            raise DeployRecordError(f"`cdk deploy --app {chosen.assembly}` failed (exit {done.returncode})")
    return record(config.name, chosen.assembly, config.stack_name, target=target,
                  how=f"rollback to {chosen.number}", deploys_dir=deploys_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.deploys", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("commit", "record", "status", "rollback"))
    parser.add_argument("--env", help="environment name")
    parser.add_argument("--assembly", type=Path, help="record: the assembly that was deployed (cdk.out.<env>)")
    parser.add_argument("--to", type=int, help="rollback: the recorded deploy number to go back to")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".local",
                        help="where the emulator's state is (default: .local/)")
    parser.add_argument("--deploys-dir", type=Path, help="where deploys are recorded (default: <state-dir>/deploys)")
    args = parser.parse_args(argv)
    if args.command == "commit":
        print(git_commit() or "")
        return 0
    if not args.env:
        parser.error(f"{args.command} needs --env NAME (make {args.command} ENV=name)")
    deploys_dir = args.deploys_dir or args.state_dir / "deploys"
    try:
        config = load_environment(args.env)
        if args.command == "record":
            if not args.assembly:
                parser.error("record needs --assembly DIR")
            kept = record(config.name, args.assembly, config.stack_name, target=target_now(),
                          deploys_dir=deploys_dir)
            print(f"recorded deploy {kept.number} of {config.name}: version {kept.version} ({kept.path})")
        elif args.command == "status":
            print_status(status(config, state_dir=args.state_dir, deploys_dir=deploys_dir))
        else:
            kept = rollback(config, state_dir=args.state_dir, deploys_dir=deploys_dir, to=args.to)
            print(f"rollback: done; recorded as deploy {kept.number} (version {kept.version})")
    except ConfigError as err:
        print("Config error:\n  " + "\n  ".join(err.problems), file=sys.stderr)
        return 2
    except DeployRecordError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:   # botocore's ClientError/NoCredentialsError: one line, not a traceback
        if type(err).__module__.startswith("botocore"):
            print(f"error: {config.stack_name}: {err}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
