"""What the four stages share, composed into each rather than inherited.

Each stage reads top to bottom in its own file and calls these for the parts it has in common
with the others: the server layout, the database, the app's secrets, the DNS record, the outputs.
"""

from __future__ import annotations

import dataclasses

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_backup as backup
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from app_tier import render
from cdk_constructs.app_servers import AppServer
from cdk_constructs.database import DATA_MOUNT, Database
from cdk_constructs.monitoring import ServiceMonitoring
from cdk_constructs.observability import ServerLogs
from cdk_constructs.props import DatabaseProps, Domain, ServerProps, Subnets
from cdk_constructs.server import launch_time_image, machine_image


def server_layout(app: render.AppSpec, *, stage: int, proxy: bool = False, processes: int = 1) -> render.ServerLayout:
    """The app's layout on one server; the app learns which stage runs it from APP_STAGE."""
    named = dataclasses.replace(app, environment={"APP_STAGE": str(stage), **app.environment})
    return render.ServerLayout(app=named, proxy=proxy, processes=processes)


_ARCHITECTURES = {"x86_64": ec2.InstanceArchitecture.X86_64, "arm64": ec2.InstanceArchitecture.ARM_64}


def server_instance_type(instance_type: str | None, servers: ServerProps, *, what: str) -> str:
    """The type a server of `servers`' image runs on: the given one (checked) or the smallest."""
    if servers.architecture not in _ARCHITECTURES:
        raise ValueError(f"ServerProps.architecture: got {servers.architecture!r}; allowed: x86_64, arm64")
    chosen = instance_type or servers.instance_type_or_default()
    if ec2.InstanceType(chosen).architecture != _ARCHITECTURES[servers.architecture]:
        raise ValueError(f"{what}: {chosen} is not an {servers.architecture} instance type, but the servers' image "
                         f"is (ServerProps.architecture); pick a type of that architecture")
    return chosen


def images(servers: ServerProps) -> tuple[ec2.IMachineImage, ec2.IMachineImage]:
    """(image of servers without data, image of servers with data), the props' or the defaults."""
    return (servers.machine_image or machine_image("al2023", servers.architecture, pin_in_context=False),
            servers.data_server_image or launch_time_image("al2023", servers.architecture))


def logs_for(scope: Construct, logs: ServerLogs | None, *, servers: ServerProps, nginx: bool, postgresql: bool,
             removal_policy: RemovalPolicy) -> ServerLogs:
    """The caller's log groups, or this stage's own (retained like its data)."""
    if logs is not None:
        return logs
    return ServerLogs(scope, "Logs", prefix=Stack.of(scope).stack_name, retention_days=servers.log_retention_days,
                      removal_policy=RemovalPolicy.DESTROY if removal_policy == RemovalPolicy.DESTROY
                      else RemovalPolicy.RETAIN, nginx=nginx, postgresql=postgresql)


def database_for(scope: Construct, database: DatabaseProps | Database, *, vpc: ec2.IVpc, subnets: Subnets,
                 servers: ServerProps, image: ec2.IMachineImage, logs: ServerLogs) -> Database:
    """The caller's existing `Database`, or a new one (construct ID "Database") from its props."""
    if isinstance(database, Database):
        return database
    if database.kind == "ec2":  # an EC2 database server runs the app servers' image
        database = dataclasses.replace(database, instance_type=server_instance_type(
            database.instance_type, servers, what="DatabaseProps.instance_type"))
    elif database.instance_type is None:
        database = dataclasses.replace(database, instance_type=servers.instance_type_or_default())
    return Database(scope, "Database", props=database, vpc=vpc, subnets=subnets.database_or_default(),
                    machine_image=image, key_pair=servers.key_pair, server_logs=logs)


def connect_database(database: Database, app_servers, update_target) -> None:
    """Open the database to the app servers. While an EC2 database server carries its data into RDS
    (`Database.carry_applied`), they keep its old port too, and `update_target` (their instance or group)
    is updated only after the carry: until then they reach RDS through that server's forwarder."""
    database.connections.allow_default_port_from(app_servers.connections, "PostgreSQL from the app servers only")
    if database.carried_port is not None and database.carried_port != database.port:
        database.connections.allow_from(app_servers.connections, ec2.Port.tcp(database.carried_port),
                                        "PostgreSQL from the app servers only")
    if database.carry_applied is not None:
        update_target.node.add_dependency(database.carry_applied)
    database.grant_connect(app_servers.role)


def runs_postgresql_server(database: DatabaseProps | Database) -> bool:
    """Whether the stage has an EC2 database server (its own, or one carrying its data into RDS)."""
    if isinstance(database, Database):
        return database.server is not None
    return database.kind == "ec2" or database.carry_from is not None


