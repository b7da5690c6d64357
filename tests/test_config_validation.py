"""Bad config ends in one clear message naming the environment, the field and what is allowed."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
from pydantic import ValidationError
from stack_support import ROOT

from app_tier import render
from envconfig import ConfigError, Stage, load_environment, load_environments, model
from envconfig.loader import CONFIG_DIR, parse_environment
from envconfig.model import REPO_ROOT, AppSecretRef
from envconfig.validation import Section

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
    (PROD, "servers.max_servers", 1, "servers", "min_servers (2) <= max_servers (1)"),
    (PROD, "servers.desired_servers", 3, "servers.desired_servers", "equal to min_servers (raise min_servers"),
    (_with(PROD, "servers.desired_servers", 2), "servers.min_servers", 3, "servers.desired_servers",
     "starts at min_servers (3)"),
    (PROD, "app.processes_per_server", 0, "app.processes_per_server", "1 to 64"),
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
    (DEV, "servers.max_servers", 2, "servers", "stage 1 runs exactly one app server"),
    (DEV, "app.processes_per_server", 4, "app.processes_per_server", "stage 4 runs several"),
    (PROD, "pipeline.enabled", True, "pipeline", "needs connection_arn and repository"),
    # fields that moved (issue 9): an old file is told where they live now
    (PROD, "servers.processes_per_server", 2, "servers.processes_per_server", "moved to app.processes_per_server"),
    (PROD, "load_balancer.health_check_path", "/health", "load_balancer.health_check_path", "moved to app.health_path"),
    # [app]
    (PROD, "app.source", "no/such/dir", "app.source", "not a directory"),
    (PROD, "app.source", "envconfig", "app.source", "has no requirements.txt"),
    (PROD, "app.source", 5, "app.source", "the app's directory"),
    (PROD, "app.start_command", "uvicorn app:app --host {host} --port {port}", "app.start_command",
     "does not serve the listening socket systemd passes as file descriptor 3"),
    (PROD, "app.start_command", "run-my-app", "app.start_command", "{fd} (e.g. uvicorn --fd {fd}) or gunicorn"),
    (PROD, "app.start_command", "run --bind {bind}\nrm -rf /", "app.start_command", "got a command of 2 lines"),
    (PROD, "app.start_command", "run --bind {bind} --user {user}", "app.start_command", "with {user}"),
    (PROD, "app.start_command", "run --port {port!r}", "app.start_command", "with {port!r}"),
    (PROD, "app.start_command", "run --bind {bind", "app.start_command", "for a literal brace"),
    (PROD, "app.release_command", "migrate\nrm -rf /", "app.release_command", "got a command of 2 lines"),
    (PROD, "app.release_command", "migrate --port {port}", "app.release_command", "placeholder {app_root}"),
    (PROD, "app.release_command", "migrate {app_root", "app.release_command", "for a literal brace"),
    (PROD, "app.release_command", "   ", "app.release_command", "only spaces"),
    (PROD, "app.release_command", 5, "app.release_command", "one shell command line"),
    (PROD, "app.health_path", "health", "app.health_path", "a path starting with /"),
    (PROD, "app.health_path", "/health check", "app.health_path", "a path starting with /"),
    (PROD, "app.packages", "git", "app.packages", "a list of Amazon Linux 2023 package names"),
    (PROD, "app.packages", ["git", "rm -rf"], "app.packages[1]", "package names"),
    (PROD, "app.processes_per_server", 65, "app.processes_per_server", "1 to 64"),
    (PROD, "app.processes_per_server", "2", "app.processes_per_server", "a whole number"),
    (PROD, "app.environment", "MODE=x", "app.environment", "a table of NAME"),
    (PROD, "app.environment", {"mode": "x"}, "app.environment.mode", "capital letters"),
    (PROD, "app.environment", {"1ST": "x"}, "app.environment.1ST", "not starting with a digit"),
    (PROD, "app.environment", {"DB_HOST": "elsewhere"}, "app.environment.DB_HOST", "which the platform sets"),
    (PROD, "app.environment", {"PATH": "/tmp"}, "app.environment.PATH", "which the platform sets"),
    (PROD, "app.environment", {"STRIPE_API_KEY": "sk_live_x"}, "app.environment.STRIPE_API_KEY",
     "belongs in [app.secrets] (read at boot, never written into the template)"),
    (PROD, "app.environment", {"SESSION_SECRET": "x"}, "app.environment.SESSION_SECRET", "belongs in [app.secrets]"),
    (PROD, "app.environment", {"PORT": 8080}, "app.environment.PORT", "a string"),
    (PROD, "app.environment", {"MOTD": "a\nb"}, "app.environment.MOTD", "a single-line string"),
    (PROD, "app.secrets", {"API_TOKEN": "plain"}, "app.secrets.API_TOKEN", "secretsmanager"),
    (PROD, "app.secrets", {"API_TOKEN": {"ssm": "/a", "secretsmanager": "b"}}, "app.secrets.API_TOKEN",
     "{ secretsmanager = \"name-or-ARN\", key = \"json-key\" } (key optional) or { ssm = \"/parameter/name\" }"),
    (PROD, "app.secrets", {"API_TOKEN": {"vault": "a"}}, "app.secrets.API_TOKEN", "{ ssm = \"/parameter/name\" }"),
    (PROD, "app.secrets", {"API_TOKEN": {"ssm": "/a", "version": 2}}, "app.secrets.API_TOKEN", "{ ssm = "),
    (PROD, "app.secrets", {"API_TOKEN": {"ssm": "no spaces"}}, "app.secrets.API_TOKEN.ssm", "SSM parameter name"),
    (PROD, "app.secrets", {"API_TOKEN": {"ssm": 5}}, "app.secrets.API_TOKEN.ssm", "in quotes"),
    (PROD, "app.secrets", {"API_TOKEN": {"secretsmanager": "a:b c"}}, "app.secrets.API_TOKEN.secretsmanager",
     "Secrets Manager secret name"),
    (PROD, "app.secrets", {"API_TOKEN": {"secretsmanager": "arn:aws:s3:::bucket"}},
     "app.secrets.API_TOKEN.secretsmanager", "or its ARN"),
    (PROD, "app.secrets", {"API_TOKEN": {"ssm": "/a", "key": "token"}}, "app.secrets.API_TOKEN.key",
     "a JSON secret in Secrets Manager"),
    (PROD, "app.secrets", {"API_TOKEN": {"secretsmanager": "a", "key": "$(reboot)"}}, "app.secrets.API_TOKEN.key",
     "a JSON key of letters"),
    (PROD, "app.secrets", {"api_token": {"ssm": "/a"}}, "app.secrets.api_token", "capital letters"),
    (PROD, "app.secrets", {"DB_PASSWORD_FILE": {"ssm": "/a"}}, "app.secrets.DB_PASSWORD_FILE", "the platform sets"),
    (PROD, "app.colour", "blue", "app.colour", "unknown field; allowed: environment, health_path, packages"),
    # [domain]
    (PROD, "domain.name", "App.Example.com", "domain.name", "a lowercase DNS name"),
    (PROD, "domain.name", "localhost", "domain.name", "at least two labels"),
    (PROD, "domain.name", "app.example.com", "domain.hosted_zone_id", "is required with domain.name"),
    (PROD, "domain.hosted_zone_id", "Z0123456789ABCDEFGHIJ", "domain.hosted_zone_id", "but domain.name is \"\""),
    (PROD, "domain.hosted_zone_name", "example.com", "domain.hosted_zone_name", "but domain.name is \"\""),
    (PROD, "domain", "app.example.com", "domain", "a [domain] table"),
    (PROD, "domain.zone", "Z1", "domain.zone", "unknown field; allowed: hosted_zone_id, hosted_zone_name, name"),
    # separate protection knobs, the database server's root volume
    (PROD, "operations.deletion_protection", "yes", "operations.deletion_protection", "true or false"),
    (DEV, "database.multi_az", True, "database.multi_az", "allowed: false for an EC2 database server"),
    (PROD, "database.multi_az", 1, "database.multi_az", "true or false"),
    (PROD, "database.root_volume_gib", 4, "database.root_volume_gib", "8 to 1024"),
    # values are shown as TOML writes them, and no type is coerced (strict fields)
    (PROD, "network.nat_gateways", True, "network.nat_gateways", "got true; allowed: a whole number from 0 to 3"),
    (PROD, "network.interface_endpoints", 1, "network.interface_endpoints", "got 1; allowed: true or false"),
    (PROD, "servers.min_servers", 2.0, "servers.min_servers", "got 2.0; allowed: a whole number from 1 to 100"),
    (PROD, "servers.ami", {"ap-northeast-2": "ami-1"}, "servers.ami.ap-northeast-2", "got 'ami-1'; allowed: an AMI ID"),
]

_DOMAIN = {"name": "app.example.com", "hosted_zone_id": "Z0123456789ABCDEFGHIJ"}
_LINE = re.compile(r"^environment '[a-z][a-z0-9-]*': [A-Za-z0-9_.\[\]-]+: \S.*allowed")
_PYDANTIC_NOISE = ("pydantic", "Input should", "type=", "input_value", "validation error", "Traceback")


@pytest.mark.parametrize("base,path,value,field,allowed", BAD_VALUES,
                         ids=[f"{p}={v!r}"[:60] for _, p, v, _, _ in BAD_VALUES])
def test_bad_value_names_environment_field_and_what_is_allowed(base, path, value, field, allowed):
    with pytest.raises(ConfigError) as err:
        parse_environment("dev" if base is DEV else "prod", _with(base, path, value))
    message = str(err.value)
    env = "dev" if base is DEV else "prod"
    assert any(line.startswith(f"environment {env!r}: {field}") and allowed in line for line in err.value.problems), \
        message
    # one line per problem, in the project's own words: no pydantic wording, codes or links
    assert all(_LINE.match(line) for line in err.value.problems), message
    assert not any(noise in message for noise in _PYDANTIC_NOISE), message


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
    assert configs["prod"].app.processes_per_server == 2


def _problems(raw: dict, env: str = "prod") -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_environment(env, raw)
    return err.value.problems


def test_rules_between_fields_are_reported_with_the_field_errors():
    raw = _with(PROD, "network.nat_gateways", 0)                  # a rule across sections (stage 4)
    raw = _with(raw, "servers.desired_servers", 2)
    raw = _with(raw, "servers.min_servers", 7)                    # two rules inside [servers] ...
    raw = _with(raw, "servers.root_volume_gib", 2)                # ... whose section has a field error too
    raw = _with(raw, "operations.removal_policy", "keep")         # a field error elsewhere
    raw = _with(raw, "load_balancer.health_check_path", "/up")    # a moved field
    problems = _problems(raw)
    expected = ["network.nat_gateways: got 0 with stage 4", "servers: got min_servers (7) <= max_servers (6)",
                "servers.desired_servers: got 2, but the group starts at min_servers (7)",
                "servers.root_volume_gib: got 2", "operations.removal_policy: got 'keep'",
                "load_balancer.health_check_path: got '/up', but this field moved to app.health_path"]
    for text in expected:
        assert any(line.startswith(f"environment 'prod': {text}") for line in problems), (text, problems)
    assert len(problems) == len(expected), problems


def test_a_secret_in_the_plain_environment_is_not_repeated_in_the_message():
    problems = _problems(_with(PROD, "app.environment", {"STRIPE_API_KEY": "sk_live_51Hx"}))
    assert problems == ["environment 'prod': app.environment.STRIPE_API_KEY: got a plain value for a secret's name; "
                        "allowed: none here, it belongs in [app.secrets] (read at boot, never written into the "
                        "template)"]


def test_a_name_in_both_app_tables_is_rejected():
    raw = _with(_with(PROD, "app.environment", {"MODE": "x"}), "app.secrets", {"MODE": {"ssm": "/app/mode"}})
    assert _problems(raw) == ["environment 'prod': app.secrets.MODE: got MODE in both [app.environment] and "
                              "[app.secrets]; allowed: one of the two"]


def test_the_app_contract_defaults_to_the_sample_app():
    app = parse_environment("dev", _with(DEV, "app", _DELETE)).app
    assert app.source == "app_tier/sample_app" and app.source_dir == str(REPO_ROOT / "app_tier" / "sample_app")
    assert app.start_command == render.DEFAULT_START_COMMAND and app.health_path == "/health"
    assert app.release_command == render.DEFAULT_RELEASE_COMMAND  # the sample's schema
    assert (app.packages, dict(app.environment), dict(app.secrets), app.processes_per_server) == ((), {}, {}, 1)


def test_the_app_section_in_full(tmp_path):
    (tmp_path / "requirements.txt").write_text("uvicorn==0.30.0\n")
    app = {
        "source": str(tmp_path),
        "start_command": "{app_root}/venv/bin/uvicorn --app-dir {app_root}/app --fd {fd} main:app",
        "release_command": "cd {app_root}/app && {app_root}/venv/bin/alembic upgrade head",
        "health_path": "/healthz",
        "packages": ["libpq", "ImageMagick", "gcc-c++"],
        "processes_per_server": 3,
        "environment": {"APP_MODE": "production", "LOG_LEVEL": "info"},
        "secrets": {"API_TOKEN": {"secretsmanager": "prod/api", "key": "token"},
                    "SENTRY_DSN": {"ssm": "/prod/sentry-dsn"},
                    "SIGNING_KEY": {"secretsmanager": "arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:sk-AbC"}},
    }
    config = parse_environment("prod", {**PROD, "app": app})
    assert config.app.source_dir == str(tmp_path.resolve())
    from stacks.config_mapping import app_spec
    assert app_spec(config).release_command == app["release_command"]
    assert render.app_release_command(render.ServerLayout(app=app_spec(config))) == \
        "cd /opt/webapp/app && /opt/webapp/venv/bin/alembic upgrade head"
    assert config.app.packages == ("libpq", "ImageMagick", "gcc-c++") and config.app.processes_per_server == 3
    assert config.app.environment == {"APP_MODE": "production", "LOG_LEVEL": "info"}
    assert config.app.secrets == {
        "API_TOKEN": AppSecretRef(store="secretsmanager", name="prod/api", key="token"),
        "SENTRY_DSN": AppSecretRef(store="ssm", name="/prod/sentry-dsn"),
        "SIGNING_KEY": AppSecretRef(store="secretsmanager",
                                    name="arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:sk-AbC"),
    }
    with pytest.raises(TypeError, match="read-only"):
        config.app.environment["APP_MODE"] = "debug"   # a frozen config stays frozen all the way down
    assert hash(config) == hash(dataclasses.replace(config))


@pytest.mark.parametrize("stage,instance_type,processes", [
    (4, "t3.medium", 2), (4, "c6i.2xlarge", 8), (4, "m7g.medium", 1), (3, "c6i.2xlarge", 1)])
def test_processes_per_server_default_to_the_vcpus_on_stage_4(stage, instance_type, processes):
    raw = _with(_with(PROD, "stage", stage), "servers.instance_type", instance_type)
    raw = _with(raw, "servers.architecture", "arm64" if "g." in instance_type else "x86_64")
    raw = _with(raw, "database.instance_type", "t4g.small" if "g." in instance_type else "t3.small")
    assert parse_environment("prod", raw).app.processes_per_server == processes


def test_the_shipped_prod_is_one_line_from_a_domain():
    text = (CONFIG_DIR / "prod.toml").read_text()
    assert 'domain = { name = "", hosted_zone_id = "" }' in text.splitlines()
    assert text.index("domain = {") < text.index("\n[")   # a top-level key: above the first [table]
    assert not load_environment("prod").domain.enabled
    filled = tomllib.loads(text.replace('domain = { name = "", hosted_zone_id = "" }',
                                        'domain = { name = "shop.example.com", hosted_zone_id = "Z0123456789ABCDEFGHIJ" }'))
    domain = parse_environment("prod", filled).domain
    assert domain.enabled and (domain.name, domain.hosted_zone_name) == ("shop.example.com", "example.com")


@pytest.mark.parametrize("domain,zone_name", [
    ({"name": "app.example.com"}, "example.com"),
    ({"name": "example.com"}, "example.com"),                       # an apex name is its own zone, not "com"
    ({"name": "a.b.example.co.uk", "hosted_zone_name": "example.co.uk"}, "example.co.uk"),
    ({"name": "app.example.com", "hosted_zone_name": "app.example.com"}, "app.example.com"),
])
def test_domain_hosted_zone_name(domain, zone_name):
    config = parse_environment("prod", {**PROD, "domain": {**domain, "hosted_zone_id": "Z0123456789ABCDEFGHIJ"}})
    assert config.domain.enabled and config.domain.hosted_zone_name == zone_name


def test_a_domain_and_a_certificate_arn_together():
    cert = "arn:aws:acm:ap-northeast-2:123456789012:certificate/11111111-2222-3333-4444-555555555555"
    config = parse_environment("prod", _with({**PROD, "domain": _DOMAIN}, "load_balancer.certificate_arn", cert))
    assert config.domain.enabled and config.load_balancer.certificate_arn == cert


@pytest.mark.parametrize("kind,policy,given,deletion_protection,multi_az", [
    ("rds", "retain", {}, True, True),
    ("rds", "snapshot", {}, True, True),
    ("rds", "destroy", {}, False, False),
    ("ec2", "retain", {}, True, False),
    ("rds", "retain", {"operations.deletion_protection": False, "database.multi_az": False}, False, False),
    ("rds", "destroy", {"operations.deletion_protection": True, "database.multi_az": True}, True, True),
])
def test_deletion_protection_and_multi_az_are_separate_knobs(kind, policy, given, deletion_protection, multi_az):
    raw = _with(_with(_with(PROD, "database.kind", kind), "operations.removal_policy", policy),
                "network.interface_endpoints", True)
    for path, value in given.items():
        raw = _with(raw, path, value)
    config = parse_environment("prod", raw)
    assert (config.operations.deletion_protection, config.database.multi_az) == (deletion_protection, multi_az)
    assert config.is_production == (policy != "destroy")


def test_shipped_configs_keep_what_protect_derived():
    for config in load_environments():
        assert config.operations.deletion_protection == config.is_production
        assert config.database.multi_az == (config.is_production and config.database.kind == "rds")
        assert config.database.root_volume_gib == 16 and config.app.health_path == "/health"


def test_database_instance_type_defaults_to_the_servers_architecture():
    raw = _with(_with(DEV, "servers.architecture", "arm64"), "servers.instance_type", "t4g.micro")
    assert parse_environment("dev", raw).database.instance_type == "t4g.micro"
    assert parse_environment("dev", DEV).database.instance_type == "t3.micro"


def test_replace_checks_the_changed_config_again():
    dev, prod = load_environment("dev"), load_environment("prod")
    moved = dataclasses.replace(dev, name="stage2", stage=Stage.SEPARATE_DATABASE,
                                network=dataclasses.replace(dev.network, interface_endpoints=True))
    assert (moved.stage, moved.app.processes_per_server) == (Stage.SEPARATE_DATABASE, 1)
    with pytest.raises(ValidationError, match="stage 2 runs one app process per server"):
        dataclasses.replace(prod, stage=Stage.SEPARATE_DATABASE)   # prod's 2 processes and 2..6 servers
    with pytest.raises(ValidationError, match="at most one per zone"):
        dataclasses.replace(prod.network, nat_gateways=3)
    with pytest.raises(ValidationError, match="health_path"):
        dataclasses.replace(prod.app, health_path="no-slash")


def test_every_field_says_what_it_allows():
    """A wrong value's message quotes its field's description: none may be missing."""
    models = [m for m in vars(model).values() if isinstance(m, type) and issubclass(m, Section) and m is not Section]
    assert len(models) >= 12
    undescribed = [f"{m.__name__}.{name}" for m in models for name, field in m.__pydantic_fields__.items()
                   if not field.description]
    assert undescribed == []


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


@pytest.mark.parametrize("changes,expected", [
    ({"database.carry_from": {"kind": "ec2"}, "database.kind": "ec2", "stage": 2,
      "network.interface_endpoints": True},
     "database.carry_from: is set with database.kind 'ec2'; allowed: only with kind = \"rds\""),
    ({"database.carry_from": {"kind": "ec2"}, "database.kind": "rds", "database.port": 5433, "stage": 1},
     "database.carry_from: is set with stage 1, which has no database server"),
    ({"database.carry_from": {"kind": "ec2", "instance_type": "t4g.small"}, "database.kind": "rds",
      "database.port": 5433, "stage": 2, "network.interface_endpoints": True},
     "database.carry_from.instance_type: got 't4g.small', an arm64 instance family"),
    ({"database.carry_from": {"kind": "ec2"}, "database.kind": "rds", "database.port": 5433, "stage": 2},
     "network.interface_endpoints: got false, but the EC2 database server sits in an isolated subnet"),
    ({"database.carry_from": {"kind": "rds"}, "database.kind": "rds", "stage": 2},
     "database.carry_from.kind: got 'rds'; allowed: ec2"),
    ({"database.carry_from": {"kind": "ec2", "port": 80}, "database.kind": "rds", "stage": 2},
     "database.carry_from.port: got 80; allowed: a whole number from 1024 to 65535 (its port as deployed)"),
    ({"database.carry_from": {"kind": "ec2", "name": "shop"}, "database.kind": "rds", "database.port": 5433,
      "stage": 2, "network.interface_endpoints": True},
     "database.carry_from.name: got 'shop', but database.name is 'app'; allowed: the same"),
])
def test_moving_to_rds_names_the_old_database_servers_settings(changes, expected):
    raw = DEV
    for path, value in changes.items():
        raw = _with(raw, path, value)
    problems = _problems(raw, "dev")
    assert any(line.startswith(f"environment 'dev': {expected}") for line in problems), problems


def test_moving_to_rds_from_dev_at_stage_2_needs_only_the_old_table_under_carry_from():
    raw = _with(_with(_with(DEV, "stage", 2), "network.interface_endpoints", True), "database",
                {"kind": "rds", "port": 5433, "carry_from": {"kind": "ec2"}})
    config = parse_environment("dev", raw)
    assert config.database.carry_from == model.CarrySourceConfig(kind="ec2", instance_type="t3.micro", storage_gib=20,
                                                                 port=5432, root_volume_gib=16, name="app", user="app")
