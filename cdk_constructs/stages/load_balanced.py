"""Stage 3: an ALB in front of an Auto Scaling group of app servers across AZs."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_sns as sns
from constructs import Construct

from app_tier import render
from cdk_constructs.database import Database
from cdk_constructs.observability import ServerLogs
from cdk_constructs.props import DatabaseProps, Domain, LoadBalancerProps, ServerProps, Subnets
from cdk_constructs.stages import fleet, parts


class LoadBalanced(Construct):
    """ALB (public subnets) -> app servers (private subnets) -> database (isolated subnets).

    Only the ALB's security group reaches the app port; only the app servers' reaches the
    database. The group replaces servers the ALB health check finds dead, and scales on requests
    per server and on CPU. Each server runs one copy of the app, which the ALB targets directly.
    `notifications`: where the group reports launches, terminations and failures (optional).
    Exposes `vpc`, `app_servers` (an `AppServerGroup`), `database`, `load_balancer` (a
    `WebLoadBalancer`), `url`, `connections` (the load balancer's) and `layout`.
    """

    STAGE = 3

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, app: render.AppSpec,
                 servers: ServerProps | None = None, database: DatabaseProps | Database | None = None,
                 load_balancer: LoadBalancerProps | None = None, subnets: Subnets | None = None,
                 domain: Domain | None = None, notifications: sns.ITopic | None = None,
                 logs: ServerLogs | None = None) -> None:
        super().__init__(scope, construct_id)
        self.layout = parts.server_layout(app, stage=self.STAGE)
        fleet.LoadBalancedFleet(self, layout=self.layout, vpc=vpc, servers=servers, database=database,
                                load_balancer=load_balancer, subnets=subnets, domain=domain,
                                notifications=notifications, logs=logs)

    watch = fleet.watch
    backed_up_resources = fleet.backed_up_resources
