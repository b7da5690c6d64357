"""Small queries over synthesized template JSON, shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass


def resources(template: dict, resource_type: str | None = None) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items()
            if resource_type is None or r["Type"] == resource_type}


def path_of(resource: dict) -> str:
    return resource.get("Metadata", {}).get("aws:cdk:path", "")


def logical_id(template: dict, path_suffix: str) -> str:
    """The logical ID of the one resource whose construct path ends with `path_suffix`."""
    hits = [lid for lid, r in template["Resources"].items() if path_of(r).endswith(path_suffix)]
    assert len(hits) == 1, f"{path_suffix}: {hits}"
    return hits[0]


def _ref(value) -> str | None:
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None


@dataclass(frozen=True)
class Ingress:
    group: str          # logical ID of the security group that admits
    source: str         # a CIDR, or the logical ID of the source security group
    from_port: int | None
    to_port: int | None


def ingress_rules(template: dict) -> list[Ingress]:
    """Every ingress rule, inline on a security group or standalone."""
    rules = []
    for lid, res in resources(template, "AWS::EC2::SecurityGroup").items():
        for rule in res["Properties"].get("SecurityGroupIngress", []):
            source = rule.get("CidrIp") or rule.get("CidrIpv6") or _ref(rule.get("SourceSecurityGroupId"))
            rules.append(Ingress(lid, source, rule.get("FromPort"), rule.get("ToPort")))
    for res in resources(template, "AWS::EC2::SecurityGroupIngress").values():
        p = res["Properties"]
        source = p.get("CidrIp") or p.get("CidrIpv6") or _ref(p.get("SourceSecurityGroupId"))
        rules.append(Ingress(_ref(p["GroupId"]), source, p.get("FromPort"), p.get("ToPort")))
    return rules
