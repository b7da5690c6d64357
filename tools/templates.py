"""The synthesized CloudFormation templates, read back: the one reader every tool uses.

The cost estimate, the diagrams and the post-deploy checks read templates rather than the
config, so what they show is what `cdk deploy` creates. `load_template` reads
`cdk.out/<stack>.template.json`; when a template is missing or older than the code and config it
comes from, `ensure_synthesized` has the real CDK CLI synthesize it again first (offline, no
credentials needed). `synthesize_in_process` builds a config no config/*.toml holds (a stage
variant). `Template` answers lookups by type, construct path and reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envconfig import EnvironmentConfig
from tools import ROOT

CDK_OUT = ROOT / "cdk.out"
# What a template is synthesized from: newer than the template means it is stale.
_SOURCES = ("app.py", "cdk.json", "stacks", "cdk_constructs", "envconfig", "config", "app_tier")
_SOURCE_SUFFIXES = {".py", ".toml", ".json", ".j2", ".conf", ".service", ".sh", ".txt"}
INIT = "AWS::CloudFormation::Init"


class SynthError(Exception):
    """The CDK CLI could not produce a template."""


# --- getting a template -----------------------------------------------------------------------

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


def synthesize_in_process(config: EnvironmentConfig, *, target: str = "aws", context: dict | None = None) -> dict:
    """Synthesize one config the CLI cannot be given (not a config/*.toml) with the CDK in-process,
    as app.py does under the CLI (`target`: "emulator" as `-c target=emulator`; `context`: more `-c`
    values, such as the app commit)."""
    # jsii starts Node when aws_cdk is imported: the project's Node 22, so no end-of-life banner.
    os.environ["PATH"] = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    from aws_cdk import App

    from stacks import add_environments, cli_context

    with tempfile.TemporaryDirectory() as outdir, _quiet(Path(outdir) / "synth.log"):
        # Without CDK's built-in validation, as app.py (cfn-lint is the template check).
        app = App(context={**cli_context(), **(context or {})}, outdir=outdir, builtin_cloud_formation_validation=False)
        stack = add_environments(app, [config], target=target)[config.name]
        return app.synth().get_stack_by_name(stack.stack_name).template


@contextlib.contextmanager
def _quiet(log: Path):
    """Keep the CDK's validation report (printed by its Node process) out of the output, unless it fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except Exception:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# --- reading one ------------------------------------------------------------------------------

def ref(value: Any) -> str | None:
    """The logical ID a `Ref` or `Fn::GetAtt` points at (None for a literal)."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None


def refs(values: Any) -> list[str]:
    """The logical IDs a list of `Ref`s and `Fn::GetAtt`s points at; literals are left out."""
    return [r for r in (ref(v) for v in values or []) if r]


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

    def init_files(self) -> dict[str, dict]:
        """The files CloudFormation Init writes from this resource's metadata, by server path (every config)."""
        init = self.metadata.get(INIT, {})
        return {path: spec for name, config in init.items() if name != "configSets" and isinstance(config, dict)
                for path, spec in config.get("files", {}).items()}


class Template:
    """Lookups over one synthesized template by type, construct path and reference."""

    def __init__(self, raw: dict):
        self.raw = raw
        self.by_id: dict[str, Resource] = {}
        for logical_id, res in raw.get("Resources", {}).items():
            metadata = res.get("Metadata") or {}
            full_path = metadata.get("aws:cdk:path", "")
            self.by_id[logical_id] = Resource(logical_id, res["Type"], full_path.partition("/")[2],
                                              res.get("Properties") or {}, metadata)

    @property
    def parameters(self) -> dict[str, dict]:
        return self.raw.get("Parameters") or {}

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.by_id.values() if r.type in types]

    def under(self, prefix: str, *types: str) -> list[Resource]:
        return [r for r in self.by_id.values() if r.path.startswith(prefix) and (not types or r.type in types)]

    def target(self, value: Any) -> Resource | None:
        logical_id = ref(value)
        return self.by_id.get(logical_id) if logical_id else None

    def launch_template(self, spec: dict | None) -> Resource | None:
        """The launch template an instance or group names (by ID, or by its version's GetAtt when named)."""
        if not spec:
            return None
        return self.target(spec.get("LaunchTemplateId")) or self.target(spec.get("Version"))

    def launch_data(self, resource: Resource) -> dict:
        """The LaunchTemplateData of the launch template an instance or group names ({} when none)."""
        launch = self.launch_template(resource.get("LaunchTemplate"))
        return launch.get("LaunchTemplateData", {}) if launch else {}

    def security_groups(self, resource: Resource) -> list[str]:
        """The security groups of a server (an instance, a launch template, an Auto Scaling group
        through its launch template), an RDS instance, a load balancer or an interface endpoint.
        An instance with a public address at launch names them on its network interface."""
        values = (resource.get("SecurityGroupIds") or resource.get("LaunchTemplateData", {}).get("SecurityGroupIds")
                  or resource.get("VPCSecurityGroups") or resource.get("SecurityGroups")
                  or self.launch_data(resource).get("SecurityGroupIds") or [])
        for interface in resource.get("NetworkInterfaces") or []:
            values = [*values, *interface.get("GroupSet", [])]
        return list(dict.fromkeys(refs(values)))

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
