"""The synthesized CloudFormation templates, read back for the cost estimate and the diagrams.

Both tools read `cdk.out/<stack>.template.json` rather than the config, so what they show is
what `cdk deploy` would create. When a template is missing or older than the code and config
it comes from, the real CDK CLI synthesizes it again first (offline, no credentials needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envconfig import EnvironmentConfig

ROOT = Path(__file__).resolve().parent.parent
CDK_OUT = ROOT / "cdk.out"
# What a template is synthesized from: newer than the template means it is stale.
_SOURCES = ("app.py", "cdk.json", "stacks", "cdk_constructs", "envconfig", "config", "app_tier")
_SOURCE_SUFFIXES = {".py", ".toml", ".json", ".j2", ".conf", ".service", ".sh", ".txt"}


class SynthError(Exception):
    """The CDK CLI could not produce a template."""


def template_file(config: EnvironmentConfig, cdk_out: Path = CDK_OUT) -> Path:
    return cdk_out / f"{config.stack_name}.template.json"


def _newest_source_mtime() -> float:
    newest = 0.0
    for name in _SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else (p for p in path.rglob("*") if p.suffix in _SOURCE_SUFFIXES)
        for file in files:
            if "__pycache__" not in file.parts and file.is_file():
                newest = max(newest, file.stat().st_mtime)
    return newest


def stale(configs: list[EnvironmentConfig], cdk_out: Path = CDK_OUT) -> list[EnvironmentConfig]:
    """The environments whose template is missing or older than the code and config."""
    newest = _newest_source_mtime()
    return [c for c in configs
            if not template_file(c, cdk_out).is_file() or template_file(c, cdk_out).stat().st_mtime < newest]


def ensure_synthesized(configs: list[EnvironmentConfig]) -> None:
    """Run `cdk synth` (all environments, or the one asked for) when a template is stale."""
    outdated = stale(configs)
    if not outdated:
        return
    names = ", ".join(c.name for c in outdated)
    print(f"synthesizing ({names}: template missing or older than the code)...", file=sys.stderr)
    env = dict(os.environ, CDK_DISABLE_CLI_TELEMETRY="true",
               PATH=f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    command = ["npx", "--no-install", "cdk", "synth", "--quiet"]
    if len(configs) == 1:
        command += ["-c", f"env={configs[0].name}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SynthError(f"`{' '.join(command)}` failed:\n{result.stderr.strip() or result.stdout.strip()}")


def load_template(config: EnvironmentConfig, cdk_out: Path = CDK_OUT) -> dict:
    return json.loads(template_file(config, cdk_out).read_text(encoding="utf-8"))


def ref(value: Any) -> str | None:
    """The logical ID a `Ref` or `Fn::GetAtt` points at (None for a literal)."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None


@dataclass(frozen=True)
class Resource:
    logical_id: str
    type: str
    path: str                  # construct path below the stack, e.g. "Service/AppServers/Group/ASG"
    properties: dict
    metadata: dict

    def get(self, key: str, default: Any = None) -> Any:
        return self.properties.get(key, default)

    def is_under(self, prefix: str) -> bool:
        """Whether the construct path starts with `prefix` ("Service/Database/"). Templates synthesized
        without path metadata still tell it: a logical ID starts with the path's parts run together."""
        if self.path:
            return self.path.startswith(prefix)
        return self.logical_id.startswith("".join(c for c in prefix if c.isalnum()))


class Template:
    """Lookups over one synthesized template by type, construct path and reference."""

    def __init__(self, raw: dict):
        self.raw = raw
        self.by_id: dict[str, Resource] = {}
        for logical_id, res in raw.get("Resources", {}).items():
            metadata = res.get("Metadata", {})
            full_path = metadata.get("aws:cdk:path", "")
            self.by_id[logical_id] = Resource(logical_id, res["Type"], full_path.partition("/")[2],
                                              res.get("Properties", {}), metadata)

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.by_id.values() if r.type in types]

    def under(self, prefix: str, *types: str) -> list[Resource]:
        return [r for r in self.by_id.values() if r.path.startswith(prefix) and (not types or r.type in types)]

    def target(self, value: Any) -> Resource | None:
        logical_id = ref(value)
        return self.by_id.get(logical_id) if logical_id else None

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.by_id.values())


@dataclass(frozen=True)
class IngressRule:
    group: str                 # logical ID of the security group that admits the traffic
    source_group: str | None   # logical ID of the source security group, or
    cidr: str | None           # the source CIDR
    protocol: str
    from_port: int | None
    to_port: int | None
    description: str = ""

    @property
    def ports(self) -> str:
        if self.protocol == "-1":
            return "all traffic"
        if self.from_port == self.to_port:
            return f"{self.protocol}/{self.from_port}"
        return f"{self.protocol}/{self.from_port}-{self.to_port}"


def ingress_rules(template: Template) -> list[IngressRule]:
    """Every ingress rule, inline on a security group or a standalone AWS::EC2::SecurityGroupIngress."""
    def rule(group: str, p: dict) -> IngressRule:
        return IngressRule(group=group, source_group=ref(p.get("SourceSecurityGroupId")),
                           cidr=p.get("CidrIp") or p.get("CidrIpv6"), protocol=str(p.get("IpProtocol", "tcp")),
                           from_port=p.get("FromPort"), to_port=p.get("ToPort"), description=p.get("Description", ""))

    rules = [rule(group.logical_id, inline) for group in template.of_type("AWS::EC2::SecurityGroup")
             for inline in group.get("SecurityGroupIngress", [])]
    rules += [rule(ref(r.get("GroupId")) or "", r.properties)
              for r in template.of_type("AWS::EC2::SecurityGroupIngress")]
    return rules
