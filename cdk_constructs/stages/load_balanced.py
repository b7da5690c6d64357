"""Stage 3: an ALB in front of an Auto Scaling group of app servers across AZs."""

from __future__ import annotations

from aws_cdk import Duration

from cdk_constructs import bootstrap
from cdk_constructs.app_servers import AppServerGroup
from cdk_constructs.load_balancer import WebLoadBalancer
from cdk_constructs.stages.separate_database import DatabaseStage


class LoadBalanced(DatabaseStage):
    """ALB (public subnets) → app servers (private subnets) → database (isolated subnets).

    Only the ALB's security group reaches the app port; only the app servers' reaches the
    database. The group replaces servers the ALB health check finds dead.
    """

    def __init__(self, scope, construct_id, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        cfg = self.config
        database = self.build_database()
        layout = self.server_layout()
        self.load_balancer = WebLoadBalancer(
            self, "LoadBalancer", vpc=self.network.vpc, subnets=self.network.public_subnets,
            target_port=layout.service_port, health_check_path=cfg.load_balancer.health_check_path,
            deregistration_delay=Duration.seconds(cfg.load_balancer.deregistration_delay_seconds),
            certificate_arn=cfg.load_balancer.certificate_arn, protect=self.protect,
            auto_delete_logs=not self.protect and self.custom_resources_allowed)
        self.app_servers = AppServerGroup(
            self, "AppServers", vpc=self.network.vpc, subnets=self.network.app_subnets,
            instance_type=cfg.servers.instance_type, machine_image=self.machine_image,
            init=bootstrap.app_server_init(layout, database.endpoint, agent=self.app_agent()),
            min_servers=cfg.servers.min_servers, desired_servers=cfg.servers.desired_servers,
            max_servers=cfg.servers.max_servers, key_pair=self.key_pair, admin_cidrs=cfg.access.admin_cidrs,
            root_volume_gib=cfg.servers.root_volume_gib, notifications=self.notifications)
        self.load_balancer.add_targets(self.app_servers)
        self.connect_database(self.app_servers)
        self.server_logs.grant(self.app_servers.role, server="AppServers")
        # Scale out on load per server and on CPU; whichever asks for more servers wins.
        # During a rolling update the group suspends AlarmNotification, so scaling waits.
        self.app_servers.group.scale_on_request_count(
            "RequestsPerServer", target_requests_per_minute=cfg.load_balancer.target_requests_per_server)
        self.app_servers.group.scale_on_cpu_utilization(
            "CpuUtilization", target_utilization_percent=cfg.load_balancer.target_cpu_percent)
        self.add_outputs(url=self.load_balancer.url,
                         session_manager_command=self.app_servers.session_manager_command(self.region))

    def watch(self, monitoring) -> None:
        monitoring.watch_load_balancer(self.load_balancer.load_balancer, self.load_balancer.target_group)
        monitoring.watch_auto_scaling_group(self.app_servers.group)
        monitoring.watch_servers("App servers",
                                 dimensions={"AutoScalingGroupName": self.app_servers.group.auto_scaling_group_name})
        self.watch_database(monitoring)
