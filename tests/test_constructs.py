"""The stage constructs as a library: typed props, the caller's VPC, no project config.

One small app holds every case (synthesized once for this module); cdk-nag runs on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import App, Environment, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_route53 as route53
from aws_cdk.assertions import Match, Template
from cdk_nag import AwsSolutionsChecks
from stack_support import CDK_CONTEXT, ROOT

from app_tier import render
from cdk_constructs.database import Database
from cdk_constructs.props import DatabaseProps, Domain, ServerProps, Subnets
from cdk_constructs.stages import LoadBalanced, MultiProcess, SeparateDatabase, SingleServer

SEOUL = Environment(region="ap-northeast-2")
ZONE_ID = "Z0123456789ABCDEFGHIJ"


def _vpc(stack: Stack) -> ec2.Vpc:
    """A VPC of the user's own, with subnet groups named their way."""
    return ec2.Vpc(stack, "TheirVpc", max_azs=2, nat_gateways=1, flow_logs={"All": ec2.FlowLogOptions()},
                   subnet_configuration=[
                       ec2.SubnetConfiguration(name="Edge", subnet_type=ec2.SubnetType.PUBLIC),
                       ec2.SubnetConfiguration(name="Apps", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                       ec2.SubnetConfiguration(name="Data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)])


def _zone(stack: Stack) -> route53.IHostedZone:
    return route53.HostedZone.from_hosted_zone_attributes(stack, "Zone", hosted_zone_id=ZONE_ID,
                                                          zone_name="example.com")


RDS = DatabaseProps(kind="rds", port=5433, multi_az=True)
PARTNER_ARN = "arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:partner/key"  # partial: no suffix
SECRETS = {"API_TOKEN": render.AppSecret(store="secretsmanager", name="shop/api", key="token"),
           "FEATURE_FLAGS": render.AppSecret(store="ssm", name="/shop/flags"),
           "PARTNER_KEY": render.AppSecret(store="secretsmanager", name=PARTNER_ARN)}


@pytest.fixture(scope="module")
def library_app():
    app = App(context=dict(CDK_CONTEXT))
    stacks = {}

    stack = stacks["stage4-one-process"] = Stack(app, "Stage4OneProcess", env=SEOUL)
    MultiProcess(stack, "Shop", vpc=_vpc(stack), app=render.AppSpec(), processes_per_server=1, database=RDS)

    stack = stacks["stage3"] = Stack(app, "Stage3", env=SEOUL)
    vpc = _vpc(stack)
    LoadBalanced(stack, "Shop", vpc=vpc, app=render.AppSpec(secrets=SECRETS), database=RDS,
                 subnets=Subnets(app=ec2.SubnetSelection(subnet_group_name="Apps")),
                 domain=Domain(name="shop.example.com", zone=_zone(stack)))

    stack = stacks["stage1-domain"] = Stack(app, "Stage1Domain", env=SEOUL)
    SingleServer(stack, "Shop", vpc=_vpc(stack), app=render.AppSpec(), servers=ServerProps(root_volume_gib=20),
                 domain=Domain(name="shop.example.com", zone=_zone(stack)))

    stack = stacks["stage2-existing-db"] = Stack(app, "Stage2ExistingDb", env=SEOUL)
    vpc = _vpc(stack)
    shared = Database(stack, "SharedDatabase", props=RDS, vpc=vpc,
                      subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
                      machine_image=ec2.MachineImage.latest_amazon_linux2023())
    stacks["stage2-existing-db-construct"] = SeparateDatabase(stack, "Shop", vpc=vpc, app=render.AppSpec(),
                                                              database=shared)

    # No account or region (as many CDK apps are), and an EC2 database in subnets with a NAT route.
    stack = stacks["stage2-agnostic"] = Stack(app, "Stage2Agnostic")
    SeparateDatabase(stack, "Shop", vpc=_vpc(stack), app=render.AppSpec(),
                     subnets=Subnets(database=ec2.SubnetSelection(subnet_group_name="Apps")))

    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    assembly = app.synth()
    templates = {name: Template.from_json(assembly.get_stack_by_name(s.stack_name).template)
                 for name, s in stacks.items() if isinstance(s, Stack)}
    return app, stacks, templates


def _init_files(template: Template) -> set[str]:
    files = set()
    for resource in {**template.find_resources("AWS::AutoScaling::AutoScalingGroup"),
                     **template.find_resources("AWS::EC2::Instance")}.values():
        for config in resource.get("Metadata", {}).get("AWS::CloudFormation::Init", {}).values():
            if isinstance(config, dict):
                files |= set(config.get("files", {}))
    return files


def test_multi_process_is_stage_4_by_its_class(library_app):
    _, _, templates = library_app
    stage4 = _init_files(templates["stage4-one-process"])
    assert render.NGINX_CONF in stage4 and f"{render.UNIT_DIR}/app@.service" in stage4
    stage3 = _init_files(templates["stage3"])
    assert render.NGINX_CONF not in stage3 and f"{render.UNIT_DIR}/app.service" in stage3


def test_stages_take_the_callers_vpc_and_subnet_selection(library_app):
    _, _, templates = library_app
    template = templates["stage3"]
    assert len(template.find_resources("AWS::EC2::VPC")) == 1  # theirs; the stage builds none
    group = next(iter(template.find_resources("AWS::AutoScaling::AutoScalingGroup").values()))
    zone_subnets = json.dumps(group["Properties"]["VPCZoneIdentifier"])
    assert "TheirVpcAppsSubnet1" in zone_subnets and "Edge" not in zone_subnets


def test_an_existing_database_is_connected_not_duplicated(library_app):
    _, stacks, templates = library_app
    template = templates["stage2-existing-db"]
    assert len(template.find_resources("AWS::RDS::DBInstance")) == 1
    stage = stacks["stage2-existing-db-construct"]
    assert stage.database.node.path.endswith("/SharedDatabase")
    ingress = template.find_resources("AWS::EC2::SecurityGroupIngress", {"Properties": {"FromPort": 5433}})
    assert ingress, "the app server must reach the shared database's port"


def test_https_by_domain_on_a_load_balanced_stage(library_app):
    _, _, templates = library_app
    template = templates["stage3"]
    template.has_resource_properties("AWS::CertificateManager::Certificate", {
        "DomainName": "shop.example.com", "ValidationMethod": "DNS",
        "DomainValidationOptions": [{"DomainName": "shop.example.com", "HostedZoneId": ZONE_ID}]})
    template.has_resource_properties("AWS::ElasticLoadBalancingV2::Listener", {
        "Port": 443, "Protocol": "HTTPS", "SslPolicy": Match.string_like_regexp("TLS13")})
    template.has_resource_properties("AWS::ElasticLoadBalancingV2::Listener", {
        "Port": 80, "DefaultActions": [Match.object_like({"Type": "redirect",
                                                          "RedirectConfig": Match.object_like({"Port": "443"})})]})
    template.has_resource_properties("AWS::Route53::RecordSet", {
        "Name": "shop.example.com.", "Type": "A", "HostedZoneId": ZONE_ID,
        "AliasTarget": Match.object_like({"DNSName": Match.any_value()})})
    url = template.find_outputs("Url")["Url"]["Value"]
    assert url == "https://shop.example.com/"


def test_turning_https_on_keeps_the_port_80_listener(library_app):
    """With a domain, port 80 redirects from the same listener: a second one on port 80 would be created
    before the first is deleted, and the load balancer refuses two listeners on one port."""
    _, _, templates = library_app

    def port_80(template):
        (lid,) = template.find_resources("AWS::ElasticLoadBalancingV2::Listener", {"Properties": {"Port": 80}})
        return lid

    assert port_80(templates["stage3"]) == port_80(templates["stage4-one-process"])


def test_a_domain_on_a_single_server_points_at_its_address(library_app):
    _, _, templates = library_app
    template = templates["stage1-domain"]
    record = next(iter(template.find_resources("AWS::Route53::RecordSet").values()))["Properties"]
    assert record["Type"] == "A" and "Fn::GetAtt" in json.dumps(record["ResourceRecords"])
    assert "ElasticIp" in json.dumps(record["ResourceRecords"])


def test_app_secrets_are_granted_by_name_and_never_written(library_app):
    _, _, templates = library_app
    template = templates["stage3"]
    statements = [s for policy in template.find_resources("AWS::IAM::Policy").values()
                  for s in policy["Properties"]["PolicyDocument"]["Statement"]]
    text = json.dumps(statements)
    assert "secret:shop/api-??????" in text and "parameter/shop/flags" in text
    # An ARN may be partial or complete: granted as given and with the suffix AWS appends.
    assert f'"{PARTNER_ARN}"' in text and f'"{PARTNER_ARN}-??????"' in text
    reads = [s for s in statements if "secretsmanager:GetSecretValue" in json.dumps(s["Action"])
             and "shop/api" in json.dumps(s["Resource"])]
    assert reads, "the app servers' role reads the app's secret"
    # Only the references reach the template: the fetch script names them; no value could be there.
    assert '[\\"API_TOKEN\\", \\"secretsmanager\\", \\"shop/api\\", \\"token\\"]' in json.dumps(template.to_json())


def test_an_isolated_ec2_database_without_its_endpoints_stops_the_synth():
    """It could not install PostgreSQL, read its secret or signal: say so at synth, not after a timeout."""
    app = App(context=dict(CDK_CONTEXT))
    stack = Stack(app, "NoEndpoints", env=SEOUL)
    SeparateDatabase(stack, "Shop", vpc=_vpc(stack), app=render.AppSpec())  # isolated by default, no endpoints
    with pytest.raises(Exception, match="boot_dependencies is empty"):
        app.synth()


def test_an_instance_type_of_the_wrong_architecture_is_refused():
    app = App(context=dict(CDK_CONTEXT))
    stack = Stack(app, "Graviton", env=SEOUL)
    with pytest.raises(ValueError, match="DatabaseProps.instance_type: t3.small is not an arm64 instance type"):
        SeparateDatabase(stack, "Shop", vpc=_vpc(stack), app=render.AppSpec(),
                         servers=ServerProps(architecture="arm64"), database=DatabaseProps(instance_type="t3.small"))


@pytest.mark.parametrize("name", ["stage3", "stage1-domain", "stage2-agnostic"])
def test_the_library_templates_are_cfn_lint_clean(library_app, tmp_path, name):
    """The config path's templates are linted in test_nag_and_lint; these cover what only the library
    builds here: a DNS-validated certificate, records, secrets granted by name and ARN, no region."""
    _, _, templates = library_app
    path = tmp_path / f"{name}.template.json"
    path.write_text(json.dumps(templates[name].to_json()))
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), "--", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_library_app_is_nag_clean(library_app):
    app, stacks, _ = library_app
    report = AwsSolutionsChecks().validate_scope(app)
    violations = [f"{v.rule_name} at {[r.construct_path for r in v.violating_resources]}" for v in report.violations]
    assert report.success and violations == [], violations


def test_an_environment_keeping_data_without_https_is_warned_at_synth(cdk_app):
    # Read from the session's assembly: Annotations.from_stack would synthesize the stack a second
    # time, into the same directory the other tests read.
    _, stacks, assembly = cdk_app

    def warnings(env):
        artifact = assembly.get_stack_by_name(stacks[env].stack_name)
        return [str(m.entry.data) for m in artifact.messages if m.level.name == "WARNING"]

    assert any("serves plain HTTP" in w for w in warnings("prod")), warnings("prod")
    assert not any("serves plain HTTP" in w for w in warnings("https") + warnings("dev"))


def test_the_example_app_uses_the_constructs_without_our_config(tmp_path):
    """examples/own_vpc: its own app.py and VPC, MultiProcess as a library, nag-clean, no envconfig."""
    example = ROOT / "examples" / "own_vpc"
    context = json.loads((example / "cdk.json").read_text())["context"]
    probe = ("import runpy, sys; runpy.run_path('app.py', run_name='__main__'); "
             "assert not [m for m in sys.modules if m.split('.')[0] in ('envconfig', 'stacks')], 'used our config'")
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path), "CDK_CONTEXT_JSON": json.dumps(context)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=example, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    template = json.loads((tmp_path / "own-vpc-shop.template.json").read_text())
    types = [r["Type"] for r in template["Resources"].values()]
    assert types.count("AWS::EC2::VPC") == 1 and "AWS::ElasticLoadBalancingV2::LoadBalancer" in types
    assert "AWS::RDS::DBInstance" in types
    assert len((example / "app.py").read_text().splitlines()) <= 40
