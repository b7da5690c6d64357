"""What servers report: logs to CloudWatch Logs and host metrics (disk, memory) through the
CloudWatch agent, installed and configured by CloudFormation Init."""

from __future__ import annotations

import json

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from app_tier import render
from cdk_constructs.nag import acknowledge
from cdk_constructs.naming import stack_id_suffix
from cdk_constructs.network import RETENTION_DAYS

AGENT_CONFIG = "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json"
AGENT_NAMESPACE = "CWAgent"
# Disk metrics are published per instance and mount point, with no other dimensions, so an
# alarm can name them exactly.
DISK_DIMENSIONS = ["InstanceId", "path"]


class ServerLogs(Construct):
    """The log groups every server of an environment writes to, and the agent config that
    ships them. Exposes `groups` (name -> LogGroup) and `init_config(...)`."""

    STREAMS = {
        "app": f"{render.LOG_DIR}/*.log",
        "nginx-access": render.NginxPaths.access_log,
        "nginx-error": render.NginxPaths.error_log,
        "cfn-init": "/var/log/cfn-init.log",
        "postgresql": f"{render.PG_DATA_DIR}/log/*.log",
    }

    def __init__(self, scope: Construct, construct_id: str, *, prefix: str, retention_days: int,
                 removal_policy: RemovalPolicy, nginx: bool, postgresql: bool) -> None:
        """`nginx`: some server runs the in-server proxy (stage 4); `postgresql`: some server runs
        PostgreSQL itself (not RDS). Only streams that something writes get a log group."""
        super().__init__(scope, construct_id)
        self.prefix = prefix
        # Retained groups outlive the stack: their names end the prefix with the stack-ID suffix,
        # so a re-created stack does not collide with them. The agent config uses the same names.
        self.suffix = "" if removal_policy == RemovalPolicy.DESTROY else f"-{stack_id_suffix(self)}"
        self.streams = {name: path for name, path in self.STREAMS.items()
                        if (nginx or not name.startswith("nginx")) and (postgresql or name != "postgresql")}
        self.groups = {
            name: logs.LogGroup(self, name.title().replace("-", ""), log_group_name=self.group_name(name),
                                retention=RETENTION_DAYS[retention_days], removal_policy=removal_policy)
            for name in self.streams
        }

    def group_name(self, stream: str) -> str:
        return f"/{self.prefix}{self.suffix}/{stream}"

    def grant(self, role: iam.IRole, *, server: str) -> None:
        """Let a server's role write these logs and the agent's metrics.

        `server` names the kind of server ("AppServers", "Database") for the policy's ID."""
        for group in self.groups.values():
            group.grant_write(role)
        policy = iam.Policy(self, f"{server}Metrics", statements=[
            iam.PolicyStatement(actions=["cloudwatch:PutMetricData"], resources=["*"],
                                conditions={"StringEquals": {"cloudwatch:namespace": AGENT_NAMESPACE}})])
        policy.attach_to_role(role)
        acknowledge(policy, "AwsSolutions-IAM5[Resource::*]",
                    "cloudwatch:PutMetricData has no resource-level permissions; the condition limits it to the "
                    "agent's namespace.")

    def agent_init(self, *, mount_points: list[str]) -> ec2.InitConfig:
        """Install the CloudWatch agent, write its config and start it."""
        config = {
            "agent": {"metrics_collection_interval": 60, "run_as_user": "root"},
            "metrics": {
                "namespace": AGENT_NAMESPACE,
                "append_dimensions": {"InstanceId": "${aws:InstanceId}"},
                "aggregation_dimensions": [DISK_DIMENSIONS, ["InstanceId"]],
                "metrics_collected": {
                    "disk": {"measurement": ["used_percent"], "resources": mount_points, "drop_device": True},
                    "mem": {"measurement": ["mem_used_percent"]},
                },
            },
            "logs": {"logs_collected": {"files": {"collect_list": [
                {"file_path": path, "log_group_name": self.group_name(name),
                 "log_stream_name": "{instance_id}", "retention_in_days": -1}
                for name, path in self.streams.items()]}}},
        }
        start = ("/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s "
                 f"-c file:{AGENT_CONFIG}")
        return ec2.InitConfig([
            ec2.InitPackage.yum("amazon-cloudwatch-agent"),
            ec2.InitFile.from_string(AGENT_CONFIG, json.dumps(config, indent=2), mode="000644"),
            ec2.InitCommand.shell_command(start, key="00-start-cloudwatch-agent"),
        ])
