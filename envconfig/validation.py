"""How the config models report problems: every problem at once, each worded for the file's editor.

pydantic reports every field's error, but runs a model's own validators only once all its fields
passed, so rules that compare fields (min <= desired <= max, stage 4 needs two zones) would be silent
while any field is wrong. `Section` runs its rules after the field checks either way: when some fields failed, on a view
of the fields that passed, skipping only the rules that need a failed one.

Two kinds of error leave the models, besides pydantic's own:
- `problem(text)`: a complete sentence, "got ...; allowed: ...", written where the rule is;
- `invalid()`: "this value is not allowed"; the message is built from the field's description,
  which says what is allowed (loader.problem_lines renders both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from functools import cache
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs, InitErrorDetails, PydanticCustomError, PydanticUndefined

PROBLEM = "config"     # a complete message written by a rule
INVALID = "invalid"    # "got VALUE; allowed: <the field's description>"

# Lax on purpose where TOML and Python differ (a TOML array becomes a tuple, a table a model); every
# scalar field is declared strict, so 1 is no bool, "5" no number and 1.0 no count of servers.
MODEL_CONFIG = ConfigDict(extra="forbid", regex_engine="python-re")


def problem(text: str) -> PydanticCustomError:
    # The text travels in the context: a message template would treat "{bind}" in it as a placeholder.
    return PydanticCustomError(PROBLEM, "{text}", {"text": text})


def invalid() -> PydanticCustomError:
    return PydanticCustomError(INVALID, "not allowed")


Loc = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def shown(value: Any, limit: int = 200) -> str:
    """A value as the file's editor wrote it: TOML's true/false and { key = value } (strings quoted
    'like this' are TOML literal strings too), shortened past `limit` characters."""
    def toml(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(toml(x) for x in v) + "]"
        if isinstance(v, dict):
            items = (f"{k if isinstance(k, str) and _BARE_KEY.fullmatch(k) else repr(k)} = {toml(x)}"
                     for k, x in v.items())
            return "{ " + ", ".join(items) + " }" if v else "{}"
        return repr(v)
    text = toml(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class FrozenDict(dict):
    """A table field's value: read like a dict, but as frozen and hashable as the model that holds it."""

    def _frozen(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config tables are read-only; build a changed config with dataclasses.replace")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _frozen  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self):
        return (type(self), (dict(self),))


class Problems:
    """Problems found in one model, raised together as one ValidationError."""

    def __init__(self) -> None:
        self.errors: list[InitErrorDetails] = []

    def add(self, loc: str | Loc, text: str) -> None:
        self.errors.append({"type": problem(text), "loc": (loc,) if isinstance(loc, str) else tuple(loc),
                            "input": None})

    def invalid(self, loc: str | Loc, value: Any) -> None:
        self.errors.append({"type": invalid(), "loc": (loc,) if isinstance(loc, str) else tuple(loc),
                            "input": value})

    def extend(self, err: ValidationError, prefix: Loc = ()) -> None:
        """Carry another validation's errors over, under `prefix`."""
        for e in err.errors(include_url=False):
            if e["type"] in (PROBLEM, INVALID):
                kind = problem(e["msg"]) if e["type"] == PROBLEM else invalid()
                self.errors.append({"type": kind, "loc": (*prefix, *e["loc"]), "input": e["input"]})
            else:
                detail: InitErrorDetails = {"type": e["type"], "loc": (*prefix, *e["loc"]), "input": e["input"]}
                if "ctx" in e:
                    detail["ctx"] = e["ctx"]
                self.errors.append(detail)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self, title: str) -> None:
        # A ValidationError raised inside a validator keeps its line errors and their locations.
        if self.errors:
            raise ValidationError.from_exception_data(title, self.errors)


def rule(check):
    """Marks a method `check(config, problems)` as a rule of its model, run after the field checks."""
    check.config_rule = True
    return check


class Unknown(Exception):
    """A rule read a field that failed its own check: the rule is skipped, the field's error stands."""


class _PartialView:
    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise Unknown(name) from None


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class Section:
    """Base of every config model: field checks, then the model's rules, all problems reported together.

    A subclass may list fields that moved elsewhere (`MOVED = {"old": "new.place"}`), fill defaults
    that depend on other fields of the same input (`_prepare`), and declare `@rule` methods.
    """

    MOVED = {}  # old field name -> where it lives now (no annotation: not a field)

    @classmethod
    def _prepare(cls, raw: dict[str, Any], found: Problems) -> None:
        """Fill the defaults that depend on other fields, in the raw input (before any field check).

        Runs on what the user wrote, which may be wrong: read it defensively; a derived default only
        matters when the fields it comes from pass their own checks.
        """

    @model_validator(mode="wrap")
    @classmethod
    def _check_fields_then_rules(cls, data: Any, handler) -> Any:
        if isinstance(data, cls):
            return handler(data)   # already checked when it was built
        raw = _as_dict(data)
        if raw is None:
            return handler(data)   # not a table: pydantic names what it got
        found = Problems()
        for old, new in cls.MOVED.items():
            if old in raw:
                found.add(old, f"got {shown(raw.pop(old))}, but this field moved to {new}; allowed: set {new} instead")
        cls._prepare(raw, found)
        try:
            value = view = handler(raw)
        except ValidationError as err:
            failed = {e["loc"][0] for e in err.errors() if e["loc"]}
            merged = Problems()
            merged.extend(err)
            merged.errors += found.errors
            found = merged
            value, view = None, _PartialView(_fields_that_pass(cls, raw, failed))
        for check in _rules(cls):
            with contextlib.suppress(Unknown):
                check(view, found)
        found.raise_if_any(cls.__name__)
        return value


def _as_dict(data: Any) -> dict[str, Any] | None:
    if isinstance(data, dict):
        return dict(data)
    if isinstance(data, ArgsKwargs) and not data.args:
        return dict(data.kwargs or {})
    return None


@cache
def _rules(cls: type) -> list:
    return [v for klass in reversed(cls.__mro__) for v in vars(klass).values() if getattr(v, "config_rule", False)]


@cache
def _field_adapter(cls: type, name: str) -> TypeAdapter:
    field = cls.__pydantic_fields__[name]
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter(annotation)


def _fields_that_pass(cls: type, raw: dict[str, Any], failed: set) -> dict[str, Any]:
    """Each field that passed, checked again on its own (the model as a whole did not build)."""
    values: dict[str, Any] = {}
    for name, field in cls.__pydantic_fields__.items():
        if name in failed:
            continue
        try:
            if name in raw:
                values[name] = _field_adapter(cls, name).validate_python(raw[name])
            elif field.default is not PydanticUndefined:
                values[name] = field.default
            elif field.default_factory is not None:
                values[name] = field.default_factory()
        except ValidationError:
            continue
    return values


def fill(raw: dict[str, Any], section: str, model: type, values: dict[str, Any]) -> None:
    """Give `raw[section]` the derived `values` it does not set itself (a table or a built model)."""
    current = raw.get(section, {})
    if isinstance(current, dict):
        raw[section] = {**values, **current}
    elif isinstance(current, model):
        missing = {k: v for k, v in values.items() if getattr(current, k) is None}
        if missing:
            raw[section] = dataclasses.replace(current, **missing)


def read(raw: dict[str, Any], section: str, field: str, model: type) -> Any:
    """A field of `raw[section]` (a table or a built model), else the model's default; None if unreadable."""
    current = raw.get(section, {})
    if isinstance(current, model):
        return getattr(current, field)
    if isinstance(current, dict) and field in current:
        return current[field]
    default = model.__pydantic_fields__[field].default
    return None if default is PydanticUndefined else default
