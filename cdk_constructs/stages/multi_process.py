"""Stage 4: stage 3, with several app processes per server behind an in-server nginx."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_sns as sns
from constructs import Construct

from app_tier import render
from cdk_constructs.database import Database
from cdk_constructs.observability import ServerLogs
from cdk_constructs.props import DatabaseProps, Domain, LoadBalancerProps, ServerProps, Subnets
from cdk_constructs.stages import fleet, parts


class MultiProcess(Construct):
    """The ALB, group and database of stage 3 (the same construct IDs, so growing from stage 3 to 4
    replaces no stateful resource); each server runs `processes_per_server` copies of the app on
    loopback behind nginx, which the ALB targets. What makes stage 4 is this class: the proxy and
    the copies are there whatever else the props say.

    Exposes `vpc`, `app_servers`, `database`, `load_balancer`, `url`, `connections` and `layout`.
    """

    STAGE = 4

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, app: render.AppSpec,
                 processes_per_server: int = 2, servers: ServerProps | None = None,
                 database: DatabaseProps | Database | None = None, load_balancer: LoadBalancerProps | None = None,
                 subnets: Subnets | None = None, domain: Domain | None = None,
                 notifications: sns.ITopic | None = None, logs: ServerLogs | None = None) -> None:
        super().__init__(scope, construct_id)
        self.layout = parts.server_layout(app, stage=self.STAGE, proxy=True, processes=processes_per_server)
        fleet.LoadBalancedFleet(self, layout=self.layout, vpc=vpc, servers=servers, database=database,
                                load_balancer=load_balancer, subnets=subnets, domain=domain,
                                notifications=notifications, logs=logs)

    watch = fleet.watch
    backed_up_resources = fleet.backed_up_resources
