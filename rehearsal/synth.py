"""Synthesize environments into a cloud assembly, as `cdk synth` does (app.py, cdk.json's flags).

The rehearsal reads servers only from what this produces. Variants swap the app's source
directory (an in-place update, a broken app) the way a user's edit would, then synthesize again.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from aws_cdk import App

from app_tier import render
from envconfig import EnvironmentConfig, Stage, load_environments
from stacks import add_environments, cli_context


def stage2_config() -> EnvironmentConfig:
    """No shipped environment is stage 2; this is dev moved to stage 2 with an EC2 database,
    as the README's growth path does it (interface endpoints for the isolated database)."""
    dev = {c.name: c for c in load_environments()}["dev"]
    return dataclasses.replace(dev, name="stage2", stage=Stage.SEPARATE_DATABASE,
                               network=dataclasses.replace(dev.network, interface_endpoints=True))


def synthesize(configs: list[EnvironmentConfig], outdir: Path, *, app_source: Path | None = None) -> Path:
    """The cloud assembly for `configs`; `app_source` replaces the app's code for this synth."""
    if outdir.exists():
        shutil.rmtree(outdir)
    original = render.APP_SOURCE_DIR
    render.APP_SOURCE_DIR = app_source or original
    try:
        # cfn-lint checks the templates in the tests; its warnings here would only be noise.
        app = App(context=cli_context(), outdir=str(outdir), builtin_cloud_formation_validation=False)
        add_environments(app, configs)
        app.synth()
    finally:
        render.APP_SOURCE_DIR = original
    return outdir


def changed_app(workdir: Path, *, release: str | None = None, broken: bool = False) -> Path:
    """A copy of the sample app with one file changed: a new release marker in `/`, or a health
    check that always fails (an app that boots but never becomes healthy)."""
    target = workdir / ("app-broken" if broken else f"app-{release}")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(render.APP_SOURCE_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    app = target / "app.py"
    text = app.read_text()
    if broken:
        marker = 'return 200, {"status": "ok", "pid": os.getpid()}'
        replacement = 'return 500, {"status": "broken on purpose by the rehearsal", "pid": os.getpid()}'
    else:
        marker = '"visits": visits}'
        replacement = f'"visits": visits, "release": "{release}"}}'
    if marker not in text:
        raise RuntimeError(f"rehearsal: the sample app no longer contains {marker!r}; update rehearsal/synth.py")
    app.write_text(text.replace(marker, replacement))
    return target
