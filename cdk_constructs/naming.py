"""Names that must not collide with what an earlier incarnation of the same stack left behind.

A resource retained on `cdk destroy` (a prod database's log group, a backup vault that still
holds recovery points) keeps its name; a fixed name would make re-creating the stack fail
with "already exists". Such names end in a short suffix taken from the stack's own ID, which
is new for every incarnation of the stack and stable for its whole life.
"""

from __future__ import annotations

from aws_cdk import Aws, Fn, Stack
from constructs import IConstruct


def stack_id_suffix(scope: IConstruct) -> str:
    """The first 8 hex digits of the UUID of the stack `scope` is in (AWS::StackId is
    arn:…:stack/NAME/UUID), as a token: AWS::StackId always names the stack the template is in."""
    Stack.of(scope)  # a scope outside any stack has no AWS::StackId to take it from
    uuid = Fn.select(2, Fn.split("/", Aws.STACK_ID))
    return Fn.select(0, Fn.split("-", uuid))