def grant_app_secrets(scope: Construct, role: iam.IRole, app: render.AppSpec) -> None:
    """Let the app servers read, at boot, the secrets and parameters the app's environment names.

    Only their names are in the template; the values are read on the server (render.APP_SECRETS_FILE).
    A name is taken as in the stack's account and region; an ARN as it is. A Secrets Manager ARN may
    be complete or partial (without the six characters AWS appends), which no pattern can tell apart,
    so an ARN is granted as given and with that suffix."""
    for variable, ref in sorted(app.secrets.items()):
        if ref.store == "ssm" and not ref.name.startswith("arn:"):
            ssm.StringParameter.from_secure_string_parameter_attributes(
                scope, f"Parameter{variable}", parameter_name=ref.name).grant_read(role)
        elif ref.store == "ssm":
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["ssm:DescribeParameters", "ssm:GetParameter", "ssm:GetParameters",
                         "ssm:GetParameterHistory"], resources=[ref.name]))
        elif ref.name.startswith("arn:"):
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[ref.name, f"{ref.name}-??????"]))
        else:
            secretsmanager.Secret.from_secret_name_v2(scope, f"Secret{variable}", ref.name).grant_read(role)


def watch_app_server(monitoring: ServiceMonitoring, instance: ec2.Instance) -> None:
    monitoring.watch_servers("App server", dimensions={"InstanceId": instance.instance_id},
                             disk_paths={"Root": "/"}, instance_id=instance.instance_id)


def watch_database(monitoring: ServiceMonitoring, database: Database) -> None:
    """RDS, and the EC2 database server (also while it carries its data into RDS)."""
    if database.instance is not None:
        monitoring.watch_rds(database.instance)
    if database.server is not None:
        instance_id = database.server.instance_id
        monitoring.watch_servers("Database server", dimensions={"InstanceId": instance_id},
                                 disk_paths={"Root": "/", "Data": DATA_MOUNT}, instance_id=instance_id)


def database_backups(database: Database) -> list[backup.BackupResource]:
    """RDS backs itself up; the EC2 database server's data volume needs AWS Backup (until it is removed)."""
    return [] if database.data_volume is None else [backup.BackupResource.from_construct(database.data_volume)]


# A stage-1-2 record names the server's Elastic IP. Growing to stage 3 points it at the load balancer and
# releases that address in the same deploy, so resolvers must not keep it for CDK's default 30 minutes.
ADDRESS_RECORD_TTL = Duration.seconds(60)


def address_record(scope: Construct, domain: Domain | None, target: route53.RecordTarget) -> route53.ARecord | None:
    if domain is None:
        return None
    ttl = None if target.alias_target else ADDRESS_RECORD_TTL  # an alias record has no TTL of its own
    return route53.ARecord(scope, "DomainRecord", zone=domain.zone, record_name=domain.name, target=target, ttl=ttl)


def public_app_server(scope: Construct, *, layout: render.ServerLayout, init: ec2.CloudFormationInit,
                      machine_image: ec2.IMachineImage, vpc: ec2.IVpc, servers: ServerProps, subnets: Subnets,
                      domain: Domain | None, logs: ServerLogs) -> tuple[AppServer, str]:
    """Stages 1-2: the one app server (construct ID "AppServer") with its logs, the app's secrets,
    its DNS record and the outputs. Returns the server and the service's URL."""
    server = AppServer(
        scope, "AppServer", vpc=vpc, subnets=subnets.public_or_default(),
        instance_type=server_instance_type(servers.instance_type, servers, what="ServerProps.instance_type"),
        machine_image=machine_image, init=init, service_port=layout.service_port, key_pair=servers.key_pair,
        admin_cidrs=servers.admin_cidrs, termination_protection=servers.termination_protection,
        root_volume_gib=servers.root_volume_gib)
    logs.grant(server.role, server="AppServer")
    grant_app_secrets(scope, server.role, layout.app)
    address_record(scope, domain, route53.RecordTarget.from_ip_addresses(server.elastic_ip.attr_public_ip))
    url = f"http://{domain.name}/" if domain else server.url
    add_outputs(scope, url=url, session_manager_command=server.session_manager_command(Stack.of(scope).region))
    return server, url


def add_outputs(scope: Construct, *, url: str, session_manager_command: str) -> None:
    # Fixed logical IDs: scripts and the post-deploy checks read these outputs by name.
    CfnOutput(scope, "Url", value=url, description="Where the service answers").override_logical_id("Url")
    CfnOutput(scope, "SessionManagerCommand", value=session_manager_command,
              description="Open a shell on an app server (no SSH needed)").override_logical_id("SessionManagerCommand")
