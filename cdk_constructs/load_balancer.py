"""An internet-facing Application Load Balancer with secure, fast-failing defaults."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_constructs.nag import acknowledge

# Out of rotation within ~15 s: 3 failed checks 5 s apart, each timing out after 4 s.
HEALTH_CHECK_INTERVAL = Duration.seconds(5)
HEALTH_CHECK_TIMEOUT = Duration.seconds(4)
UNHEALTHY_THRESHOLD = 3
HEALTHY_THRESHOLD = 2


def _log_bucket(scope: Construct, construct_id: str, *, removal_policy: RemovalPolicy, auto_delete: bool,
                server_access_logs: s3.IBucket | None) -> s3.Bucket:
    return s3.Bucket(
        scope, construct_id,
        encryption=s3.BucketEncryption.S3_MANAGED,   # ALB access logs support SSE-S3 only
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=False,
        lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90))],
        removal_policy=removal_policy,
        auto_delete_objects=auto_delete,
        server_access_logs_bucket=server_access_logs,
        server_access_logs_prefix="access-log-bucket/" if server_access_logs else None,
    )


class WebLoadBalancer(Construct):
    """ALB in the public subnets with one target group on the app servers' port.

    HTTP only, or (with a certificate) HTTPS plus an HTTP→HTTPS redirect. Exposes
    `load_balancer`, `security_group`, `target_group`, `listener`, `access_logs`,
    `connections`, `url`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                 target_port: int, health_check_path: str, deregistration_delay: Duration,
                 certificate: acm.ICertificate | None = None, deletion_protection: bool = True,
                 access_logs_removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
                 auto_delete_logs: bool = False) -> None:
        super().__init__(scope, construct_id)
        self.target_port = target_port
        removal = access_logs_removal_policy
        # The access-log bucket logs its own access to a second bucket, which is where the
        # chain has to stop.
        self.server_access_logs = _log_bucket(self, "AccessLogsAudit", removal_policy=removal,
                                              auto_delete=auto_delete_logs, server_access_logs=None)
        acknowledge(self.server_access_logs, "AwsSolutions-S1",
                    "This bucket receives the server access logs of the ALB access-log bucket; logging it in turn "
                    "would only move the question one bucket further.")
        self.access_logs = _log_bucket(self, "AccessLogs", removal_policy=removal, auto_delete=auto_delete_logs,
                                       server_access_logs=self.server_access_logs)

        self.security_group = ec2.SecurityGroup(self, "SecurityGroup", vpc=vpc, allow_all_outbound=False,
                                                description="Load balancer: HTTP(S) from the internet")
        acknowledge(self.security_group, "AwsSolutions-EC23",
                    "The internet-facing load balancer is the service's front door: only ports 80 and 443 are open.")
        self.load_balancer = elbv2.ApplicationLoadBalancer(
            self, "Alb", vpc=vpc, vpc_subnets=subnets, internet_facing=True, security_group=self.security_group,
            drop_invalid_header_fields=True, deletion_protection=deletion_protection,
            desync_mitigation_mode=elbv2.DesyncMitigationMode.DEFENSIVE,
            http2_enabled=True, idle_timeout=Duration.seconds(60),
        )
        self.load_balancer.log_access_logs(self.access_logs, prefix="alb")
        self.connections = self.load_balancer.connections

        self.target_group = elbv2.ApplicationTargetGroup(
            self, "Targets", vpc=vpc, port=target_port, protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.INSTANCE,
            deregistration_delay=deregistration_delay,
            health_check=elbv2.HealthCheck(
                path=health_check_path, interval=HEALTH_CHECK_INTERVAL, timeout=HEALTH_CHECK_TIMEOUT,
                healthy_threshold_count=HEALTHY_THRESHOLD, unhealthy_threshold_count=UNHEALTHY_THRESHOLD,
                healthy_http_codes="200"),
        )
        # Port 80 is always the listener "Http": with a certificate it redirects to HTTPS. Turning
        # HTTPS on then changes that listener's action in place; a second port-80 listener (what
        # add_redirect would create) is added before the first is removed, and the ALB refuses it.
        if certificate is not None:
            self.listener = self.load_balancer.add_listener(
                "Https", port=443, protocol=elbv2.ApplicationProtocol.HTTPS, certificates=[certificate],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS, default_target_groups=[self.target_group], open=True)
            self.http_listener = self.load_balancer.add_listener(
                "Http", port=80, protocol=elbv2.ApplicationProtocol.HTTP, open=True,
                default_action=elbv2.ListenerAction.redirect(protocol="HTTPS", port="443", permanent=True))
            self.url = f"https://{self.load_balancer.load_balancer_dns_name}/"
        else:
            self.listener = self.http_listener = self.load_balancer.add_listener(
                "Http", port=80, protocol=elbv2.ApplicationProtocol.HTTP,
                default_target_groups=[self.target_group], open=True)
            self.url = f"http://{self.load_balancer.load_balancer_dns_name}/"

    def add_targets(self, group) -> None:
        """Register an Auto Scaling group and open its port to this load balancer only."""
        self.target_group.add_target(group.group)
        group.connections.allow_from(self.connections, ec2.Port.tcp(self.target_port),
                                     "App port from the load balancer only")

