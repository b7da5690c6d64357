"""The deploy rehearsal: real rollouts of new app code under load, on servers booted for real.

Stages 3-4 (prod): a fleet of FLEET_SIZE servers, each a container with systemd booted from the
group's launch template user data and Init metadata (as the boot rehearsal boots them), behind
HAProxy standing in for the ALB (rehearsal/balancer.py), with prod's RDS stand-in. A deploy is the
instance refresh the template declares (rehearsal/refresh.py, every number read from the template
by tools.rollout), under steady load:
  good  v2 over v1: 0 failed requests, never fewer than FLEET_SIZE servers in service;
  bad   v3 boots and passes its health check but answers 500: the template's 5xx-rate alarm rule,
        fed the balancer's counts, fires; the refresh fails and rolls back to v2, 0 failed;
  release  the release command ran once per version across the fleet (when config has one);
  failing release  v4's release command fails: its first server fails cfn-init before its app starts,
        the refresh fails, v2 keeps serving with 0 failed requests, and nothing records v4's release.
Stages 1-2 (dev, and dev grown to stage 2 with the ASGI app): the in-place update cfn-hup applies,
under load (rehearsal.run.in_place_update), 0 failed.

One line per scenario; the last reads `deploy rehearsal: N scenarios, M failed`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app_tier.loadgen import Load, Response, percentile
from envconfig import ConfigError
from rehearsal import container as ct
from rehearsal import firewall, run, synth
from rehearsal import template as tpl
from rehearsal.balancer import Balancer
from rehearsal.refresh import TIME_SCALE, AlarmEvaluator, RefreshReport, Timing, refresh
from tools.rollout import RolloutSettings, rollout_settings

FLEET_ENVIRONMENT = "prod"
FLEET_SIZE = 3                      # above prod's min_servers (2): a deploy must keep a scaled-out fleet
POOL = 8                            # server slots on the bridge: the fleet, a batch, and a rollback's
SINGLE_SERVER_ENVIRONMENTS = ("dev", synth.STAGE2)
LAUNCH_TIMEOUT_SEC = 240            # a server not in service by then fails the refresh
LOAD_CONNECTIONS = 4
LOAD_PACE_SEC = 0.02                # per connection: steady load, not saturation (2 cores boot servers meanwhile)
BASELINE_SEC = 8
STATE = run.STATE / "deploy"
FIGURES = STATE / "figures.json"    # the good rollout's figures, for bench/deploy.py


def say(message: str) -> None:
    print(message, flush=True)


class Scenario(run.Outcome):
    def line(self) -> str:
        return self.report("deploy rehearsal", 22)


@dataclass
class Version:
    label: str
    assembly: Path
    template: dict
    server: tpl.Server
    app_version: str


def synthesize_version(label: str, name: str, raw: dict, source: Path | None, workdir: Path) -> Version:
    config = synth.with_app_source(name, raw, source) if source else synth.parse(name, raw)
    assembly = synth.synthesize([config], workdir / f"cdk.out.{name}.{label}")
    template = tpl.load(assembly, config.stack_name)
    (server,) = [s for s in tpl.servers(template, config.stack_name) if s.is_app_server]
    return Version(label, assembly, template, server, template["Outputs"]["AppVersion"]["Value"])


# --- the fleet -------------------------------------------------------------------------------------


class FleetEnvironment(run.Environment):
    """An environment whose app servers are a pool of slots (m0, m1, ...) after the fixed ones."""

    FIRST_MEMBER = 3

    def _index(self, label: str) -> int:
        if label.startswith("m"):
            return self.next_index + self.FIRST_MEMBER + int(label[1:])
        return self.next_index + self.SLOTS[label]

    def address(self, label: str) -> str:
        return str(ct.SUBNET.network_address + 10 + self._index(label))

    def container(self, label: str, **kwargs) -> ct.Container:
        c = ct.Container(f"{self.name}-{label}", root=self.root, state_dir=run.STATE / "run",
                         index=self._index(label), **kwargs)
        self.containers.append(c)
        c.create(self.wheelhouse)
        return c

    def member_addresses(self) -> dict[str, list[str]]:
        members = super().member_addresses()
        for server in self.servers:
            if server.is_app_server:
                for group in firewall.groups_of(self.template, server.logical_id):
                    members.setdefault(group, []).extend(self.address(f"m{i}") for i in range(POOL))
        return members


@dataclass(eq=False)
class Member:
    slot: int
    name: str
    version: str
    container: ct.Container
    instance_id: str
    launched: float
    failed: str | None = None
    seconds_to_service: float | None = None


class RehearsalFleet:
    """refresh.Fleet on containers behind the balancer: what Auto Scaling and the ALB do."""

    def __init__(self, env: FleetEnvironment, versions: dict[str, Version], balancer: Balancer,
                 timing: Timing) -> None:
        self.env, self.versions, self.balancer, self.timing = env, versions, balancer, timing
        self._members: list[Member] = []
        self.free = list(range(POOL))
        self.launch_seconds: list[float] = []

    def members(self) -> list[Member]:
        return list(self._members)

    def launch(self, version: str, count: int) -> list[Member]:
        launched = []
        for _ in range(count):
            slot = self.free.pop(0)
            c = self.env.container(f"m{slot}")
            v = self.versions[version]
            # The group's Init metadata is the deployed version's: what CloudFormation serves now.
            self.env.stage_server(c, v.server, v.assembly, v.template)
            member = Member(slot, f"m{slot}", version, c, (c.cfn / "instance-id").read_text(), time.monotonic())
            self._members.append(member)
            # Auto Scaling registers an instance with the target group as it launches; the balancer
            # sends it nothing until its health check passes.
            self.balancer.register(member.name)
            threading.Thread(target=self._boot, args=(member,), daemon=True).start()
            launched.append(member)
        return launched

    @staticmethod
    def _boot(member: Member) -> None:
        try:
            member.container.boot()
        except Exception as error:  # noqa: BLE001 - the launch's failure, reported by wait_in_service
            member.failed = repr(error)

    def signals(self) -> dict[str, str]:
        """cfn-signal's verdict per instance ID (the group's CreationPolicy signals carry it)."""
        stack = self.env.cfn_stack
        found = {}
        for event in stack.cf.describe_stack_events(StackName=stack.name)["StackEvents"]:
            reason = event.get("ResourceStatusReason") or ""
            if event["ResourceStatus"] == "SIGNAL_RECEIVED" and "UniqueId " in reason:
                found[reason.rsplit(" ", 1)[1]] = reason.split()[1]
        return found

    def wait_in_service(self, members: list[Member], *, abort) -> str | None:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_SEC
        waiting = list(members)
        while waiting:
            why = abort()
            if why:
                return why
            signals = self.signals()
            for m in list(waiting):
                if m.failed:
                    return f"{m.name} ({m.version}) did not boot: {m.failed}"
                if signals.get(m.instance_id) == "FAILURE":
                    return f"{m.name} ({m.version}): cfn-init failed, signal FAILURE\n{run.diagnose(m.container)}"
                if self.balancer.in_service(m.name):
                    m.seconds_to_service = time.monotonic() - m.launched
                    self.launch_seconds.append(m.seconds_to_service)
                    waiting.remove(m)
            if waiting and time.monotonic() > deadline:
                stuck = waiting[0]
                row = self.balancer.servers().get(stuck.name, {})
                seen = stuck.container.run("systemctl is-system-running; tail -n 6 /var/log/cfn-init.log; "
                                           "tail -n 4 /var/log/cfn-init-cmd.log", check=False).stdout \
                    if stuck.container.pid else "(not running)"
                return (f"{', '.join(m.name for m in waiting)} not healthy after {LAUNCH_TIMEOUT_SEC} s "
                        f"(balancer: {row.get('status')} {row.get('check_status')} {row.get('check_desc')})\n"
                        f"{seen}\n{run.diagnose(stuck.container)}")
            time.sleep(0.2)
        return None

    def retire(self, member: Member) -> None:
        """Deregister with the target group's drain, then terminate (systemd stops the units: SIGTERM)."""
        self.balancer.drain(member.name)
        time.sleep(self.timing.drain)
        self.balancer.deregister(member.name)
        self._terminate(member)

    def terminate(self, member: Member) -> None:
        self.retire(member)

    def _terminate(self, member: Member) -> None:
        member.container.poweroff(60)
        member.container.destroy()
        self._members.remove(member)
        self.free.append(member.slot)

    def versions_served(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self._members:
            counts[m.version] = counts.get(m.version, 0) + 1
        return counts


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def release_of(response: Response) -> str | None:
    try:
        return json.loads(response.body).get("release", "v1")
    except ValueError:
        return None


def app_answer(response: Response) -> bool:
    """An answer from the app (its JSON), as opposed to the balancer's own error page or no answer."""
    try:
        return isinstance(json.loads(response.body), dict)
    except ValueError:
        return False


def p99_ms(responses: list[Response]) -> float:
    return percentile([r.latency_sec for r in responses if r.ok], 0.99) * 1000


def release_runs(db: ct.Container, config) -> dict[str, int] | None:
    """How many times the release command ran, per APP_VERSION (the sample apps' release_runs table);
    None when config has no release command. A table that cannot be read is the scenario's failure."""
    if not config.app.release_command:
        return None
    out = db.run(f"cd / && runuser -u postgres -- psql -p {config.database.port} -d {config.database.name} -qtA -F' ' -c "
                 "\"SELECT version, count(*) FROM release_runs GROUP BY version\"", check=False)
    if out.returncode != 0:
        raise ct.RehearsalError(f"release_runs could not be read on {db.name}: {out.stderr.strip()}")
    return {line.split()[0]: int(line.split()[1]) for line in out.stdout.splitlines() if line.strip()}


def rehearse_fleet(emulator: run.Emulator, root: Path, workdir: Path, scenarios: list[Scenario],
                   *, only_good: bool = False) -> dict:
    raw = synth.raw_config(FLEET_ENVIRONMENT)
    config = synth.parse(FLEET_ENVIRONMENT, raw)
    source = synth.app_source(config)
    versions = {
        "v1": synthesize_version("v1", FLEET_ENVIRONMENT, raw, None, workdir),
        "v2": synthesize_version("v2", FLEET_ENVIRONMENT, raw, synth.changed_app(source, workdir, release="v2"),
                                 workdir),
    }
    if not only_good:
        versions["v3"] = synthesize_version("v3", FLEET_ENVIRONMENT, raw, synth.changed_app(
            source, workdir, release="v3", failing=True), workdir)
        if config.app.release_command:
            versions["v4"] = synthesize_version("v4", FLEET_ENVIRONMENT, raw, synth.changed_app(
                source, workdir, release="v4", failing_release=True), workdir)
    v1 = versions["v1"]
    settings: RolloutSettings = rollout_settings(v1.template)
    timing = Timing.of(settings)
    for v in versions.values():
        if rollout_settings(v.template) != settings:
            raise ct.RehearsalError(f"{v.label}'s template declares other rollout settings than v1's")
        if v is not v1 and v.template["Resources"][v.server.logical_id] == v1.template["Resources"][v1.server.logical_id]:
            raise ct.RehearsalError(f"{v.label} does not change the launch template: CloudFormation would not roll it out")
    say(f"deploy rehearsal: {FLEET_ENVIRONMENT}: {FLEET_SIZE} servers, batch {settings.batch_size(FLEET_SIZE)}, "
        f"min/max healthy {settings.min_healthy_percent}/{settings.max_healthy_percent} %, health check "
        f"{settings.health_check_path} every {settings.health_check_interval_seconds} s "
        f"(rise {settings.healthy_threshold}, fall {settings.unhealthy_threshold}), warm-up {settings.warmup_seconds} s, "
        f"drain {settings.drain_seconds} s, bake {settings.bake_seconds} s, alarm periods "
        f"{settings.alarms[0].period_seconds} s: from the template; durations / {timing.scale} here")

    wheels = run.wheelhouse(sorted({r for v in versions.values() for r in run.app_requirements(v.assembly, v.template)}))
    env = FleetEnvironment(FLEET_ENVIRONMENT, raw, config, v1.assembly, emulator, root, wheels, first_index=0)
    balancer = None
    figures: dict = {}
    try:
        env.prepare_aws()
        db = start_database(env)
        balancer = Balancer(settings, timing, {f"m{i}": env.address(f"m{i}") for i in range(POOL)},
                            port=free_loopback_port(), service_port=v1.server.service_port, state_dir=STATE)
        alarms = AlarmEvaluator(settings.alarms)
        balancer.on_period = alarms.add
        fleet = RehearsalFleet(env, versions, balancer, timing)

        first = Scenario(f"fleet v1 x{FLEET_SIZE}")
        scenarios.append(first)
        started = time.monotonic()
        why = fleet.wait_in_service(fleet.launch("v1", FLEET_SIZE), abort=lambda: None)
        if why:
            first.fail(why)
            return figures
        first.facts.append(f"{FLEET_SIZE} servers in service in {time.monotonic() - started:.0f} s "
                           "(booted together: the release command raced for its lock)")
        runs = release_runs(db, config)
        if runs is not None:
            check_release_once(first, runs, "v1", v1.app_version)

        with Load(balancer.url, connections=LOAD_CONNECTIONS, pace_sec=LOAD_PACE_SEC) as baseline:
            time.sleep(BASELINE_SEC)
        before_p99 = p99_ms(baseline.responses)

        good = Scenario("good v2 over v1")
        scenarios.append(good)
        report, load = deploy_under_load(fleet, balancer, alarms, "v2", settings, timing)
        figures = judge_good(good, report, load, balancer, fleet, before_p99, settings)
        runs = release_runs(db, config)
        if runs is not None:
            release = Scenario("release command")
            scenarios.append(release)
            check_release_once(release, runs, "v2", versions["v2"].app_version)
        if good.failures or only_good:
            return figures

        bad = Scenario("bad v3 rolls back")
        scenarios.append(bad)
        judge_bad(bad, fleet, balancer, alarms, settings, timing)
        if "v4" in versions and not bad.failures:
            failing = Scenario("failing release v4")
            scenarios.append(failing)
            judge_failing_release(failing, fleet, balancer, alarms, settings, timing, db, config,
                                  versions["v4"].app_version)
        return figures
    finally:
        if balancer:
            balancer.stop()
        if not os.environ.get("REHEARSAL_KEEP"):
            env.cleanup()


def start_database(env: FleetEnvironment) -> ct.Container:
    """prod's database: RDS cannot run here, so its stand-in (PostgreSQL 15 in a container)."""
    resources = env.template["Resources"]
    (rds,) = [lid for lid, r in resources.items() if r["Type"] == "AWS::RDS::DBInstance"]
    instance = resources[rds]["Properties"]
    env.attributes[(rds, "Endpoint.Address")] = env.address("rds")
    env.attributes[(rds, "Endpoint.Port")] = str(instance.get("Port", 5432))
    db = env.container("rds")
    env.enforce_security_groups(db, rds)
    secret = next(lid for lid, r in resources.items() if r["Type"] == "AWS::SecretsManager::Secret")
    run.start_rds_standin(db, env.secret_values[secret], instance.get("DBName", "app"), int(instance.get("Port", 5432)))
    return db


def check_release_once(scenario: Scenario, runs: dict[str, int], label: str, app_version: str) -> None:
    ran = runs.get(app_version, 0)
    if ran != 1:
        scenario.fail(f"the release command ran {ran} times for {label} ({app_version}); expected once: {runs}")
    else:
        scenario.facts.append(f"release command ran once for {label} ({app_version})")


def deploy_under_load(fleet: RehearsalFleet, balancer: Balancer, alarms: AlarmEvaluator, target: str,
                      settings: RolloutSettings, timing: Timing) -> tuple[RefreshReport, Load]:
    with Load(balancer.url, connections=LOAD_CONNECTIONS, pace_sec=LOAD_PACE_SEC) as load:
        alarms.reset()
        balancer.watch()
        report = refresh(fleet, target, settings, timing, alarms)
        balancer.unwatch()
    return report, load


def judge_good(scenario: Scenario, report: RefreshReport, load: Load, balancer: Balancer, fleet: RehearsalFleet,
               before_p99: float, settings: RolloutSettings) -> dict:
    failed = [r for r in load.responses if not r.ok]
    served = fleet.versions_served()
    lowest = balancer.min_in_service
    during_p99 = p99_ms(load.responses)
    figures = {"servers": FLEET_SIZE, "requests": len(load.responses), "failed": len(failed),
               "min_in_service": lowest, "min_capacity_share": (lowest or 0) / FLEET_SIZE,
               "p99_before_ms": round(before_p99, 1), "p99_during_ms": round(during_p99, 1),
               "seconds_total": round(report.seconds, 1), "seconds_per_server": [round(s, 1) for s in report.batch_seconds],
               "time_scale": Timing.of(settings).scale}
    scenario.facts.append(f"{len(load.responses)} requests, {len(failed)} failed")
    scenario.facts.append(f"fewest in service {lowest} of {FLEET_SIZE}")
    scenario.facts.append(f"{report.replaced} replaced in {report.seconds:.0f} s "
                          f"({', '.join(f'{s:.0f}' for s in report.batch_seconds)} s per batch of {report.batch_size})")
    scenario.facts.append(f"p99 {during_p99:.0f} ms during, {before_p99:.0f} ms before")
    if not report.completed:
        scenario.fail(f"the refresh failed: {report.why}")
    if failed:
        scenario.fail(f"{len(failed)} requests failed, first: {failed[0].status or failed[0].error}")
    if lowest is None or lowest < FLEET_SIZE:
        scenario.fail(f"only {lowest} servers in service at one point (desired {FLEET_SIZE})")
    if served != {"v2": FLEET_SIZE}:
        scenario.fail(f"the fleet runs {served} after the refresh")
    answered = {release_of(r) for r in load.responses[-20:] if r.ok}
    if answered != {"v2"}:
        scenario.fail(f"the last answers came from {answered}")
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2))
    return figures


