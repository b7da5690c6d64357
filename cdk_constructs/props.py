"""The props of the four stage constructs: flat, typed, keyword-only, units in their names.

Every field has the library's default here, and only here. The app's own environment files are
mapped onto these in one place (stacks/config_mapping.py); a CDK app of your own builds them
directly (examples/own_vpc/app.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import RemovalPolicy
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_route53 as route53
from constructs import IDependable

# The smallest burstable instance type of each architecture.
SMALLEST_INSTANCE_TYPES = {"x86_64": "t3.micro", "arm64": "t4g.micro"}


@dataclass(frozen=True, kw_only=True)
class ServerProps:
    """The app servers: what they run on, how many, and who may log in.

    `machine_image`: the image of servers that hold no data; default, the latest Amazon Linux 2023
    for `architecture`, resolved at deploy time (a new release rolls them). `data_server_image`:
    the image of servers that hold data (stage 1's server, the EC2 database server); default, the
    same Amazon Linux 2023 resolved by EC2 at launch, so a new release never replaces them.
    `min_servers` and `max_servers` bound the load-balanced stages' group; stages 1-2 run one server.
    The group starts at `min_servers` and scaling moves it; no deploy sets its size, so a deploy at
    peak load never shrinks a fleet that scaled out. `desired_servers` is accepted only as that
    initial size (None, or equal to `min_servers`; a synth error says so otherwise).
    `key_pair` is None for Session Manager only; then SSH stays closed whatever `admin_cidrs` says.
    `instance_type` defaults to the smallest burstable type of `architecture` (t3.micro, t4g.micro).
    `termination_protection` refuses TerminateInstances on the one app server of stages 1-2 (the
    EC2 database server follows `DatabaseProps.deletion_protection`). `log_retention_days` is for
    the log groups a stage makes when it is given none (`logs`).
    """

    instance_type: str | None = None
    architecture: str = "x86_64"
    machine_image: ec2.IMachineImage | None = None
    data_server_image: ec2.IMachineImage | None = None
    root_volume_gib: int = 16
    min_servers: int = 2
    desired_servers: int | None = None
    max_servers: int = 4
    key_pair: ec2.IKeyPair | None = None
    admin_cidrs: Sequence[str] = ()
    termination_protection: bool = True
    log_retention_days: int = 30

    def instance_type_or_default(self) -> str:
        return self.instance_type or SMALLEST_INSTANCE_TYPES[self.architecture]


@dataclass(frozen=True, kw_only=True)
class DatabaseProps:
    """PostgreSQL: on its own EC2 server ("ec2", data on a separate EBS volume) or Amazon RDS ("rds").

    Stage 1 uses `name`, `user`, `port` and `removal_policy` (its database lives on the app server).
    `removal_policy` applies to what holds data (the volume or the RDS instance, the secret);
    `deletion_protection` refuses deleting the RDS instance, or terminating the EC2 database server;
    `boot_dependencies` are what the EC2 server needs before it boots: in an isolated subnet, the
    VPC's S3 gateway and interface endpoints (a synth error says so when they are missing).
    `instance_type` defaults to the smallest burstable type of the servers' architecture (an EC2
    database server runs the app servers' image).
    """

    kind: str = "ec2"
    instance_type: str | None = None
    storage_gib: int = 20
    name: str = "app"
    user: str = "app"
    port: int = 5432
    multi_az: bool = False
    removal_policy: RemovalPolicy = RemovalPolicy.SNAPSHOT
    deletion_protection: bool = True
    backup_retention_days: int = 7
    log_retention_days: int = 30
    server_root_volume_gib: int = 16
    boot_dependencies: Sequence[IDependable] = ()
    # With kind "rds": the EC2 database server (kind "ec2", as deployed) whose data this deploy carries
    # into RDS. The server is kept, carries, then forwards its address to RDS (app_tier/carry.py).
    carry_from: DatabaseProps | None = None


@dataclass(frozen=True, kw_only=True)
class Domain:
    """A DNS name in a Route 53 hosted zone that the service answers on.

    The zone is named, not looked up, so synth needs no credentials:
    `route53.HostedZone.from_hosted_zone_attributes(scope, id, hosted_zone_id=..., zone_name=...)`.
    Load-balanced stages get an ACM certificate validated by DNS in that zone, an HTTPS listener
    and an HTTP-to-HTTPS redirect; every stage gets the alias (or A) record.
    """

    name: str
    zone: route53.IHostedZone


@dataclass(frozen=True, kw_only=True)
class LoadBalancerProps:
    """The ALB in front of the load-balanced stages, and how the fleet scales behind it.

    `certificate`: an existing certificate for HTTPS (otherwise one is issued for `domain`, if any).
    `access_logs_removal_policy` and `auto_delete_access_logs` (needs a Lambda-backed custom
    resource) govern its access-log buckets.

    `rollout_*` shape the instance refresh that replaces the servers on a deploy. Launch before
    terminate: never fewer than `rollout_min_healthy_percent` (100) of the desired capacity in service,
    at most `rollout_max_healthy_percent` in service or launching (150: one extra server for a fleet of
    two, half the fleet extra for larger ones, so the first new servers meet the alarms before the rest
    are replaced). A new server counts as ready `rollout_warmup_seconds` after the load balancer's
    health check passes; `rollout_bake_seconds` after the last one, the alarms may still fail the
    deploy. The rollout alarms fire when the targets' 5xx share of requests exceeds
    `rollout_5xx_percent`, or a target is unhealthy, in `rollout_alarm_minutes` consecutive minutes.
    """

    deregistration_delay_seconds: int = 30
    rollout_min_healthy_percent: int = 100
    rollout_max_healthy_percent: int = 150
    rollout_warmup_seconds: int = 60
    rollout_bake_seconds: int = 300
    rollout_5xx_percent: float = 5.0
    rollout_alarm_minutes: int = 2
    target_requests_per_server_per_minute: int = 500
    target_cpu_percent: int = 60
    certificate: acm.ICertificate | None = None
    deletion_protection: bool = True
    access_logs_removal_policy: RemovalPolicy = RemovalPolicy.RETAIN
    auto_delete_access_logs: bool = False


@dataclass(frozen=True, kw_only=True)
class Subnets:
    """Where each tier goes in the VPC; the defaults select by subnet type.

    Servers reached from the internet (stages 1-2) and the load balancer go in `public`; the
    load-balanced app servers in `app` (outbound through NAT); the database in `database`.
    """

    public: ec2.SubnetSelection | None = None
    app: ec2.SubnetSelection | None = None
    database: ec2.SubnetSelection | None = None

    def public_or_default(self) -> ec2.SubnetSelection:
        return self.public or ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)

    def app_or_default(self) -> ec2.SubnetSelection:
        return self.app or ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    def database_or_default(self) -> ec2.SubnetSelection:
        return self.database or ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
