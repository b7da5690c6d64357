"""What a synthesized template hands each server: its user data and its Init metadata.

The rehearsal never renders server files itself. It reads the cloud assembly that CDK
synthesized, finds every server (an EC2 instance, or an Auto Scaling group's launch template)
whose user data runs cfn-init, and resolves the CloudFormation intrinsics in what that server
receives, with values the rehearsal supplies (the emulator's secret ARNs, the containers'
addresses) in place of what CloudFormation would resolve.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from app_tier import render

SERVER_TYPES = ("AWS::EC2::Instance", "AWS::EC2::LaunchTemplate")
WAIT_HANDLE = "AWS::CloudFormation::WaitConditionHandle"


class UnresolvedError(ValueError):
    pass


@dataclass
class Server:
    """One kind of server in a template."""

    stack: str
    logical_id: str          # the Instance or LaunchTemplate
    init_resource: str       # the resource whose metadata cfn-init reads (the instance, or the group)
    kind: str                # "stage-1 server", "stage-2 app server", "database server", "stage-3 group member"...
    stage: int
    user_data: object        # unresolved CloudFormation value
    metadata: dict           # unresolved Metadata of init_resource
    signal_timeout_sec: int  # from the CreationPolicy
    service_port: int | None = None
    health_path: str = "/health"
    wait_handle: str | None = None  # the wait condition handle its Init metadata signals (stages 1-2 servers)

    @property
    def is_app_server(self) -> bool:
        return self.kind != "database server"


def _duration_sec(iso: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", iso)
    if not match:
        raise ValueError(f"unexpected duration {iso}")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _user_data(resource: dict) -> object | None:
    props = resource.get("Properties", {})
    if resource["Type"] == "AWS::EC2::LaunchTemplate":
        return props.get("LaunchTemplateData", {}).get("UserData")
    return props.get("UserData")


def _init_resource(user_data: object) -> str | None:
    text = json.dumps(user_data)
    if "cfn-init" not in text:
        return None
    match = re.search(r"--resource (\w+)", text[text.index("cfn-init"):])
    return match.group(1) if match else None


def _files(metadata: dict) -> dict:
    init = metadata.get("AWS::CloudFormation::Init", {})
    files: dict = {}
    for name, config in init.items():
        if name != "configSets":
            files.update(config.get("files", {}))
    return files


def _content(value) -> str:
    """File content as text where it is a plain string; tokens (Fn::Join) are flattened for reading."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        return "".join(_content(v) if not isinstance(v, dict) else "" for v in value["Fn::Join"][1])
    return ""


def servers(template: dict, stack: str) -> list[Server]:
    resources = template["Resources"]
    # The launch template of a group: the group's CreationPolicy carries the signal timeout.
    group_of_template = {}
    for lid, res in resources.items():
        if res["Type"] == "AWS::AutoScaling::AutoScalingGroup":
            ref = res["Properties"].get("LaunchTemplate", {}).get("LaunchTemplateId", {}).get("Ref")
            if ref:
                group_of_template[ref] = lid
    found = []
    for lid, res in resources.items():
        if res["Type"] not in SERVER_TYPES:
            continue
        user_data = _user_data(res)
        init_resource = _init_resource(user_data) if user_data else None
        if not init_resource:
            continue
        metadata = resources[init_resource].get("Metadata", {})
        files = {path: _content(spec.get("content", "")) for path, spec in _files(metadata).items()}
        policy_owner = resources[group_of_template.get(lid, lid)]
        timeout = policy_owner.get("CreationPolicy", {}).get("ResourceSignal", {}).get("Timeout", "PT5M")
        env = render.read_environment_file(files.get(render.ENV_FILE, ""))
        stage = int(env.get("APP_STAGE", "0"))
        if res["Type"] == "AWS::EC2::LaunchTemplate":
            kind = f"stage-{stage} group member"
        elif render.PG_SETUP_SCRIPT in files and render.ENV_FILE in files:
            kind = f"stage-{stage} server"
        elif render.ENV_FILE in files:
            kind = f"stage-{stage} app server"
        elif render.PG_SETUP_SCRIPT in files:
            kind = "database server"
        else:
            continue
        server = Server(stack=stack, logical_id=lid, init_resource=init_resource, kind=kind, stage=stage,
                        user_data=user_data, metadata=metadata, signal_timeout_sec=_duration_sec(timeout),
                        wait_handle=wait_handle_of(template, metadata))
        if server.is_app_server:
            server.service_port = 80 if "listen 80 " in files.get(render.NGINX_CONF, "") or stage < 4 \
                else _nginx_port(files.get(render.NGINX_CONF, ""))
            gate = _health_gate(metadata)
            if gate:
                server.service_port, server.health_path = gate
        found.append(server)
    return found


