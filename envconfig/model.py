"""Typed, validated per-environment config: the one place its fields, defaults and rules are declared.

Everything the stacks read comes from an `EnvironmentConfig`. `envconfig.loader` builds it from
config/<env>.toml; every model is a frozen pydantic dataclass, so `dataclasses.replace(config, ...)`
makes a checked variant. Each field's description says what it allows: the loader quotes it in the
message when a value is wrong. A default that depends on another field is filled in `_prepare`,
next to the fields it is derived from, and the field's description says so.
"""

import ipaddress
import re
import string
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, PlainValidator, StrictStr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticUndefined

from app_tier import render
from envconfig.instance_types import INSTANCE_FAMILIES, allowed_sizes, split_instance_type, vcpu_count
from envconfig.regions import AVAILABILITY_ZONES
from envconfig.validation import MODEL_CONFIG, FrozenDict, Problems, Section, fill, invalid, problem, read, rule, shown

REPO_ROOT = Path(__file__).resolve().parent.parent


class Stage(IntEnum):
    SINGLE_SERVER = 1
    SEPARATE_DATABASE = 2
    LOAD_BALANCED = 3
    MULTI_PROCESS = 4

    @property
    def load_balanced(self) -> bool:
        return self >= Stage.LOAD_BALANCED


DatabaseKind = Literal["ec2", "rds"]
KeyPairMode = Literal["none", "create", "existing"]
RemovalPolicyName = Literal["destroy", "retain", "snapshot"]
Architecture = Literal["x86_64", "arm64"]
SecretStore = Literal["secretsmanager", "ssm"]
DATABASE_KINDS: tuple[str, ...] = get_args(DatabaseKind)
KEY_PAIR_MODES: tuple[str, ...] = get_args(KeyPairMode)
REMOVAL_POLICIES: tuple[str, ...] = get_args(RemovalPolicyName)
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
SECRET_STORES: tuple[str, ...] = get_args(SecretStore)

# The smallest burstable type of each architecture: an EC2 database server shares the app's.
DEFAULT_DATABASE_INSTANCE_TYPES = {"x86_64": "t3.micro", "arm64": "t4g.micro"}
DEFAULT_APP_SOURCE = "app_tier/sample_app"
DEFAULT_HEALTH_PATH = render.DEFAULT_HEALTH_PATH
START_COMMAND_PLACEHOLDERS = render.START_COMMAND_PLACEHOLDERS   # what render.app_start_command fills in
# What the platform sets (render.app_environment, the app's systemd unit and the login): an app
# variable may not replace them.
RESERVED_VARIABLES = (*render.PLATFORM_ENVIRONMENT, "PATH", "HOME", "USER")
# A plain [app.environment] value is written into the template; a name like these is a secret's.
SECRET_NAME_PARTS = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "PRIVATE_KEY")
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
                      3288, 3653)   # the periods CloudWatch Logs accepts

ENV_NAME = r"[a-z][a-z0-9-]{0,19}"
_REGION = r"[a-z]{2}(-gov)?-[a-z]+-\d"
_ACCOUNT = re.compile(r"\d{12}")
_AMI_ID = re.compile(r"ami-[0-9a-f]{8}([0-9a-f]{9})?")
_CERT_ARN = r"arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}"
_CONNECTION_ARN = r"arn:aws[a-z-]*:(codestar-connections|codeconnections):[a-z0-9-]+:\d{12}:connection/[0-9a-f-]{36}"
_EMAIL = r"[^@\s]+@[^@\s]+\.[^@\s]+"
_KEY_PAIR_NAME = r"[\w.\- ]{1,255}"
_DB_IDENTIFIER = r"[a-z][a-z0-9_]{0,62}"
_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")
_PACKAGE = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
_HEALTH_PATH = r"/[\w\-./]*"
# Lowercase labels of 1-63 letters, digits and inner hyphens; at least two labels; 253 characters at most.
_DNS_NAME = r"(?=.{3,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTED_ZONE_ID = r"Z[A-Z0-9]{1,31}"
_SECRETSMANAGER_NAME = re.compile(r"[\w/+=.@-]{1,512}"
                                  r"|arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]{1,512}", re.ASCII)
_SSM_NAME = re.compile(r"/?[\w.\-/]{1,1011}|arn:aws[a-z-]*:ssm:[a-z0-9-]+:\d{12}:parameter/[\w.\-/]{1,1011}", re.ASCII)
# The boot script picks this field out of the secret's JSON: no quotes, spaces or shell characters.
_SECRET_KEY = re.compile(r"[\w.@+=/-]{1,256}", re.ASCII)


# --- field helpers: every constraint says in words what it allows -------------------------------

def _whole(low: int, high: int, default: Any = PydanticUndefined, *, note: str = "") -> Any:
    return Field(default, strict=True, ge=low, le=high, description=f"a whole number from {low} to {high}{note}")


def _text(default: Any = PydanticUndefined, allowed: str = "") -> Any:
    return Field(default, strict=True, description=allowed)