def judge_bad(scenario: Scenario, fleet: RehearsalFleet, balancer: Balancer, alarms: AlarmEvaluator,
              settings: RolloutSettings, timing: Timing) -> None:
    five_xx = settings.alarm("HTTPCode_Target_5XX_Count").logical_id
    with Load(balancer.url, connections=LOAD_CONNECTIONS, pace_sec=LOAD_PACE_SEC) as load:
        alarms.reset()
        balancer.watch()
        report = refresh(fleet, "v3", settings, timing, alarms)
        rollback = refresh(fleet, "v2", settings, timing, None) if not report.completed else None
        balancer.unwatch()
    app_errors = [r for r in load.responses if r.status == 500 and app_answer(r) and release_of(r) == "v3"]
    failed = [r for r in load.responses if not r.ok and r not in app_errors]
    lowest = balancer.min_in_service
    scenario.facts.append(f"{len(load.responses)} requests, {len(failed)} failed, {len(app_errors)} answered 500 by v3")
    scenario.facts.append(f"fewest in service {lowest} of {FLEET_SIZE}")
    if report.completed:
        scenario.fail("the refresh to v3 completed: no alarm fired")
        return
    scenario.facts.append(f"{report.why} fired after {report.seconds:.0f} s ({report.replaced} replaced)")
    scenario.facts.append(f"back on v2 in {rollback.seconds:.0f} s" if rollback and rollback.completed else "no rollback")
    if report.why != five_xx:
        scenario.fail(f"the refresh failed on {report.why!r}, not the 5xx-rate alarm {five_xx}")
    if not rollback or not rollback.completed:
        scenario.fail(f"the rollback did not complete: {rollback.why if rollback else ''}")
    if failed:
        scenario.fail(f"{len(failed)} requests failed (no app answer), first: {failed[0].status or failed[0].error}")
    if not app_errors:
        scenario.fail("v3 answered no 500: the bad version never took traffic")
    if lowest is None or lowest < FLEET_SIZE:
        scenario.fail(f"only {lowest} servers in service at one point (desired {FLEET_SIZE})")
    served = fleet.versions_served()
    if served != {"v2": FLEET_SIZE}:
        scenario.fail(f"the fleet runs {served} after the rollback")


