"""cdk-nag acknowledgments. Each one sits on the narrowest construct and says why."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Token, Validations
from constructs import IConstruct


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    Validations.of(construct).acknowledge(Acknowledgment(id=rule, reason=reason))


def arn_prefix(scope: IConstruct, service: str) -> str:
    """`arn:<partition>:<service>:<region>` as cdk-nag prints a finding's resource: literal in a stack with
    a region, CloudFormation placeholders in one without."""
    region = Stack.of(scope).region
    if Token.is_unresolved(region):
        return f"arn:<AWS::Partition>:{service}:<AWS::Region>"
    return f"arn:aws:{service}:{region}"
