"""cdk-nag acknowledgments. Each one sits on the narrowest construct and says why."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Token, Validations
from constructs import IConstruct


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    Validations.of(construct).acknowledge(Acknowledgment(id=rule, reason=reason))


def partition_and_region(scope: IConstruct) -> tuple[str, str]:
    """The partition and region as cdk-nag prints them in a finding's resource: literal in a stack with
    a region, CloudFormation placeholders in one without."""
    region = Stack.of(scope).region
    if Token.is_unresolved(region):
        return "<AWS::Partition>", "<AWS::Region>"
    return "aws", region
