"""Stage 2: an app server and a database server (EC2 PostgreSQL or RDS)."""

from __future__ import annotations

from aws_cdk import aws_backup as backup

from cdk_constructs import bootstrap
from cdk_constructs.database import DATA_MOUNT, Database
from cdk_constructs.stages.base import StageBase


class DatabaseStage(StageBase):
    """A stage whose database runs apart from the app servers, reachable only from them."""

    def build_database(self) -> Database:
        cfg = self.config
        self.database = Database(
            self, "Database", kind=cfg.database.kind, vpc=self.network.vpc, subnets=self.network.database_subnets,
            instance_type=cfg.database.instance_type, machine_image=self.data_server_image,
            storage_gib=cfg.database.storage_gib, name=cfg.database.name, user=cfg.database.user,
            port=cfg.database.port, removal_policy=self.removal_policy, protect=self.protect,
            backup_retention_days=cfg.operations.backup_retention_days, key_pair=self.key_pair,
            multi_az=self.protect and cfg.database.kind == "rds", server_logs=self.server_logs,
            log_retention_days=cfg.operations.log_retention_days,
            boot_dependencies=self.network.boot_endpoints)
        self.database_secret = self.database.secret
        return self.database

    def connect_database(self, app_servers) -> None:
        self.database.connections.allow_default_port_from(app_servers.connections, "PostgreSQL from the app servers only")
        self.database.grant_connect(app_servers.role)

    def app_agent(self):
        return self.server_logs.agent_init(mount_points=["/"])

    def watch_database(self, monitoring) -> None:
        if self.database.kind == "rds":
            monitoring.watch_rds(self.database.instance)
        else:
            instance_id = self.database.server.instance_id
            monitoring.watch_servers("Database server", dimensions={"InstanceId": instance_id},
                                     disk_paths={"Root": "/", "Data": DATA_MOUNT}, instance_id=instance_id)

    def backed_up_resources(self) -> list:
        if self.database.kind == "rds":
            return []
        return [backup.BackupResource.from_construct(self.database.data_volume)]


class SeparateDatabase(DatabaseStage):
    """One public app server; the database in an isolated subnet, open only to the app server."""

    def __init__(self, scope, construct_id, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        database = self.build_database()
        layout = self.server_layout()
        self.build_app_server(bootstrap.app_server_init(layout, database.endpoint, in_place_updates=True,
                                                        agent=self.app_agent()))
        self.connect_database(self.app_servers)

    def watch(self, monitoring) -> None:
        self.watch_app_server(monitoring)
        self.watch_database(monitoring)
