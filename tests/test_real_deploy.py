"""What a real `cdk deploy` needs that an offline synth does not show by itself (issue 8):
servers that can reach what they boot from, data-holding servers that a new AMI release
never replaces, and names that neither collide between environments nor outlive a stack."""

from __future__ import annotations

import pytest
from cfn import path_of, resources
from stack_support import SHIPPED, VARIANTS

ALL = SHIPPED + VARIANTS
EC2_DATABASE = ["staging", "stage2ec2", "https"]
RDS = ["prod", "stage2rds"]
BACKED_UP = ["dev", "staging", "stage2ec2", "https"]
# The first 8 hex digits of the stack's own UUID: unique per stack incarnation.
STACK_ID_SUFFIX = {"Fn::Select": [0, {"Fn::Split": ["-", {"Fn::Select": [2, {"Fn::Split": [
    "/", {"Ref": "AWS::StackId"}]}]}]}]}


def _config(cdk_app, env):
    return cdk_app[1][env].service.config


def _contains(value, part) -> bool:
    if value == part:
        return True
    if isinstance(value, dict):
        return any(_contains(v, part) for v in value.values())
    if isinstance(value, list):
        return any(_contains(v, part) for v in value)
    return False


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
    endpoints = {lid for lid, r in resources(template, "AWS::EC2::VPCEndpoint").items()
                 if r["Properties"].get("VpcEndpointType") == "Interface"}
    assert endpoints
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
