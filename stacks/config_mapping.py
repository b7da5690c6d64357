"""The one place an environment file becomes construct props.

Constructs never read `EnvironmentConfig`: they take the typed props of cdk_constructs/props.py
and `app_tier.render.AppSpec`. Everything here is a plain translation, with the few decisions
that belong to an environment (which image is pinned, what a production environment protects)
spelled out where they are made.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_route53 as route53
from constructs import Construct

from app_tier import render
from cdk_constructs.network import Network
from cdk_constructs.props import DatabaseProps, Domain, LoadBalancerProps, ServerProps, Subnets
from cdk_constructs.server import launch_time_image, machine_image
from envconfig import EnvironmentConfig

REMOVAL_POLICIES = {"destroy": RemovalPolicy.DESTROY, "retain": RemovalPolicy.RETAIN,
                    "snapshot": RemovalPolicy.SNAPSHOT}


def app_spec(config: EnvironmentConfig) -> render.AppSpec:
    app = config.app
    return render.AppSpec(
        source_dir=app.source_dir, start_command=app.start_command, release_command=app.release_command,
        health_path=app.health_path,
        packages=tuple(app.packages), environment=dict(app.environment),
        secrets={name: render.AppSecret(store=ref.store, name=ref.name, key=ref.key)
                 for name, ref in app.secrets.items()})


def server_props(config: EnvironmentConfig, *, key_pair: ec2.IKeyPair | None) -> ServerProps:
    servers = config.servers
    return ServerProps(
        instance_type=servers.instance_type, architecture=servers.architecture,
        # With a fixed account the latest Amazon Linux is looked up once and pinned in cdk.context.json.
        machine_image=machine_image(servers.ami, servers.architecture, pin_in_context=config.account is not None),
        data_server_image=launch_time_image(servers.ami, servers.architecture),
        # desired_servers is not mapped: the config only checks it equals min_servers, where the group starts.
        root_volume_gib=servers.root_volume_gib, min_servers=servers.min_servers,
        max_servers=servers.max_servers, key_pair=key_pair,
        admin_cidrs=tuple(config.access.admin_cidrs),
        termination_protection=config.operations.deletion_protection,
        log_retention_days=config.operations.log_retention_days)


def database_props(config: EnvironmentConfig, network: Network) -> DatabaseProps:
    database = config.database
    source = database.carry_from
    carry_from = None if source is None else DatabaseProps(
        kind=source.kind, instance_type=source.instance_type, storage_gib=source.storage_gib, name=database.name,
        user=database.user, port=source.port, removal_policy=REMOVAL_POLICIES[config.operations.removal_policy],
        # The server is retired by the next deploy: termination protection would make that deploy fail.
        deletion_protection=False, server_root_volume_gib=source.root_volume_gib,
        boot_dependencies=tuple(network.boot_endpoints))
    return DatabaseProps(carry_from=carry_from,
        kind=database.kind, instance_type=database.instance_type, storage_gib=database.storage_gib,
        name=database.name, user=database.user, port=database.port, multi_az=database.multi_az,
        removal_policy=REMOVAL_POLICIES[config.operations.removal_policy],
        deletion_protection=config.operations.deletion_protection,
        backup_retention_days=config.operations.backup_retention_days,
        log_retention_days=config.operations.log_retention_days,
        server_root_volume_gib=database.root_volume_gib,
        boot_dependencies=tuple(network.boot_endpoints))


def load_balancer_props(scope: Construct, config: EnvironmentConfig, *, custom_resources: bool) -> LoadBalancerProps:
    balancer, protect = config.load_balancer, config.is_production
    certificate = acm.Certificate.from_certificate_arn(scope, "Certificate", balancer.certificate_arn) \
        if balancer.certificate_arn else None
    return LoadBalancerProps(
        deregistration_delay_seconds=balancer.deregistration_delay_seconds,
        target_requests_per_server_per_minute=balancer.target_requests_per_server,
        target_cpu_percent=balancer.target_cpu_percent, certificate=certificate,
        deletion_protection=config.operations.deletion_protection,
        access_logs_removal_policy=RemovalPolicy.RETAIN if protect else RemovalPolicy.DESTROY,
        auto_delete_access_logs=not protect and custom_resources)


def domain(scope: Construct, config: EnvironmentConfig) -> Domain | None:
    if not config.domain.enabled:
        return None
    zone = route53.HostedZone.from_hosted_zone_attributes(
        scope, "HostedZone", hosted_zone_id=config.domain.hosted_zone_id, zone_name=config.domain.hosted_zone_name)
    return Domain(name=config.domain.name, zone=zone)


def subnets(network: Network) -> Subnets:
    return Subnets(public=network.public_subnets, app=network.app_subnets, database=network.database_subnets)
