"""What every stage shares: the server image, the key pair, the database endpoint and outputs."""

from __future__ import annotations

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_sns as sns
from constructs import Construct

from app_tier import render
from cdk_constructs.app_servers import AppServer
from cdk_constructs.monitoring import ServiceMonitoring
from cdk_constructs.network import Network
from cdk_constructs.observability import ServerLogs
from cdk_constructs.server import KeyPairChoice, launch_time_image, machine_image
from envconfig import EnvironmentConfig

_REMOVAL_POLICIES = {"destroy": RemovalPolicy.DESTROY, "retain": RemovalPolicy.RETAIN,
                     "snapshot": RemovalPolicy.SNAPSHOT}


class StageBase(Construct):
    """Base of the four stage constructs; each subclass builds its servers in `__init__`.

    Every stage exposes `url`, `database` (a `Database`, or None on stage 1), `database_secret`,
    `app_servers` (an `AppServer` or `AppServerGroup`) and `key_pair`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, network: Network,
                 notifications: sns.ITopic, server_logs: ServerLogs,
                 custom_resources_allowed: bool = True) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        self.server_logs = server_logs
        self.custom_resources_allowed = custom_resources_allowed
        self.network = network
        self.notifications = notifications
        self.protect = config.is_production
        self.removal_policy = _REMOVAL_POLICIES[config.operations.removal_policy]
        self.machine_image = machine_image(config.servers.ami, config.servers.architecture,
                                           pin_in_context=config.account is not None)
        # Servers that hold data (stage 1's, the EC2 database server): an image resolved by EC2
        # at launch, so a new AMI release does not replace them on the next deploy.
        self.data_server_image = launch_time_image(config.servers.ami, config.servers.architecture)
        self.key_pair = KeyPairChoice.build(self, mode=config.access.key_pair,
                                            existing_name=config.access.key_pair_name,
                                            name_prefix=config.stack_name)
        self.database = None

    def server_layout(self) -> render.ServerLayout:
        app = render.AppSpec(health_path=self.config.load_balancer.health_check_path,
                             environment={"APP_STAGE": str(int(self.config.stage))})
        return render.ServerLayout(app=app, proxy=self.config.stage == 4,
                                   processes=self.config.servers.processes_per_server)

    def add_outputs(self, *, url: str, session_manager_command: str) -> None:
        CfnOutput(self, "Url", value=url, description="Where the service answers").override_logical_id("Url")
        CfnOutput(self, "SessionManagerCommand", value=session_manager_command,
                  description="Open a shell on an app server (no SSH needed)").override_logical_id(
                      "SessionManagerCommand")
        if self.key_pair.parameter_name:
            CfnOutput(self, "KeyPairParameter", value=self.key_pair.parameter_name,
                      description="SSM parameter holding the created key pair's private key").override_logical_id(
                          "KeyPairParameter")
        self.url = url

    def build_app_server(self, init, *, machine_image=None) -> AppServer:
        """Stages 1–2: one public app server with its logs, outputs and place on the dashboard.

        `machine_image`: stage 1 passes `data_server_image` (its server holds the database)."""
        cfg = self.config
        self.app_servers = AppServer(
            self, "AppServer", vpc=self.network.vpc, subnets=self.network.public_subnets,
            instance_type=cfg.servers.instance_type, machine_image=machine_image or self.machine_image, init=init,
            service_port=self.server_layout().service_port, key_pair=self.key_pair,
            admin_cidrs=cfg.access.admin_cidrs, protect=self.protect, root_volume_gib=cfg.servers.root_volume_gib)
        self.server_logs.grant(self.app_servers.role, server="AppServer")
        self.add_outputs(url=self.app_servers.url,
                         session_manager_command=self.app_servers.session_manager_command(self.region))
        return self.app_servers

    def watch_app_server(self, monitoring: ServiceMonitoring) -> None:
        instance_id = self.app_servers.instance.instance_id
        monitoring.watch_servers("App server", dimensions={"InstanceId": instance_id},
                                 disk_paths={"Root": "/"}, instance_id=instance_id)

    def watch(self, monitoring: ServiceMonitoring) -> None:
        """Add this stage's servers and database to the dashboard and alarms."""
        raise NotImplementedError

    def backed_up_resources(self) -> list:
        """What AWS Backup snapshots daily (data that no managed service backs up)."""
        return []

    @property
    def region(self) -> str:
        return Stack.of(self).region
