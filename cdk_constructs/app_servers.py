"""App servers: one instance (stages 1–2) or an Auto Scaling group (stages 3–4)."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_sns as sns
from constructs import Construct

from cdk_constructs import bootstrap
from cdk_constructs.nag import acknowledge
from cdk_constructs.server import (
    BOOT_SIGNAL_TIMEOUT,
    ServerRole,
    acknowledge_bootstrap_grants,
    allow_ssh_from_admins,
    group_root_volume,
    image_in_launch_template,
    root_volume,
)


class AppServer(Construct):
    """One app server with an Elastic IP in a public subnet, updated in place by cfn-hup.

    Exposes `instance`, `role`, `security_group`, `connections`, `elastic_ip`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                 instance_type: str, machine_image: ec2.IMachineImage, init: ec2.CloudFormationInit,
                 service_port: int, key_pair: ec2.IKeyPair | None, admin_cidrs: Sequence[str],
                 termination_protection: bool, root_volume_gib: int) -> None:
        super().__init__(scope, construct_id)
        self.role = ServerRole(self, "Role").role
        self.security_group = ec2.SecurityGroup(self, "SecurityGroup", vpc=vpc, allow_all_outbound=True,
                                                description="App server: HTTP from the internet")
        self.instance = ec2.Instance(
            self, "Instance", vpc=vpc, vpc_subnets=subnets,
            instance_type=ec2.InstanceType(instance_type), machine_image=machine_image,
            security_group=self.security_group, role=self.role, require_imdsv2=True,
            block_devices=[root_volume(root_volume_gib)], detailed_monitoring=True,
            disable_api_termination=termination_protection, key_pair=key_pair,
            # The Elastic IP is attached only after the instance has signalled success, and to
            # signal (and to fetch packages) at first boot it needs a public address already.
            associate_public_ip_address=True,
        )
        image_in_launch_template(self.instance)
        if not termination_protection:
            acknowledge(self.instance, "AwsSolutions-EC29",
                        "Termination protection is off by choice (servers.termination_protection): an environment "
                        "torn down with cdk destroy; it is on wherever the environment keeps its data.")
        bootstrap.apply_with_in_place_updates(self.instance, init, signal_timeout=BOOT_SIGNAL_TIMEOUT)
        acknowledge_bootstrap_grants(self.role)
        self.elastic_ip = ec2.CfnEIP(self, "ElasticIp", instance_id=self.instance.instance_id,
                                     tags=[{"key": "Name", "value": self.node.path}])
        self.connections = self.instance.connections
        self.connections.allow_from(ec2.Peer.any_ipv4(), ec2.Port.tcp(service_port), "HTTP from the internet")
        acknowledge(self.security_group, "AwsSolutions-EC23",
                    "A single public app server is the web entry point of stages 1-2: only the HTTP port is open "
                    "to the internet (SSH only to admin CIDRs, and only with a key pair).")
        allow_ssh_from_admins(self.connections, admin_cidrs=admin_cidrs, key_pair=key_pair)

    @property
    def url(self) -> str:
        return f"http://{self.elastic_ip.attr_public_ip}/"

    def session_manager_command(self, region: str) -> str:
        return f"aws ssm start-session --region {region} --target {self.instance.instance_id}"


