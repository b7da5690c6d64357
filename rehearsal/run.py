"""The boot rehearsal: every kind of server in the synthesized templates, booted for real.

For each environment: synthesize, find its servers in the template, create what they call in
the emulator (the database secret, the data volume, an instance ID, and the app's own secrets
that config names, as the user would before deploying), boot each in a systemd-nspawn container
with the resolved user data and Init metadata, and check boot, the app config names and its
environment, load, crash, reboot, in-place update and a broken app. See README "The boot rehearsal".
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from app_tier import render
from app_tier.loadgen import Load
from envconfig import ConfigError
from rehearsal import container as ct
from rehearsal import firewall, synth
from rehearsal import template as tpl
from rehearsal.packages import PACKAGES
from stacks.web_service import APP_VERSION_TAG

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".local" / "rehearsal"
ACCOUNT = "123456789012"
CFN_HUP_POLL_SECONDS = 2
LOAD_SECONDS = 5
SIGNAL_WAIT_SEC = 420
# An in-place update's signal to its wait condition handle: cfn-hup's poll (2 s here), cfn-init, the health gate.
UPDATE_SIGNAL_WAIT_SEC = 180
def standins_for(server: tpl.Server) -> list[str]:
    """The stand-ins a server's boot goes through, read from what the template hands it."""
    text = json.dumps([server.user_data, server.metadata])
    init = server.metadata.get("AWS::CloudFormation::Init", {})
    configs = [c for name, c in init.items() if name != "configSets"]
    packages = {p for c in configs for p in c.get("packages", {}).get("yum", {})}
    found = {
        "cloud-init": True,
        "cfn-init/cfn-signal": True,
        "cfn-hup": "cfn-hup" in text,
        "S3 asset": any(c.get("sources") for c in configs),
        "PyPI wheelhouse": "pip install" in text,
        "AWS CLI -> emulator": "secretsmanager" in text or "attach-volume" in text
                               or render.FETCH_APP_SECRETS_SCRIPT in text,
        "ec2-metadata": "ec2-metadata" in text,
        "EBS loop device": "attach-volume" in text,
    }
    return [name for name, used in found.items() if used] + \
        [PACKAGES[p]["standin"] for p in sorted(packages) if "standin" in PACKAGES.get(p, {})]



def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Result:
    environment: str
    kind: str
    steps: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    boot_to_signal_sec: float | None = None
    standins: list[str] = field(default_factory=list)

    def ok(self, step: str) -> None:
        self.steps.append(step)

    def fail(self, step: str, why: str) -> None:
        self.steps.append(f"{step}:FAILED")
        self.failures.append(f"{step}: {why}")

    def line(self) -> str:
        status = "ok" if not self.failures else "FAILED"
        signal = f"{self.boot_to_signal_sec:.0f} s boot to signal" if self.boot_to_signal_sec is not None else \
            "no signal"
        text = (f"{self.environment:<8} {self.kind:<22} {status:<6} {signal}; steps: {', '.join(self.steps)}; "
                f"stand-ins: {', '.join(self.standins) or 'none'}")
        return text + "".join(f"\n           - {f}" for f in self.failures)


@dataclass
class Outcome:
    """One scenario or step of the deploy and growth rehearsals: what it saw, and what failed."""

    name: str
    facts: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failures.append(why)

    def report(self, rehearsal: str, width: int) -> str:
        status = "ok" if not self.failures else "FAILED"
        return (f"{rehearsal}: {self.name:<{width}} {status:<6} {'; '.join(self.facts)}"
                + "".join(f"\n           - {f}" for f in self.failures))


# --- the emulator ----------------------------------------------------------------------------


