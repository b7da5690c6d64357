"""Stage 1: the app and PostgreSQL on one server."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_backup as backup
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from aws_cdk import aws_route53 as route53
from constructs import Construct

from app_tier import render
from cdk_constructs import bootstrap
from cdk_constructs.app_servers import AppServer
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
        self.logs = parts.logs_for(self, logs, nginx=False, postgresql=True, removal_policy=database.removal_policy)
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
        self.app_servers = AppServer(
            self, "AppServer", vpc=vpc, subnets=subnets.public_or_default(), instance_type=servers.instance_type,
            machine_image=data_server_image, init=init, service_port=self.layout.service_port,
            key_pair=servers.key_pair, admin_cidrs=servers.admin_cidrs,
            termination_protection=servers.termination_protection, root_volume_gib=servers.root_volume_gib)
        self.logs.grant(self.app_servers.role, server="AppServer")
        self.database_secret.grant_read(self.app_servers.role)
        parts.grant_app_secrets(self, self.app_servers.role, self.layout.app)
        self.connections = self.app_servers.connections
        self.domain_record = parts.address_record(
            self, domain, route53.RecordTarget.from_ip_addresses(self.app_servers.elastic_ip.attr_public_ip))
        self.url = f"http://{domain.name}/" if domain else self.app_servers.url
        parts.add_outputs(self, url=self.url,
                          session_manager_command=self.app_servers.session_manager_command(Stack.of(self).region))

    def watch(self, monitoring: ServiceMonitoring) -> None:
        parts.watch_app_server(monitoring, self.app_servers.instance)

    def backed_up_resources(self) -> list[backup.BackupResource]:
        # The database lives on this server's root volume: back up the whole instance.
        return [backup.BackupResource.from_ec2_instance(self.app_servers.instance)]
