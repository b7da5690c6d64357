"""Session fixtures: every environment (and variant) is synthesized once per test session."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from aws_cdk.assertions import Template
from stack_support import build_app, variant_configs

from app_tier import render
from envconfig import load_environment, load_environments
from rehearsal.synth import changed_app


@pytest.fixture(scope="session")
def cdk_app(tmp_path_factory):
    """The shipped environments and the variants in one app, synthesized once (cdk-nag runs in it)."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    app, stacks = build_app(load_environments() + variant_configs(), outdir=str(outdir))
    assembly = app.synth()
    return app, stacks, assembly


@pytest.fixture(scope="session")
def templates(cdk_app) -> dict[str, Template]:
    _, stacks, assembly = cdk_app
    return {name: Template.from_json(assembly.get_stack_by_name(stack.stack_name).template)
            for name, stack in stacks.items()}


@pytest.fixture(scope="session")
def synthesized_templates(cdk_app) -> dict[str, dict]:
    """Raw template JSON per environment name."""
    _, stacks, assembly = cdk_app
    return {name: assembly.get_stack_by_name(stack.stack_name).template for name, stack in stacks.items()}


@pytest.fixture(scope="session")
def template_files(cdk_app) -> dict[str, Path]:
    _, stacks, assembly = cdk_app
    return {name: Path(assembly.directory) / assembly.get_stack_by_name(stack.stack_name).template_file
            for name, stack in stacks.items()}


@pytest.fixture(scope="session")
def changed_app_templates(tmp_path_factory) -> dict[str, dict]:
    """dev and prod synthesized again after a one-line change to one file of the app, once per session."""
    source = changed_app(render.APP_SOURCE_DIR, tmp_path_factory.mktemp("app"), release="v2")
    # A fork's app lives where [app] source says; here, the changed copy.
    configs = [dataclasses.replace(config, app=dataclasses.replace(config.app, source=str(source)))
               for config in (load_environment("dev"), load_environment("prod"))]
    app, stacks = build_app(configs, outdir=str(tmp_path_factory.mktemp("cdk.out.changed")))
    assembly = app.synth()
    return {name: assembly.get_stack_by_name(stack.stack_name).template for name, stack in stacks.items()}
