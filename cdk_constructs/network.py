"""The VPC every stage runs in: public, isolated and (with NAT) private subnets over explicit AZs."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

# Interface endpoints a server in an isolated subnet needs to boot (cfn-init, cfn-signal,
# Secrets Manager), to be reached (Session Manager) and to report (CloudWatch agent).
_BOOT_AND_ACCESS_ENDPOINTS = {
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "CloudFormation": ec2.InterfaceVpcEndpointAwsService.CLOUDFORMATION,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    "Ec2": ec2.InterfaceVpcEndpointAwsService.EC2,   # the database server attaches its own data volume
}


class Network(Construct):
    """A VPC over the given AZs.

    Subnet groups are allocated in a fixed order (public, isolated, then private) so that
    adding NAT gateways later appends the private subnets instead of renumbering, and so
    replacing, the isolated subnets the database lives in.
    """

    def __init__(self, scope: Construct, construct_id: str, *, cidr: str, availability_zones: list[str],
                 nat_gateways: int, interface_endpoints: bool, flow_log_retention: logs.RetentionDays,
                 restrict_default_security_group: bool = True,
                 flow_log_removal: RemovalPolicy = RemovalPolicy.DESTROY) -> None:
        super().__init__(scope, construct_id)
        subnets = [
            ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24,
                                    map_public_ip_on_launch=False),
            ec2.SubnetConfiguration(name="Isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24),
        ]
        if nat_gateways > 0:
            subnets.append(ec2.SubnetConfiguration(name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
                                                   cidr_mask=22))
        self.flow_log_group = logs.LogGroup(self, "FlowLogs", retention=flow_log_retention,
                                            removal_policy=flow_log_removal)
        self.vpc = ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(cidr),
            availability_zones=availability_zones,
            nat_gateways=nat_gateways,
            subnet_configuration=subnets,
            restrict_default_security_group=restrict_default_security_group,
            flow_logs={"All": ec2.FlowLogOptions(
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_log_group),
                traffic_type=ec2.FlowLogTrafficType.ALL)},
            # S3 is where Amazon Linux keeps its package repositories and CDK its assets:
            # the gateway endpoint is free and lets isolated servers install packages.
            gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
        )
        # What a server in an isolated subnet must wait for before it boots (cfn-init and
        # cfn-signal reach CloudFormation, Secrets Manager and EC2 only through these, and dnf
        # the package repositories only through the S3 gateway): `boot_endpoints`.
        self.interface_endpoints: list[ec2.InterfaceVpcEndpoint] = []
        if interface_endpoints:
            # One security group for all endpoints, open to the VPC's own range on HTTPS.
            self.endpoint_security_group = ec2.SecurityGroup(
                self, "EndpointSecurityGroup", vpc=self.vpc, allow_all_outbound=False,
                description="Interface endpoints: HTTPS from inside the VPC")
            self.endpoint_security_group.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(443),
                                                          "HTTPS to AWS APIs from the VPC")
            for name, service in _BOOT_AND_ACCESS_ENDPOINTS.items():
                self.interface_endpoints.append(self.vpc.add_interface_endpoint(
                    name, service=service, open=False, security_groups=[self.endpoint_security_group],
                    subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, one_per_az=True)))

    @property
    def boot_endpoints(self) -> list[Construct]:
        """The S3 gateway endpoint and the interface endpoints (where there are any)."""
        return [self.vpc.node.find_child("S3"), *self.interface_endpoints]

    @property
    def app_subnets(self) -> ec2.SubnetSelection:
        """Where load-balanced app servers go: private subnets (outbound through NAT)."""
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    @property
    def public_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)

    @property
    def database_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)


RETENTION_DAYS = {
    1: logs.RetentionDays.ONE_DAY, 3: logs.RetentionDays.THREE_DAYS, 5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK, 14: logs.RetentionDays.TWO_WEEKS, 30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS, 90: logs.RetentionDays.THREE_MONTHS, 120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS, 180: logs.RetentionDays.SIX_MONTHS, 365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS, 545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS, 1096: logs.RetentionDays.THREE_YEARS, 1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS, 2557: logs.RetentionDays.SEVEN_YEARS, 2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS, 3653: logs.RetentionDays.TEN_YEARS,
}
