"""Building the CDK app in tests: the shipped environments plus variants, with the feature flags.

`App()` in tests does not read cdk.json, so the flags are passed explicitly. Besides the
shipped environments, a few variants cover what they do not: stage 2 on EC2 and on RDS, a
created key pair with admin CIDRs, an existing key pair, HTTPS with a certificate, and Graviton (arm64).
(A module of its own, not conftest.py: tests/app_tier has a conftest.py too, and test
modules import these names.)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from aws_cdk import App

from envconfig import EnvironmentConfig, Stage, load_environments
from envconfig.loader import CONFIG_DIR, parse_environment
from rehearsal import synth as rehearsal_synth
from stacks import add_environments, cli_context

ROOT = Path(__file__).resolve().parent.parent
# What the CDK CLI gives app.py (tests find resources by construct path).
CDK_CONTEXT = cli_context()
CERTIFICATE_ARN = "arn:aws:acm:ap-northeast-2:123456789012:certificate/11111111-2222-3333-4444-555555555555"

# jsii runs the CDK in Node; use the project's Node 22 so no end-of-life banner is printed.
os.environ["PATH"] = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"


def _variant(base: EnvironmentConfig, name: str, **changes) -> EnvironmentConfig:
    sections = {key: changes.pop(key) for key in list(changes) if isinstance(changes[key], dict)}
    replaced = {key: dataclasses.replace(getattr(base, key), **value) for key, value in sections.items()}
    return dataclasses.replace(base, name=name, **replaced, **changes)


def _merged(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def from_files(name: str, base: str, *changes: dict) -> EnvironmentConfig:
    """An environment built as a fork builds one: an environment file with tables changed, read by envconfig."""
    raw = tomllib.loads((CONFIG_DIR / f"{base}.toml").read_text())
    for change in changes:
        raw = _merged(raw, change)
    return parse_environment(name, raw)


# The ASGI sample's [app] table, as the boot rehearsal's stage-2 server runs it.
ASGI_APP = tomllib.loads(rehearsal_synth.ASGI_APP.read_text())
ZONE_ID = "Z0123456789ABCDEFGHIJ"


def variant_configs() -> list[EnvironmentConfig]:
    shipped = {c.name: c for c in load_environments()}
    staging, prod = shipped["staging"], shipped["prod"]
    return [
        # dev grown to stage 2, swapped to the ASGI app with secrets, on a domain: by config alone.
        from_files("stage2ec2", "dev", ASGI_APP, {
            "stage": 2, "network": {"vpc_cidr": "10.40.0.0/16", "interface_endpoints": True},
            "access": {"key_pair": "create", "admin_cidrs": ["203.0.113.0/24"]},
            "domain": {"name": "shop.example.com", "hosted_zone_id": ZONE_ID}}),
        _variant(prod, "stage2rds", stage=Stage.SEPARATE_DATABASE,
                 network={"vpc_cidr": "10.50.0.0/16", "nat_gateways": 0},
                 operations={"removal_policy": "snapshot"},
                 servers={"min_servers": 1, "desired_servers": 1, "max_servers": 1}, app={"processes_per_server": 1}),
        _variant(staging, "https", stage=Stage.MULTI_PROCESS,
                 network={"vpc_cidr": "10.60.0.0/16"},
                 servers={"architecture": "arm64", "instance_type": "t4g.small"}, app={"processes_per_server": 3},
                 database={"instance_type": "t4g.small"},
                 access={"key_pair": "existing", "key_pair_name": "ops-team", "admin_cidrs": ("198.51.100.0/24",)},
                 load_balancer={"certificate_arn": CERTIFICATE_ARN}),
        # staging's deploy that carries its EC2 PostgreSQL into RDS (README: Growing the service).
        from_files("stage3carry", "staging", {
            "network": {"vpc_cidr": "10.70.0.0/16"}, "operations": {"removal_policy": "snapshot"},
            "database": {"kind": "rds", "port": 5433, "multi_az": True,
                         "carry_from": {"kind": "ec2", "instance_type": "t3.small", "storage_gib": 20}}}),
    ]


SHIPPED = ["dev", "staging", "prod"]
VARIANTS = ["stage2ec2", "stage2rds", "https", "stage3carry"]


def build_app(configs: list[EnvironmentConfig], *, target: str = "aws", outdir: str | None = None):
    # CDK's built-in template validation is off here: cfn-lint runs as its own test with the
    # project's documented ignore list (tests/test_nag_and_lint.py).
    app = App(context=dict(CDK_CONTEXT), outdir=outdir, builtin_cloud_formation_validation=False)
    stacks = add_environments(app, configs, target=target)
    return app, stacks


