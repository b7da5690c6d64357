"""Typed, validated per-environment config.

Everything the stacks read comes from an `EnvironmentConfig`, built only by
`envconfig.loader.load_environment` after every field has been checked. Constructs never
see raw TOML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class Stage(IntEnum):
    SINGLE_SERVER = 1
    SEPARATE_DATABASE = 2
    LOAD_BALANCED = 3
    MULTI_PROCESS = 4

    @property
    def load_balanced(self) -> bool:
        return self >= Stage.LOAD_BALANCED


DATABASE_KINDS = ("ec2", "rds")
KEY_PAIR_MODES = ("none", "create", "existing")
REMOVAL_POLICIES = ("destroy", "retain", "snapshot")
ARCHITECTURES = ("x86_64", "arm64")


@dataclass(frozen=True)
class NetworkConfig:
    vpc_cidr: str
    availability_zones: tuple[str, ...]
    nat_gateways: int
    # Interface endpoints (SSM, Secrets Manager, CloudFormation, CloudWatch) let servers in
    # isolated subnets boot, signal and be reached by Session Manager without a NAT gateway.
    interface_endpoints: bool = True
    flow_log_retention_days: int = 30


@dataclass(frozen=True)
class ServersConfig:
    instance_type: str
    architecture: str
    # "al2023" (latest Amazon Linux 2023 via its SSM parameter) or explicit IDs per region.
    ami: str | dict[str, str]
    min_servers: int
    desired_servers: int
    max_servers: int
    processes_per_server: int       # copies of the app on each server (stage 4)
    root_volume_gib: int = 16


@dataclass(frozen=True)
class DatabaseConfig:
    kind: str                       # "ec2" or "rds"; stage 1 always runs it on the app server
    instance_type: str
    storage_gib: int
    name: str = "app"
    user: str = "app"
    port: int = 5432


@dataclass(frozen=True)
class AccessConfig:
    admin_cidrs: tuple[str, ...]
    key_pair: str                   # "none" | "create" | "existing"
    key_pair_name: str = ""


@dataclass(frozen=True)
class LoadBalancerConfig:
    certificate_arn: str = ""
    health_check_path: str = "/health"
    deregistration_delay_seconds: int = 30
    target_requests_per_server: int = 500    # target tracking: ALB requests per target per minute
    target_cpu_percent: int = 60


@dataclass(frozen=True)
class OperationsConfig:
    removal_policy: str             # "destroy" | "retain" | "snapshot"
    alarm_email: str = ""
    log_retention_days: int = 14
    backup_retention_days: int = 7


@dataclass(frozen=True)
class EmulatorConfig:
    # Local AWS emulators run no Lambda-backed custom resources: turn off the features that
    # need one (the VPC default-SG lockdown, S3 auto-delete) when deploying to one.
    custom_resources: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    enabled: bool = False
    connection_arn: str = ""
    repository: str = ""            # owner/name
    branch: str = "main"


@dataclass(frozen=True)
class EnvironmentConfig:
    name: str
    account: str | None
    region: str
    stage: Stage
    network: NetworkConfig
    servers: ServersConfig
    database: DatabaseConfig
    access: AccessConfig
    load_balancer: LoadBalancerConfig
    operations: OperationsConfig
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    project: str = "staged-web"

    @property
    def stack_name(self) -> str:
        return f"{self.project}-{self.name}"

    @property
    def is_production(self) -> bool:
        return self.operations.removal_policy != "destroy"