def _flag(default: Any = PydanticUndefined, *, note: str = "") -> Any:
    return Field(default, strict=True, description=f"true or false{note}")


def _one_of(default: str, choices: tuple[str, ...]) -> Any:
    return Field(default, description=", ".join(choices))


def _matching(regex: str, *, empty: bool = False) -> AfterValidator:
    compiled = re.compile(regex, re.ASCII)

    def check(value: str) -> str:
        if (empty and value == "") or compiled.fullmatch(value):
            return value
        raise invalid()
    return AfterValidator(check)


def _retention(days: int) -> int:
    if days not in LOG_RETENTION_DAYS:
        raise invalid()
    return days


_RETENTION_ALLOWED = "one of CloudWatch Logs' retention periods in days: " + ", ".join(map(str, LOG_RETENTION_DAYS))


def _known_instance_type(value: str) -> str:
    family, size = split_instance_type(value)
    if family not in INSTANCE_FAMILIES:
        raise problem(f"got {value!r}: unknown instance family {family!r}; allowed: a type of the families "
                      f"{', '.join(sorted(INSTANCE_FAMILIES))}")
    sizes = allowed_sizes(family)
    if size not in sizes:
        raise problem(f"got {value!r}: unknown size {size!r} for {family}; allowed: {', '.join(sizes)}")
    return value


def _family_architecture(instance_type: str) -> str | None:
    return INSTANCE_FAMILIES.get(split_instance_type(instance_type)[0])


def _default(model: type, field: str) -> Any:
    return model.__pydantic_fields__[field].default


# --- sections -----------------------------------------------------------------------------------

def _vpc_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise problem(f"got {value!r}; allowed: an IPv4 network CIDR (host bits zero) from /16 to /24, "
                      "e.g. 10.0.0.0/16") from None
    if net.version != 4 or not 16 <= net.prefixlen <= 24:
        raise problem(f"got {value!r}; allowed: an IPv4 CIDR with a prefix from /16 to /24")
    if not net.is_private:
        raise problem(f"got {value!r}; allowed: a private range (10/8, 172.16/12, 192.168/16)")
    return value


def _zone_list(zones: tuple[str, ...]) -> tuple[str, ...]:
    found = Problems()
    if not zones:
        found.add((), "got []; allowed: 1 to 3 zones of the region, e.g. [\"ap-northeast-2a\"]")
    if len(zones) > 3:
        found.add((), f"got {len(zones)} zones; allowed: 1 to 3")
    if len(set(zones)) != len(zones):
        found.add((), f"got {shown(zones)}: a zone is listed twice; allowed: each zone once")
    found.raise_if_any("availability_zones")
    return zones


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class NetworkConfig(Section):
    vpc_cidr: Annotated[str, AfterValidator(_vpc_cidr)] = _text(
        allowed="an IPv4 CIDR from /16 to /24 in a private range, e.g. 10.0.0.0/16")
    availability_zones: Annotated[tuple[StrictStr, ...], AfterValidator(_zone_list)] = Field(
        description="a list of 1 to 3 zones of the region, e.g. [\"ap-northeast-2a\", \"ap-northeast-2c\"]")
    nat_gateways: int = _whole(0, 3, 0)
    # Interface endpoints (SSM, Secrets Manager, CloudFormation, CloudWatch) let servers in
    # isolated subnets boot, signal and be reached by Session Manager without a NAT gateway.
    interface_endpoints: bool = _flag(True)
    flow_log_retention_days: Annotated[int, AfterValidator(_retention)] = Field(
        30, strict=True, description=_RETENTION_ALLOWED)

    @rule
    def _a_nat_gateway_per_zone_at_most(c, found: Problems) -> None:
        if c.nat_gateways > len(c.availability_zones):
            found.add("nat_gateways", f"got {c.nat_gateways}; allowed: a whole number from 0 to "
                                      f"{len(c.availability_zones)} (at most one per zone)")


