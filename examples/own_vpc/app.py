#!/usr/bin/env python3
"""A CDK app of your own that uses the stage constructs as a library, with none of our config.

Run from the repository root: `npx cdk synth --app "python3 examples/own_vpc/app.py"`.
"""

import sys
from pathlib import Path

from aws_cdk import App, Environment, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from cdk_nag import AwsSolutionsChecks

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the constructs, as a library
from app_tier.render import AppSpec  # noqa: E402
from cdk_constructs.stages import DatabaseProps, MultiProcess, ServerProps  # noqa: E402

app = App()
stack = Stack(app, "own-vpc-shop", env=Environment(region="ap-northeast-2"))
vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1, flow_logs={"All": ec2.FlowLogOptions()},
              subnet_configuration=[
                  ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC),
                  ec2.SubnetConfiguration(name="App", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                  ec2.SubnetConfiguration(name="Data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)])
shop = MultiProcess(stack, "Shop", vpc=vpc, processes_per_server=3,
                    app=AppSpec(health_path="/health", environment={"SHOP_CURRENCY": "KRW"}),
                    servers=ServerProps(instance_type="t3.small", min_servers=2, max_servers=6),
                    database=DatabaseProps(kind="rds", instance_type="t3.small", port=5433, multi_az=True))
Validations.of(app).add_plugins(AwsSolutionsChecks(app))
app.synth()
