"""Architecture diagrams drawn from the synthesized templates, so they cannot drift from the code.

    python -m tools.reports.diagrams [--env NAME] [--out docs/diagrams]

Writes `<out>/<env>.png` per environment and, when no --env is given, `<out>/stage-<n>.png`
for the four stages: a shipped environment's picture where one runs that stage, otherwise a
variant of the nearest shipped environment synthesized in-process with that stage.

Everything drawn is read from the template: the VPC and its subnets per zone, NAT gateways
and which private subnet routes through which, the load balancer, the app servers (one
instance, or an Auto Scaling group with its min/desired/max spread over its subnets), what
runs on each server (from its CloudFormation Init files: nginx and its upstream app copies,
a local PostgreSQL), the database (EC2 server and data volume, or RDS with its standby),
interface endpoints, and one arrow per security-group ingress rule, labelled with its port.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from diagrams import Cluster, Diagram, Edge, Node
from diagrams.aws.compute import EC2
from diagrams.aws.database import RDS
from diagrams.aws.network import ElbApplicationLoadBalancer, Endpoint, NATGateway
from diagrams.aws.storage import ElasticBlockStoreEBS
from diagrams.onprem.client import Users
from diagrams.onprem.database import Postgresql
from diagrams.onprem.network import Gunicorn, Internet, Nginx

from app_tier import render
from envconfig import ConfigError, EnvironmentConfig, Stage, load_environments
from tools import ROOT
from tools.templates import (
    Resource,
    SynthError,
    Template,
    ensure_synthesized,
    ingress_rules,
    load_template,
    ref,
    refs,
    synthesize_in_process,
)

DEFAULT_OUT = ROOT / "docs" / "diagrams"
_TIERS = ("Public", "Private", "Isolated")
_WORLD = ("0.0.0.0/0", "::/0")


# --- what the template says -------------------------------------------------------------

@dataclass(frozen=True)
class Subnet:
    logical_id: str
    tier: str                  # Public | Private | Isolated
    zone: str
    cidr: str


@dataclass
class Software:
    """What CloudFormation Init puts on a server."""
    app_ports: list[int] = field(default_factory=list)   # app copies behind nginx (stage 4); empty: one app
    listen_port: int | None = None                       # where the server takes requests (nginx or the app)
    nginx: bool = False
    app: bool = False
    postgresql: bool = False


def software_of(resource: Resource) -> Software:
    files = resource.init_files()
    found = Software()
    nginx = files.get(render.NGINX_CONF)
    if nginx:
        found.nginx = True
        conf = json.dumps(nginx.get("content"))
        found.app_ports = [int(p) for p in re.findall(r"server 127\.0\.0\.1:(\d+)", conf)]
        found.listen_port = next((int(p) for p in re.findall(r"listen (\d+)", conf)), None)
    found.app = found.nginx or any(p.startswith(f"{render.UNIT_DIR}/app") for p in files)
    unit = files.get(f"{render.UNIT_DIR}/app.service")
    if unit and not found.nginx:
        found.listen_port = next((int(p) for p in re.findall(r"--bind [\d.]+:(\d+)", json.dumps(unit.get("content")))),
                                 None)
    found.postgresql = any(p.startswith(f"{render.PG_CONF_DIR}/") for p in files)
    return found


@dataclass
class Server:
    key: str                   # node ID prefix
    title: str
    subnet: Subnet
    instance_type: str
    software: Software
    security_groups: list[str]
    public_ip: bool = False


def subnets_of(template: Template) -> dict[str, Subnet]:
    found = {}
    for s in template.of_type("AWS::EC2::Subnet"):
        tags = {t["Key"]: t["Value"] for t in s.get("Tags", [])}
        tier = tags.get("aws-cdk:subnet-type") or next((t for t in _TIERS if f"/{t}Subnet" in s.path), "Subnet")
        found[s.logical_id] = Subnet(s.logical_id, tier, s.get("AvailabilityZone", "?"), s.get("CidrBlock", ""))
    return found


# --- drawing ------------------------------------------------------------------------------

class _Drawing:
    """Builds one diagram; remembers which node stands for which security group."""

    def __init__(self, template: Template, config: EnvironmentConfig):
        self.t = template
        self.config = config
        self.subnets = subnets_of(template)
        # security group -> (node its rules admit to, the server cluster around it, the port the node serves)
        self.targets: dict[str, list[tuple[Node, str, int | None]]] = {}
        self.sources: dict[str, list[tuple[Node, str]]] = {}  # security group -> (node, cluster it stands for)
        self.notes: dict[str, list[str]] = {}                  # security group -> rules with in-VPC CIDR sources
        self.in_subnet: dict[str, list[tuple[Node, str]]] = {}  # subnet -> servers' (node, cluster) in it
        self.nat_nodes: dict[str, Node] = {}
        self.tier = ""
        self.tier_nodes: dict[str, list[Node]] = {}             # tier -> nodes drawn in it (for the layout)
        vpc_cidr = template.of_type("AWS::EC2::VPC")[0].get("CidrBlock")
        self.vpc_wide: dict[str, list[str]] = {}               # security group -> ports open to the whole VPC
        for rule in ingress_rules(template):
            if rule.cidr == vpc_cidr:
                self.vpc_wide.setdefault(rule.group, []).append(rule.ports)

    def placed(self, node: Node) -> Node:
        self.tier_nodes.setdefault(self.tier, []).append(node)
        return node

    def admits(self, label: str, groups: list[str]) -> str:
        """A node's label, plus the rules that admit the whole VPC (drawn as text, not arrows)."""
        ports = sorted({p for g in groups for p in self.vpc_wide.get(g, [])})
        return label + (f"\n← {', '.join(ports)} from the VPC" if ports else "")

    # servers ---------------------------------------------------------------------------
    def servers(self) -> tuple[list[Server], dict | None]:
        """App and database servers, and the Auto Scaling group's bounds when there is one."""
        found, group_info = [], None
        eip_for = {self.t.target(e.get("InstanceId")).logical_id for e in self.t.of_type("AWS::EC2::EIP")
                   if self.t.target(e.get("InstanceId"))}
        for inst in self.t.of_type("AWS::EC2::Instance"):
            data = self.t.launch_data(inst)
            role = "database server" if inst.is_under("Service/Database/") else "app server"
            # With a public address at launch, the subnet sits on the network interface.
            interface = (inst.get("NetworkInterfaces") or [{}])[0]
            subnet = inst.get("SubnetId") or interface.get("SubnetId")
            found.append(Server(inst.logical_id, role, self.subnets[ref(subnet)],
                                inst.get("InstanceType") or data.get("InstanceType", "?"), software_of(inst),
                                self.t.security_groups(inst), public_ip=inst.logical_id in eip_for))
        for group in self.t.of_type("AWS::AutoScaling::AutoScalingGroup"):
            data = self.t.launch_data(group)
            zones = [self.subnets[i] for i in refs(group.get("VPCZoneIdentifier"))]
            # No desired capacity in the template: the group starts at MinSize and scaling moves it.
            desired = int(group.get("DesiredCapacity") or group.get("MinSize"))
            group_info = {"min": group.get("MinSize"), "desired": desired, "max": group.get("MaxSize"),
                          "instance_type": data.get("InstanceType", "?")}
            # The group balances its servers over its zones; draw the desired count that way.
            for n in range(desired):
                found.append(Server(f"{group.logical_id}_{n + 1}", f"app server {n + 1}", zones[n % len(zones)],
                                    data.get("InstanceType", "?"), software_of(group), self.t.security_groups(group)))
        return found, group_info

    def draw_server(self, server: Server) -> None:
        sw = server.software
        extra = " · Elastic IP" if server.public_ip else ""
        with Cluster(f"{server.title} · {server.instance_type}{extra} [{server.key}]",
                     graph_attr={"bgcolor": "#FFF7E6", "fontsize": "12"}) as box:
            box.dot.graph_attr["label"] = f"{server.title} · {server.instance_type}{extra}"
            cluster = box.name
            entry = last = None
            listen = f" :{sw.listen_port}" if sw.listen_port else ""
            serves = sw.listen_port
            if sw.nginx:
                entry = Nginx(f"nginx{listen}", nodeid=f"{server.key}_nginx")
                for port in sw.app_ports:
                    last = Gunicorn(f"app copy :{port}", nodeid=f"{server.key}_app{port}")
                    entry >> Edge(color="#B8860B") >> last
            elif sw.app:
                entry = last = Gunicorn(f"app{listen}", nodeid=f"{server.key}_app")
            if sw.postgresql:
                label = "PostgreSQL (localhost)" if sw.app else f"PostgreSQL :{self.config.database.port}"
                db = Postgresql(label, nodeid=f"{server.key}_postgresql")
                if sw.app:
                    last >> Edge(label="localhost", color="#B8860B") >> db
                else:
                    entry = last = db
                    serves = self.config.database.port
                    for volume in self.t.of_type("AWS::EC2::Volume"):
                        disk = ElasticBlockStoreEBS(f"data volume\n{volume.get('Size')} GiB {volume.get('VolumeType', '')}",
                                                    nodeid=f"{volume.logical_id}")
                        db - Edge(style="dashed") - disk
            if entry is None:
                entry = last = EC2(server.instance_type, nodeid=f"{server.key}_ec2")
        self.placed(entry)
        for group in server.security_groups:
            self.targets.setdefault(group, []).append((entry, cluster, serves))
            self.sources.setdefault(group, []).append((last, cluster))
        self.in_subnet.setdefault(server.subnet.logical_id, []).append((last, cluster))

    # the rest --------------------------------------------------------------------------
    def draw_zone(self, subnet: Subnet, servers: list[Server], databases: list[Resource],
                  endpoints: list[Resource]) -> None:
        with Cluster(f"{subnet.zone} · {subnet.cidr}", graph_attr={"bgcolor": "#FFFFFF", "fontsize": "11"}):
            drawn = False
            for nat in self.t.of_type("AWS::EC2::NatGateway"):
                if ref(nat.get("SubnetId")) == subnet.logical_id:
                    self.nat_nodes[nat.logical_id] = self.placed(
                        NATGateway("NAT gateway\n+ Elastic IP", nodeid=nat.logical_id))
                    drawn = True
            for server in servers:
                self.draw_server(server)
                drawn = True
            for db in databases:
                self.draw_rds(db, subnet)
                drawn = True
            here = [e for e in endpoints if subnet.logical_id in refs(e.get("SubnetIds"))]
            if here:
                names = sorted(e.get("ServiceName", "").rsplit(".", 1)[-1] for e in here)
                groups = sorted({g for e in here for g in self.t.security_groups(e)})
                node = self.placed(Endpoint(self.admits(f"{len(here)} interface endpoints\n" + _wrap(names), groups),
                                            nodeid=f"endpoints_{subnet.logical_id}"))
                for group in groups:
                    self.targets.setdefault(group, []).append((node, "", None))
                drawn = True
            if not drawn:
                self.placed(Node("(nothing here)", nodeid=f"empty_{subnet.logical_id}", shape="plaintext",
                                 height="0.4", width="1.6", fixedsize="false"))

    def draw_rds(self, db: Resource, subnet: Subnet) -> None:
        standby = db.get("MultiAZ") and subnet.zone != self._rds_primary_zone(db)
        label = ("RDS standby\n(Multi-AZ, synchronous)" if standby else
                 f"RDS PostgreSQL :{db.get('Port', 5432)}\n{db.get('DBInstanceClass')} · {db.get('AllocatedStorage')} GiB")
        node = self.placed(RDS(label, nodeid=f"{db.logical_id}_{subnet.zone}"))
        if not standby:
            for group in self.t.security_groups(db):
                self.targets.setdefault(group, []).append((node, "", None))

    def _rds_primary_zone(self, db: Resource) -> str:
        # RDS picks the primary's zone at launch; the picture puts it in the first zone.
        return db.get("AvailabilityZone") or min(s.zone for s in self.subnets.values())

    def rds_subnets(self, db: Resource) -> list[Subnet]:
        group = self.t.target(db.get("DBSubnetGroupName"))
        subnets = [self.subnets[i] for i in refs(group.get("SubnetIds"))] if group else []
        zones = [self._rds_primary_zone(db)] + ([s.zone for s in subnets] if db.get("MultiAZ") else [])
        seen, placed = set(), []
        for zone in zones:
            subnet = next((s for s in subnets if s.zone == zone), None)
            if subnet and zone not in seen:
                seen.add(zone)
                placed.append(subnet)
        return placed

    def nat_routes(self) -> dict[str, str]:
        """Subnet -> the NAT gateway its default route goes through."""
        table_nat = {}
        for route in self.t.of_type("AWS::EC2::Route"):
            nat = self.t.target(route.get("NatGatewayId"))
            if nat and route.get("DestinationCidrBlock") == "0.0.0.0/0":
                table_nat[ref(route.get("RouteTableId"))] = nat.logical_id
        return {ref(a.get("SubnetId")): table_nat[ref(a.get("RouteTableId"))]
                for a in self.t.of_type("AWS::EC2::SubnetRouteTableAssociation")
                if ref(a.get("RouteTableId")) in table_nat}