class Emulator:
    """moto on the rehearsal bridge: the servers' AWS calls (Secrets Manager, EC2) go here."""

    def __init__(self) -> None:
        # AWS's endpoints answer HTTPS on 443; the emulator listens there, so the servers' security
        # groups decide whether they reach it, as in the VPC.
        self.port = 443
        self.url = f"http://{ct.HOST_ADDRESS}:{self.port}"
        log = (STATE / "emulator.log").open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "tools.local_aws.patched_moto", "-H", ct.HOST_ADDRESS,
                                         "-p", str(self.port)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.client("sts").get_caller_identity()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
        raise ct.RehearsalError("the emulator did not start; see .local/rehearsal/emulator.log")

    def client(self, service: str, region: str = "ap-northeast-2"):
        return boto3.client(service, region_name=region, endpoint_url=self.url,
                            aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class CfnStack:
    """The stack as CloudFormation's API serves it to the servers: one resource per server with its
    Init metadata (intrinsics resolved, as CloudFormation resolves them), in the emulator. cfn-init
    and cfn-hup read it with DescribeStackResource; cfn-signal's SignalResource lands in its events."""

    TYPE = "AWS::CloudFormation::WaitConditionHandle"  # moto models no EC2 instance here; any type will do

    def __init__(self, emulator: Emulator, region: str, name: str, logical_ids: list[str]) -> None:
        self.cf = emulator.client("cloudformation", region)
        self.name = name
        self.resources = {lid: {"Type": self.TYPE} for lid in logical_ids}
        self.stack_id = self.cf.create_stack(StackName=name, TemplateBody=self._body())["StackId"]
        self.seen_signals: set[str] = set()

    def _body(self) -> str:
        return json.dumps({"Resources": self.resources})

    def set_metadata(self, logical_id: str, metadata: dict) -> None:
        self.resources[logical_id] = {"Type": self.TYPE, "Metadata": metadata}
        self.cf.update_stack(StackName=self.name, TemplateBody=self._body())

    def add_wait_handles(self, template: dict) -> None:
        """The template's wait condition handles, so a server's signal to one (the cfn-signal stand-in's
        SignalResource) lands in this stack's events; they go in with the next set_metadata."""
        for lid, resource in template["Resources"].items():
            if resource["Type"] == tpl.WAIT_HANDLE:
                self.resources.setdefault(lid, {"Type": self.TYPE})

    def wait_for_signal(self, logical_id: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            signal = self.new_signal(logical_id)
            if signal:
                return signal
            time.sleep(0.5)
        return None

    def new_signal(self, logical_id: str) -> dict | None:
        """The first signal for the resource not seen before: {"status": "SUCCESS"|"FAILURE", "time"}."""
        for event in reversed(self.cf.describe_stack_events(StackName=self.name)["StackEvents"]):
            if (event["ResourceStatus"] == "SIGNAL_RECEIVED" and event["LogicalResourceId"] == logical_id
                    and event["EventId"] not in self.seen_signals):
                self.seen_signals.add(event["EventId"])
                return {"status": event["ResourceStatusReason"].split()[1], "time": time.time()}
        return None


# --- one environment ---------------------------------------------------------------------------


class Environment:
    def __init__(self, name: str, raw: dict, config, assembly: Path, emulator: Emulator,
                 root: Path, wheelhouse: Path, first_index: int) -> None:
        from stacks.config_mapping import app_spec  # the one mapper from config to the app contract

        self.name, self.stack, self.region = name, config.stack_name, config.region
        self.raw, self.config, self.app = raw, config, app_spec(config)
        self.assembly = assembly
        self.template = tpl.load(assembly, self.stack)
        self.servers = tpl.servers(self.template, self.stack)
        self.emulator = emulator
        self.root, self.wheelhouse = root, wheelhouse
        self.next_index = first_index
        self.containers: list[ct.Container] = []
        self.refs: dict[str, str] = {}
        self.attributes: dict[tuple[str, str], str] = {}
        self.secret_values: dict[str, dict] = {}
        self.app_secret_values: dict[str, str] = {}  # what the emulator holds for each [app.secrets] variable

    # Each server of an environment has a fixed slot, so its address is known before it exists
    # (the broken app's metadata names the database's address before the database boots).
    SLOTS = {"db": 0, "rds": 0, "app": 1, "broken": 2}

    def address(self, label: str) -> str:
        return str(ct.SUBNET.network_address + 10 + self.next_index + self.SLOTS[label])

    def container(self, label: str, **kwargs) -> ct.Container:
        c = ct.Container(f"{self.name}-{label}", root=self.root, state_dir=STATE / "run",
                         index=self.next_index + self.SLOTS[label], **kwargs)
        assert c.address == self.address(label)
        self.containers.append(c)
        c.create(self.wheelhouse)
        return c

    def member_addresses(self) -> dict[str, list[str]]:
        """Which rehearsal addresses belong to each security group (the host plays the load balancer)."""
        members: dict[str, list[str]] = {g: [ct.HOST_ADDRESS] for g in firewall.load_balancer_groups(self.template)}
        for server in self.servers:
            labels = ["app", "broken"] if server.is_app_server else ["db"]
            for group in firewall.groups_of(self.template, server.logical_id):
                members.setdefault(group, []).extend(self.address(label) for label in labels)
        for lid, resource in self.template["Resources"].items():
            if resource["Type"] == "AWS::RDS::DBInstance":
                for group in firewall.groups_of(self.template, lid):
                    members.setdefault(group, []).append(self.address("rds"))
        return members

    def enforce_security_groups(self, c: ct.Container, logical_id: str) -> None:
        rules = firewall.group_rules(self.template, str(ct.SUBNET))
        ruleset = firewall.ruleset(firewall.groups_of(self.template, logical_id), rules, self.member_addresses())
        (c.dir / "security-groups.nft").write_text(ruleset)
        ct.sh("ip", "netns", "exec", c.netns, "nft", "-f", str(c.dir / "security-groups.nft"))

    def cleanup(self) -> None:
        for c in self.containers:
            c.destroy()

    # What CloudFormation would resolve: pseudo parameters, the secret, the volume, addresses.
    def prepare_aws(self) -> None:
        resources = self.template["Resources"]
        self.cfn_stack = CfnStack(self.emulator, self.region, self.stack, [s.init_resource for s in self.servers])
        self.refs.update({
            "AWS::Region": self.region, "AWS::StackName": self.stack, "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com", "AWS::Partition": "aws", "AWS::StackId": self.cfn_stack.stack_id,
        })
        self.create_resources(resources)
        self.seed_app_secrets()

    def adopt(self, assembly: Path, template: dict, raw: dict, config) -> None:
        """The environment deployed again from a changed config (a grown stage): its template, its
        servers, and the emulator's stand-ins for what the new template adds."""
        self.assembly, self.template, self.raw, self.config = assembly, template, raw, config
        self.servers = tpl.servers(template, self.stack)
        self.create_resources(template["Resources"])

    def create_resources(self, resources: dict) -> None:
        """The emulator's stand-ins for what the servers read by reference, for each resource that has
        none yet (a grown template adds some: rehearsal/grow.py)."""
        sm = self.emulator.client("secretsmanager", self.region)
        for lid, res in resources.items():
            kind = res["Type"]
            if lid in self.refs or (lid, "CidrBlock") in self.attributes:
                continue
            if kind == "AWS::SecretsManager::Secret":
                spec = res["Properties"]["GenerateSecretString"]
                value = json.loads(spec.get("SecretStringTemplate", "{}"))
                value[spec["GenerateStringKey"]] = secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")
                arn = sm.create_secret(Name=f"{self.stack}-{lid}-{secrets.token_hex(3)}",
                                       SecretString=json.dumps(value))["ARN"]
                self.refs[lid] = arn
                self.secret_values[lid] = value
            elif kind in ("AWS::IAM::Role", "AWS::IAM::InstanceProfile", "AWS::Logs::LogGroup"):
                self.refs[lid] = f"{self.stack}-{lid}"
            elif kind == "AWS::EC2::VPC":
                self.attributes[(lid, "CidrBlock")] = str(ct.SUBNET)
        for lid, res in resources.items():  # an attachment's Ref is its secret's ARN
            if res["Type"] == "AWS::SecretsManager::SecretTargetAttachment":
                self.refs[lid] = self.refs[res["Properties"]["SecretId"]["Ref"]]

    def seed_app_secrets(self) -> None:
        """The secrets and parameters the app's config names exist before the deploy: the user
        creates them (the README says so). Here the rehearsal plays that user, in the emulator."""
        seeded = []
        for variable, ref in sorted(self.app.secrets.items()):
            if ref.name.startswith("arn:"):
                raise ct.RehearsalError(f"{self.name}: [app.secrets] {variable} names an ARN; the rehearsal "
                                        "creates secrets by name, so give it a name")
            # A value with what systemd's environment files treat specially: quotes, $, a backslash.
            value = f"{secrets.token_hex(8)} \"quoted\" $HOME \\back`tick`"
            if ref.store == "ssm":
                self.emulator.client("ssm", self.region).put_parameter(
                    Name=ref.name, Value=value, Type="SecureString", Overwrite=True)
                seeded.append(f"SSM parameter {ref.name} -> {variable}")
            else:
                sm = self.emulator.client("secretsmanager", self.region)
                stored = json.dumps({ref.key: value, "unused": secrets.token_hex(8)}) if ref.key else value
                sm.create_secret(Name=ref.name, SecretString=stored)
                seeded.append(f"Secrets Manager secret {ref.name}{f' (JSON key {ref.key})' if ref.key else ''}"
                              f" -> {variable}")
            self.app_secret_values[variable] = value
        if seeded:
            say(f"rehearsal: {self.name}: seeded by the rehearsal, standing in for the user who creates them "
                f"before deploying: {'; '.join(seeded)}")

    def publish(self, c: ct.Container, server: tpl.Server, assembly: Path, template: dict) -> None:
        """What CloudFormation and S3 hand this server: its assets first, then its resolved metadata
        (cfn-hup acts on the metadata, which names the assets)."""
        for asset in assembly.glob("asset.*"):
            archive = c.cfn / "assets" / f"{asset.name.removeprefix('asset.')}.zip"
            if asset.is_dir() and not archive.exists():
                with zipfile.ZipFile(archive, "w") as z:
                    for path in sorted(asset.rglob("*")):
                        if path.is_file():
                            z.write(path, path.relative_to(asset))
        resolver = tpl.Resolver(template, c.refs, self.attributes)
        metadata = resolver.resolve(template["Resources"][server.init_resource].get("Metadata", {}))
        c.cfn_stack.add_wait_handles(template)
        c.cfn_stack.set_metadata(server.init_resource, metadata)

    def stage_server(self, c: ct.Container, server: tpl.Server, assembly: Path, template: dict,
                     cfn_stack: CfnStack | None = None) -> None:
        """Everything a new server is handed: metadata and assets, its user data, its identity.
        `cfn_stack`: a stack of its own (the broken app is another deploy), else the environment's."""
        c.cfn_stack = cfn_stack or self.cfn_stack
        c.refs = {**self.refs, "AWS::StackName": c.cfn_stack.name, "AWS::StackId": c.cfn_stack.stack_id}
        self.publish(c, server, assembly, template)
        resolver = tpl.Resolver(template, c.refs, self.attributes)
        (c.cfn / "packages.json").write_text(json.dumps(PACKAGES))
        (c.cfn / "endpoint").write_text(self.emulator.url)
        (c.cfn / "local-ipv4").write_text(c.address)
        (c.cfn / "cfn-hup-poll-seconds").write_text(str(CFN_HUP_POLL_SECONDS))
        ec2 = self.emulator.client("ec2", self.region)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                     Placement={"AvailabilityZone": f"{self.region}a"})["Instances"][0]
        (c.cfn / "instance-id").write_text(instance["InstanceId"])
        c.prepare_image(user_data=tpl.user_data_script(resolver, server), hostname=c.name)
        self.enforce_security_groups(c, server.logical_id)

    def create_volume(self, lid: str) -> None:
        ec2 = self.emulator.client("ec2", self.region)
        self.refs[lid] = ec2.create_volume(AvailabilityZone=f"{self.region}a", Size=20)["VolumeId"]


# --- checks ------------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5) -> tuple[int | None, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}
    except (OSError, ValueError):
        return None, {}


def wait_http(url: str, timeout: float, want: int = 200) -> tuple[int | None, dict]:
    deadline = time.monotonic() + timeout
    status, body = None, {}
    while time.monotonic() < deadline:
        status, body = http_get(url)
        if status == want:
            return status, body
        time.sleep(0.5)
    return status, body


def app_units(c: ct.Container) -> list[str]:
    out = c.run("systemctl list-units --type=service --state=active --plain --no-legend 'app*.service'",
                check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def check_hardening(c: ct.Container, unit: str) -> str | None:
    """The unit runs as its own user, under its sandbox: read from the running process itself."""
    show = dict(line.split("=", 1) for line in c.run(
        f"systemctl show {unit} -p MainPID -p User -p NoNewPrivileges -p ProtectSystem -p PrivateTmp "
        "-p ProtectHome -p CapabilityBoundingSet").stdout.splitlines() if "=" in line)
    pid = show.get("MainPID", "0")
    if pid == "0":
        return f"{unit} has no main process"
    status = c.run(f"cat /proc/{pid}/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = fields["Uid"].split()[0]
    problems = []
    if uid == "0":
        problems.append("runs as root")
    if fields.get("NoNewPrivs", "").strip() != "1":
        problems.append("NoNewPrivs is off")
    if show.get("ProtectSystem") != "strict":
        problems.append(f"ProtectSystem={show.get('ProtectSystem')}")
    if c.run(f"nsenter -t {pid} -m test -w /usr", check=False).returncode == 0:
        problems.append("/usr is writable to it")
    return "; ".join(problems) or None


def boot_and_signal(c: ct.Container, server: tpl.Server, result: Result, *, expect: str = "SUCCESS",
                    limit_sec: float | None = None) -> dict | None:
    started = c.boot()
    # A healthy boot signals in seconds and a broken app within its health gate (about 2 minutes):
    # past SIGNAL_WAIT_SEC the stack would only wait out its timeout and roll back.
    limit_sec = limit_sec or min(server.signal_timeout_sec, SIGNAL_WAIT_SEC)
    signal = wait_for_signal(c, server, limit_sec)
    if signal:
        result.boot_to_signal_sec = signal["time"] - started
    if not signal or signal["status"] != expect:
        what = f"signal {signal['status']} (expected {expect})" if signal else \
            f"no signal within {limit_sec} s (CloudFormation would wait {server.signal_timeout_sec // 60} min, " \
            "then roll back)"
        result.fail("boot", f"{what}\n{diagnose(c)}")
    elif expect == "SUCCESS" and server.wait_handle:
        # The first version's wait condition is created once the instance has signalled: its handle must have
        # been signalled by then too (cfn-init's last config), or the first deploy waits out its timeout.
        handle = c.cfn_stack.wait_for_signal(server.wait_handle, 5)
        if not handle or handle["status"] != "SUCCESS":
            result.fail("boot", f"the wait condition handle {server.wait_handle} got "
                                f"{handle['status'] if handle else 'no signal'} at the first boot: the first deploy "
                                "would wait out the wait condition's timeout\n" + diagnose(c))
    return signal


def wait_for_signal(c: ct.Container, server: tpl.Server, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        signal = c.cfn_stack.new_signal(server.init_resource)
        if signal:
            return signal
        if c.process and c.process.poll() is not None:
            return None
        time.sleep(0.5)
    return None


def diagnose(c: ct.Container) -> str:
    """What an operator would look at first: cfn-init's last words and the units that are unhappy."""
    if not c.pid:
        return "(the container is not running)"
    out = c.run("grep -h 'error' /var/log/cfn-init.log | tail -n 2 | cut -c1-300; "
                "systemctl --failed --no-legend --plain; "
                "for u in $(systemctl list-units --all --plain --no-legend 'app*.service' 'nginx.service' "
                "'postgresql.service' 'webapp-*.service' | awk '{print $1}'); do "
                "systemctl status $u --no-pager -n 3 2>/dev/null | grep -E 'Active:|status=|Failed' | head -n 3 "
                "| sed \"s|^ *|$u: |\"; done",
                check=False).stdout
    return "\n".join("             " + line for line in out.strip().splitlines()[:20])


def check_app_server(env: Environment, c: ct.Container, server: tpl.Server, result: Result) -> None:
    base = f"http://{c.address}:{server.service_port}"
    for path in (server.health_path, "/"):
        status, _ = wait_http(base + path, 30)
        if status != 200:
            result.fail("boot", f"GET {path} answered {status}")
            return
    units = app_units(c)
    if not units:
        result.fail("boot", "no active app unit")
        return
    for unit in units:
        problem = check_hardening(c, unit)
        if problem:
            result.fail("hardening", f"{unit}: {problem}")
            return
    result.ok(f"boot({len(units)} unit{'s' if len(units) > 1 else ''})")
    result.ok("hardening")

    with Load(base + "/", connections=4) as load:
        time.sleep(LOAD_SECONDS)
    failures = load.failures()
    if failures or len(load.responses) < 10:
        result.fail("load", f"{len(failures)} of {len(load.responses)} requests failed: "
                            f"{(failures[0].error or failures[0].status) if failures else 'too few requests'}")
    else:
        result.ok(f"load({len(load.responses)} req, 0 failed)")

    unit = units[0]
    before = c.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
    c.run(f"kill -9 {before}")
    deadline = time.monotonic() + 15
    after = before
    while time.monotonic() < deadline:
        after = c.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        if after not in ("0", before) and http_get(base + server.health_path)[0] == 200:
            break
        time.sleep(0.3)
    if after in ("0", before):
        result.fail("crash", f"{unit} not restarted after kill -9 of {before}")
    else:
        result.ok(f"crash(restarted in {15 - (deadline - time.monotonic()):.1f} s)")


def process_info(c: ct.Container, pid: str) -> tuple[list[str], dict[str, str], str]:
    """A process's command line, environment and unit, read inside the server (nsenter into its
    namespaces): what the process really got, not what a file says it should."""
    cmdline = c.run(f"cat /proc/{pid}/cmdline").stdout.split("\0")
    environ = dict(item.split("=", 1) for item in c.run(f"cat /proc/{pid}/environ").stdout.split("\0") if "=" in item)
    unit = c.run(f"cat /proc/{pid}/cgroup").stdout.strip().rsplit("/", 1)[-1]
    return [arg for arg in cmdline if arg], environ, unit


def check_app_contract(env: Environment, c: ct.Container, server: tpl.Server, result: Result) -> None:
    """The app that config's [app] names is the one that answers, with the environment config gives
    it: its plain variables as written, its secrets exactly as the emulator holds them, and no secret
    value in anything a template, user data or a file on the server's disk would keep."""
    status, body = wait_http(f"http://{c.address}:{server.service_port}/", 30)
    if status != 200 or "pid" not in body:
        result.fail("app", f"GET / answered {status} for 30 s\n{diagnose(c)}")
        return
    # Which copy answered, and the command its unit's main process runs.
    answered_cmdline, _, unit = process_info(c, str(body["pid"]))
    if not unit.startswith("app"):
        result.fail("app", f"GET / was answered by pid {body['pid']} of {unit!r}, not by an app unit")
        return
    bind = f"127.0.0.1:{unit.removeprefix('app@').removesuffix('.service')}" if unit.startswith("app@") \
        else f"0.0.0.0:{server.service_port}"
    expected = shlex.split(render.app_start_command(render.ServerLayout(app=env.app), bind))
    program = Path(expected[0]).name
    # The crash step has just restarted a copy: a main process still starting shows no command line
    # of its own yet (the kernel prints "(gunicorn)"), so look again for a few seconds.
    deadline = time.monotonic() + 15
    while True:
        main_pid = c.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        cmdline, environ, _ = process_info(c, main_pid) if main_pid not in ("", "0") else ([], {}, "")
        # A script's command line starts with its interpreter (the venv's python): compare the rest.
        if cmdline[-len(expected):] == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if cmdline[-len(expected):] != expected or expected[0] not in answered_cmdline:
        result.fail("app", f"{unit} runs {shlex.join(cmdline)}; config's start command is {shlex.join(expected)}")
        return
    wanted = {**env.app.environment, "APP_STAGE": str(server.stage), **env.app_secret_values}
    wrong = sorted(name for name, value in wanted.items() if environ.get(name) != value)
    if wrong:
        result.fail("app", f"the app's environment differs from config and the seeded secrets in {wrong}")
        return
    if env.app_secret_values:
        # The random part of each value is unique: finding it anywhere is a leak, whatever the quoting.
        tokens = [value.split()[0] for value in env.app_secret_values.values()]
        user_data = (c.merged / "var/lib/cloud/instance/scripts/part-001").read_text()
        places = {
            "the template": json.dumps(env.template), "the user data": user_data,
            "the Init metadata CloudFormation serves": json.dumps(c.cfn_stack.resources),
            render.ENV_FILE: c.run(f"cat {render.ENV_FILE}").stdout,
            "the app units": c.run(f"cat {render.UNIT_DIR}/app*.service").stdout,
            "GET /": json.dumps(body),
        }
        leaks = sorted(place for place, text in places.items() if any(t in text for t in tokens))
        if leaks:
            result.fail("app", f"a secret value is in {', '.join(leaks)}")
            return
        kept = c.run(f"stat -c '%a %U' {render.APP_SECRETS_FILE}; findmnt -n -o FSTYPE --target "
                     f"{Path(render.APP_SECRETS_FILE).parent}", check=False).stdout.split()
        if kept != ["600", "root", "tmpfs"]:
            result.fail("app", f"{render.APP_SECRETS_FILE} is not a root-only file on tmpfs: {kept}")
            return
    secrets_note = f", {len(env.app_secret_values)} secrets as seeded, none on disk or in the template" \
        if env.app_secret_values else ""
    result.ok(f"app({program} answers /; {len(env.app.environment)} plain variables from config{secrets_note})")


def visits(c: ct.Container, server: tpl.Server) -> int | None:
    status, body = wait_http(f"http://{c.address}:{server.service_port}/", 15)
    return body.get("visits") if status == 200 else None


def reboot(c: ct.Container, server: tpl.Server, result: Result, *, check_url: str | None) -> bool:
    c.poweroff()
    c.boot()
    c.wait_until_running(120)
    if check_url:
        status, _ = wait_http(check_url, 90)
        if status != 200:
            failed = c.run("systemctl --failed --no-legend", check=False).stdout.strip()
            result.fail("reboot", f"{check_url} answered {status} after reboot; failed units: {failed}")
            return False
    return True


# --- the rehearsal ------------------------------------------------------------------------------


def start_environment(env: Environment, config, workdir: Path):
    """What CloudFormation would resolve, and the broken app's boot, which runs alongside the rest."""
    env.prepare_aws()
    app_server = next(s for s in env.servers if s.is_app_server)
    for server in env.servers:
        if server.kind == "database server":
            env.attributes[(server.logical_id, "PrivateIp")] = env.address("db")
    for lid, resource in env.template["Resources"].items():
        if resource["Type"] == "AWS::RDS::DBInstance":
            env.attributes[(lid, "Endpoint.Address")] = env.address("rds")
            env.attributes[(lid, "Endpoint.Port")] = str(resource["Properties"].get("Port", 5432))
    # The broken app boots in its own container: its signal must be FAILURE.
    broken_result = Result(env.name, f"{app_server.kind} (broken app)", standins=standins_for(app_server))
    return broken_result, start_broken(env, config, app_server, workdir, broken_result)


def rehearse_environment(env: Environment, config, workdir: Path, broken_result: Result, broken) -> list[Result]:
    results: list[Result] = []
    db_servers = [s for s in env.servers if s.kind == "database server"]
    app_server = next(s for s in env.servers if s.is_app_server)
    rds = [lid for lid, r in env.template["Resources"].items() if r["Type"] == "AWS::RDS::DBInstance"]
    db_container = None
    db_result = None

    if db_servers:
        server = db_servers[0]
        db_result = Result(env.name, server.kind, standins=standins_for(server))
        results.append(db_result)
        volume = next(lid for lid, r in env.template["Resources"].items() if r["Type"] == "AWS::EC2::Volume")
        env.create_volume(volume)
        db_container = env.container("db", data_volume_mib=300)
        env.stage_server(db_container, server, env.assembly, env.template)
        if boot_and_signal(db_container, server, db_result) and not db_result.failures:
            checks = db_container.run("systemctl is-active postgresql.service; findmnt -n -o SOURCE /var/lib/pgsql",
                                      check=False).stdout.split()
            if checks[:1] != ["active"] or len(checks) < 2:
                db_result.fail("boot", f"postgresql / data mount: {checks}")
            else:
                db_result.ok(f"boot(postgresql on {checks[1]})")
    elif rds:
        instance = env.template["Resources"][rds[0]]["Properties"]
        db_container = env.container("rds")
        env.enforce_security_groups(db_container, rds[0])
        secret_lid = next(lid for lid, r in env.template["Resources"].items()
                          if r["Type"] == "AWS::SecretsManager::Secret")
        start_rds_standin(db_container, env.secret_values[secret_lid], instance.get("DBName", "app"),
                          int(instance.get("Port", 5432)))

    result = Result(env.name, app_server.kind, standins=standins_for(app_server))
    results.insert(0, result)
    app = env.container("app")
    env.stage_server(app, app_server, env.assembly, env.template)
    if db_result and db_result.failures:
        result.fail("boot", "skipped: the database server did not boot")
    elif boot_and_signal(app, app_server, result) and not result.failures:
        check_app_server(env, app, app_server, result)
        check_app_contract(env, app, app_server, result)
        base = f"http://{app.address}:{app_server.service_port}"
        count = visits(app, app_server)
        if reboot(app, app_server, result, check_url=base + "/"):
            after = visits(app, app_server)
            if count is None or after is None or after <= count:
                result.fail("reboot", f"visits {count} before, {after} after: data lost")
            else:
                result.ok("reboot(data kept)")
        if db_container and db_servers and not db_result.failures:
            count = visits(app, app_server)
            if reboot(db_container, db_servers[0], db_result, check_url=None):
                status, body = wait_http(base + "/", 60)
                if status != 200 or count is None or body.get("visits", 0) <= count:
                    db_result.fail("reboot", f"app answered {status}, visits {count} -> {body.get('visits')}")
                else:
                    db_result.ok("reboot(data kept on its volume)")
        if app_server.stage in (1, 2):
            applied = in_place_update(env, config, app, app_server, workdir, result)
            if applied and config.app.release_command:
                failed_update(env, config, app, applied, workdir, result)
    finish_broken(broken, app_server, broken_result)
    results.append(broken_result)
    return results


def start_rds_standin(c: ct.Container, secret: dict, database: str, port: int) -> None:
    """RDS cannot run here: PostgreSQL 15 in its own container, with the secret's master user."""
    c.prepare_image(user_data=None, hostname=c.name)
    c.boot()
    c.wait_until_running(60)
    # The script goes in as a root-only file, so the password shows in no command line or error.
    script = c.merged / "root" / "rds-standin.sh"
    script.write_text(f"""set -e
postgresql-setup --initdb
printf "listen_addresses = '*'\\nport = {port}\\n" >> {render.PG_DATA_DIR}/postgresql.conf
echo "host all all {ct.SUBNET} scram-sha-256" >> {render.PG_DATA_DIR}/pg_hba.conf
systemctl start postgresql.service
cd /
runuser -u postgres -- psql -p {port} -q -v ON_ERROR_STOP=1 \\
  -c "CREATE ROLE {secret['username']} LOGIN PASSWORD '{secret['password']}'" \\
  -c "CREATE DATABASE {database} OWNER {secret['username']}"
""")
    script.chmod(0o700)
    c.run("bash /root/rds-standin.sh && rm /root/rds-standin.sh")


def start_broken(env: Environment, config, server: tpl.Server, workdir: Path, result: Result):
    source = synth.changed_app(synth.app_source(config), workdir / env.name, broken=True)
    # It boots alongside the rest, before its environment's database exists (on AWS the database comes
    # first); without a release command its boot reaches the health gate, which is what it tests.
    raw = {**env.raw, "app": {**env.raw.get("app", {}), "release_command": ""}}
    assembly = synth.synthesize([synth.with_app_source(env.name, raw, source)],
                                workdir / f"cdk.out.{env.name}.broken")
    template = tpl.load(assembly, env.stack)
    broken = next(s for s in tpl.servers(template, env.stack) if s.kind == server.kind)
    c = env.container("broken")
    env.stage_server(c, broken, assembly, template,
                     cfn_stack=CfnStack(env.emulator, env.region, f"{env.stack}-broken-app", [broken.init_resource]))
    holder: dict = {}

    def boot() -> None:
        started = time.monotonic()
        try:
            holder["signal"] = boot_and_signal(c, broken, result, expect="FAILURE")
        except Exception as error:  # noqa: BLE001 - reported as the step's failure
            result.fail("broken-app", repr(error))
        holder["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=boot, daemon=True)
    thread.start()
    return thread, holder, broken, c


def finish_broken(broken, server: tpl.Server, result: Result) -> None:
    thread, holder, broken_server, c = broken
    thread.join(SIGNAL_WAIT_SEC + 60)
    signal = holder.get("signal")
    if result.failures:
        return
    if not signal:
        result.fail("broken-app", "no signal at all")
        return
    # The failure must be the health gate's, not some other step's (a package, pip).
    gate = c.run("grep -c 'app-healthy failed' /var/log/cfn-init.log", check=False).stdout.strip() \
        if c.pid else "0"
    if gate in ("", "0"):
        result.fail("broken-app", "the signal was FAILURE, but not from the boot health gate:\n" + diagnose(c))
        return
    result.ok(f"broken-app(health gate FAILURE after {result.boot_to_signal_sec:.0f} s, "
              f"within the {broken_server.signal_timeout_sec // 60}-minute timeout: the stack rolls back)")


def in_place_update(env: Environment, config, c: ct.Container, server: tpl.Server, workdir: Path,
                    result: Result) -> None:
    """Change one app file, re-synthesize, hand the server the new metadata; cfn-hup does the rest,
    under load the whole time: the release command runs once for the new version, the app restarts
    on the socket systemd holds, and no request may fail."""
    release = f"r{secrets.token_hex(3)}"
    source = synth.changed_app(synth.app_source(config), workdir / env.name, release=release)
    assembly = synth.synthesize([synth.with_app_source(env.name, env.raw, source)],
                                workdir / f"cdk.out.{env.name}.update")
    template = tpl.load(assembly, env.stack)
    # An app change must reach a single server as new Init metadata and nothing else: anything
    # more (user data, a launch template) would make CloudFormation stop or replace it, data and all.
    changed = changed_resources(env.template, template, ignore_metadata_of=server.init_resource)
    if changed:
        result.fail("update", f"the app change also changes {changed}: a real deploy would not update in place")
        return None
    # ... and a new wait condition for it: CloudFormation waits for the server to apply it.
    updated = next(s for s in tpl.servers(template, env.stack) if s.init_resource == server.init_resource)
    if not updated.wait_handle or updated.wait_handle == server.wait_handle:
        result.fail("update", f"the app change makes no new wait condition handle ({server.wait_handle} -> "
                              f"{updated.wait_handle}): CloudFormation would not wait for the server")
        return None
    before = visits(c, server)
    database_pid = postgresql_pid(c)  # stage 1 runs PostgreSQL on this server
    base = f"http://{c.address}:{server.service_port}/"
    load = Load(base, connections=4).start()  # "/": the app and its database, as users reach them
    started = time.monotonic()
    started_at = time.time()  # signals carry the wall clock
    try:
        env.publish(c, server, assembly, template)
        deadline = time.monotonic() + 180
        body: dict = {}
        while time.monotonic() < deadline:
            status, body = http_get(base)
            if status == 200 and body.get("release") == release:
                break
            time.sleep(0.5)
        served_sec = time.monotonic() - started
        time.sleep(2)  # the load runs on past the switch: the old copy's stop lies well inside it
    finally:
        load.stop()
    handle = c.cfn_stack.wait_for_signal(updated.wait_handle, UPDATE_SIGNAL_WAIT_SEC)
    signalled_sec = (handle["time"] - started_at) if handle else None
    failed = load.failures()
    longest_ms = max((r.latency_sec for r in load.responses), default=0.0) * 1000
    under_load = f"{len(load.responses)} requests under load, {len(failed)} failed, longest {longest_ms:.0f} ms"
    if body.get("release") != release:
        log = c.run("journalctl -u cfn-hup --no-pager -n 20; tail -n 10 /var/log/cfn-init.log", check=False).stdout
        result.fail("update", f"release {release} not served after 180 s ({under_load})\n{log}")
        return None
    if failed:
        errors = sorted({r.error or str(r.status) for r in failed})[:3]
        result.fail("update", f"{under_load} during the update: {errors}")
        return None
    if not handle or handle["status"] != "SUCCESS":
        result.fail("update", f"the update's wait condition handle {updated.wait_handle} got "
                              f"{handle['status'] if handle else 'no signal'} within {UPDATE_SIGNAL_WAIT_SEC} s: "
                              f"CloudFormation would fail the update\n{diagnose(c)}")
        return None
    if before is None or body.get("visits", 0) <= before:
        result.fail("update", f"visits {before} before, {body.get('visits')} after: data lost")
        return None
    # cfn-init kept every file it overwrote as .bak: the daily jobs must still read their config.
    rotate = c.run("logrotate --debug /etc/logrotate.conf 2>&1", check=False)
    errors = [line for line in rotate.stdout.splitlines() if line.startswith("error:")][:3]
    if rotate.returncode != 0 or errors or f"{render.LOG_DIR}/" not in rotate.stdout:
        result.fail("update", f"logrotate's config broke after the update: {errors or 'webapp logs not rotated'}")
        return None
    if database_pid != postgresql_pid(c):
        result.fail("update", f"an app-only change restarted PostgreSQL (pid {database_pid} -> {postgresql_pid(c)})")
        return None
    runs = release_runs(env, config, c)
    if config.app.release_command and runs != 1:
        result.fail("update", f"the release command ran {runs} times for the new version {server_app_version(c)}; "
                              "wanted exactly once")
        return None
    kept = f", PostgreSQL not restarted (pid {database_pid})" if database_pid else ""
    ran = f", release command ran once for {server_app_version(c)}" if config.app.release_command else ""
    result.ok(f"update(cfn-hup served the new code in {served_sec:.0f} s; {under_load}; data kept{kept}{ran}; "
              f"wait condition handle SUCCESS {signalled_sec:.0f} s after the new metadata)")
    return Applied(assembly, template, updated, release)


@dataclass
class Applied:
    """A version of the metadata a single server applied (what a rollback returns to)."""
    assembly: Path
    template: dict
    server: tpl.Server
    release: str


def failed_update(env: Environment, config, c: ct.Container, applied: Applied, workdir: Path,
                  result: Result) -> None:
    """An app change whose release command fails, under load: cfn-init fails before the new copy starts, the
    hook's action signals FAILURE to the new wait condition's handle (CloudFormation fails the update), the
    old version keeps serving; then CloudFormation's rollback (the previous metadata, published again) is
    applied by cfn-hup and signals the previous handle SUCCESS. No request may fail throughout."""
    release = f"r{secrets.token_hex(3)}"
    source = synth.changed_app(synth.app_source(config), workdir / env.name, release=release, failing_release=True)
    assembly = synth.synthesize([synth.with_app_source(env.name, env.raw, source)],
                                workdir / f"cdk.out.{env.name}.failing-release")
    template = tpl.load(assembly, env.stack)
    failing = next(s for s in tpl.servers(template, env.stack) if s.init_resource == applied.server.init_resource)
    if not failing.wait_handle or failing.wait_handle == applied.server.wait_handle:
        result.fail("failed-update", f"no new wait condition handle for the change ({failing.wait_handle})")
        return
    version = server_app_version(c)
    base = f"http://{c.address}:{applied.server.service_port}/"
    load = Load(base, connections=4).start()
    started = time.time()  # signals carry the wall clock
    try:
        env.publish(c, failing, assembly, template)
        signal = c.cfn_stack.wait_for_signal(failing.wait_handle, UPDATE_SIGNAL_WAIT_SEC)
        failed_sec = (signal["time"] - started) if signal else None
        status, during = http_get(base)
        # CloudFormation's rollback: the previous metadata again, which cfn-hup applies.
        rollback_started = time.time()
        env.publish(c, applied.server, applied.assembly, applied.template)
        back = c.cfn_stack.wait_for_signal(applied.server.wait_handle, UPDATE_SIGNAL_WAIT_SEC)
        back_sec = (back["time"] - rollback_started) if back else None
        after_status, after = http_get(base)
        time.sleep(1)
    finally:
        load.stop()
    failed = load.failures()
    under_load = f"{len(load.responses)} requests under load, {len(failed)} failed"
    log = c.run("journalctl -u cfn-hup --no-pager -n 20; tail -n 10 /var/log/cfn-init.log", check=False).stdout
    if not signal or signal["status"] != "FAILURE":
        result.fail("failed-update", f"the failing release's wait condition handle got "
                                     f"{signal['status'] if signal else 'no signal'} within {UPDATE_SIGNAL_WAIT_SEC} s "
                                     f"(wanted FAILURE)\n{log}")
        return
    if "release" not in c.run("grep -h 'error' /var/log/cfn-init.log | tail -n 3", check=False).stdout:
        result.fail("failed-update", f"cfn-init failed, but not in the release step:\n{log}")
        return
    if status != 200 or during.get("release") != applied.release:
        result.fail("failed-update", f"after the FAILURE signal / answered {status} with release "
                                     f"{during.get('release')}; wanted the old {applied.release}")
        return
    if not back or back["status"] != "SUCCESS":
        result.fail("failed-update", f"the rolled-back metadata's handle got {back['status'] if back else 'no signal'}"
                                     f" within {UPDATE_SIGNAL_WAIT_SEC} s\n{log}")
        return
    if after_status != 200 or after.get("release") != applied.release or server_app_version(c) != version:
        result.fail("failed-update", f"after the rollback / answered {after_status} with release "
                                     f"{after.get('release')}, version {server_app_version(c)}; wanted "
                                     f"{applied.release}, {version}")
        return
    if failed:
        errors = sorted({r.error or str(r.status) for r in failed})[:3]
        result.fail("failed-update", f"{under_load}: {errors}")
        return
    result.ok(f"failed-update(release command failed: FAILURE signalled {failed_sec:.0f} s after the new metadata, "
              f"old version {applied.release} served throughout; rollback applied and signalled SUCCESS in "
              f"{back_sec:.0f} s; {under_load})")


def server_app_version(c: ct.Container) -> str:
    return c.run(f"cat {render.APP_VERSION_FILE}", check=False).stdout.strip()


def release_runs(env: Environment, config, c: ct.Container) -> int | None:
    """How many rows the sample apps' release command left in release_runs for the server's current
    version, read on the database's own server: stage 1's app server, stage 2's database server."""
    version = server_app_version(c)
    database = c if int(config.stage) == 1 else next(x for x in env.containers if x.name == f"{env.name}-db")
    out = database.run(f"cd / && runuser -u postgres -- psql -p {config.database.port} -d {config.database.name} "
                       f"-tAc \"SELECT count(*) FROM release_runs WHERE version = '{version}'\"", check=False)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


def postgresql_pid(c: ct.Container) -> int:
    """The main PID of the server's own PostgreSQL, 0 when it runs none."""
    shown = c.run("systemctl show -p MainPID --value postgresql.service", check=False).stdout.strip()
    return int(shown) if shown.isdigit() else 0


def changed_resources(before: dict, after: dict, *, ignore_metadata_of: str) -> list[str]:
    """Logical IDs whose definition differs between two syntheses, besides one resource's metadata,
    its `app-version` tag (a new version changes both; an instance's tags update without
    interruption) and the wait condition of its metadata's version. Any other change to that
    resource still counts."""
    def strip(template: dict) -> dict:
        resources = json.loads(json.dumps(template["Resources"]))
        # The wait condition of the metadata's version and its handle: new with every new metadata.
        for lid, resource in list(resources.items()):
            if resource["Type"] == "AWS::CloudFormation::WaitCondition" and \
                    ignore_metadata_of in resource.get("DependsOn", []):
                resources.pop(lid)
                resources.pop(resource["Properties"]["Handle"]["Ref"], None)
        server = resources.get(ignore_metadata_of, {})
        server.pop("Metadata", None)
        tags = server.get("Properties", {}).get("Tags")
        if isinstance(tags, list):
            server["Properties"]["Tags"] = [t for t in tags if t.get("Key") != APP_VERSION_TAG]
        return resources
    old, new = strip(before), strip(after)
    return sorted(lid for lid in old.keys() | new.keys() if old.get(lid) != new.get(lid))


def app_requirements(assembly: Path, template: dict) -> list[Path]:
    """The requirements.txt of every app the template's servers run: each server's Init sources
    name the S3 asset of its app, which the assembly holds as asset.<hash>/."""
    found = []
    for server in tpl.servers(template, ""):
        init = server.metadata.get("AWS::CloudFormation::Init", {})
        sources = json.dumps([c.get("sources", {}) for name, c in init.items() if name != "configSets"])
        for asset in re.findall(r"/([0-9a-f]{64})\.zip", sources):
            requirements = assembly / f"asset.{asset}" / "requirements.txt"
            if not requirements.is_file():
                raise ct.RehearsalError(f"{server.kind}: its app asset {asset[:12]} has no requirements.txt")
            found.append(requirements)
    return sorted(set(found))


def wheelhouse(requirements: list[Path]) -> Path:
    """Wheels for every app the servers run (a server's pip finds them in place of PyPI), downloaded
    once per set of requirements; each app's pins are resolved on their own, as on its server."""
    texts = sorted({r.read_text() for r in requirements})
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:12]
    path = STATE / f"wheels-{key}"
    if not (path / ".complete").exists():
        shutil.rmtree(path, ignore_errors=True)
        for requirement in requirements:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                            "--only-binary=:all:", "-r", str(requirement), "-d", str(path)], check=True)
        (path / ".complete").touch()
    return path


def rehearsal_root() -> Path:
    out = subprocess.run([str(REPO / "scripts" / "rehearsal-root.sh")], check=True, capture_output=True, text=True,
                         cwd=REPO)
    return REPO / out.stdout.strip().splitlines()[-1]


def machine_lock(who: str):
    """One rehearsal at a time on a machine (boot or deploy): they share the bridge, its addresses
    and the names. Held while the returned file stays open."""
    lock = open("/run/staged-web-rehearsal.lock", "w")  # noqa: SIM115 - the caller holds it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"{who}: another rehearsal is running on this machine; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def claim_machine(who: str):
    """What every rehearsal starts with: the machine's lock (held while the returned file stays open),
    what an interrupted run left removed, and the cached root built. Returns (lock, root)."""
    STATE.mkdir(parents=True, exist_ok=True)
    lock = machine_lock(who)
    left = ct.clean_leftovers(STATE / "run")
    if left:
        say(f"{who}: removed what an interrupted run left: {', '.join(left)}")
    return lock, rehearsal_root()


def main(env_names: list[str] | None) -> int:
    if os.geteuid() != 0:
        say("rehearsal: needs root (systemd-nspawn, network namespaces, loop devices)")
        return 2
    names = env_names or ["dev", "stage2", "staging", "prod"]
    unknown = [n for n in names if n not in synth.environment_names()]
    if unknown:
        say(f"rehearsal: unknown environment(s) {unknown}; allowed: {sorted(synth.environment_names())}")
        return 2
    # Each environment from its TOML, through envconfig's parser: variants change that TOML only.
    raws = {name: synth.raw_config(name) for name in names}
    try:
        configs = {name: synth.parse(name, raws[name]) for name in names}
    except ConfigError as error:
        say(f"rehearsal: {error}")
        return 2
    STATE.mkdir(parents=True, exist_ok=True)
    lock = machine_lock("rehearsal")  # noqa: F841 - held for the whole run
    left = ct.clean_leftovers(STATE / "run")
    if left:
        say(f"rehearsal: removed what an interrupted run left: {', '.join(left)}")
    started = time.monotonic()
    root = rehearsal_root()
    workdir = STATE / "work"
    workdir.mkdir(exist_ok=True)
    assembly = synth.synthesize([configs[n] for n in names], workdir / "cdk.out")
    say(f"rehearsal: synthesized {', '.join(names)} in {time.monotonic() - started:.0f} s; root {root.name}")
    requirements = [r for n in names for r in app_requirements(assembly, tpl.load(assembly, configs[n].stack_name))]
    wheels = wheelhouse(requirements)
    ct.bridge_up()
    emulator = Emulator()
    results: list[Result] = []
    environments = [Environment(name, raws[name], configs[name], assembly, emulator, root,
                                wheels, first_index=10 * i) for i, name in enumerate(names)]
    try:
        # The broken apps wait out their health gate (minutes) in parallel with everything else.
        pending = {env.name: start_environment(env, configs[env.name], workdir) for env in environments}
        for env in environments:
            env_started = time.monotonic()
            try:
                env_results = rehearse_environment(env, configs[env.name], workdir, *pending[env.name])
            except Exception as error:  # noqa: BLE001 - one environment's crash is its failure, not the run's
                failed = Result(env.name, "rehearsal")
                failed.fail("rehearsal", repr(error))
                env_results = [failed]
            finally:
                if not os.environ.get("REHEARSAL_KEEP"):
                    env.cleanup()
            for r in env_results:
                say(r.line())
            say(f"           ({env.name}: {time.monotonic() - env_started:.0f} s)")
            results += env_results
    finally:
        if os.environ.get("REHEARSAL_KEEP"):
            say("REHEARSAL_KEEP: containers, emulator and bridge left running (for a look inside)")
        else:
            for env in environments:
                env.cleanup()
            emulator.stop()
            ct.bridge_down()
    booted = sum(1 for r in results if r.boot_to_signal_sec is not None)
    failed = sum(1 for r in results if r.failures)
    broken = sum(1 for r in results if r.kind.endswith("(broken app)"))
    used = dict.fromkeys(s for r in results for s in r.standins)
    say(f"stand-ins (not under test; README: The boot rehearsal): {', '.join(used)}")
    say(f"servers: {len(results) - broken} kinds across the environments, plus {broken} broken-app boots "
        "(prod's RDS stand-in is not counted)")
    say(f"rehearsal took {time.monotonic() - started:.0f} s")
    say(f"rehearsal: {booted} servers booted, {failed} failed")
    return 1 if failed or not results else 0
