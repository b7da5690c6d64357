"""Read `config/<env>.toml`, check every field, and build an `EnvironmentConfig`.

All problems in a file are collected and reported together as one `ConfigError`, each
line naming the environment, the field and what is allowed. Nothing is built before the
whole file is valid.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

from envconfig.instance_types import INSTANCE_FAMILIES, allowed_sizes, split_instance_type, vcpu_count
from envconfig.model import (
    ARCHITECTURES,
    DATABASE_KINDS,
    KEY_PAIR_MODES,
    REMOVAL_POLICIES,
    AccessConfig,
    DatabaseConfig,
    EmulatorConfig,
    EnvironmentConfig,
    LoadBalancerConfig,
    NetworkConfig,
    OperationsConfig,
    PipelineConfig,
    ServersConfig,
    Stage,
)
from envconfig.regions import AVAILABILITY_ZONES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_REGION = "ap-northeast-2"
_ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_ACCOUNT = re.compile(r"^\d{12}$")
_AMI_ID = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
_CERT_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$")
_CONNECTION_ARN = re.compile(r"^arn:aws[a-z-]*:(codestar-connections|codeconnections):[a-z0-9-]+:\d{12}:connection/[0-9a-f-]{36}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_KEY_PAIR_NAME = re.compile(r"^[\w.\- ]{1,255}$")
_LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                       2557, 2922, 3288, 3653)
_SECTIONS = {"stage", "account", "region", "project", "network", "servers", "database", "access",
             "load_balancer", "operations", "emulator", "pipeline"}


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
    if not _ENV_NAME.match(name):
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


class _Reader:
    """Reads typed fields out of one TOML table and records what is wrong with them."""

    def __init__(self, env: str, problems: list[str]):
        self.env = env
        self.problems = problems

    def fail(self, field: str, message: str) -> None:
        self.problems.append(f"environment {self.env!r}: {field}: {message}")

    def table(self, raw: dict, key: str, allowed: set[str]) -> dict:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, "must be a table ([" + key + "])")
            return {}
        for unknown in sorted(set(value) - allowed):
            self.fail(f"{key}.{unknown}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        return value

    def integer(self, raw: dict, field: str, section: str, default: Any, low: int, high: int) -> int:
        value = raw.get(field, default)
        name = f"{section}.{field}" if section else field
        if value is None:
            self.fail(name, f"is required (a whole number from {low} to {high})")
            return low
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(name, f"got {value!r}; allowed: a whole number from {low} to {high}")
            return low
        return value

    def string(self, raw: dict, field: str, section: str, default: Any, allowed: tuple[str, ...] | None = None,
               pattern: re.Pattern | None = None, what: str = "") -> str:
        value = raw.get(field, default)
        name = f"{section}.{field}" if section else field
        if value is None:
            self.fail(name, "is required" + (f"; allowed: {', '.join(allowed)}" if allowed else f" ({what})"))
            return ""
        if not isinstance(value, str):
            self.fail(name, f"got {value!r}; must be a string" + (f": {what}" if what else ""))
            return ""
        if allowed is not None and value not in allowed:
            self.fail(name, f"got {value!r}; allowed: {', '.join(allowed)}")
        if pattern is not None and value and not pattern.match(value):
            self.fail(name, f"got {value!r}; allowed: {what}")
        return value

    def boolean(self, raw: dict, field: str, section: str, default: bool) -> bool:
        value = raw.get(field, default)
        if not isinstance(value, bool):
            self.fail(f"{section}.{field}", f"got {value!r}; allowed: true or false")
            return default
        return value

    def string_list(self, raw: dict, field: str, section: str, default: list) -> tuple[str, ...]:
        value = raw.get(field, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(f"{section}.{field}", f"got {value!r}; must be a list of strings")
            return ()
        return tuple(value)


def _network(r: _Reader, raw: dict, region: str) -> NetworkConfig:
    sec = r.table(raw, "network", {"vpc_cidr", "availability_zones", "nat_gateways", "interface_endpoints",
                                   "flow_log_retention_days"})
    cidr = r.string(sec, "vpc_cidr", "network", None, what="an IPv4 CIDR from /16 to /24, e.g. 10.0.0.0/16")
    try:
        net = ipaddress.ip_network(cidr, strict=True) if cidr else None
    except ValueError:
        r.fail("network.vpc_cidr", f"got {cidr!r}; allowed: an IPv4 network CIDR (host bits zero) from /16 to /24")
        net = None
    if net is not None and (net.version != 4 or not 16 <= net.prefixlen <= 24):
        r.fail("network.vpc_cidr", f"got {cidr!r}; allowed: an IPv4 CIDR with a prefix from /16 to /24")
    elif net is not None and not net.is_private:
        r.fail("network.vpc_cidr", f"got {cidr!r}; allowed: a private range (10/8, 172.16/12, 192.168/16)")
    azs = r.string_list(sec, "availability_zones", "network", [])
    known = AVAILABILITY_ZONES.get(region)
    if not azs:
        r.fail("network.availability_zones", f"is required: a list of 1 to 3 zones of {region}, e.g. [\"{region}a\"]")
    if len(azs) > 3:
        r.fail("network.availability_zones", f"got {len(azs)} zones; allowed: 1 to 3")
    if len(set(azs)) != len(azs):
        r.fail("network.availability_zones", f"got {list(azs)}; a zone is listed twice")
    for az in azs:
        suffix = az[len(region):]
        if not az.startswith(region) or len(suffix) != 1 or (known is not None and suffix not in known):
            letters = ", ".join(region + s for s in known) if known else f"{region} followed by one letter"
            r.fail("network.availability_zones", f"{az!r} is not a zone of region {region}; allowed: {letters}")
    nat = r.integer(sec, "nat_gateways", "network", 0, 0, max(len(azs), 1))
    flow_days = r.integer(sec, "flow_log_retention_days", "network", 30, 1, 3653)
    if flow_days not in _LOG_RETENTION_DAYS:
        r.fail("network.flow_log_retention_days", f"got {flow_days}; allowed: {_LOG_RETENTION_DAYS}")
    endpoints = r.boolean(sec, "interface_endpoints", "network", True)
    return NetworkConfig(vpc_cidr=cidr, availability_zones=azs, nat_gateways=nat, interface_endpoints=endpoints,
                         flow_log_retention_days=flow_days)


def _instance_type(r: _Reader, field: str, value: str, architecture: str | None) -> None:
    family, size = split_instance_type(value)
    if family not in INSTANCE_FAMILIES:
        r.fail(field, f"got {value!r}: unknown instance family {family!r}; allowed families: "
                      f"{', '.join(sorted(INSTANCE_FAMILIES))}")
        return
    sizes = allowed_sizes(family)
    if size not in sizes:
        r.fail(field, f"got {value!r}: unknown size {size!r} for {family}; allowed: {', '.join(sizes)}")
    if architecture and INSTANCE_FAMILIES[family] != architecture:
        r.fail(field, f"got {value!r}, an {INSTANCE_FAMILIES[family]} instance family, but servers.architecture is "
                      f"{architecture!r}; pick a family of that architecture")


def _servers(r: _Reader, raw: dict, stage: Stage, region: str) -> ServersConfig:
    sec = r.table(raw, "servers", {"instance_type", "architecture", "ami", "min_servers", "desired_servers",
                                   "max_servers", "processes_per_server", "root_volume_gib"})
    arch = r.string(sec, "architecture", "servers", "x86_64", allowed=ARCHITECTURES)
    itype = r.string(sec, "instance_type", "servers", None, what="an EC2 instance type such as t3.micro")
    if itype:
        _instance_type(r, "servers.instance_type", itype, arch if arch in ARCHITECTURES else None)
    ami = sec.get("ami", "al2023")
    if isinstance(ami, dict):
        if region not in ami:
            r.fail("servers.ami", f"has no AMI for region {region}; add {region} = \"ami-…\" or use \"al2023\"")
        for reg, ami_id in ami.items():
            if not isinstance(ami_id, str) or not _AMI_ID.match(ami_id):
                r.fail(f"servers.ami.{reg}", f"got {ami_id!r}; allowed: an AMI ID like ami-0123456789abcdef0")
    elif ami != "al2023":
        r.fail("servers.ami", f"got {ami!r}; allowed: \"al2023\" or a table of AMI IDs per region")
    low = r.integer(sec, "min_servers", "servers", 1, 1, 100)
    desired = r.integer(sec, "desired_servers", "servers", low, 1, 100)
    high = r.integer(sec, "max_servers", "servers", max(desired, low), 1, 100)
    if not low <= desired <= high:
        r.fail("servers", f"min_servers ({low}) <= desired_servers ({desired}) <= max_servers ({high}) must hold")
    if not stage.load_balanced and (low, desired, high) != (1, 1, 1):
        r.fail("servers", f"stage {int(stage)} runs exactly one app server; min/desired/max_servers must be 1 "
                          "(use stage 3 or 4 to scale out)")
    default_processes = vcpu_count(itype) if itype and not any("instance_type" in p for p in r.problems) else 1
    processes = r.integer(sec, "processes_per_server", "servers", default_processes, 1, 64)
    if stage != Stage.MULTI_PROCESS and processes != 1 and "processes_per_server" in sec:
        r.fail("servers.processes_per_server", f"got {processes}; stage {int(stage)} runs one app process per "
                                               "server (allowed: 1), stage 4 runs several")
    if stage != Stage.MULTI_PROCESS:
        processes = 1
    root = r.integer(sec, "root_volume_gib", "servers", 16, 8, 1024)
    return ServersConfig(instance_type=itype, architecture=arch, ami=ami, min_servers=low, desired_servers=desired,
                         max_servers=high, processes_per_server=processes, root_volume_gib=root)


def _database(r: _Reader, raw: dict, stage: Stage, architecture: str) -> DatabaseConfig:
    sec = r.table(raw, "database", {"kind", "instance_type", "storage_gib", "name", "user", "port"})
    kind = r.string(sec, "kind", "database", "ec2", allowed=DATABASE_KINDS)
    if stage == Stage.SINGLE_SERVER and kind == "rds":
        r.fail("database.kind", "got 'rds'; stage 1 runs PostgreSQL on the app server (allowed: ec2); "
                                "use stage 2 or later for RDS")
    itype = r.string(sec, "instance_type", "database", "t3.micro" if architecture == "x86_64" else "t4g.micro")
    if itype:
        family, size = split_instance_type(itype)
        # RDS names the same types with a db. prefix; the EC2 database server shares the app's architecture.
        _instance_type(r, "database.instance_type", itype, architecture if kind == "ec2" else None)
    storage = r.integer(sec, "storage_gib", "database", 20, 20, 16384)
    name = r.string(sec, "name", "database", "app", pattern=re.compile(r"^[a-z][a-z0-9_]{0,62}$"),
                    what="lowercase letters, digits and _ (starting with a letter)")
    user = r.string(sec, "user", "database", "app", pattern=re.compile(r"^[a-z][a-z0-9_]{0,62}$"),
                    what="lowercase letters, digits and _ (starting with a letter)")
    port = r.integer(sec, "port", "database", 5432, 1024, 65535)
    return DatabaseConfig(kind=kind, instance_type=itype, storage_gib=storage, name=name, user=user, port=port)


def _access(r: _Reader, raw: dict) -> AccessConfig:
    sec = r.table(raw, "access", {"admin_cidrs", "key_pair", "key_pair_name"})
    cidrs = r.string_list(sec, "admin_cidrs", "access", [])
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            r.fail("access.admin_cidrs", f"{cidr!r} is not a network CIDR (host bits zero), e.g. 203.0.113.0/24")
            continue
        if net.prefixlen == 0:
            r.fail("access.admin_cidrs", f"{cidr!r} opens SSH to the whole internet; allowed: your office or VPN "
                                         "range (use Session Manager when you have none)")
    mode = r.string(sec, "key_pair", "access", "none", allowed=KEY_PAIR_MODES)
    key_name = r.string(sec, "key_pair_name", "access", "", pattern=_KEY_PAIR_NAME, what="a key pair name")
    if mode == "existing" and not key_name:
        r.fail("access.key_pair_name", "is required when access.key_pair is 'existing' (the key pair's name)")
    if mode != "existing" and key_name:
        r.fail("access.key_pair_name", f"is only used when access.key_pair is 'existing' (it is {mode!r})")
    if mode != "none" and not cidrs:
        r.fail("access.admin_cidrs", f"is empty but access.key_pair is {mode!r}: SSH would be open to nobody; "
                                     "list your admin CIDRs or set key_pair = \"none\" and use Session Manager")
    return AccessConfig(admin_cidrs=cidrs, key_pair=mode, key_pair_name=key_name)


def _load_balancer(r: _Reader, raw: dict) -> LoadBalancerConfig:
    sec = r.table(raw, "load_balancer", {"certificate_arn", "health_check_path", "deregistration_delay_seconds",
                                         "target_requests_per_server", "target_cpu_percent"})
    cert = r.string(sec, "certificate_arn", "load_balancer", "", pattern=_CERT_ARN,
                    what="an ACM certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/UUID) or \"\"")
    path = r.string(sec, "health_check_path", "load_balancer", "/health", pattern=re.compile(r"^/[\w\-./]*$"),
                    what="a path starting with /")
    delay = r.integer(sec, "deregistration_delay_seconds", "load_balancer", 30, 0, 3600)
    requests = r.integer(sec, "target_requests_per_server", "load_balancer", 500, 10, 1_000_000)
    cpu = r.integer(sec, "target_cpu_percent", "load_balancer", 60, 10, 95)
    return LoadBalancerConfig(certificate_arn=cert, health_check_path=path, deregistration_delay_seconds=delay,
                              target_requests_per_server=requests, target_cpu_percent=cpu)


def _operations(r: _Reader, raw: dict) -> OperationsConfig:
    sec = r.table(raw, "operations", {"removal_policy", "alarm_email", "log_retention_days",
                                      "backup_retention_days"})
    policy = r.string(sec, "removal_policy", "operations", "destroy", allowed=REMOVAL_POLICIES)
    email = r.string(sec, "alarm_email", "operations", "", pattern=_EMAIL, what="an email address or \"\"")
    days = r.integer(sec, "log_retention_days", "operations", 14, 1, 3653)
    if days not in _LOG_RETENTION_DAYS:
        r.fail("operations.log_retention_days", f"got {days}; allowed: {_LOG_RETENTION_DAYS}")
    backup = r.integer(sec, "backup_retention_days", "operations", 7, 1, 35)
    return OperationsConfig(removal_policy=policy, alarm_email=email, log_retention_days=days,
                            backup_retention_days=backup)


def parse_environment(name: str, raw: dict) -> EnvironmentConfig:
    problems: list[str] = []
    r = _Reader(name, problems)
    for unknown in sorted(set(raw) - _SECTIONS):
        r.fail(unknown, f"unknown field; allowed: {', '.join(sorted(_SECTIONS))}")
    stage_value = raw.get("stage")
    if stage_value not in (1, 2, 3, 4) or isinstance(stage_value, bool):
        r.fail("stage", f"got {stage_value!r}; allowed: 1 (single server), 2 (separate database), "
                        "3 (load balanced), 4 (multi-process)")
        stage = Stage.SINGLE_SERVER
    else:
        stage = Stage(stage_value)
    account = r.string(raw, "account", "", "", pattern=_ACCOUNT, what="a 12-digit AWS account ID or \"\"")
    region = r.string(raw, "region", "", DEFAULT_REGION, pattern=_REGION, what="an AWS region such as ap-northeast-2")
    project = r.string(raw, "project", "", "staged-web", pattern=re.compile(r"^[a-z][a-z0-9-]{1,30}$"),
                       what="lowercase letters, digits and '-'")
    network = _network(r, raw, region)
    servers = _servers(r, raw, stage, region)
    database = _database(r, raw, stage, servers.architecture)
    access = _access(r, raw)
    load_balancer = _load_balancer(r, raw)
    operations = _operations(r, raw)
    emu = r.table(raw, "emulator", {"custom_resources"})
    emulator = EmulatorConfig(custom_resources=r.boolean(emu, "custom_resources", "emulator", True))
    pipe = r.table(raw, "pipeline", {"enabled", "connection_arn", "repository", "branch"})
    pipeline = PipelineConfig(
        enabled=r.boolean(pipe, "enabled", "pipeline", False),
        connection_arn=r.string(pipe, "connection_arn", "pipeline", "", pattern=_CONNECTION_ARN,
                                what="a CodeConnections connection ARN"),
        repository=r.string(pipe, "repository", "pipeline", "", pattern=re.compile(r"^[\w.-]+/[\w.-]+$"),
                            what="owner/name"),
        branch=r.string(pipe, "branch", "pipeline", "main"),
    )
    if pipeline.enabled and not (pipeline.connection_arn and pipeline.repository):
        r.fail("pipeline", "enabled = true needs connection_arn and repository")

    if stage.load_balanced and network.nat_gateways == 0:
        r.fail("network.nat_gateways", f"got 0 with stage {int(stage)}: app servers sit in private subnets and "
                                       "install the app's Python packages at boot; allowed: 1 or more")
    if stage == Stage.MULTI_PROCESS and len(network.availability_zones) < 2:
        r.fail("network.availability_zones", "stage 4 runs behind a load balancer, which needs at least 2 zones")
    if stage == Stage.LOAD_BALANCED and len(network.availability_zones) < 2:
        r.fail("network.availability_zones", "stage 3 runs behind a load balancer, which needs at least 2 zones")
    if database.kind == "rds" and stage >= Stage.SEPARATE_DATABASE and len(network.availability_zones) < 2:
        r.fail("database.kind", "RDS needs a subnet group in at least 2 availability zones; list 2 zones or use ec2")
    if stage >= Stage.SEPARATE_DATABASE and database.kind == "ec2" and not network.interface_endpoints:
        r.fail("network.interface_endpoints", "got false, but the EC2 database server sits in an isolated subnet "
                                              "and needs them to fetch its secret and signal CloudFormation; "
                                              "allowed: true, or database.kind = \"rds\"")
    if load_balancer.certificate_arn and not stage.load_balanced:
        r.fail("load_balancer.certificate_arn", f"is set but stage {int(stage)} has no load balancer; "
                                                "allowed: \"\" below stage 3")
    if problems:
        raise ConfigError(problems)
    return EnvironmentConfig(name=name, account=account or None, region=region, stage=stage, network=network,
                             servers=servers, database=database, access=access, load_balancer=load_balancer,
                             operations=operations, emulator=emulator, pipeline=pipeline, project=project)
