"""The deploy rehearsal's rollout logic, fed the synthesized templates: the same numbers drive the
rehearsal's HAProxy and instance refresh, so the template and the rehearsal cannot drift apart.
The rehearsal itself (real servers, under load) runs in `make rehearse-deploy`."""

from __future__ import annotations

import math

import pytest

from rehearsal import synth
from rehearsal.balancer import haproxy_config
from rehearsal.refresh import TIME_SCALE, AlarmEvaluator, Period, Timing, refresh
from tools.rollout import rollout_settings

LOAD_BALANCED = ("staging", "prod")


@pytest.fixture(scope="module")
def settings(synthesized_templates):
    return {name: rollout_settings(synthesized_templates[name]) for name in LOAD_BALANCED}


@pytest.mark.parametrize("name", LOAD_BALANCED)
def test_rehearsal_timing_and_balancer_come_from_the_template(synthesized_templates, name):
    template = synthesized_templates[name]
    s = rollout_settings(template)
    timing = Timing.of(s)
    (group,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"]
    preferences = group["UpdatePolicy"]["AutoScalingInstanceRefresh"]["Preferences"]
    assert timing.warmup == preferences["InstanceWarmup"] / TIME_SCALE
    assert timing.bake == preferences["BakeTime"] / TIME_SCALE
    (target_group,) = [r["Properties"] for r in template["Resources"].values()
                       if r["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup"]
    drain = {a["Key"]: a["Value"] for a in target_group["TargetGroupAttributes"]}["deregistration_delay.timeout_seconds"]
    assert timing.drain == int(drain) / TIME_SCALE
    config = haproxy_config(s, timing, {"m0": "10.213.0.13"}, port=8080, service_port=80, admin_socket="/x.sock")
    interval_ms = round(target_group["HealthCheckIntervalSeconds"] * 1000 / TIME_SCALE)
    assert f"option httpchk GET {target_group['HealthCheckPath']}\n" in config
    assert (f"inter {interval_ms} rise {target_group['HealthyThresholdCount']} "
            f"fall {target_group['UnhealthyThresholdCount']}") in config
    assert "retries 0" in config  # every failed request reaches the client, as through an ALB
    assert "server m0 10.213.0.13:80 check disabled" in config


class FakeMember:
    def __init__(self, version: str) -> None:
        self.version = version


class FakeFleet:
    """Servers that come up at once; records how many are in service after every step."""

    def __init__(self, desired: int, *, failing_version: str | None = None) -> None:
        self.in_service = [FakeMember("v1") for _ in range(desired)]
        self.failing_version = failing_version
        self.counts: list[int] = [desired]
        self.peak = desired
        self.terminated: list[FakeMember] = []

    def members(self):
        return list(self.in_service)

    def launch(self, version, count):
        new = [FakeMember(version) for _ in range(count)]
        self.in_service += new
        self.peak = max(self.peak, len(self.in_service))
        return new

    def wait_in_service(self, members, *, abort):
        if members[0].version == self.failing_version:
            return "m9 (v3): cfn-init failed, signal FAILURE"
        return abort()

    def retire(self, member):
        self.in_service.remove(member)
        self.counts.append(len(self.in_service))

    def terminate(self, member):
        self.retire(member)
        self.terminated.append(member)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.001)


@pytest.mark.parametrize("desired", [2, 3, 6])
def test_refresh_launches_before_it_terminates_and_never_drops_below_desired(settings, desired):
    s = settings["prod"]
    fleet, clock = FakeFleet(desired), FakeClock()
    report = refresh(fleet, "v2", s, Timing.of(s), AlarmEvaluator(s.alarms), sleep=clock.sleep, clock=clock)
    assert report.completed and report.replaced == desired
    assert {m.version for m in fleet.members()} == {"v2"} and len(fleet.members()) == desired
    assert min(fleet.counts) >= math.ceil(desired * s.min_healthy_percent / 100)
    # Never more than max healthy allows above desired (at least one server at a time).
    assert fleet.peak - desired == max(1, math.floor(desired * (s.max_healthy_percent - 100) / 100))
    assert len(report.batch_seconds) == math.ceil(desired / s.batch_size(desired))
    # Each batch waits out the warm-up, and the refresh the bake time after the last one.
    assert report.seconds >= len(report.batch_seconds) * Timing.of(s).warmup + Timing.of(s).bake


def test_an_alarm_during_the_refresh_stops_it_and_the_rollback_restores_the_old_version(settings):
    s = settings["prod"]
    five_xx = s.alarm("HTTPCode_Target_5XX_Count")
    alarms, clock = AlarmEvaluator(s.alarms), FakeClock()
    fleet = FakeFleet(3)

    class FiresOnceV3Serves:
        def firing(self):
            if any(m.version == "v3" for m in fleet.members()) and not alarms.firing():
                for _ in range(five_xx.datapoints_to_alarm):
                    alarms.add(Period(target_5xx=30, requests=100))
            return alarms.firing()

    report = refresh(fleet, "v3", s, Timing.of(s), FiresOnceV3Serves(), sleep=clock.sleep, clock=clock)
    assert not report.completed and report.why == five_xx.logical_id
    assert len(fleet.members()) == 3 and {m.version for m in fleet.members()} == {"v1"}
    assert [m.version for m in fleet.terminated] == ["v3"]
    rollback = refresh(fleet, "v1", s, Timing.of(s), None, sleep=clock.sleep, clock=clock)
    assert rollback.completed and rollback.replaced == 0  # nothing of v3 was left in service


def test_a_server_that_never_comes_up_fails_the_refresh_and_the_old_fleet_keeps_serving(settings):
    s = settings["staging"]
    fleet, clock = FakeFleet(2, failing_version="v3"), FakeClock()
    report = refresh(fleet, "v3", s, Timing.of(s), AlarmEvaluator(s.alarms), sleep=clock.sleep, clock=clock)
    assert not report.completed and "signal FAILURE" in report.why
    assert [m.version for m in fleet.members()] == ["v1", "v1"]


def test_the_alarm_rules_fire_as_the_template_declares(settings):
    s = settings["prod"]
    five_xx = s.alarm("HTTPCode_Target_5XX_Count")
    unhealthy = s.alarm("UnHealthyHostCount")
    just_over = five_xx.threshold + 1
    alarms = AlarmEvaluator(s.alarms)
    for _ in range(five_xx.datapoints_to_alarm - 1):
        alarms.add(Period(target_5xx=int(just_over), requests=100))
    assert alarms.firing() is None
    alarms.add(Period(target_5xx=int(five_xx.threshold), requests=100))  # at the threshold: not over it
    assert alarms.firing() is None
    alarms.add(Period(target_5xx=int(just_over), requests=100))
    alarms.add(Period(target_5xx=int(just_over), requests=100))
    assert alarms.firing() == five_xx.logical_id

    alarms.reset()
    alarms.add(Period(requests=0))  # no traffic is no data, not a breach
    assert alarms.firing() is None
    for _ in range(unhealthy.datapoints_to_alarm):
        alarms.add(Period(requests=100, unhealthy_max=1))
    assert alarms.firing() == unhealthy.logical_id


@pytest.mark.parametrize("source", ["app_tier/sample_app", "app_tier/sample_asgi"])
def test_the_bad_version_answers_500_on_its_page_and_stays_healthy(tmp_path, source):
    failing = synth.changed_app(synth.REPO / source, tmp_path, release="v3", failing=True) / "app.py"
    text = failing.read_text()
    page = text.index('"release": "v3"')
    assert text.rindex(synth.FAILING_STATUS, 0, page) > text.rindex(synth.OK_STATUS, 0, page)
    assert synth.HEALTHY in text  # the health check still passes: only the alarm can catch it
