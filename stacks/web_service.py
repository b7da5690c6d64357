"""One environment's stack: the network, the configured stage, and what watches it."""

from __future__ import annotations

from aws_cdk import Environment, RemovalPolicy, Stack, Tags
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from cdk_constructs.backup import DataBackup
from cdk_constructs.monitoring import ServiceMonitoring
from cdk_constructs.network import RETENTION_DAYS, Network
from cdk_constructs.observability import ServerLogs
from cdk_constructs.stages import STAGES
from envconfig import EnvironmentConfig, Stage


class WebServiceStack(Stack):
    """Composes; builds nothing itself. Construct IDs here are a contract (see tests/test_logical_ids.py)."""

    def __init__(self, scope: Construct, *, config: EnvironmentConfig, target: str = "aws") -> None:
        env = Environment(account=config.account, region=config.region) if config.account else \
            Environment(region=config.region)
        super().__init__(scope, config.stack_name, env=env,
                         description=f"{config.project} {config.name}: stage {int(config.stage)} "
                                     f"({STAGES[int(config.stage)].__name__})",
                         termination_protection=config.is_production)
        self._azs = list(config.network.availability_zones)
        custom_resources = target != "emulator" or config.emulator.custom_resources
        stateful_removal = RemovalPolicy.RETAIN if config.is_production else RemovalPolicy.DESTROY
        Tags.of(self).add("project", config.project)
        Tags.of(self).add("environment", config.name)

        self.network = Network(
            self, "Network", cidr=config.network.vpc_cidr, availability_zones=self._azs,
            nat_gateways=config.network.nat_gateways, interface_endpoints=config.network.interface_endpoints,
            flow_log_retention=RETENTION_DAYS[config.network.flow_log_retention_days],
            restrict_default_security_group=custom_resources, flow_log_removal=stateful_removal)
        self.alarm_topic = self._alarm_topic()
        if config.operations.alarm_email:
            self.alarm_topic.add_subscription(subscriptions.EmailSubscription(config.operations.alarm_email))
        self.server_logs = ServerLogs(self, "Logs", prefix=config.stack_name,
                                      retention_days=config.operations.log_retention_days,
                                      removal_policy=stateful_removal,
                                      nginx=config.stage == Stage.MULTI_PROCESS,
                                      postgresql=config.database.kind == "ec2")
        self.service = STAGES[int(config.stage)](
            self, "Service", config=config, network=self.network, notifications=self.alarm_topic,
            server_logs=self.server_logs, custom_resources_allowed=custom_resources)
        self.monitoring = ServiceMonitoring(self, "Monitoring", name=config.stack_name, topic=self.alarm_topic)
        self.service.watch(self.monitoring)
        backed_up = self.service.backed_up_resources()
        if backed_up:
            self.backup = DataBackup(self, "Backup", resources=backed_up,
                                     retention_days=config.operations.backup_retention_days)

    @property
    def availability_zones(self) -> list[str]:
        # The AZs come from config. Without this override a stack with an account would look
        # them up at synth time, which needs credentials.
        return self._azs

    def _alarm_topic(self) -> sns.Topic:
        # Alarms and Auto Scaling notifications publish to an encrypted topic; the AWS-managed
        # SNS key cannot be used by CloudWatch or Auto Scaling, so the key is the stack's own.
        key = kms.Key(self, "AlarmTopicKey", enable_key_rotation=True,
                      description="Encrypts the alarm and scaling notification topic")
        key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
        # Auto Scaling publishes as its service-linked role, which may not exist yet in a new
        # account: name it in a condition, not as a principal (a missing principal fails the policy).
        key.add_to_resource_policy(iam.PolicyStatement(
            principals=[iam.AnyPrincipal()], actions=["kms:Decrypt", "kms:GenerateDataKey*"], resources=["*"],
            conditions={"ArnEquals": {"aws:PrincipalArn": self.format_arn(
                service="iam", region="", resource="role",
                resource_name="aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling")}}))
        return sns.Topic(self, "Alarms", master_key=key, enforce_ssl=True,
                         display_name=f"{self.stack_name} alarms")