def _wrap(names: list[str], width: int = 28) -> str:
    lines, line = [], ""
    for name in names:
        if line and len(line) + len(name) + 2 > width:
            lines.append(line + ",")
            line = name
        else:
            line = f"{line}, {name}" if line else name
    return "\n".join(lines + [line])


def draw(template: dict, config: EnvironmentConfig, out_file: Path) -> str:
    """Render `out_file` (.png) from one synthesized template; returns the Graphviz source."""
    t = Template(template)
    d = _Drawing(t, config)
    servers, group = d.servers()
    rds = t.of_type("AWS::RDS::DBInstance")
    endpoints = [e for e in t.of_type("AWS::EC2::VPCEndpoint") if e.get("VpcEndpointType") == "Interface"]
    vpc = t.of_type("AWS::EC2::VPC")[0]
    albs = t.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer")
    title = template.get("Description") or config.stack_name
    out_file.parent.mkdir(parents=True, exist_ok=True)
    graph_attr = {"pad": "0.4", "compound": "true", "splines": "spline", "newrank": "true", "fontsize": "20",
                  "labelloc": "t", "nodesep": "0.5", "ranksep": "0.9"}
    with Diagram(title, filename=str(out_file.with_suffix("")), outformat="png", show=False, direction="LR",
                 graph_attr=graph_attr, node_attr={"fontsize": "11"}, edge_attr={"fontsize": "10"}) as diagram:
        internet = Internet("Internet", nodeid="internet")
        with Cluster(f"VPC {vpc.get('CidrBlock')} · {config.region}", graph_attr={"bgcolor": "#EEF4FB"}):
            for tier in _TIERS:
                subnets = sorted((s for s in d.subnets.values() if s.tier == tier), key=lambda s: s.zone)
                if not subnets:
                    continue
                d.tier = tier
                with Cluster(f"{tier} subnets", graph_attr={"bgcolor": _TIER_COLOURS[tier]}):
                    if tier == "Public":
                        for alb in albs:
                            node = d.placed(ElbApplicationLoadBalancer(
                                f"Application Load Balancer\n{alb.get('Scheme', 'internet-facing')} · "
                                f"{len(alb.get('Subnets', []))} zones", nodeid=alb.logical_id))
                            for g in d.t.security_groups(alb):
                                d.targets.setdefault(g, []).append((node, "", None))
                                d.sources.setdefault(g, []).append((node, ""))
                    here = {s.logical_id for s in subnets}
                    tier_servers = [s for s in servers if s.subnet.logical_id in here]
                    asg = [s for s in tier_servers if s.title.startswith("app server ") and group]
                    rest = [s for s in tier_servers if s not in asg]
                    zone_rds = {s.logical_id: [db for db in rds if s in d.rds_subnets(db)] for s in subnets}
                    if asg:
                        with Cluster(f"Auto Scaling group · {group['instance_type']} · min {group['min']} / "
                                     f"desired {group['desired']} / max {group['max']}",
                                     graph_attr={"bgcolor": "#FDF0D5", "style": "dashed"}):
                            for subnet in subnets:
                                d.draw_zone(subnet, [s for s in asg if s.subnet == subnet], [], [])
                        for subnet in subnets:
                            mine = [s for s in rest if s.subnet == subnet]
                            if mine or zone_rds[subnet.logical_id]:
                                d.draw_zone(subnet, mine, zone_rds[subnet.logical_id], endpoints)
                    else:
                        for subnet in subnets:
                            d.draw_zone(subnet, [s for s in rest if s.subnet == subnet], zone_rds[subnet.logical_id],
                                        endpoints)
        _stack_tiers(d, internet)
        _draw_rules(d, internet)
        _draw_nat_egress(d)
    return diagram.dot.source


