"""What every EC2 server here shares: its image, its role, its root volume, its key pair.

The app server, the app server group and the database server all build on these, so a
security default (IMDSv2, encrypted gp3, Session Manager instead of SSH) is set once.
"""

from __future__ import annotations

from collections.abc import Sequence

import jsii
from aws_cdk import AspectPriority, Aspects, Duration, IAspect
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct, IConstruct

from cdk_constructs.nag import acknowledge, partition_and_region

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

    For "al2023" the image is the public SSM parameter named as `resolve:ssm:...`, which EC2
    resolves when it launches the instance; `image_in_launch_template` puts that constant
    string in the instance's launch template, so a new Amazon Linux release never makes
    CloudFormation replace the server (and its data). Moving such a server to a new AMI is
    deliberate (README: Keeping the data). Explicit IDs per region are used as they are.
    """
    if isinstance(ami, dict):
        return ec2.MachineImage.generic_linux(ami)
    arch = "arm64" if architecture == "arm64" else "x86_64"
    return ec2.MachineImage.resolve_ssm_parameter_at_launch(
        f"{AL2023_PARAMETER_PREFIX}{arch}", os=ec2.OperatingSystemType.LINUX)


@jsii.implements(IAspect)
class _ImageIdIntoLaunchTemplate:
    """Moves a `resolve:ssm:` ImageId from an instance to the launch template CDK made for it.

    The template (construct id "LaunchTemplate", the instance's IMDSv2 settings) is created by
    ec2.Instance's own aspect at synthesis; this one runs after it (a later priority)."""

    def __init__(self, instance: ec2.Instance, image_id: str) -> None:
        self._path = instance.node.path
        self._image_id = image_id

    def visit(self, node: IConstruct) -> None:
        if node.node.path != self._path:
            return
        template = node.node.try_find_child("LaunchTemplate")
        if not isinstance(template, ec2.CfnLaunchTemplate):
            raise ValueError(f"{self._path}: no launch template to take the image {self._image_id} "
                             "(the instance must be built with require_imdsv2=True)")
        template.add_property_override("LaunchTemplateData.ImageId", self._image_id)


def image_in_launch_template(instance: ec2.Instance) -> None:
    """A server whose image EC2 resolves at launch names it in its launch template, not on itself.

    `resolve:ssm:<parameter>` is documented (and accepted by cfn-lint and CDK's validation) as the
    ImageId of a launch template, not of an AWS::EC2::Instance. The instance is left without an
    ImageId, so EC2 takes the template's; the template's data, hence its version and the
    instance's LaunchTemplate reference, stays constant across AMI releases. Images given as
    IDs stay on the instance. The machine image still sets the user data's OS type.
    """
    image = instance.instance.image_id
    if not (isinstance(image, str) and image.startswith("resolve:ssm:")):
        return
    instance.instance.add_property_deletion_override("ImageId")
    # ec2.Instance's IMDSv2 aspect creates the template with a mutating priority; DEFAULT runs after it.
    Aspects.of(instance).add(_ImageIdIntoLaunchTemplate(instance, image), priority=AspectPriority.DEFAULT)


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


def allow_ssh_from_admins(connections: ec2.Connections, *, admin_cidrs: Sequence[str],
                          key_pair: ec2.IKeyPair | None) -> None:
    """Port 22 opens only when there is a key to log in with, and only to the admin ranges."""
    if key_pair is None:
        return
    for cidr in admin_cidrs:
        connections.allow_from(ec2.Peer.ipv4(cidr), ec2.Port.tcp(22), f"SSH from admin range {cidr}")


def _asset_bucket_objects(scope: Construct) -> str:
    partition, region = partition_and_region(scope)
    return f"arn:{partition}:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-{region}/*"


def acknowledge_bootstrap_grants(role: iam.IRole) -> None:
    """The read grant CDK gives a server on its CloudFormation Init asset (the app's code)."""
    policy = role.node.try_find_child("DefaultPolicy")
    for finding in ("Action::s3:GetBucket*", "Action::s3:GetObject*", "Action::s3:List*",
                    f"Resource::{_asset_bucket_objects(role)}"):
        acknowledge(policy, f"AwsSolutions-IAM5[{finding}]",
                    "CDK's grant to read the server's bootstrap asset (the app's code) from the CDK asset bucket; "
                    "the object key is a content hash only known at deploy time.")
