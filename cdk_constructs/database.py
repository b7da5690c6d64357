"""The PostgreSQL database: its own EC2 server in an isolated subnet, or Amazon RDS.

Either way the password is generated into Secrets Manager and only ever read at boot by
the servers that were granted it; it never appears in the template or in user data.
"""

from __future__ import annotations

import dataclasses

from aws_cdk import Annotations, Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_cloudformation as cfn
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from constructs import Construct

from app_tier import carry, render
from cdk_constructs import bootstrap
from cdk_constructs.nag import acknowledge, partition_and_region
from cdk_constructs.naming import stack_id_suffix
from cdk_constructs.network import RETENTION_DAYS
from cdk_constructs.observability import ServerLogs
from cdk_constructs.props import SMALLEST_INSTANCE_TYPES, DatabaseProps
from cdk_constructs.server import (
    BOOT_SIGNAL_TIMEOUT,
    ServerRole,
    image_in_launch_template,
    root_volume,
)

DATA_DEVICE = "/dev/sdf"
DATA_MOUNT = "/var/lib/pgsql"


class Database(Construct):
    """PostgreSQL reachable only from what the caller allows (`connections.allow_default_port_from`).

    Exposes `kind`, `removal_policy`, `connections`, `secret`, `endpoint` (an
    `app_tier.render.DatabaseEndpoint` for the app servers), and `instance` (the RDS instance) or
    `server` + `data_volume` (EC2), as `props` (a `DatabaseProps`) describe. The EC2 server goes in the first subnet `subnets` selects.

    Moving from EC2 to RDS (`props.carry_from`, README: Growing the service): both, for one deploy. The EC2
    server keeps its construct IDs and settings, and its Init gains a last step that carries its data
    into RDS, verified, then forwards its old port there (app_tier/carry.py); `carry_applied` is that
    step's wait condition, which the app servers' update waits for, and `carried_port` the old port
    they may still use meanwhile. RDS shares the secret, so the app's user and password stay.
    """

    def __init__(self, scope: Construct, construct_id: str, *, props: DatabaseProps, vpc: ec2.IVpc,
                 subnets: ec2.SubnetSelection, machine_image: ec2.IMachineImage,
                 key_pair: ec2.IKeyPair | None = None, server_logs: ServerLogs | None = None) -> None:
        super().__init__(scope, construct_id)
        self.instance = self.server = self.data_volume = None
        self.carry_applied: cfn.CfnWaitCondition | None = None
        self.carried_port: int | None = None
        source = props.carry_from
        if source is not None and (props.kind != "rds" or source.kind != "ec2" or source.instance_type is None):
            raise ValueError("DatabaseProps.carry_from: allowed only with kind 'rds', and must describe the EC2 "
                             "database server as deployed (kind 'ec2', its instance_type)")
        self.kind = props.kind
        self.removal_policy = props.removal_policy
        self.port = props.port
        if props.kind not in ("ec2", "rds"):
            raise ValueError(f"database kind must be 'ec2' or 'rds', got {props.kind!r}")
        if props.instance_type is None:
            if props.kind == "ec2":  # it must match the image's architecture, which the stages know
                raise ValueError("DatabaseProps.instance_type is required for an EC2 database built on its own; "
                                 "the stage constructs pick one of their servers' architecture")
            props = dataclasses.replace(props, instance_type=SMALLEST_INSTANCE_TYPES["x86_64"])
        # DatabaseSecret: a generated password in JSON {"username","password"} without the
        # characters PostgreSQL connection strings trip over.
        self.secret = rds.DatabaseSecret(self, "Secret", username=props.user)
        self.secret.apply_removal_policy(
            RemovalPolicy.DESTROY if props.removal_policy == RemovalPolicy.DESTROY else RemovalPolicy.RETAIN)
        acknowledge(self.secret, "AwsSolutions-SMG4",
                    "Rotation needs a Lambda function inside the VPC; the servers read the secret only at boot, "
                    "so rotate it with a rolling replacement (README: Rotating the database password).")
        region = Stack.of(self).region
        self.security_group = ec2.SecurityGroup(self, "SecurityGroup", vpc=vpc, allow_all_outbound=False,
                                                description="PostgreSQL: reachable only from the app servers")
        if props.kind == "rds":
            if source is not None and props.removal_policy == RemovalPolicy.DESTROY:
                # A rollback after the carry deletes the new instance, with whatever the app wrote to it
                # since: a final snapshot keeps that, even where the environment's data is disposable.
                props = dataclasses.replace(props, removal_policy=RemovalPolicy.SNAPSHOT)
            self._build_rds(props, vpc=vpc, subnets=subnets)
            host = self.instance.db_instance_endpoint_address
            if source is not None:
                self._build_ec2(source, vpc=vpc, subnets=subnets, machine_image=machine_image, region=region,
                                key_pair=key_pair, server_logs=server_logs, carry_to=render.DatabaseEndpoint(
                                    host=host, port=props.port, name=props.name, user=props.user,
                                    secret_arn=self.secret.secret_arn, region=region))
        else:
            self._build_ec2(props, vpc=vpc, subnets=subnets, machine_image=machine_image, region=region,
                            key_pair=key_pair, server_logs=server_logs)
            host = self.server.instance_private_ip
        self.endpoint = render.DatabaseEndpoint(host=host, port=props.port, name=props.name, user=props.user,
                                                secret_arn=self.secret.secret_arn, region=region)
        self.connections = ec2.Connections(security_groups=[self.security_group],
                                           default_port=ec2.Port.tcp(props.port))
        if source is not None:
            # The EC2 server reaches RDS (the two share this group): the carry's copy, then its forwarder.
            self.connections.allow_internally(ec2.Port.tcp(props.port),
                                              "The EC2 database server carries its data into RDS, then forwards")
            self.carried_port = source.port

    def _build_rds(self, props: DatabaseProps, *, vpc: ec2.IVpc, subnets: ec2.SubnetSelection) -> None:
        # RDS creates its log group on first export, with no expiry; CDK's retention setting
        # needs a Lambda custom resource. A fixed identifier lets the stack own the group instead.
        # A custom name also makes CloudFormation refuse a silent replacement of the instance.
        # Both outlive a destroyed prod stack, so the name ends in the stack-ID suffix: a
        # re-created stack gets a new one instead of "already exists".
        identifier = f"{Stack.of(self).stack_name}-database-{stack_id_suffix(self)}"
        self.log_group = logs.LogGroup(self, "Logs", log_group_name=f"/aws/rds/instance/{identifier}/postgresql",
                                       retention=RETENTION_DAYS[props.log_retention_days],
                                       # log groups have no snapshot: keep them instead
                                       removal_policy=RemovalPolicy.RETAIN
                                       if props.removal_policy == RemovalPolicy.SNAPSHOT else props.removal_policy)
        self.instance = rds.DatabaseInstance(
            self, "Instance", instance_identifier=identifier,
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_17_9),
            instance_type=ec2.InstanceType(props.instance_type),
            vpc=vpc, vpc_subnets=subnets, security_groups=[self.security_group],
            credentials=rds.Credentials.from_secret(self.secret),
            database_name=props.name, port=props.port,
            allocated_storage=props.storage_gib, storage_type=rds.StorageType.GP3, storage_encrypted=True,
            multi_az=props.multi_az,
            backup_retention=Duration.days(props.backup_retention_days),
            deletion_protection=props.deletion_protection,
            removal_policy=props.removal_policy,
            iam_authentication=True,
            cloudwatch_logs_exports=["postgresql"],
            auto_minor_version_upgrade=True,
            enable_performance_insights=False,
        )
        self.instance.node.add_dependency(self.log_group)

    def _build_ec2(self, props: DatabaseProps, *, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                   machine_image: ec2.IMachineImage, region: str, key_pair: ec2.IKeyPair | None,
                   server_logs: ServerLogs | None, carry_to: render.DatabaseEndpoint | None = None) -> None:
        """The EC2 database server; with `carry_to`, it carries its data into that database (RDS)."""
        # The data lives on its own volume so that replacing the server (a new AMI, a bigger
        # type) never replaces the data, and AWS Backup can snapshot just the data.
        subnet = vpc.select_subnets(subnet_type=subnets.subnet_type, subnet_group_name=subnets.subnet_group_name,
                                    subnets=subnets.subnets, availability_zones=subnets.availability_zones,
                                    one_per_az=subnets.one_per_az, subnet_filters=subnets.subnet_filters).subnets[0]
        self.data_volume = ec2.Volume(self, "Data", availability_zone=subnet.availability_zone,
                                      size=Size.gibibytes(props.storage_gib), volume_type=ec2.EbsDeviceVolumeType.GP3,
                                      encrypted=True, removal_policy=props.removal_policy)
        self.role = ServerRole(self, "Role").role
        self.server = ec2.Instance(
            self, "Server", vpc=vpc, vpc_subnets=ec2.SubnetSelection(subnets=[subnet]),
            instance_type=ec2.InstanceType(props.instance_type), machine_image=machine_image,
            security_group=self.security_group, role=self.role, require_imdsv2=True,
            block_devices=[root_volume(props.server_root_volume_gib)], detailed_monitoring=True,
            # A server that carries its data away is removed by the next deploy: no termination protection.
            disable_api_termination=props.deletion_protection and carry_to is None, key_pair=key_pair,
        )
        image_in_launch_template(self.server)
        # cfn-init, cfn-signal, the CloudWatch agent and the package mirrors all speak HTTPS. The
        # isolated subnet has no route to the internet, so 443 out reaches only the VPC's interface
        # endpoints and the S3 gateway endpoint. The gateway's prefix list ID would need a lookup
        # (synth stays offline), hence 0.0.0.0/0 on 443 only.
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
                                            "HTTPS to the VPC endpoints (no internet route from this subnet)")
        for dependency in props.boot_dependencies:
            self.server.instance.node.add_dependency(dependency)
        isolated = {s.subnet_id for s in vpc.isolated_subnets}
        if subnet.subnet_id in isolated and not props.boot_dependencies:
            # Without them the server cannot install PostgreSQL, read its secret or signal: it would
            # sit out the signal timeout and roll the deploy back.
            Annotations.of(self).add_error(
                "The EC2 database server is in an isolated subnet but DatabaseProps.boot_dependencies is "
                "empty: pass the VPC's S3 gateway and interface endpoints (Secrets Manager, CloudFormation, "
                "EC2, SSM, CloudWatch Logs), or select subnets with a NAT route, or use kind='rds'.")
        if carry_to is not None:
            acknowledge(self.server, "AwsSolutions-EC29",
                        "This server's data is carried into RDS by this deploy (database.carry_from); the next "
                        "deploy removes the server, which termination protection would refuse. Its data volume "
                        "keeps its removal policy.")
        elif not props.deletion_protection:
            acknowledge(self.server, "AwsSolutions-EC29",
                        "Termination protection is off by choice (deletion_protection): an environment torn down "
                        "with cdk destroy; it is on wherever the environment keeps its data.")
        # The server attaches its own data volume at boot: an AWS::EC2::VolumeAttachment would
        # wait for the instance's creation signal, which in turn waits for the volume.
        self.data_volume.grant_attach_volume_by_resource_tag(self.role, [self.server])
        partition, nag_region = partition_and_region(self)
        instance_arns = f"arn:{partition}:ec2:{nag_region}:<AWS::AccountId>:instance/*"
        acknowledge(self.role.node.find_child("DefaultPolicy"),
                    f"AwsSolutions-IAM5[Resource::{instance_arns}]",
                    "ec2:AttachVolume is limited by a condition to instances carrying this volume's unique "
                    "attach tag, i.e. the database server itself.")
        self.secret.grant_read(self.role)
        # PostgreSQL answers only the VPC; the security group narrows it to the app servers.
        allowed_cidr = vpc.vpc_cidr_block
        self.endpoint_for_server = render.DatabaseEndpoint(host="0.0.0.0", port=props.port, name=props.name,
                                                           user=props.user,
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
        carrying = None if carry_to is None else carry.database_server_carry_bootstrap(props.port, carry_to)
        init = bootstrap.database_server_init(self.endpoint_for_server, allowed_cidr=allowed_cidr, before=[attach],
                                             in_place_updates=True, agent=agent, carry=carrying)
        if server_logs:
            server_logs.grant(self.role, server="Database")
        applied = bootstrap.apply_with_in_place_updates(self.server, init, signal_timeout=BOOT_SIGNAL_TIMEOUT)
        if carry_to is not None:
            self.carry_applied = applied

    def grant_connect(self, grantee: iam.IGrantable) -> None:
        """Let the app servers read the database credentials at boot."""
        self.secret.grant_read(grantee)
