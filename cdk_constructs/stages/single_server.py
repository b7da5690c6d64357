"""Stage 1: the app and PostgreSQL on one server."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_backup as backup
from aws_cdk import aws_rds as rds

from app_tier import render
from cdk_constructs import bootstrap
from cdk_constructs.nag import acknowledge
from cdk_constructs.stages.base import StageBase


class SingleServer(StageBase):
    """One server in a public subnet with an Elastic IP; the app talks to PostgreSQL on localhost."""

    def __init__(self, scope, construct_id, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        cfg = self.config
        self.database_secret = rds.DatabaseSecret(self, "DatabaseSecret", username=cfg.database.user)
        self.database_secret.apply_removal_policy(RemovalPolicy.RETAIN if self.protect else RemovalPolicy.DESTROY)
        acknowledge(self.database_secret, "AwsSolutions-SMG4",
                    "The password of a PostgreSQL on the app server itself is only ever used over localhost; "
                    "rotating it needs a Lambda function in the VPC, which stage 1 does without.")
        local = render.DatabaseEndpoint(host="127.0.0.1", port=cfg.database.port, name=cfg.database.name,
                                        user=cfg.database.user, secret_arn=self.database_secret.secret_arn,
                                        region=self.region)
        init = bootstrap.app_server_init(self.server_layout(), local, local_database=True,
                                         in_place_updates=True,
                                         agent=self.server_logs.agent_init(mount_points=["/"]))
        # The server holds the database: a new AMI release must not replace it.
        self.build_app_server(init, machine_image=self.data_server_image)
        self.database_secret.grant_read(self.app_servers.role)

    def watch(self, monitoring) -> None:
        self.watch_app_server(monitoring)

    def backed_up_resources(self) -> list:
        # The database lives on this server's root volume: back up the whole instance.
        return [backup.BackupResource.from_ec2_instance(self.app_servers.instance)]
