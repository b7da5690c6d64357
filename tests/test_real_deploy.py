"""What a real `cdk deploy` needs that an offline synth does not show by itself (issue 8):
servers that can reach what they boot from, data-holding servers that a new AMI release
never replaces, and names that neither collide between environments nor outlive a stack."""

from __future__ import annotations

import json
import re

import pytest
from cfn import name_of, path_of, resources
from stack_support import SHIPPED, VARIANTS

from cdk_constructs.database import DATA_DEVICE

ALL = SHIPPED + VARIANTS
EC2_DATABASE = ["staging", "stage2ec2", "https"]
RDS = ["prod", "stage2rds"]
BACKED_UP = ["dev", "staging", "stage2ec2", "https"]


def _config(cdk_app, env):
    return cdk_app[1][env].config


def _database_server(template: dict) -> tuple[str, dict]:
    (found,) = [(lid, r) for lid, r in resources(template, "AWS::EC2::Instance").items()
                if "/Service/Database/Server/" in path_of(r)]
    return found


def _group_id(value) -> str | None:
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return value["Fn::GetAtt"][0]
    return None


def _server_security_groups(properties: dict) -> list[str]:
    groups = list(properties.get("SecurityGroupIds", []))
    for interface in properties.get("NetworkInterfaces", []):
        groups += interface.get("GroupSet", [])
    return [g for g in (_group_id(v) for v in groups) if g]


def _egress(template: dict, group: str) -> list[dict]:
    inline = template["Resources"][group]["Properties"].get("SecurityGroupEgress", [])
    standalone = [r["Properties"] for r in resources(template, "AWS::EC2::SecurityGroupEgress").values()
                  if _group_id(r["Properties"].get("GroupId")) == group]
    return inline + standalone


def _allows_https_out(rule: dict) -> bool:
    if str(rule.get("IpProtocol")) == "-1":
        return True
    return str(rule.get("IpProtocol")) in ("tcp", "6") and rule.get("FromPort", -1) <= 443 <= rule.get("ToPort", -1)


# -- 1. a server must reach what it boots from ------------------------------------------------

@pytest.mark.parametrize("env", EC2_DATABASE)
def test_ec2_database_server_can_reach_the_endpoints_over_https(synthesized_templates, env):
    template = synthesized_templates[env]
    _, server = _database_server(template)
    (group,) = _server_security_groups(server["Properties"])
    assert "/Service/Database/SecurityGroup/" in path_of(template["Resources"][group])
    https = [r for r in _egress(template, group) if _allows_https_out(r)]
    assert https, _egress(template, group)
    # HTTPS only: nothing else leaves the database's subnet.
    assert all(r["IpProtocol"] == "tcp" and r["FromPort"] == r["ToPort"] == 443 for r in _egress(template, group))


@pytest.mark.parametrize("env", ["staging", "stage2ec2", "https"])
def test_ec2_database_server_waits_for_every_interface_endpoint(synthesized_templates, cdk_app, env):
    assert _config(cdk_app, env).network.interface_endpoints
    template = synthesized_templates[env]
    _, server = _database_server(template)
    endpoints = set(resources(template, "AWS::EC2::VPCEndpoint"))  # interface, and the S3 gateway (dnf)
    assert any(r["Properties"].get("VpcEndpointType") == "Gateway"
               for r in resources(template, "AWS::EC2::VPCEndpoint").values())
    assert endpoints <= set(server.get("DependsOn", [])), endpoints - set(server.get("DependsOn", []))


@pytest.mark.parametrize("env", ALL)
def test_every_server_security_group_allows_https_out(synthesized_templates, env):
    """cfn-init, cfn-signal, the package mirrors and the CloudWatch agent all speak HTTPS: a
    server whose security group does not let tcp 443 out never finishes booting."""
    template = synthesized_templates[env]
    servers = {lid: r["Properties"] for lid, r in resources(template, "AWS::EC2::Instance").items()}
    servers |= {lid: r["Properties"]["LaunchTemplateData"]
                for lid, r in resources(template, "AWS::EC2::LaunchTemplate").items()
                if _server_security_groups(r["Properties"]["LaunchTemplateData"])}
    assert servers
    for lid, props in servers.items():
        groups = _server_security_groups(props)
        assert groups, f"{lid} has no security group"
        assert any(_allows_https_out(rule) for g in groups for rule in _egress(template, g)), \
            f"{lid}: no tcp 443 egress on {groups}"