_TIER_COLOURS = {"Public": "#E3F2E1", "Private": "#E6EEF9", "Isolated": "#F3E8F7"}


def _stack_tiers(d: _Drawing, internet: Node) -> None:
    """Invisible edges that put the internet on top, then the public, private and isolated subnets."""
    layers = [[internet]] + [d.tier_nodes[t] for t in _TIERS if d.tier_nodes.get(t)]
    for upper, lower in itertools.pairwise(layers):
        for above in upper:
            for below in lower:
                above >> Edge(style="invis") >> below


def _draw_rules(d: _Drawing, internet: Node) -> None:
    vpc_cidr = d.t.of_type("AWS::EC2::VPC")[0].get("CidrBlock")
    outsiders: dict[str, Node] = {}
    for rule in ingress_rules(d.t):
        targets = d.targets.get(rule.group, [])
        if rule.source_group:
            sources = d.sources.get(rule.source_group, [])
        elif rule.cidr in _WORLD:
            sources = [(internet, "")]
        elif rule.cidr == vpc_cidr:
            continue           # on the target's label (`_Drawing.admits`) rather than a fan of arrows
        else:
            if rule.cidr not in outsiders:
                outsiders[rule.cidr] = Users(f"admins\n{rule.cidr}", nodeid=f"cidr_{len(outsiders)}")
            sources = [(outsiders[rule.cidr], "")]
        for source, tail in sources:
            for target, head, serves in targets:
                attrs = {"ltail": tail} if tail else {}
                if head and serves is not None and not rule.from_port == serves == rule.to_port:
                    attrs["lhead"] = head        # a port no drawn process serves (SSH): to the server itself
                source >> Edge(label=rule.ports, color="#C0392B", penwidth="1.6", **attrs) >> target


