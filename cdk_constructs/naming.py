"""Names that must not collide with what an earlier incarnation of the same stack left behind.

A resource retained on `cdk destroy` (a prod database's log group, a backup vault that still
holds recovery points) keeps its name; a fixed name would make re-creating the stack fail
with "already exists". Such names end in a short suffix taken from the stack's own ID, which
is new for every incarnation of the stack and stable for its whole life.
"""

from __future__ import annotations

from aws_cdk import Aws, Fn, Stack
from constructs import IConstruct

_SUFFIXES: dict[str, str] = {}


def stack_id_suffix(scope: IConstruct) -> str:
    """The first 8 hex digits of the stack's UUID (AWS::StackId is arn:…:stack/NAME/UUID), a token.

    Built once per stack (keyed by the stack's construct address): every name shares one expression."""
    stack = Stack.of(scope)
    key = stack.node.addr
    if key not in _SUFFIXES:
        uuid = Fn.select(2, Fn.split("/", Aws.STACK_ID))
        _SUFFIXES[key] = Fn.select(0, Fn.split("-", uuid))
    return _SUFFIXES[key]
