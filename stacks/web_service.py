"""One environment's stack: the network, the configured stage, and what watches it."""

from __future__ import annotations

import re

from aws_cdk import Annotations, CfnOutput, Environment, RemovalPolicy, Stack, Tags
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from cdk_constructs.backup import DataBackup
from cdk_constructs.monitoring import ServiceMonitoring
from cdk_constructs.network import RETENTION_DAYS, Network
from cdk_constructs.notifications import encrypted_topic
from cdk_constructs.observability import ServerLogs
from cdk_constructs.stages import STAGES, MultiProcess
from envconfig import EnvironmentConfig
from stacks import config_mapping as mapping

# The app version: the app source asset's content hash, plus the git commit our tooling passes as
# `-c app-commit=...` (tools/deploys.py; semver's "+build" separator). The commit is context, not
# read here, so an in-process synth (tests, the rehearsal) stays the same from one commit to the next.
APP_VERSION_TAG = "app-version"
APP_VERSION_OUTPUT = "AppVersion"
COMMIT_CONTEXT = "app-commit"
_COMMIT = re.compile(r"^[0-9a-f]{4,40}(-dirty)?$")


class WebServiceStack(Stack):
    """Composes; builds nothing itself. Construct IDs here are a contract (see tests/test_logical_ids.py).

    The stage construct comes from `config.stage`; its props come from stacks/config_mapping.py."""

    def __init__(self, scope: Construct, *, config: EnvironmentConfig, target: str = "aws") -> None:
        stage_class = STAGES[int(config.stage)]
        env = Environment(account=config.account, region=config.region) if config.account else \
            Environment(region=config.region)
        super().__init__(scope, config.stack_name, env=env,
                         description=f"{config.project} {config.name}: stage {int(config.stage)} "
                                     f"({stage_class.__name__})",
                         termination_protection=config.is_production)
        self.config = config
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
        self.alarm_topic = encrypted_topic(self, key_id="AlarmTopicKey", topic_id="Alarms",
                                           display_name=f"{self.stack_name} alarms")
        if config.operations.alarm_email:
            self.alarm_topic.add_subscription(subscriptions.EmailSubscription(config.operations.alarm_email))
        self.server_logs = ServerLogs(self, "Logs", prefix=config.stack_name,
                                      retention_days=config.operations.log_retention_days,
                                      removal_policy=stateful_removal,
                                      nginx=stage_class is MultiProcess,
                                      postgresql=config.database.kind == "ec2"
                                      or config.database.carry_from is not None)
        key_pair = self._key_pair(config)
        props = {
            "vpc": self.network.vpc, "app": mapping.app_spec(config),
            "servers": mapping.server_props(config, key_pair=key_pair), "subnets": mapping.subnets(self.network),
            "domain": mapping.domain(self, config), "logs": self.server_logs,
            "database": mapping.database_props(config, self.network),
        }
        if config.stage.load_balanced:
            props["load_balancer"] = mapping.load_balancer_props(self, config, custom_resources=custom_resources)
            props["notifications"] = self.alarm_topic
        if stage_class is MultiProcess:
            props["processes_per_server"] = config.app.processes_per_server
        self.service = stage_class(self, "Service", **props)
        self.monitoring = ServiceMonitoring(self, "Monitoring", name=config.stack_name, topic=self.alarm_topic)
        self.service.watch(self.monitoring)
        self.app_version = self._record_app_version(config)
        backed_up = self.service.backed_up_resources()
        if backed_up:
            self.backup = DataBackup(self, "Backup", resources=backed_up,
                                     retention_days=config.operations.backup_retention_days)
        if config.is_production and not self.service.url.startswith("https://"):
            remedy = "set domain.name and domain.hosted_zone_id in its config" if config.stage.load_balanced else \
                "HTTPS needs a load balancer (stage 3 or later); a domain on stages 1-2 adds only its DNS record"
            Annotations.of(self).add_warning_v2(
                "staged-web:production-without-https",
                f"environment {config.name!r} keeps its data (operations.removal_policy = "
                f"{config.operations.removal_policy!r}) but serves plain HTTP: {remedy} (README: HTTPS by domain).")

    def _record_app_version(self, config: EnvironmentConfig) -> str:
        """The version as the `AppVersion` output and an `app-version` tag on every app server."""
        hashes = {c.asset_hash for c in self.node.find_all()
                  # ec2.InitSource.from_asset names its asset after the target directory (…--app).
                  if isinstance(c, s3_assets.Asset) and c.node.id.endswith("--appAsset")}
        if len(hashes) != 1:
            raise RuntimeError(f"{self.stack_name}: expected one app source asset, found {sorted(hashes)}")
        version = hashes.pop()[:12]
        commit = self.node.try_get_context(COMMIT_CONTEXT)
        if commit and not _COMMIT.match(str(commit)):
            Annotations.of(self).add_error(
                f"environment {config.name!r}: context {COMMIT_CONTEXT}: got {commit!r}; allowed: a git commit "
                "(4-40 hex digits), optionally with -dirty, as `git rev-parse --short HEAD` prints it")
        elif commit:
            version += f"+{commit}"
        CfnOutput(self, APP_VERSION_OUTPUT, value=version,
                  description="App version: source asset hash (+ git commit at synth)").override_logical_id(
                      APP_VERSION_OUTPUT)
        servers = self.service.app_servers
        if isinstance(getattr(servers, "group", None), autoscaling.AutoScalingGroup):
            # On the group only, propagated at launch: a tag on the launch template would make a
            # commit-only change a new launch template version, hence a rollout with nothing new.
            servers.group.node.default_child.tags.set_tag(APP_VERSION_TAG, version, 100, True)
        else:
            # On the instance resource only (not its launch template, whose new version would replace
            # the server): an instance's tags update without interruption.
            servers.instance.instance.tags.set_tag(APP_VERSION_TAG, version, 100)
        return version

    def _key_pair(self, config: EnvironmentConfig) -> ec2.IKeyPair | None:
        """None (Session Manager only), a key pair created here, or an existing one by name."""
        if config.access.key_pair == "create":
            # ec2.KeyPair keeps the private key in SSM Parameter Store (/ec2/keypair/<id>), never in the template.
            key = ec2.KeyPair(self, "KeyPair", key_pair_name=f"{config.stack_name}-servers",
                              type=ec2.KeyPairType.ED25519)
            # The logical ID it had when the stage built it: a new one would replace the key pair.
            key.node.default_child.override_logical_id("ServiceKeyPair0150B796")
            CfnOutput(self, "KeyPairParameter", value=f"/ec2/keypair/{key.key_pair_id}",
                      description="SSM parameter holding the created key pair's private key").override_logical_id(
                          "KeyPairParameter")
            return key
        if config.access.key_pair == "existing":
            return ec2.KeyPair.from_key_pair_name(self, "KeyPair", config.access.key_pair_name)
        return None

    @property
    def availability_zones(self) -> list[str]:
        # The AZs come from config. Without this override a stack with an account would look
        # them up at synth time, which needs credentials.
        return self._azs
