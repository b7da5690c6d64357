"""The rollout settings a synthesized template declares, read back from the template itself.

One reader for everything that must roll out the way CloudFormation will: the tests compare it to
the props, and a deploy rehearsal can drive its fleet with the same numbers (batch size, min/max
healthy, warm-up, drain delay, bake time) and judge a version with the same alarm rules, so the
template and the rehearsal cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

GROUP = "AWS::AutoScaling::AutoScalingGroup"
TARGET_GROUP = "AWS::ElasticLoadBalancingV2::TargetGroup"
ALARM = "AWS::CloudWatch::Alarm"


@dataclass(frozen=True)
class AlarmRule:
    """One CloudWatch alarm as the template defines it: what it watches and when it fires."""

    logical_id: str
    metrics: tuple[str, ...]          # the metric names it reads (two for the 5xx rate)
    expression: str | None            # the metric-math expression, if any
    statistic: str                    # of the (first) metric
    period_seconds: int
    threshold: float
    comparison: str
    evaluation_periods: int
    datapoints_to_alarm: int
    treat_missing_data: str

    def fires(self, values: Sequence[float | None]) -> bool:
        """Whether the latest `evaluation_periods` values (oldest first; None = no data) put it in ALARM.

        Only what these alarms use: greater-than comparisons, missing data as not breaching.
        """
        if self.comparison != "GreaterThanThreshold" or self.treat_missing_data != "notBreaching":
            raise NotImplementedError(f"{self.logical_id}: {self.comparison}, missing data {self.treat_missing_data}")
        window = list(values)[-self.evaluation_periods:]
        return sum(1 for v in window if v is not None and v > self.threshold) >= self.datapoints_to_alarm


@dataclass(frozen=True)
class RolloutSettings:
    """The instance refresh of the app server group, and what it leans on in the load balancer."""

    strategy: str
    min_healthy_percent: int
    max_healthy_percent: int
    warmup_seconds: int
    bake_seconds: int
    min_servers: int
    max_servers: int
    desired_in_template: bool         # a DesiredCapacity would reset a scaled fleet on each deploy
    drain_seconds: int                # the target group's deregistration delay
    health_check_path: str
    health_check_interval_seconds: int
    healthy_threshold: int
    unhealthy_threshold: int
    alarms: tuple[AlarmRule, ...]

    def batch_size(self, desired: int) -> int:
        """How many new servers launch at once for a fleet of `desired`: the room above 100 % that
        max_healthy_percent leaves (at least one), never taking an old one out before its
        replacement is ready while min_healthy_percent is 100. This is our reading of the
        percentages for a rehearsal; Auto Scaling documents no exact rounding."""
        return max(1, math.floor(desired * (self.max_healthy_percent - 100) / 100))

    def min_in_service(self, desired: int) -> int:
        return math.ceil(desired * self.min_healthy_percent / 100)

    def alarm(self, metric_name: str) -> AlarmRule:
        """The rollout alarm that reads `metric_name` (e.g. HTTPCode_Target_5XX_Count, UnHealthyHostCount)."""
        (found,) = [a for a in self.alarms if metric_name in a.metrics]
        return found


def _one(template: dict, kind: str) -> tuple[str, dict]:
    found = [(lid, r) for lid, r in template["Resources"].items() if r["Type"] == kind]
    if len(found) != 1:
        raise ValueError(f"expected one {kind} in the template, found {len(found)}")
    return found[0]


def _alarm_rule(logical_id: str, props: dict) -> AlarmRule:
    if "Metrics" in props:
        stats = [m["MetricStat"] for m in props["Metrics"] if "MetricStat" in m]
        (expression,) = [m["Expression"] for m in props["Metrics"] if "Expression" in m]
        metrics = tuple(s["Metric"]["MetricName"] for s in stats)
        statistic, period = stats[0]["Stat"], stats[0]["Period"]
    else:
        expression, metrics = None, (props["MetricName"],)
        statistic, period = props.get("Statistic") or props["ExtendedStatistic"], props["Period"]
    return AlarmRule(logical_id=logical_id, metrics=metrics, expression=expression, statistic=statistic,
                     period_seconds=int(period), threshold=float(props["Threshold"]),
                     comparison=props["ComparisonOperator"], evaluation_periods=int(props["EvaluationPeriods"]),
                     datapoints_to_alarm=int(props.get("DatapointsToAlarm", props["EvaluationPeriods"])),
                     treat_missing_data=props.get("TreatMissingData", "missing"))


def rollout_settings(template: dict) -> RolloutSettings:
    """Parse the app server group's instance refresh, its alarms and the target group of a stage 3-4 template."""
    _, group = _one(template, GROUP)
    refresh = group.get("UpdatePolicy", {}).get("AutoScalingInstanceRefresh")
    if refresh is None:
        raise ValueError("the app server group has no AutoScalingInstanceRefresh update policy")
    preferences = refresh.get("Preferences", {})
    alarm_ids = [ref["Ref"] for ref in preferences.get("AlarmSpecification", {}).get("Alarms", [])]
    alarms = tuple(_alarm_rule(lid, template["Resources"][lid]["Properties"]) for lid in alarm_ids)
    _, target_group = _one(template, TARGET_GROUP)
    tg = target_group["Properties"]
    attributes = {a["Key"]: a["Value"] for a in tg.get("TargetGroupAttributes", [])}
    props = group["Properties"]
    return RolloutSettings(
        strategy=refresh["Strategy"], min_healthy_percent=int(preferences["MinHealthyPercentage"]),
        max_healthy_percent=int(preferences["MaxHealthyPercentage"]),
        warmup_seconds=int(preferences["InstanceWarmup"]), bake_seconds=int(preferences.get("BakeTime", 0)),
        min_servers=int(props["MinSize"]), max_servers=int(props["MaxSize"]),
        desired_in_template="DesiredCapacity" in props,
        drain_seconds=int(attributes.get("deregistration_delay.timeout_seconds", 300)),
        health_check_path=tg["HealthCheckPath"], health_check_interval_seconds=int(tg["HealthCheckIntervalSeconds"]),
        healthy_threshold=int(tg["HealthyThresholdCount"]), unhealthy_threshold=int(tg["UnhealthyThresholdCount"]),
        alarms=alarms)
