"""Bad config ends in one clear message naming the environment, the field and what is allowed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tomllib

import pytest
from stack_support import ROOT

from envconfig import ConfigError, load_environment, load_environments
from envconfig.loader import CONFIG_DIR, parse_environment

PROD = tomllib.loads((CONFIG_DIR / "prod.toml").read_text())
DEV = tomllib.loads((CONFIG_DIR / "dev.toml").read_text())


def _with(base: dict, path: str, value) -> dict:
    raw = copy.deepcopy(base)
    *sections, key = path.split(".")
    target = raw
    for section in sections:
        target = target.setdefault(section, {})
    if value is _DELETE:
        target.pop(key, None)
    else:
        target[key] = value
    return raw


_DELETE = object()

# (base, field path, bad value, the field named in the message, a word of what is allowed)
BAD_VALUES = [
    (PROD, "stage", 5, "stage", "1 (single server)"),
    (PROD, "stage", "four", "stage", "allowed"),
    (PROD, "region", "seoul", "region", "ap-northeast-2"),
    (PROD, "account", "12345", "account", "12-digit"),
    (PROD, "network.vpc_cidr", "10.0.0.0/33", "network.vpc_cidr", "CIDR"),
    (PROD, "network.vpc_cidr", "10.0.0.1/16", "network.vpc_cidr", "host bits zero"),
    (PROD, "network.vpc_cidr", "10.0.0.0/8", "network.vpc_cidr", "/16 to /24"),
    (PROD, "network.vpc_cidr", "8.8.0.0/16", "network.vpc_cidr", "private range"),
    (PROD, "network.availability_zones", ["ap-northeast-2a", "us-east-1a"], "network.availability_zones",
     "ap-northeast-2a, ap-northeast-2b"),
    (PROD, "network.availability_zones", ["ap-northeast-2z", "ap-northeast-2a"], "network.availability_zones",
     "is not a zone of region"),
    (PROD, "network.availability_zones", ["ap-northeast-2a", "ap-northeast-2a"], "network.availability_zones",
     "listed twice"),
    (PROD, "network.nat_gateways", 3, "network.nat_gateways", "0 to 2"),
    (PROD, "network.nat_gateways", 0, "network.nat_gateways", "1 or more"),
    (PROD, "servers.min_servers", 5, "servers", "min_servers (5) <= desired_servers (2)"),
    (PROD, "servers.processes_per_server", 0, "servers.processes_per_server", "1 to 64"),
    (PROD, "servers.instance_type", "x9.large", "servers.instance_type", "unknown instance family 'x9'"),
    (PROD, "servers.instance_type", "t3.huge", "servers.instance_type", "unknown size 'huge'"),
    (PROD, "servers.instance_type", "t4g.medium", "servers.instance_type", "an arm64 instance family"),
    (PROD, "servers.architecture", "sparc", "servers.architecture", "x86_64, arm64"),
    (PROD, "servers.ami", {"us-east-1": "ami-0123456789abcdef0"}, "servers.ami", "no AMI for region"),
    (PROD, "servers.ami", "ubuntu", "servers.ami", "al2023"),
    (PROD, "database.kind", "mysql", "database.kind", "ec2, rds"),
    (DEV, "database.kind", "rds", "database.kind", "stage 1 runs PostgreSQL on the app server"),
    (PROD, "access.admin_cidrs", ["0.0.0.0/0"], "access.admin_cidrs", "whole internet"),
    (PROD, "access.admin_cidrs", ["203.0.113.7/24"], "access.admin_cidrs", "host bits zero"),
    (PROD, "access.key_pair", "maybe", "access.key_pair", "none, create, existing"),
    (PROD, "access.key_pair", "existing", "access.key_pair_name", "is required"),
    (PROD, "load_balancer.certificate_arn", "arn:aws:iam::1:cert", "load_balancer.certificate_arn", "ACM"),
    (PROD, "load_balancer.deregistration_delay_seconds", 9000, "load_balancer.deregistration_delay_seconds",
     "0 to 3600"),
    (PROD, "operations.removal_policy", "keep", "operations.removal_policy", "destroy, retain, snapshot"),
    (PROD, "operations.log_retention_days", 10, "operations.log_retention_days", "allowed"),
    (PROD, "operations.alarm_email", "ops-at-example", "operations.alarm_email", "email"),
    (PROD, "servers.colour", "blue", "servers.colour", "unknown field"),
    (DEV, "servers.desired_servers", 2, "servers", "stage 1 runs exactly one app server"),
    (DEV, "servers.processes_per_server", 4, "servers.processes_per_server", "stage 4 runs several"),
    (PROD, "pipeline.enabled", True, "pipeline", "needs connection_arn and repository"),
]


@pytest.mark.parametrize("base,path,value,field,allowed", BAD_VALUES,
                         ids=[f"{p}={v!r}"[:60] for _, p, v, _, _ in BAD_VALUES])
def test_bad_value_names_environment_field_and_what_is_allowed(base, path, value, field, allowed):
    with pytest.raises(ConfigError) as err:
        parse_environment("prod" if base is PROD else "dev", _with(base, path, value))
    message = str(err.value)
    env = "prod" if base is PROD else "dev"
    assert any(line.startswith(f"environment {env!r}: {field}") and allowed in line for line in err.value.problems), \
        message


def test_every_problem_in_a_file_is_reported_at_once():
    raw = _with(_with(PROD, "stage", 9), "network.vpc_cidr", "nonsense")
    with pytest.raises(ConfigError) as err:
        parse_environment("prod", raw)
    assert len(err.value.problems) >= 2


def test_unknown_environment_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"environment 'qa': no config file .*known environments: dev, prod, staging"):
        load_environment("qa")


def test_malformed_environment_name():
    with pytest.raises(ConfigError, match="lowercase letters"):
        load_environment("../etc/passwd")


def test_toml_syntax_error_is_named(tmp_path):
    (tmp_path / "broken.toml").write_text("stage = 1\n[network\n")
    with pytest.raises(ConfigError, match=r"environment 'broken': broken.toml is not valid TOML: .*line 2"):
        load_environment("broken", tmp_path)


def test_overlapping_vpc_ranges_between_environments(tmp_path):
    for name in ("one", "two"):
        (tmp_path / f"{name}.toml").write_text((CONFIG_DIR / "dev.toml").read_text())
    with pytest.raises(ConfigError, match=r"environment 'two': network.vpc_cidr: 10.10.0.0/16 overlaps"):
        load_environments(None, tmp_path)


def test_shipped_configs_load_with_the_promised_defaults():
    configs = {c.name: c for c in load_environments()}
    assert set(configs) == {"dev", "staging", "prod"}
    assert configs["dev"].stage in (1, 2) and configs["dev"].network.nat_gateways == 0
    assert configs["prod"].stage == 4 and len(configs["prod"].network.availability_zones) >= 2
    assert all(c.region == "ap-northeast-2" for c in configs.values())
    # processes per server default to the instance's vCPUs (t3.medium: 2)
    assert configs["prod"].servers.processes_per_server == 2


def _run_app(tmp_path, context: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path / "out"), "CDK_CONTEXT_JSON": json.dumps(context),
           "PATH": f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ['PATH']}"}
    (tmp_path / "out").mkdir()
    return subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("context,expected", [
    ({"env": "qa"}, "environment 'qa': no config file"),
    ({"env": "dev", "target": "moon"}, "context target: got 'moon'; allowed: aws, emulator"),
])
def test_app_exits_with_a_clear_message_no_traceback_and_nothing_synthesized(tmp_path, context, expected):
    result = _run_app(tmp_path, context)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list((tmp_path / "out").iterdir()) == []