class AppServerGroup(Construct):
    """An Auto Scaling group of app servers in private subnets, replaced by an instance refresh on change.

    Exposes `group`, `role`, `security_group`, `connections`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                 instance_type: str, machine_image: ec2.IMachineImage, init: ec2.CloudFormationInit,
                 min_servers: int, max_servers: int, key_pair: ec2.IKeyPair | None,
                 admin_cidrs: Sequence[str], root_volume_gib: int, notifications: sns.ITopic,
                 rollout_alarms: Sequence[cloudwatch.IAlarm], min_healthy_percent: int, max_healthy_percent: int,
                 warmup_seconds: int, bake_seconds: int, health_check_grace_minutes: int = 5) -> None:
        super().__init__(scope, construct_id)
        self.role = ServerRole(self, "Role").role
        self.security_group = ec2.SecurityGroup(self, "SecurityGroup", vpc=vpc, allow_all_outbound=True,
                                                description="App servers: the app port from the load balancer")
        self.group = autoscaling.AutoScalingGroup(
            self, "Group", vpc=vpc, vpc_subnets=subnets,
            instance_type=ec2.InstanceType(instance_type), machine_image=machine_image,
            security_group=self.security_group, role=self.role, require_imdsv2=True,
            block_devices=[group_root_volume(root_volume_gib)], instance_monitoring=autoscaling.Monitoring.DETAILED,
            key_pair=key_pair,
            # No desired capacity: the group starts at min_servers and only scaling moves it, so a
            # deploy never puts a fleet that scaled out back to a fixed size (aws-cdk issue 5215).
            min_capacity=min_servers, max_capacity=max_servers,
            init=init, init_options=bootstrap.init_options_for_group(),
            # Creation only: the stack is not complete until min_servers servers signalled success
            # (cfn-init finished, app healthy). An instance refresh does not wait for cfn-signal.
            signals=autoscaling.Signals.wait_for_min_capacity(timeout=BOOT_SIGNAL_TIMEOUT),
            # On a change of the launch template, CloudFormation starts an instance refresh:
            # - launch before terminate: at least min_healthy_percent (100) of the desired capacity
            #   stays in service, up to max_healthy_percent may be in service or launching;
            # - a new server counts only once it is InService AND healthy to the load balancer (the
            #   group's health check type is ELB, so the refresh waits for the target group's verdict),
            #   then warmup_seconds more; old servers are deregistered and drained before they stop;
            # - any rollout alarm in ALARM during the refresh, or during bake_seconds after it, fails
            #   the refresh; CloudFormation then rolls the stack back, which refreshes the servers back
            #   to the previous launch template by this same policy (so it must stay on the group).
            # Scaling stays active meanwhile; the percentages follow the current desired capacity.
            update_policy=autoscaling.UpdatePolicy.instance_refresh(
                strategy=autoscaling.InstanceRefreshStrategy.ROLLING,
                min_healthy_percentage=min_healthy_percent, max_healthy_percentage=max_healthy_percent,
                instance_warmup=Duration.seconds(warmup_seconds),
                bake_time=Duration.seconds(bake_seconds), alarms=list(rollout_alarms) or None),
            health_checks=autoscaling.HealthChecks.with_additional_checks(
                additional_types=[autoscaling.AdditionalHealthCheckType.ELB],
                grace_period=Duration.minutes(health_check_grace_minutes)),
            notifications=[autoscaling.NotificationConfiguration(topic=notifications)],
            cooldown=Duration.minutes(3),
        )
        acknowledge_bootstrap_grants(self.role)
        # What guarantees "only once healthy" during a refresh is not cfn-signal but the load
        # balancer: a newly registered target gets no requests until it passed the target group's
        # health check (the app's health path, answered only once cfn-init started the app), and
        # the refresh counts it only when that check reports it healthy.
        acknowledge(self.group, "@aws-cdk/aws-autoscaling:signalsNotUsedByInstanceRefresh",
                    "Signals gate the group's creation only; during an instance refresh readiness is the load "
                    "balancer's health check (health check type ELB) plus the instance warm-up.")
        self.connections = self.group.connections
        allow_ssh_from_admins(self.connections, admin_cidrs=admin_cidrs, key_pair=key_pair)

    def session_manager_command(self, region: str) -> str:
        return (f"aws ssm start-session --region {region} --target $(aws autoscaling describe-auto-scaling-groups "
                f"--region {region} --auto-scaling-group-names {self.group.auto_scaling_group_name} "
                "--query 'AutoScalingGroups[0].Instances[0].InstanceId' --output text)")