def wait_handle_of(template: dict, metadata: dict) -> str | None:
    """The wait condition handle a server's Init metadata names (Ref), if any."""
    names = set(re.findall(r'\{"Ref": "(\w+)"\}', json.dumps(metadata)))
    found = sorted(n for n in names if template["Resources"].get(n, {}).get("Type") == WAIT_HANDLE)
    if len(found) > 1:
        raise ValueError(f"more than one wait condition handle in one server's metadata: {found}")
    return found[0] if found else None


def wait_handle_url(stack_id: str, region: str, logical_id: str) -> str:
    """What a wait condition handle's Ref is in the rehearsal: a URL of the real ones' form (a presigned
    S3 URL on cloudformation-waitcondition-REGION whose key is the stack's ARN and the handle's logical ID),
    which the cfn-signal stand-in turns into a SignalResource on the handle (no S3 behind it)."""
    key = urllib.parse.quote(f"{stack_id}/{logical_id}", safe="")
    return f"https://cloudformation-waitcondition-{region}.s3.amazonaws.com/{key}?X-Amz-Signature=rehearsal"


def _nginx_port(conf: str) -> int:
    match = re.search(r"listen (?:[\d.]+:)?(\d+)", conf)
    return int(match.group(1)) if match else 80


def _health_gate(metadata: dict) -> tuple[int, str] | None:
    """The port and path the server's own boot health gate checks: what the rehearsal checks too."""
    text = json.dumps(metadata)
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[^ \\\"]*) &&", text)
    return (int(match.group(1)), match.group(2)) if match else None


class Resolver:
    """Resolves CloudFormation intrinsics in what a server receives.

    `refs` maps a logical ID (or pseudo parameter) to its Ref value; `attributes` maps
    (logical ID, attribute) to a Fn::GetAtt value. Anything else that a server would receive
    is an error, named, so the rehearsal never hands a server a placeholder silently."""

    def __init__(self, template: dict, refs: dict[str, str], attributes: dict[tuple[str, str], str]) -> None:
        self.template = template
        self.refs = refs
        self.attributes = attributes

    def ref(self, name: str) -> str:
        if name in self.refs:
            return self.refs[name]
        if self.template["Resources"].get(name, {}).get("Type") == WAIT_HANDLE:
            # The handle's URL names the stack the server reads, whichever stack that is (the broken app's own).
            return wait_handle_url(self.ref("AWS::StackId"), self.ref("AWS::Region"), name)
        raise UnresolvedError(f"Ref {name} ({self.template['Resources'].get(name, {}).get('Type', 'pseudo')})")

    def get_att(self, name: str, attribute: str) -> str:
        if (name, attribute) in self.attributes:
            return self.attributes[(name, attribute)]
        raise UnresolvedError(f"Fn::GetAtt {name}.{attribute}")

    def resolve(self, value):
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                name, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(name, attribute)
            if key == "Fn::Join":
                separator, parts = arg
                return separator.join(str(p) for p in self.resolve(parts))
            if key == "Fn::Select":
                index, items = self.resolve(arg)
                return items[int(index)]
            if key == "Fn::Split":
                separator, text = self.resolve(arg)
                return text.split(separator)
            if key == "Fn::Base64":
                return self.resolve(arg)
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
                return self._sub(text, variables)
            if key.startswith("Fn::"):
                raise UnresolvedError(f"{key} is not rehearsed")
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub(self, text: str, variables: dict) -> str:
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name:
                return self.get_att(*name.split(".", 1))
            return self.ref(name)
        return re.sub(r"\$\{([^}]+)\}", replace, text)


def user_data_script(resolver: Resolver, server: Server) -> str:
    value = resolver.resolve(server.user_data)
    try:  # a literal Fn::Base64 of a string is already resolved to the text; a base64 string is not
        decoded = base64.b64decode(value, validate=True).decode()
        return decoded if decoded.startswith("#!") else value
    except (ValueError, UnicodeDecodeError):
        return value


def load(assembly_dir: Path, stack: str) -> dict:
    return json.loads((assembly_dir / f"{stack}.template.json").read_text())