def _ami(value: Any) -> str | dict[str, str]:
    if value == "al2023":
        return value
    if not isinstance(value, dict):
        raise invalid()
    found = Problems()
    for region, ami_id in value.items():
        if not re.fullmatch(_REGION, region):
            found.add((region,), f"got the key {region!r}; allowed: region names such as ap-northeast-2")
        elif not isinstance(ami_id, str) or not _AMI_ID.fullmatch(ami_id):
            found.add((region,), f"got {shown(ami_id)}; allowed: an AMI ID like ami-0123456789abcdef0")
    found.raise_if_any("ami")
    return FrozenDict(value)


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class ServersConfig(Section):
    MOVED = {"processes_per_server": "app.processes_per_server"}

    instance_type: Annotated[str, AfterValidator(_known_instance_type)] = _text(
        allowed="an EC2 instance type such as t3.micro")
    architecture: Architecture = _one_of("x86_64", ARCHITECTURES)
    # "al2023" (latest Amazon Linux 2023 via its SSM parameter) or explicit IDs per region.
    ami: Annotated[str | dict[str, str], PlainValidator(_ami)] = Field(
        "al2023", description="\"al2023\" (the latest Amazon Linux 2023) or a table of AMI IDs per region")
    min_servers: int = _whole(1, 100, 1)
    # Kept only as a statement of the initial size: the group starts at min_servers and only scaling
    # moves it (a deploy never sets it), so any other value would promise a fleet size nothing sets.
    desired_servers: int = _whole(1, 100, note=" equal to min_servers (default: min_servers)")
    max_servers: int = _whole(1, 100, note=" (default: min_servers)")
    root_volume_gib: int = _whole(8, 1024, 16)

    @classmethod
    def _prepare(cls, raw: dict[str, Any], found: Problems) -> None:
        def count(name: str, default: int) -> int:
            value = raw.get(name, default)
            return value if type(value) is int else default
        low = count("min_servers", _default(cls, "min_servers"))
        raw.setdefault("desired_servers", low)
        raw.setdefault("max_servers", low)

    @rule
    def _counts_in_order(c, found: Problems) -> None:
        low, desired, high = c.min_servers, c.desired_servers, c.max_servers
        if desired != low:
            found.add("desired_servers", f"got {desired}, but the group starts at min_servers ({low}) and only scaling "
                                         "moves it; a deploy never sets the fleet size; allowed: leave it out, or "
                                         "equal to min_servers (raise min_servers for a larger floor)")
        if not low <= high:
            found.add((), f"got min_servers ({low}) <= max_servers ({high}), which does not hold; allowed: counts in "
                          "that order")

    @rule
    def _family_of_the_architecture(c, found: Problems) -> None:
        family_arch = _family_architecture(c.instance_type)
        if family_arch != c.architecture:
            families = ", ".join(sorted(f for f, a in INSTANCE_FAMILIES.items() if a == c.architecture))
            found.add("instance_type", f"got {c.instance_type!r}, an {family_arch} instance family, but "
                                       f"servers.architecture is {c.architecture!r}; allowed: a family of that "
                                       f"architecture ({families})")


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class CarrySourceConfig(Section):
    """The EC2 database server an environment moves to RDS from, as its [database] table described it
    (README: Growing the service). The deploy with it keeps that server as it is, next to the new RDS
    instance, carries its data into RDS and forwards its address there; the next deploy, without it,
    removes the server. Its database name and user are [database]'s: RDS takes over both."""

    kind: Literal["ec2"] = _one_of("ec2", ("ec2",))
    instance_type: Annotated[str, AfterValidator(_known_instance_type)] | None = _text(
        None, "the EC2 database server's instance type as deployed (default: t3.micro, or t4g.micro with arm64 "
              "servers)")
    storage_gib: int = _whole(20, 16384, 20, note=" (its data volume as deployed)")
    port: int = _whole(1024, 65535, 5432, note=" (its port as deployed)")
    root_volume_gib: int = _whole(8, 1024, 16, note=" (its root volume as deployed)")
    name: Annotated[str, _matching(_DB_IDENTIFIER)] = _text(
        "app", "its database name as deployed: [database] name's (RDS takes it over)")
    user: Annotated[str, _matching(_DB_IDENTIFIER)] = _text(
        "app", "its user as deployed: [database] user's (RDS takes it over, with its password)")


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class DatabaseConfig(Section):
    kind: DatabaseKind = _one_of("ec2", DATABASE_KINDS)   # stage 1 always runs it on the app server
    # RDS names the same types with a db. prefix; the EC2 database server shares the app's architecture.
    instance_type: Annotated[str, AfterValidator(_known_instance_type)] | None = _text(
        None, "an instance type such as t3.micro (default: t3.micro, or t4g.micro with arm64 servers)")
    storage_gib: int = _whole(20, 16384, 20)
    name: Annotated[str, _matching(_DB_IDENTIFIER)] = _text(
        "app", "lowercase letters, digits and _ (starting with a letter)")
    user: Annotated[str, _matching(_DB_IDENTIFIER)] = _text(
        "app", "lowercase letters, digits and _ (starting with a letter)")
    port: int = _whole(1024, 65535, 5432)
    multi_az: bool | None = _flag(
        None, note=" (default: true for kind \"rds\" unless operations.removal_policy is \"destroy\")")
    root_volume_gib: int = _whole(8, 1024, 16, note=" (the EC2 database server's root volume)")
    # Moving from an EC2 database server to RDS: that server's old [database] settings, for one deploy.
    carry_from: CarrySourceConfig | None = Field(
        None, description="a [database.carry_from] table: the EC2 database server's settings as deployed "
                          "(kind = \"ec2\", instance_type, storage_gib, port, root_volume_gib), for the one "
                          "deploy that carries its data into RDS")

    @rule
    def _multi_az_is_rds(c, found: Problems) -> None:
        if c.multi_az and c.kind == "ec2":
            found.add("multi_az", "got true with database.kind 'ec2'; allowed: false for an EC2 database server")

    @rule
    def _carry_into_rds(c, found: Problems) -> None:
        if c.carry_from is not None and c.kind != "rds":
            found.add("carry_from", f"is set with database.kind {c.kind!r}; allowed: only with kind = \"rds\" "
                                    "(the EC2 database server whose data moves into RDS), or remove it")
        for field in ("name", "user"):
            old, new = getattr(c.carry_from, field, None), getattr(c, field)
            if c.carry_from is not None and old != new:
                found.add(("carry_from", field), f"got {old!r}, but database.{field} is {new!r}; allowed: the same "
                                                 f"(RDS takes over the database's {field}: change it in a deploy "
                                                 "of its own, before or after the move)")


