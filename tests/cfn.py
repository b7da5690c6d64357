"""Small queries over synthesized template JSON, shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass

from tools import templates


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


@dataclass(frozen=True)
class Ingress:
    group: str          # logical ID of the security group that admits
    source: str         # a CIDR, or the logical ID of the source security group
    from_port: int | None
    to_port: int | None


def ingress_rules(template: dict) -> list[Ingress]:
    """Every ingress rule, inline on a security group or standalone (tools.templates reads them)."""
    return [Ingress(r.group, r.cidr or r.source_group, r.from_port, r.to_port)
            for r in templates.ingress_rules(templates.Template(template))]


# The first 8 hex digits of the stack's own UUID (cdk_constructs.naming.stack_id_suffix).
STACK_ID_SUFFIX = {"Fn::Select": [0, {"Fn::Split": ["-", {"Fn::Select": [2, {"Fn::Split": [
    "/", {"Ref": "AWS::StackId"}]}]}]}]}


def name_of(value) -> str:
    """A name as a string: a literal, or a Fn::Join whose only token is the stack-ID suffix,
    rendered as "<stack-id>"."""
    if isinstance(value, str):
        return value
    if value == STACK_ID_SUFFIX:
        return "<stack-id>"
    separator, parts = value["Fn::Join"]
    return separator.join(name_of(p) for p in parts)
