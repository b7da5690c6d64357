"""Check a deployed stack the way an ops engineer would after `cdk deploy`: through the AWS API.

Everything checked is read back from the API: the stack, its resources, the VPC, security
groups, instances, Auto Scaling group, launch template and load balancer. The template is
read back too (`GetTemplate`, through the shared reader `tools.templates`), only to map logical
IDs to their construct paths, which are the contract between the CDK app and these checks (see
`Roles`), and to find the image a server launches from.

A check is `pass`, `FAIL`, or `n/a`: the emulator could not show it (it skipped the resource
type, or it does not model the property). `n/a` never passes silently; the report says why.
"""

from __future__ import annotations

import base64
import functools
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envconfig import EnvironmentConfig, Stage
from tools.templates import Template

APP_PORT = 80                      # the port nginx/the app listens on, on every server
PUBLIC_PORTS = frozenset({80, 443})
WORLD = frozenset({"0.0.0.0/0", "::/0"})
OK_STACK_STATUSES = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
BOOTSTRAP_MARKER = "cfn-init"      # the user data runs cfn-init, which applies the server's files
DEFAULT_DEREGISTRATION_DELAY = "300"

PASS, FAIL, NOT_SHOWN = "pass", "FAIL", "n/a"
# The HTTP smoke test of a real deploy (`verify --aws`): bounded, about a minute at worst per URL.
SMOKE_ATTEMPTS = 6
SMOKE_TIMEOUT_SEC = 10
SMOKE_DELAY_SEC = 5


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str = ""


@dataclass
class StackReport:
    environment: str
    stack_name: str
    status: str = "MISSING"
    url: str = ""
    template_resources: int = 0
    created_resources: int = 0
    skipped_types: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def ok(self) -> bool:
        return self.status in OK_STACK_STATUSES and not self.failed

    def counts(self) -> Counter:
        return Counter(c.status for c in self.checks)


@dataclass(frozen=True)
class Deployed:
    """A template resource and what the stack made of it."""
    logical_id: str
    type: str
    path: str                      # construct path without the stack name: "Service/AppServers/Group"
    physical_id: str | None        # None: not created (skipped by the emulator, or missing); may be ""


class Roles:
    """The deployed resources, found by construct path (the CDK app's contract)."""

    VPC = "Network/Vpc"
    APP_SERVER = "Service/AppServer"          # stages 1-2: one instance
    APP_SERVERS = "Service/AppServers"        # stages 3-4: Auto Scaling group
    DATABASE = "Service/Database"
    LOAD_BALANCER = "Service/LoadBalancer"

    def __init__(self, resources: list[Deployed]):
        self.resources = resources

    def under(self, prefix: str, type_: str) -> list[Deployed]:
        return [r for r in self.resources
                if r.type == type_ and (not prefix or r.path == prefix or r.path.startswith(prefix + "/"))]

    def one(self, prefix: str, type_: str) -> Deployed | None:
        found = self.under(prefix, type_)
        return found[0] if found else None


@functools.cache
def emulator_supports(resource_type: str) -> bool:
    """Whether moto's CloudFormation creates this resource type (it skips the others with a warning)."""
    # The same test as moto.cloudformation.parsing.resource_class_from_type, without its warning.
    from moto.cloudformation.parsing import NULL_MODELS, get_model_map

    if resource_type in NULL_MODELS:
        return False
    return resource_type.startswith("Custom::") or resource_type in get_model_map()