def _admin_cidrs(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    found = Problems()
    for i, cidr in enumerate(cidrs):
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            found.add((i,), f"got {cidr!r}; allowed: a network CIDR (host bits zero), e.g. 203.0.113.0/24")
            continue
        if net.prefixlen == 0:
            found.add((i,), f"got {cidr!r}, which opens SSH to the whole internet; allowed: your office or VPN "
                            "range (use Session Manager when you have none)")
    found.raise_if_any("admin_cidrs")
    return cidrs


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class AccessConfig(Section):
    admin_cidrs: Annotated[tuple[StrictStr, ...], AfterValidator(_admin_cidrs)] = Field(
        (), description="a list of network CIDRs that may reach SSH, e.g. [\"203.0.113.0/24\"]")
    key_pair: KeyPairMode = _one_of("none", KEY_PAIR_MODES)
    key_pair_name: Annotated[str, _matching(_KEY_PAIR_NAME, empty=True)] = _text(
        "", "the name of an existing EC2 key pair (letters, digits, spaces and ._-), or \"\"")

    @rule
    def _existing_key_pair_named(c, found: Problems) -> None:
        if c.key_pair == "existing" and not c.key_pair_name:
            found.add("key_pair_name", "is required when access.key_pair is 'existing'; allowed: the name of an "
                                       "EC2 key pair in the region")
        if c.key_pair != "existing" and c.key_pair_name:
            found.add("key_pair_name", f"got {c.key_pair_name!r}, but access.key_pair is {c.key_pair!r}; "
                                       "allowed: \"\" (the name is only used with key_pair = \"existing\")")

    @rule
    def _ssh_open_to_someone(c, found: Problems) -> None:
        if c.key_pair != "none" and not c.admin_cidrs:
            found.add("admin_cidrs", f"got [] with access.key_pair {c.key_pair!r}: SSH would be open to nobody; "
                                     "allowed: your admin CIDRs, or key_pair = \"none\" and Session Manager")


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class LoadBalancerConfig(Section):
    MOVED = {"health_check_path": "app.health_path"}

    certificate_arn: Annotated[str, _matching(_CERT_ARN, empty=True)] = _text(
        "", "an ACM certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/UUID) or \"\"")
    deregistration_delay_seconds: int = _whole(0, 3600, 30)
    # target tracking: ALB requests per target per minute
    target_requests_per_server: int = _whole(10, 1_000_000, 500)
    target_cpu_percent: int = _whole(10, 95, 60)


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class OperationsConfig(Section):
    removal_policy: RemovalPolicyName = _one_of("destroy", REMOVAL_POLICIES)
    # Termination protection on servers and deletion protection on the database and load balancer.
    deletion_protection: bool = _flag(note=" (default: true unless removal_policy is \"destroy\")")
    alarm_email: Annotated[str, _matching(_EMAIL, empty=True)] = _text("", "an email address or \"\"")
    log_retention_days: Annotated[int, AfterValidator(_retention)] = Field(
        14, strict=True, description=_RETENTION_ALLOWED)
    backup_retention_days: int = _whole(1, 35, 7)

    @classmethod
    def _prepare(cls, raw: dict[str, Any], found: Problems) -> None:
        raw.setdefault("deletion_protection", raw.get("removal_policy", _default(cls, "removal_policy")) != "destroy")


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class EmulatorConfig(Section):
    # Local AWS emulators run no Lambda-backed custom resources: turn off the features that
    # need one (the VPC default-SG lockdown, S3 auto-delete) when deploying to one.
    custom_resources: bool = _flag(True)


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class PipelineConfig(Section):
    enabled: bool = _flag(False)
    connection_arn: Annotated[str, _matching(_CONNECTION_ARN, empty=True)] = _text(
        "", "a CodeConnections connection ARN or \"\"")
    repository: Annotated[str, _matching(r"[\w.-]+/[\w.-]+", empty=True)] = _text("", "owner/name or \"\"")
    branch: Annotated[str, _matching(r"[\w./-]+")] = _text("main", "a branch name")

    @rule
    def _enabled_needs_a_source(c, found: Problems) -> None:
        missing = [f for f in ("connection_arn", "repository") if not getattr(c, f)]
        if c.enabled and missing:
            found.add((), f"got enabled = true without {' and '.join(missing)}; allowed: enabled = true needs "
                          "connection_arn and repository")


# --- the app contract -----------------------------------------------------------------------------

def _source_path(source: str) -> Path:
    return Path(source) if Path(source).is_absolute() else REPO_ROOT / source


def _app_source(source: str) -> str:
    path = _source_path(source)
    if not source or not path.is_dir():
        raise problem(f"got {source!r}, which is not a directory ({path}); allowed: the app's directory, relative "
                      "to the repository root or absolute")
    if not (path / "requirements.txt").is_file():
        raise problem(f"got {source!r}, which has no requirements.txt; allowed: a directory with the app and its "
                      "requirements.txt (the servers build a virtualenv from it)")
    return source


RELEASE_COMMAND_PLACEHOLDERS = render.RELEASE_COMMAND_PLACEHOLDERS


def _command_line(command: str, allowed: str, placeholders: tuple[str, ...]) -> None:
    """One line, and only the placeholders given (no format spec or conversion)."""
    if "\n" in command or "\r" in command or "\0" in command:
        raise problem(f"got a command of {len(command.splitlines())} lines; allowed: {allowed}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(command) if name is not None]
    except ValueError as err:
        raise problem(f"got {command!r} ({err}); allowed: {allowed}, and {{{{ or }}}} for a literal brace") from None
    unknown = ["{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
               for name, spec, conv in fields if name not in placeholders or spec or conv]
    if unknown:
        raise problem(f"got {command!r} with {', '.join(unknown)}; allowed: {allowed}")


def _start_command(command: str) -> str:
    allowed = ("one command line serving the inherited listening socket: {fd} (e.g. uvicorn --fd {fd}) or "
               "gunicorn; placeholders {fd}, {bind}, {host}, {port}, {app_root}")
    _command_line(command, allowed, START_COMMAND_PLACEHOLDERS)
    if render.start_command_problem(command):
        raise problem(f"got {command!r}, which does not serve the listening socket systemd passes as file "
                      f"descriptor 3 (a restart would refuse connections); allowed: {allowed}")
    return command


def _release_command(command: str) -> str:
    allowed = ("\"\" (none) or one shell command line, run once per deploy before the new version takes traffic; "
               "placeholder {app_root}")
    _command_line(command, allowed, RELEASE_COMMAND_PLACEHOLDERS)
    if command and not command.strip():
        raise problem(f"got {command!r}, only spaces; allowed: {allowed}")
    return command


def _variable_name_problem(name: str) -> str | None:
    if not _VARIABLE.fullmatch(name):
        return (f"got the name {name!r}; allowed: capital letters, digits and _, not starting with a digit "
                "(e.g. APP_MODE)")
    if name in RESERVED_VARIABLES:
        return f"got the name {name!r}, which the platform sets; allowed: any name but {', '.join(RESERVED_VARIABLES)}"
    return None


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise invalid()
    found = Problems()
    for name, text in value.items():
        if message := _variable_name_problem(name):
            found.add((name,), message)
        elif any(part in name for part in SECRET_NAME_PARTS):
            # The value is not repeated: it may be the very secret.
            found.add((name,), "got a plain value for a secret's name; allowed: none here, it belongs in "
                               "[app.secrets] (read at boot, never written into the template)")
        elif not isinstance(text, str):
            found.add((name,), f"got {shown(text)}; allowed: a string (in quotes)")
        elif "\n" in text or "\r" in text or "\0" in text:
            found.add((name,), f"got a value of {len(text.splitlines())} lines; allowed: a single-line string")
    found.raise_if_any("environment")
    return FrozenDict(value)


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class AppSecretRef(Section):
    """Where the servers read one secret at boot: `{ secretsmanager = "name-or-ARN", key = "json-key" }`
    or `{ ssm = "/parameter/name" }` in TOML."""

    store: SecretStore = Field(description=", ".join(SECRET_STORES))
    name: str = _text(allowed="the secret's (secretsmanager) or parameter's (ssm) name or ARN")
    key: str = _text("", "a field of the secret's JSON value (Secrets Manager only), or \"\" for the whole value")

    @classmethod
    def _prepare(cls, raw: dict[str, Any], found: Problems) -> None:
        if "store" in raw:
            return   # already in the model's own form (dataclasses.replace, or built in Python)
        forms = "{ secretsmanager = \"name-or-ARN\", key = \"json-key\" } (key optional) or { ssm = \"/parameter/name\" }"
        stores = [s for s in SECRET_STORES if s in raw]
        unknown = sorted(set(raw) - {*SECRET_STORES, "key"})
        if len(stores) != 1 or unknown:
            found.add((), f"got {shown(raw)}; allowed: {forms}")
            found.raise_if_any(cls.__name__)
        store = stores[0]
        if not isinstance(raw[store], str):
            found.add(store, f"got {shown(raw[store])}; allowed: the {'secret' if store != 'ssm' else 'parameter'}'s "
                             "name or ARN, in quotes")
            found.raise_if_any(cls.__name__)
        raw["store"], raw["name"] = store, raw.pop(store)

    @rule
    def _name_of_its_store(c, found: Problems) -> None:
        if c.store == "secretsmanager" and not _SECRETSMANAGER_NAME.fullmatch(c.name):
            found.add("secretsmanager", f"got {c.name!r}; allowed: a Secrets Manager secret name (letters, digits "
                                        "and /_+=.@-, at most 512) or its ARN")
        if c.store == "ssm" and not _SSM_NAME.fullmatch(c.name):
            found.add("ssm", f"got {c.name!r}; allowed: an SSM parameter name (letters, digits and _.-/, "
                             "e.g. /myapp/api-key) or its ARN")

    @rule
    def _key_only_for_json_secrets(c, found: Problems) -> None:
        if c.key and c.store != "secretsmanager":
            found.add("key", f"got {c.key!r} with {c.store}; allowed: no key: key picks a field of a JSON secret "
                             "in Secrets Manager")
        elif c.key and not _SECRET_KEY.fullmatch(c.key):
            found.add("key", f"got {c.key!r}; allowed: a JSON key of letters, digits and _.@+=/- (at most 256)")


_SECRET_REF = TypeAdapter(AppSecretRef)


def _secrets(value: Any) -> dict[str, AppSecretRef]:
    if not isinstance(value, dict):
        raise invalid()
    found, refs = Problems(), {}
    for name, ref in value.items():
        if message := _variable_name_problem(name):
            found.add((name,), message)
            continue
        try:
            refs[name] = _SECRET_REF.validate_python(ref)
        except ValidationError as err:
            found.extend(err, (name,))
    found.raise_if_any("secrets")
    return FrozenDict(refs)


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class AppConfig(Section):
    """The app contract: what the servers run and how. A fork swaps the app here, with no code change."""

    source: Annotated[str, AfterValidator(_app_source)] = _text(
        DEFAULT_APP_SOURCE, "the app's directory with its requirements.txt, relative to the repository root "
                            "or absolute")
    start_command: Annotated[str, AfterValidator(_start_command)] = _text(
        render.DEFAULT_START_COMMAND, "one command line serving the inherited socket: {fd} or gunicorn")
    # The sample app's (its schema), as start_command defaults to the sample's: "" for an app with none.
    release_command: Annotated[str, AfterValidator(_release_command)] = _text(
        render.DEFAULT_RELEASE_COMMAND,
        "\"\" or one shell command line ({app_root}), run once per deploy before the new version serves")
    health_path: Annotated[str, _matching(_HEALTH_PATH)] = _text(
        DEFAULT_HEALTH_PATH, "a path starting with / (letters, digits and _-./), e.g. /health")
    packages: tuple[Annotated[StrictStr, _matching(_PACKAGE)], ...] = Field(
        (), description="a list of Amazon Linux 2023 package names (letters, digits and ._+-), e.g. [\"libpq\"]")
    processes_per_server: int | None = _whole(
        1, 64, None, note=" (default: the instance type's vCPU count on stage 4, else 1)")
    environment: Annotated[dict[str, str], PlainValidator(_environment)] = Field(
        default_factory=dict, description="a table of NAME = \"value\"")
    secrets: Annotated[dict[str, AppSecretRef], PlainValidator(_secrets)] = Field(
        default_factory=dict, description="a table of NAME = { secretsmanager = \"...\", key = \"...\" } "
                                          "or NAME = { ssm = \"/...\" }")

    @property
    def source_dir(self) -> str:
        """The app's directory as an absolute path."""
        return str(_source_path(self.source).resolve())

    @rule
    def _one_table_per_name(c, found: Problems) -> None:
        for name in sorted(set(c.environment) & set(c.secrets)):
            found.add(("secrets", name), f"got {name} in both [app.environment] and [app.secrets]; allowed: one "
                                         "of the two")


# --- HTTPS by domain --------------------------------------------------------------------------------

def _parent_zone(name: str) -> str:
    """`name` without its first label; a two-label name is its own zone (example.com, not com)."""
    parent = name.partition(".")[2]
    return parent if "." in parent else name


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class DomainConfig(Section):
    name: Annotated[str, _matching(_DNS_NAME, empty=True)] = _text(
        "", "\"\" (no domain) or a lowercase DNS name with at least two labels, e.g. app.example.com")
    hosted_zone_id: Annotated[str, _matching(_HOSTED_ZONE_ID, empty=True)] = _text(
        "", "the Route 53 hosted zone's ID (Z and up to 31 capital letters and digits), or \"\" without a name")
    hosted_zone_name: Annotated[str, _matching(_DNS_NAME, empty=True)] = _text(
        allowed="the hosted zone's DNS name: domain.name or a parent of it (default: domain.name without its "
                "first label)")

    @classmethod
    def _prepare(cls, raw: dict[str, Any], found: Problems) -> None:
        name = raw.get("name", _default(cls, "name"))
        # From a name that fails its own check, no zone: its error is enough.
        valid = isinstance(name, str) and re.fullmatch(_DNS_NAME, name, re.ASCII)
        raw.setdefault("hosted_zone_name", _parent_zone(name) if valid else "")

    @property
    def enabled(self) -> bool:
        return bool(self.name)

    @rule
    def _zone_of_the_name(c, found: Problems) -> None:
        name, zone = c.name, c.hosted_zone_name
        if name and not c.hosted_zone_id:
            found.add("hosted_zone_id", f"is required with domain.name {name!r}; allowed: the ID of its Route 53 "
                                        "hosted zone (Z...): the certificate is validated by DNS and the record added "
                                        "there, with no lookup at synth")
        if name and zone and not (zone == name or name.endswith("." + zone)):
            found.add("hosted_zone_name", f"got {zone!r}, which is neither {name!r} nor a parent of it; allowed: "
                                          f"{name!r} or a parent domain such as {_parent_zone(name)!r}")
        if not name:
            for field in ("hosted_zone_id", "hosted_zone_name"):
                if getattr(c, field):
                    found.add(field, f"got {shown(getattr(c, field))}, but domain.name is \"\"; allowed: \"\" "
                                     "(set domain.name to serve a domain)")


# --- the environment --------------------------------------------------------------------------------

def _stage(value: Any) -> Stage:
    if isinstance(value, int) and not isinstance(value, bool) and value in Stage._value2member_map_:
        return Stage(value)
    raise invalid()


def _account(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and _ACCOUNT.fullmatch(value):
        return value
    raise invalid()


def _processes_default(stage: Any, instance_type: Any) -> int:
    if stage != Stage.MULTI_PROCESS or isinstance(stage, bool):
        return 1
    try:
        return vcpu_count(instance_type)
    except (AttributeError, KeyError):
        return 1    # an unknown type fails its own check


@dataclass(frozen=True, config=MODEL_CONFIG, kw_only=True)
class EnvironmentConfig(Section):
    """One environment: config/<name>.toml, checked as a whole. Defaults that depend on other sections
    (the database's instance type and Multi-AZ, the app's processes per server) are filled in `_prepare`;
    the rules between sections are the `@rule` methods below."""

    name: Annotated[str, _matching(ENV_NAME)] = _text(
        allowed="lowercase letters, digits and '-' (at most 20 characters, starting with a letter)")
    stage: Annotated[Stage, PlainValidator(_stage)] = Field(
        description="1 (single server), 2 (separate database), 3 (load balanced), 4 (multi-process)")
    region: Annotated[str, _matching(_REGION)] = _text("ap-northeast-2", "an AWS region such as ap-northeast-2")
    account: Annotated[str | None, PlainValidator(_account)] = Field(
        None, description="a 12-digit AWS account ID or \"\" (the account of your credentials)")
    project: Annotated[str, _matching(r"[a-z][a-z0-9-]{1,30}")] = _text(
        "staged-web", "lowercase letters, digits and '-' (2 to 31, starting with a letter)")
    network: NetworkConfig = Field(description="a [network] table")
    servers: ServersConfig = Field(description="a [servers] table")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, description="a [database] table")
    access: AccessConfig = Field(default_factory=AccessConfig, description="an [access] table")
    load_balancer: LoadBalancerConfig = Field(default_factory=LoadBalancerConfig,
                                              description="a [load_balancer] table")
    operations: OperationsConfig = Field(default_factory=OperationsConfig, description="an [operations] table")
    app: AppConfig = Field(default_factory=AppConfig, description="an [app] table")
    domain: DomainConfig = Field(default_factory=DomainConfig,
                                 description="a [domain] table or domain = { name = \"...\", hosted_zone_id = \"...\" }")
    emulator: EmulatorConfig = Field(default_factory=EmulatorConfig, description="an [emulator] table")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="a [pipeline] table")

    @property
    def stack_name(self) -> str:
        return f"{self.project}-{self.name}"

    @property
    def is_production(self) -> bool:
        return self.operations.removal_policy != "destroy"

    @classmethod
    def _prepare(cls, raw: dict[str, Any], found: Problems) -> None:
        architecture = read(raw, "servers", "architecture", ServersConfig)
        kind = read(raw, "database", "kind", DatabaseConfig)
        removal_policy = read(raw, "operations", "removal_policy", OperationsConfig)
        fill(raw, "database", DatabaseConfig, {
            "instance_type": DEFAULT_DATABASE_INSTANCE_TYPES.get(architecture, DEFAULT_DATABASE_INSTANCE_TYPES["x86_64"]),
            # A standby in a second zone for the data that is kept.
            "multi_az": kind == "rds" and removal_policy != "destroy",
        })
        carried = raw.get("database", {}).get("carry_from") if isinstance(raw.get("database"), dict) else None
        if isinstance(carried, dict) and "instance_type" not in carried:
            raw["database"]["carry_from"] = {**carried, "instance_type": DEFAULT_DATABASE_INSTANCE_TYPES.get(
                architecture, DEFAULT_DATABASE_INSTANCE_TYPES["x86_64"])}
        fill(raw, "app", AppConfig, {
            "processes_per_server": _processes_default(raw.get("stage"),
                                                       read(raw, "servers", "instance_type", ServersConfig))})

    @rule
    def _one_server_below_stage_3(c, found: Problems) -> None:
        counts = (c.servers.min_servers, c.servers.desired_servers, c.servers.max_servers)
        if not c.stage.load_balanced and counts != (1, 1, 1):
            found.add("servers", f"got min/desired/max_servers {'/'.join(map(str, counts))}; stage {int(c.stage)} runs "
                                 "exactly one app server; allowed: 1 each (use stage 3 or 4 to scale out)")

    @rule
    def _processes_on_stage_4(c, found: Problems) -> None:
        processes = c.app.processes_per_server
        if c.stage != Stage.MULTI_PROCESS and processes != 1:
            found.add(("app", "processes_per_server"), f"got {processes}; stage {int(c.stage)} runs one app process "
                                                       "per server (allowed: 1), stage 4 runs several")

    @rule
    def _no_rds_on_stage_1(c, found: Problems) -> None:
        if c.stage == Stage.SINGLE_SERVER and c.database.kind == "rds":
            found.add(("database", "kind"), "got 'rds' with stage 1; allowed: ec2: stage 1 runs PostgreSQL on the "
                                            "app server (use stage 2 or later for RDS)")

    @rule
    def _database_server_architecture(c, found: Problems) -> None:
        itype, architecture = c.database.instance_type, c.servers.architecture
        family_arch = _family_architecture(itype)
        if c.database.kind == "ec2" and family_arch != architecture:
            found.add(("database", "instance_type"), f"got {itype!r}, an {family_arch} instance family, but "
                                                     f"servers.architecture is {architecture!r}; allowed: a family of "
                                                     "that architecture (the EC2 database server shares it)")

    @rule
    def _carry_from_a_database_server(c, found: Problems) -> None:
        source = c.database.carry_from
        if source is None:
            return
        if c.stage == Stage.SINGLE_SERVER:
            found.add(("database", "carry_from"), "is set with stage 1, which has no database server; allowed: "
                                                  "stage 2 or later (stage 1 -> 2 carries its own data: no "
                                                  "carry_from needed)")
        family_arch = _family_architecture(source.instance_type)
        if family_arch != c.servers.architecture:
            found.add(("database", "carry_from", "instance_type"),
                      f"got {source.instance_type!r}, an {family_arch} instance family, but servers.architecture is "
                      f"{c.servers.architecture!r}; allowed: the type the EC2 database server runs as deployed")

    @rule
    def _nat_for_private_servers(c, found: Problems) -> None:
        if c.stage.load_balanced and c.network.nat_gateways == 0:
            found.add(("network", "nat_gateways"), f"got 0 with stage {int(c.stage)}: app servers sit in private "
                                                   "subnets and install the app's Python packages at boot; allowed: "
                                                   "1 or more")

    @rule
    def _two_zones_for_a_load_balancer(c, found: Problems) -> None:
        if c.stage.load_balanced and len(c.network.availability_zones) < 2:
            found.add(("network", "availability_zones"), f"got 1 zone; stage {int(c.stage)} runs behind a load "
                                                         "balancer, which needs at least 2 zones; allowed: 2 or 3 zones")

    @rule
    def _two_zones_for_rds(c, found: Problems) -> None:
        if c.database.kind == "rds" and c.stage >= Stage.SEPARATE_DATABASE and len(c.network.availability_zones) < 2:
            found.add(("database", "kind"), "got 'rds' with 1 zone: RDS needs a subnet group in at least 2 "
                                            "availability zones; allowed: ec2, or list 2 zones")

    @rule
    def _endpoints_for_an_isolated_database(c, found: Problems) -> None:
        if c.stage >= Stage.SEPARATE_DATABASE and (c.database.kind == "ec2" or c.database.carry_from) \
                and not c.network.interface_endpoints:
            found.add(("network", "interface_endpoints"), "got false, but the EC2 database server sits in an isolated "
                                                          "subnet and needs them to fetch its secret and signal "
                                                          "CloudFormation; allowed: true, or database.kind = \"rds\"")

    @rule
    def _certificate_needs_a_load_balancer(c, found: Problems) -> None:
        if c.load_balancer.certificate_arn and not c.stage.load_balanced:
            found.add(("load_balancer", "certificate_arn"), f"is set but stage {int(c.stage)} has no load balancer; "
                                                            "allowed: \"\" below stage 3")

    @rule
    def _zones_of_the_region(c, found: Problems) -> None:
        region, known = c.region, AVAILABILITY_ZONES.get(c.region)
        letters = ", ".join(region + s for s in known) if known else f"{region} followed by one letter"
        for i, zone in enumerate(c.network.availability_zones):
            suffix = zone[len(region):]
            if not zone.startswith(region) or len(suffix) != 1 or (known is not None and suffix not in known):
                found.add(("network", "availability_zones", i), f"got {zone!r}, which is not a zone of region "
                                                                f"{region}; allowed: {letters}")

    @rule
    def _an_image_for_the_region(c, found: Problems) -> None:
        ami = c.servers.ami
        if isinstance(ami, dict) and c.region not in ami:
            found.add(("servers", "ami"), f"got {shown(ami)}, with no AMI for region {c.region}; allowed: add "
                                          f"{c.region} = \"ami-...\", or \"al2023\"")
