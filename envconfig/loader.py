"""Read `config/<env>.toml` into an `EnvironmentConfig`, or say everything that is wrong with it.

The models (envconfig.model) check the fields and the rules between them; this module reads the
files, turns pydantic's errors into one line per problem ("environment 'prod': network.vpc_cidr:
got '10.0.0.0/8'; allowed: ..."), and checks what no single file can: VPC ranges shared between
environments. Nothing is built before the whole file is valid.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

from envconfig.model import ENV_NAME, REPO_ROOT, EnvironmentConfig
from envconfig.validation import PROBLEM, shown

CONFIG_DIR = REPO_ROOT / "config"
_ENV_NAME = re.compile(ENV_NAME)
_ENVIRONMENT = TypeAdapter(EnvironmentConfig)
_UNKNOWN_FIELD = ("unexpected_keyword_argument", "extra_forbidden")


class ConfigError(Exception):
    """A config problem, worded for the person who edits the file."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def available_environments(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.toml"))


def load_environments(names: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> list[EnvironmentConfig]:
    """Load the named environments (all when `names` is empty), validating every one first."""
    known = available_environments(config_dir)
    if not names:
        names = known
        if not names:
            raise ConfigError([f"no environment files (*.toml) in {config_dir}"])
    problems: list[str] = []
    configs = []
    for name in names:
        try:
            configs.append(load_environment(name, config_dir))
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    _check_overlapping_vpcs(configs)
    return configs


def _check_overlapping_vpcs(configs: list[EnvironmentConfig]) -> None:
    """Environments in one account and region must not share address space: peering, VPN and
    Transit Gateway routes all need distinct ranges."""
    problems = []
    for i, a in enumerate(configs):
        for b in configs[i + 1:]:
            same_place = a.region == b.region and (a.account == b.account or not a.account or not b.account)
            if same_place and ipaddress.ip_network(a.network.vpc_cidr).overlaps(ipaddress.ip_network(b.network.vpc_cidr)):
                problems.append(f"environment {b.name!r}: network.vpc_cidr: {b.network.vpc_cidr} overlaps "
                                f"{a.network.vpc_cidr} of environment {a.name!r}; allowed: a range that no other "
                                "environment in the same region uses")
    if problems:
        raise ConfigError(problems)


def load_environment(name: str, config_dir: Path = CONFIG_DIR) -> EnvironmentConfig:
    path = config_dir / f"{name}.toml"
    if not _ENV_NAME.fullmatch(name):
        raise ConfigError([f"environment {name!r}: the name must be lowercase letters, digits and '-' "
                           "(at most 20 characters, starting with a letter)"])
    if not path.is_file():
        known = ", ".join(available_environments(config_dir)) or "none"
        raise ConfigError([f"environment {name!r}: no config file {path} (known environments: {known}); "
                           f"to add one, copy config/dev.toml to {path.name}"])
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"environment {name!r}: {path.name} is not valid TOML: {err}"]) from None
    return parse_environment(name, raw)


def parse_environment(name: str, raw: dict[str, Any]) -> EnvironmentConfig:
    """The environment `name` from its parsed TOML, or a ConfigError listing every problem in it."""
    problems = []
    if "name" in raw:   # the file's name is the environment's name
        problems.append(f"environment {name!r}: name: unknown field; allowed: {', '.join(_fields(EnvironmentConfig))}")
    try:
        config = _ENVIRONMENT.validate_python({**raw, "name": name})
    except ValidationError as err:
        raise ConfigError(problems + problem_lines(name, err)) from None
    if problems:
        raise ConfigError(problems)
    return config


def problem_lines(env: str, err: ValidationError) -> list[str]:
    """pydantic's errors as the config's editor reads them: environment, dotted field, what was given, what is
    allowed (the field's description). No pydantic wording, links or error codes."""
    lines: list[str] = []
    for error in err.errors(include_url=False):
        loc, kind = error["loc"], error["type"]
        _, field = _walk(loc)
        allowed = field.description if field is not None and field.description else "see config/dev.toml"
        if kind == PROBLEM:
            text = error["msg"]
        elif kind == "missing":
            text = f"is required; allowed: {allowed}"
        elif kind in _UNKNOWN_FIELD:
            text = f"unknown field; allowed: {', '.join(_fields(_walk(loc[:-1])[0]))}"
        else:   # validation.INVALID, or a type or range pydantic checked for the field
            text = f"got {shown(error['input'])}; allowed: {allowed}"
        line = f"environment {env!r}: {_dotted(loc)}: {text}" if loc else f"environment {env!r}: {text}"
        if line not in lines:
            lines.append(line)
    return lines


def _dotted(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _fields(model: type | None) -> list[str]:
    names = getattr(model, "__pydantic_fields__", {})
    return sorted(n for n in names if not (model is EnvironmentConfig and n == "name"))


def _walk(loc: tuple) -> tuple[type | None, Any]:
    """The model reached at the end of `loc` (None past the models), and the last field named on the way."""
    model: type | None = EnvironmentConfig
    field, table_of = None, None
    for part in loc:
        fields = getattr(model, "__pydantic_fields__", {})
        if isinstance(part, str) and part in fields:
            field = fields[part]
            annotation = field.annotation
            table_of = get_args(annotation)[1] if get_origin(annotation) is dict else None
            # A table that may be absent (`Model | None`) is that model's.
            models = [a for a in (annotation, *get_args(annotation)) if hasattr(a, "__pydantic_fields__")]
            model = models[0] if models else None
            if not hasattr(table_of, "__pydantic_fields__"):
                table_of = None
        elif table_of is not None:   # a key of a table of models (app.secrets.NAME)
            model, table_of = table_of, None
        else:                        # a list index or table key: the error stays the field's
            model = None
    return model, field