def _get(url: str, timeout: float) -> tuple[int | None, str]:
    """One GET: the HTTP status (None when no answer) and what happened."""
    request = urllib.request.Request(url, headers={"User-Agent": "staged-web-verify"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return err.code, f"HTTP {err.code}"
    except urllib.error.URLError as err:
        return None, f"{type(err.reason).__name__}: {err.reason}"
    except OSError as err:                       # timeouts, resets
        return None, f"{type(err).__name__}: {err}"


def http_smoke_checks(url: str, *, health_path: str = "health", attempts: int = SMOKE_ATTEMPTS,
                      timeout: float = SMOKE_TIMEOUT_SEC, delay: float = SMOKE_DELAY_SEC,
                      sleep: Callable[[float], Any] = time.sleep) -> list[Check]:
    """GET <url><health_path>, then <url>, each expecting 200 within `attempts` tries of at most
    `timeout` seconds, `delay` seconds apart (a server that has just signalled may still be
    registering with the load balancer). Standard library only."""
    base = url if url.endswith("/") else url + "/"
    checks = []
    for target in (base + health_path.lstrip("/"), base):
        outcome = "no attempt"
        for attempt in range(1, attempts + 1):
            status, outcome = _get(target, timeout)
            if status == 200:
                checks.append(Check(f"HTTP GET {target} answers 200", PASS,
                                    f"{outcome} at attempt {attempt} of {attempts}"))
                break
            if attempt < attempts:
                sleep(delay)
        else:
            checks.append(Check(f"HTTP GET {target} answers 200", FAIL,
                                f"last: {outcome}; {attempts} attempts, {timeout:g} s timeout, {delay:g} s apart"))
    return checks


class StackVerifier:
    def __init__(self, session, cfg: EnvironmentConfig, *, emulator: bool, http_smoke: bool = False):
        """`http_smoke`: also GET the `Url` output (a real deploy; in the emulator nothing serves it)."""
        self.cfg = cfg
        self.emulator = emulator
        self.http_smoke = http_smoke
        self.cloudformation = session.client("cloudformation")
        self.ec2 = session.client("ec2")
        self.autoscaling = session.client("autoscaling")
        self.elbv2 = session.client("elbv2")
        self.rds = session.client("rds")
        self.ssm = session.client("ssm")
        self.report = StackReport(cfg.name, cfg.stack_name)

    # -- reading the stack ----------------------------------------------------------------

    def run(self) -> StackReport:
        stack = self._describe_stack()
        if stack is None:
            self.report.checks.append(Check("stack deployed", FAIL, f"no stack named {self.cfg.stack_name}"))
            return self.report
        self.stack = stack
        self.report.status = stack["StackStatus"]
        outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs") or []}
        self.report.url = outputs.get("Url", "")
        self.add("stack status", self.report.status in OK_STACK_STATUSES, self.report.status)
        self.roles = Roles(self._resources())
        self._check_url(outputs)
        if self.http_smoke:
            self._check_http(self.report.url)
        self._check_network()
        self._check_security_groups()
        if self.cfg.stage.load_balanced:
            self._check_auto_scaling_group()
            self._check_load_balancer()
        else:
            self._check_single_server()
        self._check_database()
        return self.report

    def _describe_stack(self) -> dict | None:
        try:
            return self.cloudformation.describe_stacks(StackName=self.cfg.stack_name)["Stacks"][0]
        except self.cloudformation.exceptions.ClientError:
            return None

    def _resources(self) -> list[Deployed]:
        body = self.cloudformation.get_template(StackName=self.cfg.stack_name)["TemplateBody"]
        self.template = Template(json.loads(body) if isinstance(body, str) else body)
        created: dict[str, str] = {}
        for page in self.cloudformation.get_paginator("list_stack_resources").paginate(StackName=self.cfg.stack_name):
            for summary in page["StackResourceSummaries"]:
                # Some created resources have no physical ID here (moto: SecurityGroupIngress,
                # DBSubnetGroup): listed with a type means created.
                if summary.get("LogicalResourceId") and summary.get("ResourceType"):
                    created[summary["LogicalResourceId"]] = summary.get("PhysicalResourceId") or ""
        resources = [Deployed(r.logical_id, r.type, r.path, created.get(r.logical_id)) for r in self.template]
        missing = [r for r in resources if r.physical_id is None]
        self.report.template_resources = len(resources)
        self.report.created_resources = len(resources) - len(missing)
        skipped = [r for r in missing if self.emulator and not emulator_supports(r.type)]
        self.report.skipped_types = dict(sorted(Counter(r.type for r in skipped).items()))
        lost = [r for r in missing if r not in skipped]
        self.add("every resource created" + (" (except types the emulator skips)" if self.emulator else ""),
                 not lost, ", ".join(f"{r.logical_id} ({r.type})" for r in lost) or
                 f"{self.report.created_resources} of {self.report.template_resources}")
        return resources

    # -- recording checks -----------------------------------------------------------------

    def add(self, name: str, passed: bool, detail: str = "") -> None:
        self.report.checks.append(Check(name, PASS if passed else FAIL, detail))

    def not_shown(self, name: str, why: str) -> None:
        self.report.checks.append(Check(name, NOT_SHOWN, why))

    def _present(self, name: str, resource: Deployed | None, what: str) -> bool:
        """Record why a check cannot run when its resource is absent; True when it can run."""
        if resource is None:
            self.add(name, False, f"the stack has no {what}")
            return False
        if resource.physical_id is None:
            if self.emulator and not emulator_supports(resource.type):
                self.not_shown(name, f"the emulator skipped {resource.type} {resource.logical_id}")
            else:
                self.add(name, False, f"{resource.type} {resource.logical_id} was not created")
            return False
        if not resource.physical_id:
            self.add(name, False, f"{resource.type} {resource.logical_id} has no physical ID")
            return False
        return True

    # -- output ---------------------------------------------------------------------------

    def _check_url(self, outputs: dict[str, str]) -> None:
        url = outputs.get("Url", "")
        if self.emulator and url.rstrip("/").endswith("None"):
            # moto gives instances no public DNS name, so the output renders as "http://None".
            self.not_shown("Url output", f"{url!r}: the emulator gives instances no public DNS name")
            return
        self.add("Url output", url.startswith(("http://", "https://")) and "." in url, url or "missing")

    def _check_http(self, url: str) -> None:
        if not url.startswith(("http://", "https://")):
            self.add("HTTP smoke test", False, f"no usable Url output ({url or 'missing'})")
            return
        self.report.checks.extend(http_smoke_checks(url, health_path=self.cfg.app.health_path))

    # -- network --------------------------------------------------------------------------

    def _check_network(self) -> None:
        vpc = self.roles.one(Roles.VPC, "AWS::EC2::VPC")
        if not self._present("VPC", vpc, "VPC at Network/Vpc"):
            return
        self.vpc_id = vpc.physical_id
        described = self.ec2.describe_vpcs(VpcIds=[vpc.physical_id])["Vpcs"][0]
        self.add("VPC CIDR", described["CidrBlock"] == self.cfg.network.vpc_cidr, described["CidrBlock"])

        wanted = sorted(self.cfg.network.availability_zones)
        by_id = {s["SubnetId"]: s for s in self.ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": [vpc.physical_id]}])["Subnets"]}
        tiers: dict[str, list[str]] = {}
        for subnet in self.roles.under(Roles.VPC, "AWS::EC2::Subnet"):
            described_subnet = by_id.get(subnet.physical_id or "")
            # "Network/Vpc/PublicSubnet1/Subnet" -> tier "Public"
            tier = subnet.path.split("/")[2].rstrip("0123456789").removesuffix("Subnet")
            tiers.setdefault(tier, []).append(described_subnet["AvailabilityZone"] if described_subnet else "missing")
        wrong = {t: sorted(z) for t, z in tiers.items() if sorted(z) != wanted}
        self.add("subnets in the configured AZs", bool(tiers) and not wrong,
                 "; ".join(f"{t}: {' '.join(sorted(z))}" for t, z in sorted(tiers.items())) or "no subnets")

        nat = [n for n in self.ec2.describe_nat_gateways(
            Filters=[{"Name": "vpc-id", "Values": [vpc.physical_id]}])["NatGateways"]
            if n["State"] in ("pending", "available")]
        self.add("NAT gateways", len(nat) == self.cfg.network.nat_gateways,
                 f"{len(nat)} (configured {self.cfg.network.nat_gateways})")

    # -- security groups ------------------------------------------------------------------

    def _groups(self, prefix: str) -> list[dict]:
        ids = [r.physical_id for r in self.roles.under(prefix, "AWS::EC2::SecurityGroup") if r.physical_id]
        return self.ec2.describe_security_groups(GroupIds=ids)["SecurityGroups"] if ids else []

    def _check_security_groups(self) -> None:
        every = self._groups("")
        app_prefix = Roles.APP_SERVERS if self.cfg.stage.load_balanced else Roles.APP_SERVER
        app_ids = {g["GroupId"] for g in self._groups(app_prefix)}
        alb_ids = {g["GroupId"] for g in self._groups(Roles.LOAD_BALANCER)}
        db_groups = self._groups(Roles.DATABASE)
        db_port = self.cfg.database.port

        if self.cfg.database.kind == "ec2" and not db_groups and self.cfg.stage == Stage.SINGLE_SERVER:
            openers = [_describe_rule(g, r) for g in every for r in _rules_on_port(g, db_port)]
            self.add(f"database port {db_port} not reachable (PostgreSQL on the app server)", not openers,
                     "; ".join(openers) or "no security group opens it")
        else:
            rules = [(g, r) for g in db_groups for r in _rules_on_port(g, db_port)]
            strangers = [_describe_rule(g, r) for g, r in rules if not _sources(r) <= app_ids or not _sources(r)]
            self.add(f"database port {db_port} only from the app servers' SG",
                     bool(rules) and bool(app_ids) and not strangers,
                     "; ".join(strangers) or (f"from {', '.join(sorted(app_ids))}" if rules else "no rule opens it"))

        if self.cfg.stage.load_balanced:
            rules = [(g, r) for g in self._groups(app_prefix) for r in _rules_on_port(g, APP_PORT)]
            strangers = [_describe_rule(g, r) for g, r in rules if not _sources(r) <= alb_ids or not _sources(r)]
            self.add(f"app port {APP_PORT} only from the ALB's SG", bool(rules) and bool(alb_ids) and not strangers,
                     "; ".join(strangers) or (f"from {', '.join(sorted(alb_ids))}" if rules else "no rule opens it"))

        public_ids = alb_ids if self.cfg.stage.load_balanced else app_ids
        public_name = "the ALB" if self.cfg.stage.load_balanced else "the app server"
        open_to_world = [(g, r) for g in every for r in g["IpPermissions"] if _sources(r) & WORLD]
        bad = [_describe_rule(g, r) for g, r in open_to_world
               if g["GroupId"] not in public_ids or not _only_public_ports(r)]
        allowed = [d for d in (_describe_rule(g, r) for g, r in open_to_world) if d not in bad]
        self.add(f"no ingress from anywhere except HTTP/HTTPS on {public_name}", not bad,
                 "; ".join(bad) or ("; ".join(allowed) or "none from anywhere"))

        admin = set(self.cfg.access.admin_cidrs)
        ssh = [(g, r) for g in every for r in _rules_on_port(g, 22)]
        bad_ssh = [_describe_rule(g, r) for g, r in ssh if not admin or not _sources(r) <= admin]
        name = "SSH (22) only from the admin CIDRs" if admin else "SSH (22) closed"
        self.add(name, not bad_ssh, "; ".join(bad_ssh) or
                 ("; ".join(_describe_rule(g, r) for g, r in ssh) or "no rule opens it"))

    # -- servers --------------------------------------------------------------------------

    def expected_ami(self, resource: Deployed | None = None, launch_template: dict | None = None) -> str:
        """The AMI the config asks for, resolved through the API (SSM public parameter or explicit ID).

        `resource`: a single instance, with `launch_template` the data of its launch template as
        the API reports it. A server that holds data names no ImageId itself; its launch template
        names `resolve:ssm:NAME` and EC2 launches the parameter's current value."""
        ami = self.cfg.servers.ami
        if isinstance(ami, dict):
            return ami.get(self.cfg.region, "")
        image = None
        if resource:
            image = self.template.by_id[resource.logical_id].get("ImageId") or (launch_template or {}).get("ImageId")
        if isinstance(image, str) and image.startswith("resolve:ssm:"):
            return self.ssm.get_parameter(Name=image.removeprefix("resolve:ssm:"))["Parameter"]["Value"]
        # "al2023": the stack resolves the AMI from an SSM public parameter at deploy time.
        for spec in self.template.parameters.values():
            if "EC2::Image::Id" in spec.get("Type", "") and "al2023" in str(spec.get("Default", "")):
                return self.ssm.get_parameter(Name=spec["Default"])["Parameter"]["Value"]
        return ""

    def _check_instances(self, label: str, instances: list[dict], instance_type: str,
                         launch_template: dict | None, resource: Deployed | None = None) -> None:
        ami = self.expected_ami(resource, launch_template)
        wrong = [f"{i['InstanceId']}: {i['InstanceType']} {i['ImageId']} {i['State']['Name']}" for i in instances
                 if i["InstanceType"] != instance_type or i["ImageId"] != ami
                 or i["State"]["Name"] not in ("pending", "running")]
        self.add(f"{label}: type {instance_type}, AMI {ami or '?'}", bool(instances) and bool(ami) and not wrong,
                 "; ".join(wrong) or ", ".join(i["InstanceId"] for i in instances) or "no instances")
        lt_requires = bool(launch_template) and launch_template.get("MetadataOptions", {}).get("HttpTokens") == "required"
        self.add(f"{label}: launch template requires IMDSv2", lt_requires,
                 "HttpTokens=" + str((launch_template or {}).get("MetadataOptions", {}).get("HttpTokens", "unset")))
        optional = [i["InstanceId"] for i in instances if i.get("MetadataOptions", {}).get("HttpTokens") != "required"]
        if not optional:
            self.add(f"{label}: instances require IMDSv2", bool(instances), "HttpTokens=required")
        elif self.emulator and lt_requires:
            self.not_shown(f"{label}: instances require IMDSv2",
                           "the emulator does not apply launch template metadata options to instances")
        else:
            self.add(f"{label}: instances require IMDSv2", False, "HttpTokens optional on " + ", ".join(optional))

    def _launch_template(self, resource: Deployed | None) -> dict | None:
        if resource is None or not resource.physical_id:
            return None
        return self._launch_template_version(resource.physical_id, "$Latest")

    def _launch_template_version(self, template_id: str | None, version: str) -> dict | None:
        if not template_id:
            return None
        versions = self.ec2.describe_launch_template_versions(LaunchTemplateId=template_id,
                                                              Versions=[str(version)])["LaunchTemplateVersions"]
        return versions[0]["LaunchTemplateData"] if versions else None

    def _check_user_data(self, label: str, user_data_b64: str) -> None:
        script = base64.b64decode(user_data_b64).decode(errors="replace") if user_data_b64 else ""
        self.add(f"{label}: user data runs the bootstrap ({BOOTSTRAP_MARKER})", BOOTSTRAP_MARKER in script,
                 f"{len(script)} bytes of user data")

    def _describe_instances(self, ids: list[str]) -> list[dict]:
        if not ids:
            return []
        reservations = self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    def _check_single_server(self) -> None:
        label = "app server"
        resource = self.roles.one(Roles.APP_SERVER, "AWS::EC2::Instance")
        if not self._present(f"{label} instance", resource, "EC2 instance under Service/AppServer"):
            return
        instances = self._describe_instances([resource.physical_id])
        template = self._launch_template(self.roles.one(Roles.APP_SERVER, "AWS::EC2::LaunchTemplate"))
        self._check_instances(label, instances, self.cfg.servers.instance_type, template, resource)
        user_data = self.ec2.describe_instance_attribute(InstanceId=resource.physical_id, Attribute="userData")
        self._check_user_data(label, user_data.get("UserData", {}).get("Value", ""))

    def _check_auto_scaling_group(self) -> None:
        label = "app servers"
        resource = self.roles.one(Roles.APP_SERVERS, "AWS::AutoScaling::AutoScalingGroup")
        if not self._present("Auto Scaling group", resource, "Auto Scaling group under Service/AppServers"):
            return
        group = self.autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[resource.physical_id])["AutoScalingGroups"][0]
        self.group = group
        servers = self.cfg.servers
        # Only min and max are configured: the group starts at min_servers and scaling moves its
        # desired capacity between them, which no deploy resets.
        sizes, wanted = (group["MinSize"], group["MaxSize"]), (servers.min_servers, servers.max_servers)
        desired = group["DesiredCapacity"]
        self.add("Auto Scaling group min/max, desired between them", sizes == wanted and sizes[0] <= desired <= sizes[1],
                 f"min/max {sizes} (configured {wanted}), desired {desired}")
        subnet_ids = [s for s in group.get("VPCZoneIdentifier", "").split(",") if s]
        zones = sorted({s["AvailabilityZone"] for s in self.ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]}) \
            if subnet_ids else []
        self.add("Auto Scaling group spans the configured AZs",
                 zones == sorted(self.cfg.network.availability_zones), " ".join(zones) or "no subnets")
        in_service = [i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] in ("InService", "Pending")]
        self.add("Auto Scaling group instance count", len(in_service) == desired,
                 f"{len(in_service)} in service (desired {desired}, as scaling left it)")
        # The launch template the group really launches from, as the API reports it.
        spec = group.get("LaunchTemplate") or (group.get("MixedInstancesPolicy") or {}).get(
            "LaunchTemplate", {}).get("LaunchTemplateSpecification") or {}
        template = self._launch_template_version(spec.get("LaunchTemplateId"), spec.get("Version") or "$Default")
        if template is None:
            self.add("launch template", False, "the Auto Scaling group has no launch template")
        else:
            ami = self.expected_ami()
            self.add(f"launch template: type {servers.instance_type}, AMI {ami}",
                     template.get("InstanceType") == servers.instance_type and template.get("ImageId") == ami,
                     f"{template.get('InstanceType')} {template.get('ImageId')}")
            self._check_user_data("launch template", template.get("UserData", ""))
        self._check_instances(label, self._describe_instances(in_service), servers.instance_type, template)

    def _check_database(self) -> None:
        if self.cfg.stage == Stage.SINGLE_SERVER:
            return
        database = self.cfg.database
        if database.kind == "rds":
            resource = self.roles.one(Roles.DATABASE, "AWS::RDS::DBInstance")
            if not self._present("RDS database", resource, "RDS instance under Service/Database"):
                return
            db = self.rds.describe_db_instances(DBInstanceIdentifier=resource.physical_id)["DBInstances"][0]
            port = db.get("Endpoint", {}).get("Port") or db.get("DbInstancePort")
            facts = (db["DBInstanceClass"], db["Engine"], int(port or 0), db.get("PubliclyAccessible"))
            wanted = (f"db.{database.instance_type}", "postgres", database.port, False)
            self.add("RDS database: class, engine, port, private", facts == wanted, f"{facts} (configured {wanted})")
            return
        resource = self.roles.one(Roles.DATABASE, "AWS::EC2::Instance")
        if not self._present("database server", resource, "EC2 instance under Service/Database"):
            return
        template = self._launch_template(self.roles.one(Roles.DATABASE, "AWS::EC2::LaunchTemplate"))
        self._check_instances("database server", self._describe_instances([resource.physical_id]),
                              database.instance_type, template, resource)
        user_data = self.ec2.describe_instance_attribute(InstanceId=resource.physical_id, Attribute="userData")
        self._check_user_data("database server", user_data.get("UserData", {}).get("Value", ""))

    # -- load balancer --------------------------------------------------------------------

    def _check_load_balancer(self) -> None:
        resource = self.roles.one(Roles.LOAD_BALANCER, "AWS::ElasticLoadBalancingV2::LoadBalancer")
        if not self._present("load balancer", resource, "ALB under Service/LoadBalancer"):
            return
        alb = self.elbv2.describe_load_balancers(LoadBalancerArns=[resource.physical_id])["LoadBalancers"][0]
        zones = sorted(z["ZoneName"] for z in alb["AvailabilityZones"])
        alb_groups = {g["GroupId"] for g in self._groups(Roles.LOAD_BALANCER)}
        facts = (alb["Type"], alb["Scheme"], zones, set(alb.get("SecurityGroups", [])) == alb_groups)
        wanted = ("application", "internet-facing", sorted(self.cfg.network.availability_zones), True)
        self.add("ALB: internet-facing, in the configured AZs, with its own SG", facts == wanted,
                 f"{alb['Type']} {alb['Scheme']} {' '.join(zones)}")

        groups = self.roles.under(Roles.LOAD_BALANCER, "AWS::ElasticLoadBalancingV2::TargetGroup")
        target_arns = {g.physical_id for g in groups if g.physical_id}
        listeners = {listener["Port"]: listener for listener in
                     self.elbv2.describe_listeners(LoadBalancerArn=resource.physical_id)["Listeners"]}
        # HTTPS with the certificate the config names, or with the one the stack requests for its domain.
        certificate = self.cfg.load_balancer.certificate_arn
        described = "; ".join(f"{p} {li['Protocol']} {_action(li)}" for p, li in sorted(listeners.items()))
        if certificate or self.cfg.domain.enabled:
            https, http = listeners.get(443), listeners.get(80)
            served = {c["CertificateArn"] for c in (https or {}).get("Certificates", [])}
            passed = (https is not None and https["Protocol"] == "HTTPS"
                      and (certificate in served if certificate else bool(served))
                      and _forwards_to(https) <= target_arns and bool(_forwards_to(https))
                      and http is not None and _action(http) == "redirect:443" and set(listeners) == {80, 443})
            self.add("listeners: HTTPS 443 with the certificate, HTTP 80 redirects", passed, described)
        else:
            http = listeners.get(80)
            passed = (http is not None and http["Protocol"] == "HTTP" and bool(_forwards_to(http))
                      and _forwards_to(http) <= target_arns and set(listeners) == {80})
            self.add("listeners: HTTP 80 forwards to the app servers", passed, described)

        if not groups or not self._present("target group", groups[0], "target group under Service/LoadBalancer"):
            if not groups:
                self.add("target group", False, "the stack has no target group under Service/LoadBalancer")
            return
        target = self.elbv2.describe_target_groups(TargetGroupArns=[groups[0].physical_id])["TargetGroups"][0]
        lb = self.cfg.load_balancer
        facts = (target["Protocol"], target["Port"], target.get("HealthCheckPath"), target.get("HealthCheckEnabled"))
        wanted = ("HTTP", APP_PORT, self.cfg.app.health_path, True)
        self.add("target group health check", facts == wanted, f"{facts} (configured {wanted})")
        attributes = {a["Key"]: a["Value"] for a in self.elbv2.describe_target_group_attributes(
            TargetGroupArn=target["TargetGroupArn"])["Attributes"]}
        delay = attributes.get("deregistration_delay.timeout_seconds")
        name = "target group deregistration delay"
        if delay == str(lb.deregistration_delay_seconds):
            self.add(name, True, f"{delay} s")
        elif self.emulator and delay == DEFAULT_DEREGISTRATION_DELAY:
            self.not_shown(name, f"the emulator ignores TargetGroupAttributes (shows the default {delay} s, "
                                 f"configured {lb.deregistration_delay_seconds} s)")
        else:
            self.add(name, False, f"{delay} s (configured {lb.deregistration_delay_seconds} s)")
        group = getattr(self, "group", None)
        if group is not None:
            self.add("Auto Scaling group registers with the target group",
                     target["TargetGroupArn"] in group.get("TargetGroupARNs", []),
                     ", ".join(group.get("TargetGroupARNs", [])) or "none")


