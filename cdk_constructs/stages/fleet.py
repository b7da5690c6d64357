"""The load-balanced fleet that stages 3 and 4 share: the database, the ALB, the app server group.

Not a construct of its own: it builds into the stage's scope, so stages 3 and 4 have the same
construct IDs (Database, LoadBalancer, AppServers) and growing from one to the other replaces no
stateful resource. What differs between them is the server layout each stage passes in.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_backup as backup
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as targets
from aws_cdk import aws_sns as sns
from constructs import Construct

from app_tier import render
from cdk_constructs import bootstrap
from cdk_constructs.app_servers import AppServerGroup
from cdk_constructs.database import Database
from cdk_constructs.load_balancer import WebLoadBalancer
from cdk_constructs.monitoring import ServiceMonitoring
from cdk_constructs.notifications import encrypted_topic
from cdk_constructs.observability import ServerLogs
from cdk_constructs.props import DatabaseProps, Domain, LoadBalancerProps, ServerProps, Subnets
from cdk_constructs.stages import parts


class LoadBalancedFleet:
    """Builds into the stage `scope` from its `layout`, and sets the stage's `vpc`, `logs`, `database`,
    `load_balancer`, `app_servers`, `url` and `connections` (the load balancer's)."""

    def __init__(self, scope: Construct, *, layout: render.ServerLayout, vpc: ec2.IVpc, servers: ServerProps | None,
                 database: DatabaseProps | Database | None, load_balancer: LoadBalancerProps | None,
                 subnets: Subnets | None, domain: Domain | None, notifications: sns.ITopic | None,
                 logs: ServerLogs | None) -> None:
        servers, database, subnets = servers or ServerProps(), database or DatabaseProps(), subnets or Subnets()
        if servers.desired_servers is not None and servers.desired_servers != servers.min_servers:
            raise ValueError(f"ServerProps.desired_servers: got {servers.desired_servers}, but the group starts at "
                             f"min_servers ({servers.min_servers}) and only scaling moves it (a deploy never sets "
                             "its size); allowed: None, or equal to min_servers (raise min_servers for a larger "
                             "floor)")
        balancer = load_balancer or LoadBalancerProps()
        if notifications is None:  # the group reports launches, terminations and failures somewhere
            notifications = encrypted_topic(scope, key_id="NotificationsKey", topic_id="Notifications",
                                            display_name=f"{scope.node.path} scaling notifications")
        server_image, data_server_image = parts.images(servers)
        self.logs = parts.logs_for(scope, logs, servers=servers, nginx=layout.proxy,
                                   postgresql=parts.runs_postgresql_server(database),
                                   removal_policy=database.removal_policy)
        self.database = parts.database_for(scope, database, vpc=vpc, subnets=subnets, servers=servers,
                                           image=data_server_image, logs=self.logs)
        certificate = balancer.certificate
        if certificate is None and domain is not None:
            # Validated by a DNS record in the zone, which CloudFormation adds and waits for.
            certificate = acm.Certificate(scope, "Certificate", domain_name=domain.name,
                                          validation=acm.CertificateValidation.from_dns(domain.zone))
        self.load_balancer = WebLoadBalancer(
            scope, "LoadBalancer", vpc=vpc, subnets=subnets.public_or_default(),
            target_port=layout.service_port, health_check_path=layout.health_path,
            deregistration_delay=Duration.seconds(balancer.deregistration_delay_seconds),
            certificate=certificate, deletion_protection=balancer.deletion_protection,
            access_logs_removal_policy=balancer.access_logs_removal_policy,
            auto_delete_logs=balancer.auto_delete_access_logs)
        # Made before the group: its update policy names them.
        self.rollout_alarms = rollout_alarms(scope, self.load_balancer.target_group, balancer, notifications)
        self.app_servers = AppServerGroup(
            scope, "AppServers", vpc=vpc, subnets=subnets.app_or_default(),
            instance_type=parts.server_instance_type(servers.instance_type, servers, what="ServerProps.instance_type"),
            machine_image=server_image,
            init=bootstrap.app_server_init(layout, self.database.endpoint,
                                           agent=self.logs.agent_init(mount_points=["/"])),
            min_servers=servers.min_servers, max_servers=servers.max_servers, key_pair=servers.key_pair,
            admin_cidrs=servers.admin_cidrs, root_volume_gib=servers.root_volume_gib, notifications=notifications,
            rollout_alarms=self.rollout_alarms, min_healthy_percent=balancer.rollout_min_healthy_percent,
            max_healthy_percent=balancer.rollout_max_healthy_percent,
            warmup_seconds=balancer.rollout_warmup_seconds, bake_seconds=balancer.rollout_bake_seconds)
        self.load_balancer.add_targets(self.app_servers)
        parts.connect_database(self.database, self.app_servers, self.app_servers.group)
        self.logs.grant(self.app_servers.role, server="AppServers")
        parts.grant_app_secrets(scope, self.app_servers.role, layout.app)
        # Scale out on load per server and on CPU; whichever asks for more servers wins. Scaling
        # stays on during an instance refresh, which keeps its percentages of the current size.
        self.app_servers.group.scale_on_request_count(
            "RequestsPerServer", target_requests_per_minute=balancer.target_requests_per_server_per_minute)
        self.app_servers.group.scale_on_cpu_utilization(
            "CpuUtilization", target_utilization_percent=balancer.target_cpu_percent)
        parts.address_record(scope, domain, route53.RecordTarget.from_alias(
            targets.LoadBalancerTarget(self.load_balancer.load_balancer)))
        scheme = "https" if certificate is not None else "http"
        self.url = f"{scheme}://{domain.name}/" if domain else self.load_balancer.url
        parts.add_outputs(scope, url=self.url, session_manager_command=self.app_servers.session_manager_command(
            Stack.of(scope).region))
        scope.vpc, scope.logs, scope.database = vpc, self.logs, self.database
        scope.load_balancer, scope.app_servers = self.load_balancer, self.app_servers
        scope.rollout_alarms = self.rollout_alarms
        scope.url, scope.connections = self.url, self.load_balancer.connections


ROLLOUT_ALARM_PERIOD = Duration.minutes(1)


def rollout_alarms(scope: Construct, target_group: elbv2.ApplicationTargetGroup, balancer: LoadBalancerProps,
                   notifications: sns.ITopic) -> list[cloudwatch.Alarm]:
    """The alarms that fail (and so roll back) a rollout: the targets' 5xx share, and unhealthy targets.

    Stricter in time than the paging alarms in monitoring.py (N consecutive minutes, not 3 of 5):
    they must trip within the bake time. ALB metrics land in CloudWatch a minute or two late, so
    `rollout_alarm_minutes` (2) consecutive bad minutes alarm about 4 minutes after a bad version
    takes traffic, inside the default 5-minute bake. No requests, or no targets reporting, is no
    evidence either way (missing data does not breach).
    """
    minutes, prefix = balancer.rollout_alarm_minutes, Stack.of(scope).stack_name
    errors = target_group.metrics.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT,
                                                   period=ROLLOUT_ALARM_PERIOD, statistic="Sum")
    requests = target_group.metrics.request_count(period=ROLLOUT_ALARM_PERIOD, statistic="Sum")
    # A minute with requests but no 5xx has no error datapoint at all: FILL makes it 0 %.
    rate = cloudwatch.MathExpression(expression="IF(requests > 0, 100 * FILL(errors, 0) / requests, 0)",
                                     using_metrics={"errors": errors, "requests": requests},
                                     label="Target 5xx % (rollout)", period=ROLLOUT_ALARM_PERIOD)
    alarms = [
        cloudwatch.Alarm(scope, "Rollout5xxRate", alarm_name=f"{prefix}-Rollout5xxRate", metric=rate, threshold=balancer.rollout_5xx_percent,
                         comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                         evaluation_periods=minutes, datapoints_to_alarm=minutes,
                         treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                         alarm_description=f"Targets answered more than {balancer.rollout_5xx_percent:g}% 5xx in "
                                           f"{minutes} consecutive minutes: fails and rolls back a deploy"),
        cloudwatch.Alarm(scope, "RolloutUnhealthyHosts", alarm_name=f"{prefix}-RolloutUnhealthyHosts",
                         metric=target_group.metrics.unhealthy_host_count(period=ROLLOUT_ALARM_PERIOD,
                                                                          statistic="Maximum"),
                         threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                         evaluation_periods=minutes, datapoints_to_alarm=minutes,
                         treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                         alarm_description=f"A target failed the load balancer's health check in {minutes} "
                                           "consecutive minutes: fails and rolls back a deploy"),
    ]
    for alarm in alarms:
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(notifications))
        alarm.add_ok_action(cloudwatch_actions.SnsAction(notifications))
    return alarms


def watch(stage, monitoring: ServiceMonitoring) -> None:
    """Put a load-balanced stage's ALB, group, servers and database on the dashboard and alarms."""
    monitoring.watch_load_balancer(stage.load_balancer.load_balancer, stage.load_balancer.target_group)
    monitoring.watch_auto_scaling_group(stage.app_servers.group)
    monitoring.watch_servers("App servers",
                             dimensions={"AutoScalingGroupName": stage.app_servers.group.auto_scaling_group_name})
    parts.watch_database(monitoring, stage.database)


def backed_up_resources(stage) -> list[backup.BackupResource]:
    return parts.database_backups(stage.database)
