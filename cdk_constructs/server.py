"""What every EC2 server here shares: its image, its role, its root volume, its key pair.

The app server, the app server group and the database server all build on these, so a
security default (IMDSv2, encrypted gp3, Session Manager instead of SSH) is set once.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk_constructs.nag import acknowledge

# cfn-init on a fresh Amazon Linux 2023 installs packages and the app's Python dependencies;
# CloudFormation's default 5-minute signal timeout is regularly too short for that.
BOOT_SIGNAL_TIMEOUT = Duration.minutes(20)

# The actions Session Manager's agent calls; none of them supports resource-level
# permissions, so they take "*" (this is what AmazonSSMManagedInstanceCore grants too).
_SESSION_MANAGER_ACTIONS = [
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
]


AL2023_PARAMETER_PREFIX = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-"


def machine_image(ami: str | dict[str, str], architecture: str, *, pin_in_context: bool) -> ec2.IMachineImage:
    """The AMI of servers that hold no data: explicit IDs per region, or the latest Amazon Linux 2023.

    With `pin_in_context` (an environment with a fixed account), CDK looks the AMI up once
    and keeps it in cdk.context.json, so a new AMI release does not silently replace
    servers; commit that file. Without an account the AMI is resolved from the public SSM
    parameter at deploy time.
    """
    if isinstance(ami, dict):
        return ec2.MachineImage.generic_linux(ami)
    cpu = ec2.AmazonLinuxCpuType.ARM_64 if architecture == "arm64" else ec2.AmazonLinuxCpuType.X86_64
    return ec2.MachineImage.latest_amazon_linux2023(cpu_type=cpu, cached_in_context=pin_in_context)


def launch_time_image(ami: str | dict[str, str], architecture: str) -> ec2.IMachineImage:
    """The AMI of a server that holds data (stage 1's server, the EC2 database server).

    For "al2023" the template names the public SSM parameter as `resolve:ssm:...` and EC2
    resolves it when it launches the instance: the template's ImageId is a constant, so a new
    Amazon Linux release never makes CloudFormation replace the server (and its data). Moving
    such a server to a new AMI is deliberate (README: Keeping the data). Explicit IDs per region
    are used as they are.
    """
    if isinstance(ami, dict):
        return ec2.MachineImage.generic_linux(ami)
    arch = "arm64" if architecture == "arm64" else "x86_64"
    return ec2.MachineImage.resolve_ssm_parameter_at_launch(
        f"{AL2023_PARAMETER_PREFIX}{arch}", os=ec2.OperatingSystemType.LINUX)


def lint_image_resolved_at_launch(instance: ec2.Instance) -> None:
    """cfn-lint's E1152 (and CDK's built-in CloudFormation validation, its port) accepts
    `resolve:ssm:` as the ImageId of a launch template only, though EC2's RunInstances, which
    CloudFormation calls for AWS::EC2::Instance, takes it too: ignore that one rule on this one
    instance, and only when its image is resolved at launch."""
    image = instance.instance.image_id
    if isinstance(image, str) and image.startswith("resolve:ssm:"):
        instance.instance.add_metadata("cfn-lint", {"config": {"ignore_checks": ["E1152"]}})
        acknowledge(instance.instance, "CloudFormation-Validate::E1152",
                    "ImageId resolve:ssm:<public AMI parameter> is resolved by EC2 at launch, which "
                    "AWS::EC2::Instance supports; the rule knows it only for launch templates.")


def root_volume(size_gib: int) -> ec2.BlockDevice:
    """Encrypted gp3 root volume of a single instance."""
    return ec2.BlockDevice(
        device_name="/dev/xvda",
        volume=ec2.BlockDeviceVolume.ebs(size_gib, volume_type=ec2.EbsDeviceVolumeType.GP3, encrypted=True,
                                         delete_on_termination=True),
    )


def group_root_volume(size_gib: int) -> autoscaling.BlockDevice:
    """The same root volume for an Auto Scaling group's launch template (its own type in CDK)."""
    return autoscaling.BlockDevice(
        device_name="/dev/xvda",
        volume=autoscaling.BlockDeviceVolume.ebs(size_gib, volume_type=autoscaling.EbsDeviceVolumeType.GP3,
                                                 encrypted=True, delete_on_termination=True),
    )


class ServerRole(Construct):
    """An instance role with Session Manager access and nothing else; callers add grants."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(self, "Resource", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
                             description="App or database server: Session Manager, its bootstrap and its grants")
        policy = iam.Policy(self, "SessionManager", statements=[
            iam.PolicyStatement(actions=_SESSION_MANAGER_ACTIONS, resources=["*"]),
        ])
        policy.attach_to_role(self.role)
        acknowledge(policy, "AwsSolutions-IAM5[Resource::*]",
                    "Session Manager's ssm:UpdateInstanceInformation, ssmmessages:* and ec2messages:* actions do "
                    "not support resource-level permissions; the policy names each action rather than using the "
                    "AWS managed policy.")


@dataclass(frozen=True)
class KeyPairChoice:
    """The server key pair: none (Session Manager only), created here, or an existing one."""

    key_pair: ec2.IKeyPair | None
    parameter_name: str | None   # SSM parameter holding a created key pair's private key

    @classmethod
    def build(cls, scope: Construct, *, mode: str, existing_name: str, name_prefix: str) -> KeyPairChoice:
        if mode == "create":
            # ec2.KeyPair keeps the private key in SSM Parameter Store (/ec2/keypair/<id>),
            # never in the template.
            key = ec2.KeyPair(scope, "KeyPair", key_pair_name=f"{name_prefix}-servers",
                              type=ec2.KeyPairType.ED25519)
            return cls(key, f"/ec2/keypair/{key.key_pair_id}")
        if mode == "existing":
            return cls(ec2.KeyPair.from_key_pair_name(scope, "KeyPair", existing_name), None)
        return cls(None, None)


def allow_ssh_from_admins(connections: ec2.Connections, *, admin_cidrs: tuple[str, ...],
                          key_pair: KeyPairChoice) -> None:
    """Port 22 opens only when there is a key to log in with, and only to the admin ranges."""
    if key_pair.key_pair is None:
        return
    for cidr in admin_cidrs:
        connections.allow_from(ec2.Peer.ipv4(cidr), ec2.Port.tcp(22), f"SSH from admin range {cidr}")


def acknowledge_bootstrap_grants(role: iam.IRole) -> None:
    """The read grant CDK gives a server on its CloudFormation Init asset (the app's code)."""
    policy = role.node.try_find_child("DefaultPolicy")
    for finding in ("Action::s3:GetBucket*", "Action::s3:GetObject*", "Action::s3:List*",
                    f"Resource::arn:aws:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-{Stack.of(role).region}/*"):
        acknowledge(policy, f"AwsSolutions-IAM5[{finding}]",
                    "CDK's grant to read the server's bootstrap asset (the app's code) from the CDK asset bucket; "
                    "the object key is a content hash only known at deploy time.")