# -- 2. a new AMI release never replaces a server that holds data ------------------------------

def _data_servers(template: dict) -> dict[str, dict]:
    return {lid: r for lid, r in resources(template, "AWS::EC2::Instance").items()
            if "/Service/Database/Server/" in path_of(r) or "/Service/AppServer/" in path_of(r)}


def _launch_template_of(template: dict, server: dict) -> tuple[str, dict]:
    """The launch template an instance launches from: named, at the version the template pins."""
    spec = server["Properties"]["LaunchTemplate"]
    lid, attribute = spec["Version"]["Fn::GetAtt"]
    assert attribute == "LatestVersionNumber"
    launch_template = template["Resources"][lid]
    assert launch_template["Type"] == "AWS::EC2::LaunchTemplate"
    assert spec["LaunchTemplateName"] == launch_template["Properties"]["LaunchTemplateName"]
    return lid, launch_template


def _holding(template: dict, config) -> dict[str, dict]:
    return {lid: r for lid, r in _data_servers(template).items()
            if "/Service/Database/Server/" in path_of(r) or config.stage == 1}


@pytest.mark.parametrize("env", ["dev", "staging", "stage2ec2", "https"])
def test_data_holding_servers_take_their_image_at_launch_not_at_deploy(synthesized_templates, cdk_app, env):
    """The instance names no ImageId; its launch template names the public parameter as
    `resolve:ssm:`, which EC2 resolves at launch. Both are constants: a new AMI release changes
    neither the launch template (so not its version) nor the instance."""
    config = _config(cdk_app, env)
    template = synthesized_templates[env]
    holding = _holding(template, config)
    assert holding
    arch = config.servers.architecture
    for lid, server in holding.items():
        assert "ImageId" not in server["Properties"], lid
        _, launch_template = _launch_template_of(template, server)
        image = launch_template["Properties"]["LaunchTemplateData"]["ImageId"]
        assert image == f"resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}", image
        assert launch_template["Properties"]["LaunchTemplateData"]["MetadataOptions"] == {"HttpTokens": "required"}


