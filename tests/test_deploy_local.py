"""`cdk deploy` for real to a fresh local AWS emulator, then the post-deploy checks.

Deploys `dev` (stage 1) and `staging` (stage 3, load-balanced) with the real CDK CLI to moto's
server on a free loopback port, the way `make deploy-local` does, and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest

from envconfig import load_environments
from tools.checks.deploy_checks import FAIL, NOT_SHOWN, PASS, verify
from tools.local_aws import cli as local_aws
from tools.local_aws import emulator as emu

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

ENVIRONMENTS = ("dev", "staging")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("emulator")
    port = emu.free_port()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = local_aws.run("all", ",".join(ENVIRONMENTS), port, state_dir, state_dir / "cdk.out")
    emulator = emu.running(state_dir)
    try:
        yield {"code": code, "printed": printed.getvalue(), "emulator": emulator, "state_dir": state_dir,
               "port": port, "configs": {c.name: c for c in load_environments(list(ENVIRONMENTS))}}
    finally:
        emu.stop(state_dir)


def _reports(deployed, **replaced):
    configs = [deployed["configs"][name] for name in ENVIRONMENTS]
    configs = [replaced.get(c.name, c) for c in configs]
    return {r.environment: r for r in verify(deployed["emulator"].session(), configs, emulator=True)}


def _status(report, name_start: str) -> str:
    matches = [c for c in report.checks if c.name.startswith(name_start)]
    assert matches, f"{report.environment} has no check starting {name_start!r}: {[c.name for c in report.checks]}"
    return matches[0].status


def test_deploy_local_exits_zero_and_prints_the_endpoint(deployed):
    assert deployed["code"] == 0, deployed["printed"]
    assert f"AWS_ENDPOINT_URL=http://localhost:{deployed['port']}" in deployed["printed"]
    assert "0 failed" in deployed["printed"]
    assert deployed["emulator"] is not None and deployed["emulator"].port == deployed["port"]


def test_every_stack_is_complete_and_no_check_fails(deployed):
    for report in _reports(deployed).values():
        assert report.status == "CREATE_COMPLETE"
        assert not report.failed, report.failed
        assert report.counts()[PASS] >= 10
        assert report.url.startswith("http://")


@pytest.mark.parametrize("environment, check", [
    ("dev", "VPC CIDR"),
    ("dev", "subnets in the configured AZs"),
    ("dev", "NAT gateways"),
    ("dev", "database port 5432 not reachable"),
    ("dev", "no ingress from anywhere except HTTP/HTTPS on the app server"),
    ("dev", "SSH (22) closed"),
    ("dev", "app server: type t3.micro"),
    ("dev", "app server: launch template requires IMDSv2"),
    ("dev", "app server: user data runs the bootstrap"),
    ("staging", "subnets in the configured AZs"),
    ("staging", "NAT gateways"),
    ("staging", "database port 5432 only from the app servers' SG"),
    ("staging", "app port 80 only from the ALB's SG"),
    ("staging", "no ingress from anywhere except HTTP/HTTPS on the ALB"),
    ("staging", "SSH (22) closed"),
    ("staging", "Auto Scaling group min/max, desired between them"),
    ("staging", "Auto Scaling group instance count"),
    ("staging", "launch template: type t3.small"),
    ("staging", "launch template: user data runs the bootstrap"),
    ("staging", "app servers: launch template requires IMDSv2"),
    ("staging", "ALB: internet-facing"),
    ("staging", "listeners: HTTP 80 forwards"),
    ("staging", "target group health check"),
    ("staging", "Auto Scaling group registers with the target group"),
])
def test_the_issue_checks_pass(deployed, environment, check):
    assert _status(_reports(deployed)[environment], check) == PASS


def test_what_the_emulator_cannot_show_is_reported_not_passed(deployed):
    staging = _reports(deployed)["staging"]
    assert "AWS::SecretsManager::Secret" in staging.skipped_types
    assert _status(staging, "app servers: instances require IMDSv2") == NOT_SHOWN
    assert _status(staging, "target group deregistration delay") == NOT_SHOWN


def test_checks_fail_when_the_deployment_differs_from_the_config(deployed):
    staging = deployed["configs"]["staging"]
    wrong = dataclasses.replace(
        staging,
        servers=dataclasses.replace(staging.servers, max_servers=5, instance_type="t3.large"),
        app=dataclasses.replace(staging.app, health_path="/elsewhere"),
        network=dataclasses.replace(staging.network, nat_gateways=2))
    report = _reports(deployed, staging=wrong)["staging"]
    failed = {c.name.split(":")[0] for c in report.checks if c.status == FAIL}
    # (the instance count is held to the group's own desired capacity, which scaling owns: not a config matter)
    assert {"Auto Scaling group min/max, desired between them", "launch template",
            "target group health check", "NAT gateways", "app servers"} <= failed


def test_second_deploy_reuses_the_emulator_and_changes_nothing(deployed):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = local_aws.run("all", ",".join(ENVIRONMENTS), None, deployed["state_dir"],
                             deployed["state_dir"] / "cdk.out")
    assert code == 0, printed.getvalue()
    assert f"reusing the one on port {deployed['port']}" in printed.getvalue()
    log = Path(deployed["state_dir"], "cdk-deploy.log").read_text()
    assert log.count("(no changes)") == len(ENVIRONMENTS), log[-2000:]


def test_down_stops_the_emulator(tmp_path):
    emulator, started = emu.start(tmp_path, emu.free_port())
    assert started and emu.is_healthy(emulator.port)
    assert emu.stop(tmp_path) == emulator
    assert not emu.is_healthy(emulator.port, timeout_sec=0.5)
    assert emu.running(tmp_path) is None


def test_a_failed_deploy_names_the_emulator_exception(tmp_path):
    log = tmp_path / "emulator.log"
    log.write_text("before\n")
    since = log.stat().st_size
    with open(log, "a") as out:
        out.write('  File "moto/cloudformation/parsing.py", line 158, in clean_json\n'
                  "AttributeError: 'FakeTargetGroup' object has no attribute 'get_cfn_attribute'\n"
                  '127.0.0.1 - - "POST / HTTP/1.1" 500 -\n')
    message = local_aws._emulator_errors(log, since)
    assert "AttributeError: 'FakeTargetGroup' object has no attribute 'get_cfn_attribute'" in message
    assert local_aws._emulator_errors(log, log.stat().st_size) == ""
