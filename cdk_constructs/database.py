"""The PostgreSQL database: its own EC2 server in an isolated subnet, or Amazon RDS.

Either way the password is generated into Secrets Manager and only ever read at boot by
the servers that were granted it; it never appears in the template or in user data.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from constructs import Construct

from app_tier import render
from cdk_constructs import bootstrap
from cdk_constructs.nag import acknowledge
from cdk_constructs.naming import stack_id_suffix
from cdk_constructs.network import RETENTION_DAYS
from cdk_constructs.observability import ServerLogs
from cdk_constructs.server import (
    BOOT_SIGNAL_TIMEOUT,
    KeyPairChoice,
    ServerRole,
    image_in_launch_template,
    root_volume,
)

DATA_DEVICE = "/dev/sdf"
DATA_MOUNT = "/var/lib/pgsql"


class Database(Construct):
    """PostgreSQL reachable only from what the caller allows (`connections.allow_default_port_from`).

    Exposes `connections`, `secret`, `endpoint` (an `app_tier.render.DatabaseEndpoint` for the
    app servers), and `instance` (the RDS instance) or `server` + `data_volume` (EC2).
    `boot_dependencies`: what the EC2 server needs in place before it boots (the VPC's
    interface endpoints, when its subnet has no other way out).
    """

    def __init__(self, scope: Construct, construct_id: str, *, kind: str, vpc: ec2.IVpc,
                 subnets: ec2.SubnetSelection, instance_type: str, machine_image: ec2.IMachineImage,
                 storage_gib: int, name: str, user: str, port: int, removal_policy: RemovalPolicy,
                 protect: bool, backup_retention_days: int, key_pair: KeyPairChoice | None = None,
                 multi_az: bool = False, server_logs: ServerLogs | None = None,
                 log_retention_days: int = 30, boot_dependencies: Sequence[Construct] = ()) -> None:
        super().__init__(scope, construct_id)
        self.kind = kind
        self.port = port
        # DatabaseSecret: a generated password in JSON {"username","password"} without the
        # characters PostgreSQL connection strings trip over.
        self.secret = rds.DatabaseSecret(self, "Secret", username=user)
        self.secret.apply_removal_policy(RemovalPolicy.RETAIN if protect else RemovalPolicy.DESTROY)
        acknowledge(self.secret, "AwsSolutions-SMG4",
                    "Rotation needs a Lambda function inside the VPC; the servers read the secret only at boot, "
                    "so rotate it with a rolling replacement (README: Rotating the database password).")
        region = Stack.of(self).region
        self.security_group = ec2.SecurityGroup(self, "SecurityGroup", vpc=vpc, allow_all_outbound=False,
                                                description="PostgreSQL: reachable only from the app servers")
        if kind == "rds":
            self._build_rds(vpc=vpc, subnets=subnets, instance_type=instance_type, storage_gib=storage_gib,
                            name=name, port=port, removal_policy=removal_policy, protect=protect,
                            backup_retention_days=backup_retention_days, multi_az=multi_az,
                            log_retention_days=log_retention_days)
            host = self.instance.db_instance_endpoint_address
        else:
            self._build_ec2(vpc=vpc, subnets=subnets, instance_type=instance_type, machine_image=machine_image,
                            storage_gib=storage_gib, name=name, user=user, port=port, region=region,
                            removal_policy=removal_policy, protect=protect, key_pair=key_pair,
                            server_logs=server_logs, boot_dependencies=boot_dependencies)
            host = self.server.instance_private_ip
        self.endpoint = render.DatabaseEndpoint(host=host, port=port, name=name, user=user,
                                                secret_arn=self.secret.secret_arn, region=region)
        self.connections = ec2.Connections(security_groups=[self.security_group],
                                           default_port=ec2.Port.tcp(port))

    def _build_rds(self, *, vpc, subnets, instance_type, storage_gib, name, port, removal_policy, protect,
                   backup_retention_days, multi_az, log_retention_days) -> None:
        # RDS creates its log group on first export, with no expiry; CDK's retention setting
        # needs a Lambda custom resource. A fixed identifier lets the stack own the group instead.
        # A custom name also makes CloudFormation refuse a silent replacement of the instance.
        # Both outlive a destroyed prod stack, so the name ends in the stack-ID suffix: a
        # re-created stack gets a new one instead of "already exists".
        identifier = f"{Stack.of(self).stack_name}-database-{stack_id_suffix(self)}"
        self.log_group = logs.LogGroup(self, "Logs", log_group_name=f"/aws/rds/instance/{identifier}/postgresql",
                                       retention=RETENTION_DAYS[log_retention_days],
                                       # log groups have no snapshot: keep them instead
                                       removal_policy=RemovalPolicy.RETAIN if removal_policy == RemovalPolicy.SNAPSHOT
                                       else removal_policy)
        self.instance = rds.DatabaseInstance(
            self, "Instance", instance_identifier=identifier,
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_17_9),
            instance_type=ec2.InstanceType(instance_type),
            vpc=vpc, vpc_subnets=subnets, security_groups=[self.security_group],
            credentials=rds.Credentials.from_secret(self.secret),
            database_name=name, port=port,
            allocated_storage=storage_gib, storage_type=rds.StorageType.GP3, storage_encrypted=True,
            multi_az=multi_az,
            backup_retention=Duration.days(backup_retention_days),
            deletion_protection=protect,
            removal_policy=removal_policy,
            iam_authentication=True,
            cloudwatch_logs_exports=["postgresql"],
            auto_minor_version_upgrade=True,
            enable_performance_insights=False,
        )
        self.instance.node.add_dependency(self.log_group)
        self.server = None
        self.data_volume = None

    def _build_ec2(self, *, vpc, subnets, instance_type, machine_image, storage_gib, name, user, port, region,
                   removal_policy, protect, key_pair, server_logs, boot_dependencies) -> None:
        self.instance = None
        # The data lives on its own volume so that replacing the server (a new AMI, a bigger
        # type) never replaces the data, and AWS Backup can snapshot just the data.
        subnet = vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED).subnets[0]
        self.data_volume = ec2.Volume(self, "Data", availability_zone=subnet.availability_zone,
                                      size=Size.gibibytes(storage_gib), volume_type=ec2.EbsDeviceVolumeType.GP3,
                                      encrypted=True, removal_policy=removal_policy)
        self.role = ServerRole(self, "Role").role
        self.server = ec2.Instance(
            self, "Server", vpc=vpc, vpc_subnets=ec2.SubnetSelection(subnets=[subnet]),
            instance_type=ec2.InstanceType(instance_type), machine_image=machine_image,
            security_group=self.security_group, role=self.role, require_imdsv2=True,
            block_devices=[root_volume(16)], detailed_monitoring=True, disable_api_termination=protect,
            key_pair=key_pair.key_pair if key_pair else None,
        )
        image_in_launch_template(self.server)
        # cfn-init, cfn-signal, the CloudWatch agent and the package mirrors all speak HTTPS. The
        # isolated subnet has no route to the internet, so 443 out reaches only the VPC's interface
        # endpoints and the S3 gateway endpoint. The gateway's prefix list ID would need a lookup
        # (synth stays offline), hence 0.0.0.0/0 on 443 only.
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
                                            "HTTPS to the VPC endpoints (no internet route from this subnet)")
        for dependency in boot_dependencies:
            self.server.instance.node.add_dependency(dependency)
        if not protect:
            acknowledge(self.server, "AwsSolutions-EC29",
                        "Non-production environments are torn down with cdk destroy; termination protection is "
                        "on wherever operations.removal_policy keeps data.")
        # The server attaches its own data volume at boot: an AWS::EC2::VolumeAttachment would
        # wait for the instance's creation signal, which in turn waits for the volume.
        self.data_volume.grant_attach_volume_by_resource_tag(self.role, [self.server])
        acknowledge(self.role.node.find_child("DefaultPolicy"),
                    f"AwsSolutions-IAM5[Resource::arn:aws:ec2:{region}:<AWS::AccountId>:instance/*]",
                    "ec2:AttachVolume is limited by a condition to instances carrying this volume's unique "
                    "attach tag, i.e. the database server itself.")
        self.secret.grant_read(self.role)
        # PostgreSQL answers only the VPC; the security group narrows it to the app servers.
        allowed_cidr = vpc.vpc_cidr_block
        self.endpoint_for_server = render.DatabaseEndpoint(host="0.0.0.0", port=port, name=name, user=user,
                                                           secret_arn=self.secret.secret_arn, region=region)
        attach = (
            "attach-data-volume",
            # A rebooted (or re-bootstrapped) server finds its volume already attached; any other
            # attach failure stops the boot here rather than at mkfs/mount.
            f"if [ ! -e {DATA_DEVICE} ]; then aws ec2 attach-volume --region {region} "
            f"--volume-id {self.data_volume.volume_id} "
            f"--instance-id $(ec2-metadata -i | cut -d' ' -f2) --device {DATA_DEVICE}; fi; "
            f"for i in $(seq 60); do [ -e {DATA_DEVICE} ] && break; sleep 5; done; "
            f"[ -e {DATA_DEVICE} ] || {{ echo 'data volume {DATA_DEVICE} did not appear' >&2; exit 1; }}; "
            f"blkid {DATA_DEVICE} || mkfs.xfs {DATA_DEVICE}; mkdir -p {DATA_MOUNT}; "
            # nofail: a missing volume must not stop the boot (and Session Manager with it). nofail also
            # drops the mount's ordering before local-fs.target, so PostgreSQL requires it by name:
            # after a reboot it starts on its data, or not at all.
            f"grep -q '{DATA_MOUNT} ' /etc/fstab || echo '{DATA_DEVICE} {DATA_MOUNT} xfs "
            f"defaults,nofail,x-systemd.before=postgresql.service,x-systemd.required-by=postgresql.service 0 2'"
            f" >> /etc/fstab; "
            f"mountpoint -q {DATA_MOUNT} || mount {DATA_MOUNT}",
        )
        agent = server_logs.agent_init(mount_points=["/", DATA_MOUNT]) if server_logs else None
        init = bootstrap.database_server_init(self.endpoint_for_server, allowed_cidr=allowed_cidr, before=[attach],
                                             in_place_updates=True, agent=agent)
        if server_logs:
            server_logs.grant(self.role, server="Database")
        bootstrap.apply_with_in_place_updates(self.server, init, signal_timeout=BOOT_SIGNAL_TIMEOUT)

    def grant_connect(self, grantee: iam.IGrantable) -> None:
        """Let the app servers read the database credentials at boot."""
        self.secret.grant_read(grantee)
