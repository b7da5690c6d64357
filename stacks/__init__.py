"""Per-environment stacks, and the one function that puts them (and cdk-nag) into an app."""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from envconfig import EnvironmentConfig
from stacks.pipeline import PipelineStack
from stacks.web_service import WebServiceStack


def cli_context() -> dict:
    """cdk.json's context plus what the CDK CLI adds when it runs app.py: construct paths in the
    template metadata and no version-reporting resource. For apps built in-process (tests, the
    boot rehearsal), which do not read cdk.json."""
    return {**json.loads((Path(__file__).resolve().parent.parent / "cdk.json").read_text())["context"],
            "aws:cdk:enable-path-metadata": True, "aws:cdk:version-reporting": False}


def add_environments(app: App, configs: list[EnvironmentConfig], *, target: str = "aws") -> dict[str, WebServiceStack]:
    """One stack per environment, with cdk-nag's AwsSolutions checks run on every synth."""
    stacks = {config.name: WebServiceStack(app, config=config, target=target) for config in configs}
    for host in [c for c in configs if c.pipeline.enabled and target == "aws"]:
        stacks[f"{host.name}-pipeline"] = PipelineStack(app, host=host, configs=configs)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stacks
