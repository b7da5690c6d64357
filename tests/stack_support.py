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
from pathlib import Path

from aws_cdk import App

from envconfig import EnvironmentConfig, Stage, load_environments
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


def variant_configs() -> list[EnvironmentConfig]:
    shipped = {c.name: c for c in load_environments()}
    dev, staging, prod = shipped["dev"], shipped["staging"], shipped["prod"]
    return [
        _variant(dev, "stage2ec2", stage=Stage.SEPARATE_DATABASE,
                 network={"vpc_cidr": "10.40.0.0/16", "interface_endpoints": True},
                 access={"key_pair": "create", "admin_cidrs": ("203.0.113.0/24",)}),
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
    ]


SHIPPED = ["dev", "staging", "prod"]
VARIANTS = ["stage2ec2", "stage2rds", "https"]


def build_app(configs: list[EnvironmentConfig], *, target: str = "aws", outdir: str | None = None):
    # CDK's built-in template validation is off here: cfn-lint runs as its own test with the
    # project's documented ignore list (tests/test_nag_and_lint.py).
    app = App(context=dict(CDK_CONTEXT), outdir=outdir, builtin_cloud_formation_validation=False)
    stacks = add_environments(app, configs, target=target)
    return app, stacks