def _draw_nat_egress(d: _Drawing) -> None:
    for subnet, nat in d.nat_routes().items():
        for node, cluster in d.in_subnet.get(subnet, []):
            if nat in d.nat_nodes:
                node >> Edge(label="egress", style="dashed", color="#7B8894", ltail=cluster, constraint="false") >> d.nat_nodes[nat]


# --- environments and stages -------------------------------------------------------------

def stage_variant(stage: int, shipped: list[EnvironmentConfig]) -> EnvironmentConfig:
    """A config for a stage no shipped environment runs: the nearest lower-staged one, moved up.

    Stage 2 puts PostgreSQL on its own server in an isolated subnet, which boots through
    interface endpoints (the config's own rule), so those are switched on.
    """
    base = max((c for c in shipped if c.stage < stage), key=lambda c: c.stage, default=None) or \
        min(shipped, key=lambda c: c.stage)
    network = dataclasses.replace(base.network, interface_endpoints=True)
    return dataclasses.replace(base, name=f"stage{stage}", stage=Stage(stage), network=network)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.reports.diagrams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="one environment (default: every config/*.toml, plus stage-<n>.png)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: docs/diagrams)")
    parser.add_argument("--no-synth", action="store_true", help="use cdk.out as it is, even when older than the code")
    args = parser.parse_args(argv)
    try:
        shipped = load_environments()
        configs = [c for c in shipped if not args.env or c.name == args.env] if args.env in (None, *[c.name for c in shipped]) \
            else load_environments([args.env])
        if not args.no_synth:
            ensure_synthesized(configs)
        written = []
        for config in configs:
            out_file = args.out / f"{config.name}.png"
            draw(load_template(config), config, out_file)
            written.append(out_file)
        if not args.env:
            for stage in Stage:
                out_file = args.out / f"stage-{int(stage)}.png"
                running = sorted((c for c in configs if c.stage == stage), key=lambda c: c.name)
                if running:
                    shutil.copyfile(args.out / f"{running[0].name}.png", out_file)
                else:
                    variant = stage_variant(int(stage), shipped)
                    draw(synthesize_in_process(variant), variant, out_file)
                written.append(out_file)
    except ConfigError as err:
        print("Config error:\n  " + "\n  ".join(err.problems), file=sys.stderr)
        return 1
    except SynthError as err:
        print(f"diagrams: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(_shown(path))
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
