"""Synthesize environments into a cloud assembly, as `cdk synth` does (app.py, cdk.json's flags).

The rehearsal reads servers only from what this produces, and changes servers only the way a
user would: by editing an environment's config. Every environment is built from its raw TOML
through envconfig's parser; a variant (an in-place update, a broken app) is the same TOML with
`[app] source` pointing at a changed copy of the app, parsed and synthesized again.
"""

from __future__ import annotations

import copy
import shutil
import tomllib
from pathlib import Path

from aws_cdk import App

from envconfig import EnvironmentConfig
from envconfig.loader import CONFIG_DIR, available_environments, parse_environment
from stacks import add_environments, cli_context

REPO = Path(__file__).resolve().parent.parent
ASGI_APP = Path(__file__).resolve().parent / "asgi-app.toml"
STAGE2 = "stage2"


def raw_config(name: str) -> dict:
    """The environment's TOML as a user wrote it; "stage2" is made from dev.toml (stage2_raw)."""
    if name == STAGE2:
        return stage2_raw()
    return tomllib.loads((CONFIG_DIR / f"{name}.toml").read_text())


def stage2_raw() -> dict:
    """No shipped environment is stage 2. This is dev moved to stage 2 with an EC2 database, as the
    README's growth path does it (interface endpoints for the isolated database), and swapped to
    the ASGI sample app by config alone: rehearsal/asgi-app.toml's [app] table, nothing else."""
    raw = raw_config("dev")
    raw["stage"] = 2
    raw.setdefault("network", {})["interface_endpoints"] = True
    raw["app"] = {**raw.get("app", {}), **tomllib.loads(ASGI_APP.read_text())["app"]}
    return raw


def parse(name: str, raw: dict) -> EnvironmentConfig:
    """envconfig's own parser and checks: a bad file fails here as it would for `cdk synth`."""
    return parse_environment(name, copy.deepcopy(raw))


def environment_names() -> list[str]:
    return [*available_environments(), STAGE2]


def stage2_config() -> EnvironmentConfig:
    return parse(STAGE2, stage2_raw())


def with_app_source(name: str, raw: dict, source: Path) -> EnvironmentConfig:
    """The environment with its [app] source swapped, as a user's one-line edit would."""
    raw = copy.deepcopy(raw)
    raw.setdefault("app", {})["source"] = str(source)
    return parse(name, raw)


def app_source(config: EnvironmentConfig) -> Path:
    """Where the environment's app comes from (relative to the repository, as in config)."""
    return REPO / config.app.source_dir


def synthesize(configs: list[EnvironmentConfig], outdir: Path) -> Path:
    """The cloud assembly for `configs`."""
    if outdir.exists():
        shutil.rmtree(outdir)
    # cfn-lint checks the templates in the tests; its warnings here would only be noise.
    app = App(context=cli_context(), outdir=str(outdir), builtin_cloud_formation_validation=False)
    add_environments(app, configs)
    app.synth()
    return outdir


# Each change is one line that every sample app has, so any of them can be rehearsed.
HEALTHY = 'return 200, {"status": "ok", "pid": os.getpid()}'
BROKEN = 'return 500, {"status": "broken on purpose by the rehearsal", "pid": os.getpid()}'
LAST_FIELD = '"visits": visits}'
OK_STATUS, FAILING_STATUS = "return 200,", "return 500,"  # `/` answers (status, payload) in every sample app
RELEASE_MAIN = "def main() -> int:\n"  # the sample apps' release command, migrate.py
RELEASE_FAILS = '    raise SystemExit("migration failed on purpose by the rehearsal")\n'


def changed_app(source: Path, workdir: Path, *, release: str | None = None, broken: bool = False,
                failing: bool = False, failing_release: bool = False) -> Path:
    """A copy of the app at `source` with one file changed: a new release marker in `/`, or a
    health check that always fails (an app that boots but never becomes healthy), or (`failing`)
    a release marker with `/` answering 500 while the health check passes (an app that boots,
    looks healthy to the load balancer, and fails its users), or (`failing_release`) a release marker
    with a release command (the sample apps' migrate.py) that fails before it changes anything."""
    suffix = ("-failing" if failing else "") + ("-failing-release" if failing_release else "")
    target = workdir / f"{source.name}-{'broken' if broken else release}{suffix}"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    app = target / "app.py"
    text = app.read_text()
    marker, replacement = (HEALTHY, BROKEN) if broken else (LAST_FIELD, f'"visits": visits, "release": "{release}"}}')
    if marker not in text:
        raise RuntimeError(f"rehearsal: {app.relative_to(workdir)} no longer contains {marker!r}; "
                           "update rehearsal/synth.py")
    if failing:  # the status of the answer that carries the last field: 200 -> 500
        end = text.index(marker)
        status = text.rindex(OK_STATUS, 0, end)
        text = text[:status] + FAILING_STATUS + text[status + len(OK_STATUS):]
    app.write_text(text.replace(marker, replacement))
    if failing_release:
        migrate = target / "migrate.py"
        script = migrate.read_text() if migrate.exists() else ""
        if RELEASE_MAIN not in script:
            raise RuntimeError(f"rehearsal: {migrate} has no {RELEASE_MAIN!r}; update rehearsal/synth.py")
        migrate.write_text(script.replace(RELEASE_MAIN, RELEASE_MAIN + RELEASE_FAILS, 1))
    return target