# -- rule helpers -------------------------------------------------------------------------

def _sources(rule: dict) -> set[str]:
    return ({r["CidrIp"] for r in rule.get("IpRanges", [])}
            | {r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])}
            | {p["GroupId"] for p in rule.get("UserIdGroupPairs", [])}
            | {p["PrefixListId"] for p in rule.get("PrefixListIds", [])})


def _covers(rule: dict, port: int) -> bool:
    if rule.get("IpProtocol") in ("-1", "all"):
        return True
    return rule.get("IpProtocol") in ("tcp", "6") and rule.get("FromPort", -1) <= port <= rule.get("ToPort", -1)


def _rules_on_port(group: dict, port: int) -> list[dict]:
    return [r for r in group["IpPermissions"] if _covers(r, port)]


def _only_public_ports(rule: dict) -> bool:
    return (rule.get("IpProtocol") in ("tcp", "6") and rule.get("FromPort") == rule.get("ToPort")
            and rule.get("FromPort") in PUBLIC_PORTS)


def _describe_rule(group: dict, rule: dict) -> str:
    ports = "all" if rule.get("IpProtocol") in ("-1", "all") else \
        f"{rule.get('IpProtocol')}/{rule.get('FromPort')}" + \
        ("" if rule.get("FromPort") == rule.get("ToPort") else f"-{rule.get('ToPort')}")
    return f"{group['GroupName'].rsplit('-', 1)[0]} {ports} from {', '.join(sorted(_sources(rule)))}"


def _action(listener: dict) -> str:
    actions = listener.get("DefaultActions", [])
    if not actions:
        return "none"
    first = actions[0]
    if first["Type"] == "redirect":
        return f"redirect:{first.get('RedirectConfig', {}).get('Port')}"
    return first["Type"]


def _forwards_to(listener: dict) -> set[str]:
    arns: set[str] = set()
    for action in listener.get("DefaultActions", []):
        if action["Type"] == "forward":
            if action.get("TargetGroupArn"):
                arns.add(action["TargetGroupArn"])
            for target in action.get("ForwardConfig", {}).get("TargetGroups", []):
                arns.add(target["TargetGroupArn"])
    return arns


def verify(session, configs: list[EnvironmentConfig], *, emulator: bool,
           progress: Callable[[StackReport], Any] | None = None, http_smoke: bool = False) -> list[StackReport]:
    reports = []
    for cfg in configs:
        report = StackVerifier(session, cfg, emulator=emulator, http_smoke=http_smoke).run()
        reports.append(report)
        if progress:
            progress(report)
    return reports
