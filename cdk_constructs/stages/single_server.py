"""Stage 1: the app and PostgreSQL on one server."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_backup as backup
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from constructs import Construct

from app_tier import render
from cdk_constructs import bootstrap
from cdk_constructs.monitoring import ServiceMonitoring
from cdk_constructs.nag import acknowledge
from cdk_constructs.observability import ServerLogs
from cdk_constructs.props import DatabaseProps, Domain, ServerProps, Subnets
from cdk_constructs.stages import parts


class SingleServer(Construct):
    """One server in a public subnet with an Elastic IP; the app talks to PostgreSQL on localhost.

    The server holds the data, so its image is resolved by EC2 at launch (a new AMI release never
    replaces it) and AWS Backup snapshots the whole instance. Exposes `vpc`, `app_servers` (an
    `AppServer`), `database` (None: it lives on the app server), `database_secret`,
    `load_balancer` (None), `url`, `connections` and `layout`.
    """

    STAGE = 1

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, app: render.AppSpec,
                 servers: ServerProps | None = None, database: DatabaseProps | None = None,
                 subnets: Subnets | None = None, domain: Domain | None = None,
                 logs: ServerLogs | None = None) -> None:
        super().__init__(scope, construct_id)
        servers, database, subnets = servers or ServerProps(), database or DatabaseProps(), subnets or Subnets()
        _, data_server_image = parts.images(servers)
        self.vpc = vpc
        self.layout = parts.server_layout(app, stage=self.STAGE)
        self.logs = parts.logs_for(self, logs, servers=servers, nginx=False, postgresql=True,
                                   removal_policy=database.removal_policy)
        self.database = None
        self.load_balancer = None

        self.database_secret = rds.DatabaseSecret(self, "DatabaseSecret", username=database.user)
        self.database_secret.apply_removal_policy(
            RemovalPolicy.DESTROY if database.removal_policy == RemovalPolicy.DESTROY else RemovalPolicy.RETAIN)
        acknowledge(self.database_secret, "AwsSolutions-SMG4",
                    "The password of a PostgreSQL on the app server itself is only ever used over localhost; "
                    "rotating it needs a Lambda function in the VPC, which stage 1 does without.")
        local = render.DatabaseEndpoint(host="127.0.0.1", port=database.port, name=database.name,
                                        user=database.user, secret_arn=self.database_secret.secret_arn,
                                        region=Stack.of(self).region)
        init = bootstrap.app_server_init(self.layout, local, local_database=True, in_place_updates=True,
                                         agent=self.logs.agent_init(mount_points=["/"]))
        # The server holds the data: its image is resolved at launch, so a new AMI never replaces it.
        self.app_servers, self.url = parts.public_app_server(
            self, layout=self.layout, init=init, machine_image=data_server_image, vpc=vpc, servers=servers,
            subnets=subnets, domain=domain, logs=self.logs)
        self.database_secret.grant_read(self.app_servers.role)
        self.connections = self.app_servers.connections

    def watch(self, monitoring: ServiceMonitoring) -> None:
        parts.watch_app_server(monitoring, self.app_servers.instance)

    def backed_up_resources(self) -> list[backup.BackupResource]:
        # The database lives on this server's root volume: back up the whole instance.
        return [backup.BackupResource.from_ec2_instance(self.app_servers.instance)]