def judge_failing_release(scenario: Scenario, fleet: RehearsalFleet, balancer: Balancer, alarms: AlarmEvaluator,
                          settings: RolloutSettings, timing: Timing, db: ct.Container, config,
                          app_version: str) -> None:
    """v4's release command fails: its first server's cfn-init fails before the app starts, the refresh
    fails, and v2 keeps serving, untouched."""
    with Load(balancer.url, connections=LOAD_CONNECTIONS, pace_sec=LOAD_PACE_SEC) as load:
        alarms.reset()
        balancer.watch()
        report = refresh(fleet, "v4", settings, timing, alarms)
        balancer.unwatch()
    failed = [r for r in load.responses if not r.ok]
    scenario.facts.append(f"{len(load.responses)} requests, {len(failed)} failed")
    scenario.facts.append(f"fewest in service {balancer.min_in_service} of {FLEET_SIZE}")
    if report.completed:
        scenario.fail("the refresh to v4 completed although its release command fails")
        return
    scenario.facts.append(f"refresh failed after {report.seconds:.0f} s: {report.why.splitlines()[0]}")
    if "signal FAILURE" not in report.why:
        scenario.fail(f"the refresh failed, but not on the release: {report.why}")
    if failed:
        scenario.fail(f"{len(failed)} requests failed, first: {failed[0].status or failed[0].error}")
    if (balancer.min_in_service or 0) < FLEET_SIZE:
        scenario.fail(f"only {balancer.min_in_service} servers in service at one point")
    served = fleet.versions_served()
    if served != {"v2": FLEET_SIZE}:
        scenario.fail(f"the fleet runs {served}; v2 should have kept serving")
    runs = release_runs(db, config) or {}
    if runs.get(app_version):
        scenario.fail(f"a failed release was recorded as run for v4: {runs}")
    else:
        scenario.facts.append("v2 kept serving, v4's release not recorded")


