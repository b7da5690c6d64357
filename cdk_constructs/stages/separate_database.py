"""Stage 2: an app server and a database server (EC2 PostgreSQL or RDS)."""

from __future__ import annotations

from aws_cdk import aws_backup as backup
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from app_tier import render
from cdk_constructs import bootstrap
from cdk_constructs.database import Database
from cdk_constructs.monitoring import ServiceMonitoring
from cdk_constructs.observability import ServerLogs
from cdk_constructs.props import DatabaseProps, Domain, ServerProps, Subnets
from cdk_constructs.stages import parts


class SeparateDatabase(Construct):
    """One public app server; the database in an isolated subnet, open only to the app server.

    `database`: props for a new one, or an existing `Database` to connect to. Exposes `vpc`,
    `app_servers` (an `AppServer`), `database`, `load_balancer` (None), `url`, `connections`
    and `layout`.
    """

    STAGE = 2

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, app: render.AppSpec,
                 servers: ServerProps | None = None, database: DatabaseProps | Database | None = None,
                 subnets: Subnets | None = None, domain: Domain | None = None,
                 logs: ServerLogs | None = None) -> None:
        super().__init__(scope, construct_id)
        servers, database, subnets = servers or ServerProps(), database or DatabaseProps(), subnets or Subnets()
        _, data_server_image = parts.images(servers)
        self.vpc = vpc
        self.layout = parts.server_layout(app, stage=self.STAGE)
        self.load_balancer = None
        self.logs = parts.logs_for(self, logs, servers=servers, nginx=False,
                                   postgresql=parts.runs_postgresql_server(database),
                                   removal_policy=database.removal_policy)

        self.database = parts.database_for(self, database, vpc=vpc, subnets=subnets, servers=servers,
                                           image=data_server_image, logs=self.logs)
        init = bootstrap.app_server_init(self.layout, self.database.endpoint, in_place_updates=True,
                                         carry_local_database=True,
                                         agent=self.logs.agent_init(mount_points=["/"]))
        # The app server keeps stage 1's image handling (resolved at launch, in its launch template): it is
        # the server a stage-1 environment grows from, holding the data until it is carried to the new
        # database, so 1 -> 2 must update it in place, never replace it (README: Growing the service).
        self.app_servers, self.url = parts.public_app_server(
            self, layout=self.layout, init=init, machine_image=data_server_image, vpc=vpc, servers=servers,
            subnets=subnets, domain=domain, logs=self.logs)
        parts.connect_database(self.database, self.app_servers, self.app_servers.instance)
        self.connections = self.app_servers.connections

    def watch(self, monitoring: ServiceMonitoring) -> None:
        parts.watch_app_server(monitoring, self.app_servers.instance)
        parts.watch_database(monitoring, self.database)

    def backed_up_resources(self) -> list[backup.BackupResource]:
        return parts.database_backups(self.database)