@pytest.mark.parametrize("env", ["staging", "prod", "https", "stage2ec2", "stage2rds"])
def test_servers_without_data_still_follow_the_latest_image(synthesized_templates, cdk_app, env):
    template = synthesized_templates[env]
    parameters = {k for k, p in template.get("Parameters", {}).items()
                  if p["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"}
    data_templates = {_launch_template_of(template, server)[0]
                      for server in _holding(template, _config(cdk_app, env)).values()}
    images = [lt["Properties"]["LaunchTemplateData"]["ImageId"]
              for lid, lt in resources(template, "AWS::EC2::LaunchTemplate").items()
              if "ImageId" in lt["Properties"]["LaunchTemplateData"] and lid not in data_templates]
    if int(_config(cdk_app, env).stage) <= 2:
        # Stage 2's app server is resolved at launch like stage 1's: it is the server a stage-1 environment
        # grows from, holding its data until the carry (app_tier/carry.py), so no AMI release replaces it.
        (server,) = [lid for lid, r in resources(template, "AWS::EC2::Instance").items()
                     if "/Service/AppServer/" in path_of(r)]
        assert "ImageId" not in template["Resources"][server]["Properties"]
        _, lt = _launch_template_of(template, template["Resources"][server])
        assert lt["Properties"]["LaunchTemplateData"]["ImageId"].startswith("resolve:ssm:")
        return
    assert images
    assert all(isinstance(i, dict) and i.get("Ref") in parameters for i in images), images


@pytest.mark.parametrize("env", ALL)
def test_no_template_tells_cfn_lint_to_skip_a_rule(synthesized_templates, env):
    """Images resolved at launch sit where CloudFormation documents them (launch templates), so
    no resource carries its own cfn-lint ignore list; .cfnlintrc.yaml is the only one."""
    skipping = [lid for lid, r in synthesized_templates[env]["Resources"].items()
                if "cfn-lint" in r.get("Metadata", {})]
    assert not skipping


@pytest.mark.parametrize("env", ["staging", "stage2ec2"])
def test_data_volume_attach_fails_loudly(synthesized_templates, env):
    _, server = _database_server(synthesized_templates[env])
    storage = server["Metadata"]["AWS::CloudFormation::Init"]["storage"]["commands"]
    (attach,) = [c["command"] for key, c in storage.items() if "attach-data-volume" in key]
    text = json.dumps(attach)
    assert "|| true" not in text
    assert f"if [ ! -e {DATA_DEVICE} ]; then aws ec2 attach-volume" in text
    assert f"[ -e {DATA_DEVICE} ] || {{ echo 'data volume {DATA_DEVICE} did not appear' >&2; exit 1; }}" in text
    # After a reboot PostgreSQL starts only once its data is mounted (nofail drops the usual ordering).
    assert "nofail,x-systemd.before=postgresql.service,x-systemd.required-by=postgresql.service" in text


# -- 3. names that neither collide nor outlive a stack ---------------------------------------

@pytest.mark.parametrize("env", BACKED_UP)
def test_backup_plan_is_named_after_its_stack(synthesized_templates, cdk_app, env):
    (plan,) = resources(synthesized_templates[env], "AWS::Backup::BackupPlan").values()
    name = plan["Properties"]["BackupPlan"]["BackupPlanName"]
    assert name == f"{_config(cdk_app, env).stack_name}-daily"


@pytest.mark.parametrize("env", BACKED_UP)
def test_backup_vault_is_retained_and_named_per_incarnation(synthesized_templates, cdk_app, env):
    (vault,) = resources(synthesized_templates[env], "AWS::Backup::BackupVault").values()
    assert vault["DeletionPolicy"] == "Retain" and vault["UpdateReplacePolicy"] == "Retain"
    assert name_of(vault["Properties"]["BackupVaultName"]) == f"{_config(cdk_app, env).stack_name}-<stack-id>"


@pytest.mark.parametrize("env", RDS)
def test_rds_identifier_and_its_log_group_are_unique_per_incarnation(synthesized_templates, cdk_app, env):
    template = synthesized_templates[env]
    (db,) = resources(template, "AWS::RDS::DBInstance").values()
    identifier = name_of(db["Properties"]["DBInstanceIdentifier"])
    assert identifier == f"{_config(cdk_app, env).stack_name}-database-<stack-id>"
    (group,) = [r for r in resources(template, "AWS::Logs::LogGroup").values()
                if "/Service/Database/Logs/" in path_of(r)]
    # The log group is the one RDS writes to.
    assert name_of(group["Properties"]["LogGroupName"]) == f"/aws/rds/instance/{identifier}/postgresql"


@pytest.mark.parametrize("env", ALL)
def test_retained_server_log_groups_are_unique_per_incarnation(synthesized_templates, cdk_app, env):
    template = synthesized_templates[env]
    groups = [r for r in resources(template, "AWS::Logs::LogGroup").values()
              if re.search(r"/Logs/[^/]+/Resource$", path_of(r)) and "LogGroupName" in r["Properties"]]
    assert groups
    stack = _config(cdk_app, env).stack_name
    agent_configs = [name_of(c["content"]) for r in template["Resources"].values()
                     for c in [r.get("Metadata", {}).get("AWS::CloudFormation::Init", {}).get("agent", {})
                               .get("files", {}).get("/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json")]
                     if c]
    assert agent_configs
    for group in groups:
        name = name_of(group["Properties"]["LogGroupName"])
        retained = group["DeletionPolicy"] == "Retain"
        assert name.startswith(f"/{stack}-<stack-id>/" if retained else f"/{stack}/"), name
        # the CloudWatch agent writes to the same name
        assert all(f'"log_group_name": "{name}"' in c for c in agent_configs), name