# --- single servers (stages 1-2) -------------------------------------------------------------------


def rehearse_single_server(name: str, emulator: run.Emulator, root: Path, workdir: Path, first_index: int) -> Scenario:
    raw = synth.raw_config(name)
    config = synth.parse(name, raw)
    assembly = synth.synthesize([config], workdir / f"cdk.out.{name}")
    template = tpl.load(assembly, config.stack_name)
    wheels = run.wheelhouse(run.app_requirements(assembly, template))
    env = run.Environment(name, raw, config, assembly, emulator, root, wheels, first_index=first_index)
    app_server = next(s for s in env.servers if s.is_app_server)
    scenario = Scenario(f"single server stage {app_server.stage}")
    result = run.Result(name, app_server.kind)
    try:
        env.prepare_aws()
        for server in env.servers:
            if server.kind == "database server":
                env.attributes[(server.logical_id, "PrivateIp")] = env.address("db")
                volume = next(lid for lid, r in env.template["Resources"].items() if r["Type"] == "AWS::EC2::Volume")
                env.create_volume(volume)
                db = env.container("db", data_volume_mib=300)
                env.stage_server(db, server, env.assembly, env.template)
                if not run.boot_and_signal(db, server, result):
                    scenario.fail(f"the database server did not boot: {result.failures}")
                    return scenario
        app = env.container("app")
        env.stage_server(app, app_server, env.assembly, env.template)
        if not run.boot_and_signal(app, app_server, result) or result.failures:
            scenario.fail(f"the app server did not boot: {result.failures}")
            return scenario
        run.in_place_update(env, config, app, app_server, workdir, result)
        scenario.facts.extend(result.steps)
        scenario.failures.extend(result.failures)
        return scenario
    finally:
        if not os.environ.get("REHEARSAL_KEEP"):
            env.cleanup()


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rehearsal.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("fleet", "good", "single"),
                        help="fleet: the fleet scenarios; good: the fleet and the good rollout only (bench); "
                             "single: the single-server updates")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("deploy rehearsal: needs root (systemd-nspawn, network namespaces)")
        return 2
    try:
        for name in (FLEET_ENVIRONMENT, *SINGLE_SERVER_ENVIRONMENTS):
            synth.parse(name, synth.raw_config(name))
    except ConfigError as error:
        say(f"deploy rehearsal: {error}")
        return 2
    started = time.monotonic()
    lock, root = run.claim_machine("deploy rehearsal")  # noqa: F841 - the lock is held until exit
    workdir = STATE / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    ct.bridge_up()
    emulator = run.Emulator()
    scenarios: list[Scenario] = []
    try:
        if args.only != "single":
            try:
                rehearse_fleet(emulator, root, workdir, scenarios, only_good=args.only == "good")
            except Exception as error:  # noqa: BLE001 - reported as the scenario's failure
                crashed = Scenario("fleet")
                crashed.fail(repr(error))
                scenarios.append(crashed)
        if args.only in (None, "single"):
            for i, name in enumerate(SINGLE_SERVER_ENVIRONMENTS):
                try:
                    scenarios.append(rehearse_single_server(name, emulator, root, workdir, first_index=20 + 10 * i))
                except Exception as error:  # noqa: BLE001
                    crashed = Scenario(f"single server {name}")
                    crashed.fail(repr(error))
                    scenarios.append(crashed)
    finally:
        if not os.environ.get("REHEARSAL_KEEP"):
            emulator.stop()
            ct.bridge_down()
    for scenario in scenarios:
        say(scenario.line())
    say(f"stand-ins (not under test): HAProxy for the ALB, the rollout driven by rehearsal/refresh.py for "
        f"Auto Scaling's instance refresh, durations / {TIME_SCALE}, PostgreSQL in a "
        "container for RDS, moto for AWS's APIs")
    say(f"deploy rehearsal took {time.monotonic() - started:.0f} s")
    failed = sum(1 for s in scenarios if s.failures)
    say(f"deploy rehearsal: {len(scenarios)} scenarios, {failed} failed")
    return 1 if failed or not scenarios else 0


if __name__ == "__main__":
    sys.exit(main())
