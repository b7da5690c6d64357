"""The instance refresh a template declares, played step by step against a fleet.

Pure logic, no containers: a `Fleet` launches, watches and retires servers, and an `AlarmWatch`
says whether a rollout alarm is in ALARM. The deploy rehearsal (rehearsal/deploy.py) drives real
servers behind HAProxy with it; the tests drive a fake fleet. Every number comes from the
template through tools.rollout.RolloutSettings, so the rehearsal cannot drift from the template:
the counts (batch size, min/max healthy, health-check thresholds, alarm datapoints) as declared,
the durations (warm-up, bake, drain, health-check interval, alarm period) divided by TIME_SCALE.

What CloudFormation's instance refresh does (launch before terminate, min healthy 100 %):
  for each batch: launch `batch_size` servers at the new version; each takes traffic once the load
  balancer's health check passes; wait the warm-up; then drain (deregistration delay) and terminate
  as many old servers. After the last batch, bake. An alarm in ALARM at any point, or a server that
  never becomes healthy, fails the refresh; the rollback is the same refresh back to the old version
  (alarms are not checked during a rollback, as CloudFormation does not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tools.rollout import AlarmRule, RolloutSettings

# Template seconds per rehearsal second. A 5-minute bake becomes 15 s, an alarm's 60 s period 3 s.
TIME_SCALE = 20
# The 5xx-rate alarm's metric math, as the template writes it; anything else is a new rule to model here.
FIVE_XX_EXPRESSION = "IF(requests > 0, 100 * FILL(errors, 0) / requests, 0)"


@dataclass(frozen=True)
class Timing:
    """The template's durations, scaled for the rehearsal (seconds)."""

    scale: int
    warmup: float
    bake: float
    drain: float
    health_interval: float
    alarm_period: float

    @classmethod
    def of(cls, settings: RolloutSettings, scale: int = TIME_SCALE) -> Timing:
        periods = {a.period_seconds for a in settings.alarms}
        if len(periods) != 1:
            raise ValueError(f"the rollout alarms have different periods {sorted(periods)}: one period is modelled")
        return cls(scale=scale, warmup=settings.warmup_seconds / scale, bake=settings.bake_seconds / scale,
                   drain=settings.drain_seconds / scale,
                   health_interval=settings.health_check_interval_seconds / scale,
                   alarm_period=periods.pop() / scale)


@dataclass
class Period:
    """What the load balancer counted in one alarm period: the alarms' inputs."""

    target_5xx: int = 0          # HTTPCode_Target_5XX_Count: 5xx answered by servers
    requests: int = 0            # RequestCount
    unhealthy_max: int = 0       # UnHealthyHostCount, Maximum over the period


def alarm_value(rule: AlarmRule, period: Period) -> float | None:
    """The value the alarm's metric (or metric math) takes for one period; None: no data."""
    if "HTTPCode_Target_5XX_Count" in rule.metrics:
        if rule.expression != FIVE_XX_EXPRESSION:
            raise NotImplementedError(f"{rule.logical_id}: expression {rule.expression!r} is not modelled")
        return 100 * period.target_5xx / period.requests if period.requests else 0.0
    if rule.metrics == ("UnHealthyHostCount",) and rule.statistic == "Maximum":
        return float(period.unhealthy_max)
    raise NotImplementedError(f"{rule.logical_id}: {rule.metrics} {rule.statistic} is not modelled")


class AlarmEvaluator:
    """The template's rollout alarms over the periods seen so far (AlarmRule.fires on each)."""

    def __init__(self, rules: tuple[AlarmRule, ...]) -> None:
        self.rules = rules
        self.periods: list[Period] = []
        self.fired: str | None = None

    def add(self, period: Period) -> None:
        self.periods.append(period)
        for rule in self.rules:
            if not self.fired and rule.fires([alarm_value(rule, p) for p in self.periods]):
                self.fired = rule.logical_id

    def reset(self) -> None:
        """A new deploy: CloudFormation looks at the alarms' state from the refresh's start."""
        self.periods, self.fired = [], None

    def firing(self) -> str | None:
        return self.fired


class Member(Protocol):
    version: str


class Fleet(Protocol):
    def members(self) -> list: ...
    def launch(self, version: str, count: int) -> list: ...
    def wait_in_service(self, members: list, *, abort: Callable[[], str | None]) -> str | None: ...
    def retire(self, member) -> None: ...
    def terminate(self, member) -> None: ...


class AlarmWatch(Protocol):
    def firing(self) -> str | None: ...


@dataclass
class RefreshReport:
    target: str
    completed: bool = False
    why: str = ""                       # why it failed: the alarm's logical ID, or the server that did not come up
    replaced: int = 0
    batch_size: int = 0
    seconds: float = 0.0
    batch_seconds: list[float] = field(default_factory=list)


def refresh(fleet: Fleet, target: str, settings: RolloutSettings, timing: Timing, alarms: AlarmWatch | None,
            *, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> RefreshReport:
    """Replace every member not at `target`, batch by batch, launch before terminate.
    `alarms`: None for a rollback (not judged by alarms)."""
    started = clock()
    desired = len(fleet.members())
    report = RefreshReport(target=target, batch_size=settings.batch_size(desired))
    if settings.min_healthy_percent != 100:
        raise NotImplementedError("only launch-before-terminate (min healthy 100 %) is modelled")

    def alarm() -> str | None:
        return alarms.firing() if alarms else None

    def wait(seconds: float) -> str | None:
        deadline = clock() + seconds
        while clock() < deadline:
            if alarm():
                return alarm()
            sleep(min(0.1, max(0.0, deadline - clock())))
        return alarm()

    while True:
        old = [m for m in fleet.members() if m.version != target]
        if not old:
            break
        batch_started = clock()
        new = fleet.launch(target, min(report.batch_size, len(old)))
        why = fleet.wait_in_service(new, abort=alarm) or wait(timing.warmup)
        if why:
            for member in new:
                fleet.terminate(member)
            report.why, report.seconds = why, clock() - started
            return report
        for member in old[:len(new)]:
            fleet.retire(member)
        report.replaced += len(new)
        report.batch_seconds.append(clock() - batch_started)
    if alarms:
        why = wait(timing.bake)
        if why:
            report.why, report.seconds = why, clock() - started
            return report
    report.completed, report.seconds = True, clock() - started
    return report
