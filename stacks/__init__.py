"""Per-environment stacks, and the one function that puts them (and cdk-nag) into an app."""

from __future__ import annotations

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from envconfig import EnvironmentConfig
from stacks.pipeline import PipelineStack
from stacks.web_service import WebServiceStack


def add_environments(app: App, configs: list[EnvironmentConfig], *, target: str = "aws") -> dict[str, WebServiceStack]:
    """One stack per environment, with cdk-nag's AwsSolutions checks run on every synth."""
    stacks = {config.name: WebServiceStack(app, config=config, target=target) for config in configs}
    for host in [c for c in configs if c.pipeline.enabled and target == "aws"]:
        stacks[f"{host.name}-pipeline"] = PipelineStack(app, host=host, configs=configs)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stacks
