"""The template's security groups, enforced on the rehearsal's network with nftables.

Each container gets the ingress and egress rules of the security groups its server has in the
template (an instance's SecurityGroupIds, a launch template's, an RDS instance's
VPCSecurityGroups), with a group reference resolved to the addresses of the containers in that
group. The rehearsal host plays what is outside the servers: AWS's endpoints (the emulator,
on 443), the load balancer (a member of the ALB's groups) and the internet. So a server whose
group cannot reach HTTPS cannot boot here either, and a database open to anyone but the app
servers would answer where it must not.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tools.templates import ref


@dataclass(frozen=True)
class Rule:
    protocol: str          # "tcp", "udp", "icmp", "-1" (all)
    from_port: int | None
    to_port: int | None
    cidr: str | None = None
    group: str | None = None  # logical ID of the peer security group


def _rule(spec: dict, peer_key: str, vpc_cidr: str) -> Rule:
    cidr = spec.get("CidrIp")
    if isinstance(cidr, dict):  # the VPC's own CidrBlock
        cidr = vpc_cidr
    return Rule(str(spec.get("IpProtocol", "-1")), spec.get("FromPort"), spec.get("ToPort"), cidr,
                ref(spec.get(peer_key)))


def group_rules(template: dict, vpc_cidr: str) -> dict[str, dict[str, list[Rule]]]:
    resources = template["Resources"]
    rules = {lid: {"ingress": [], "egress": []} for lid, r in resources.items()
             if r["Type"] == "AWS::EC2::SecurityGroup"}
    for lid, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::EC2::SecurityGroup":
            rules[lid]["ingress"] += [_rule(s, "SourceSecurityGroupId", vpc_cidr)
                                      for s in props.get("SecurityGroupIngress", [])]
            rules[lid]["egress"] += [_rule(s, "DestinationSecurityGroupId", vpc_cidr)
                                     for s in props.get("SecurityGroupEgress", [])]
        elif res["Type"] == "AWS::EC2::SecurityGroupIngress":
            rules[ref(props["GroupId"])]["ingress"].append(_rule(props, "SourceSecurityGroupId", vpc_cidr))
        elif res["Type"] == "AWS::EC2::SecurityGroupEgress":
            rules[ref(props["GroupId"])]["egress"].append(_rule(props, "DestinationSecurityGroupId", vpc_cidr))
    return rules


def groups_of(template: dict, logical_id: str) -> list[str]:
    """The security groups of an instance, a launch template, an RDS instance or a load balancer."""
    res = template["Resources"][logical_id]
    props = res.get("Properties", {})
    values = (props.get("SecurityGroupIds") or props.get("LaunchTemplateData", {}).get("SecurityGroupIds")
              or props.get("VPCSecurityGroups") or props.get("SecurityGroups") or [])
    # An instance with a public address at launch names its groups on its network interface.
    for interface in props.get("NetworkInterfaces", []):
        values = [*values, *interface.get("GroupSet", [])]
    groups = [g for g in (ref(v) for v in values) if g]
    if not groups:
        raise ValueError(f"{logical_id} has no security group that the rehearsal can find")
    return groups


def load_balancer_groups(template: dict) -> list[str]:
    return [g for lid, r in template["Resources"].items()
            if r["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer" for g in groups_of(template, lid)]


def _match(rule: Rule, direction: str, members: dict[str, list[str]]) -> list[str]:
    """nft match expressions for one rule (one per peer address set)."""
    addr = "saddr" if direction == "ingress" else "daddr"
    if rule.group is not None:
        peers = members.get(rule.group, [])
        if not peers:
            return []
        peer = f"ip {addr} {{ {', '.join(peers)} }}"
    else:
        network = ipaddress.ip_network(rule.cidr, strict=False)
        peer = "" if network.prefixlen == 0 else f"ip {addr} {network}"
    if rule.protocol in ("-1", "all"):
        proto = ""
    elif rule.protocol in ("tcp", "udp"):
        ports = f"{rule.from_port}" if rule.from_port == rule.to_port else f"{rule.from_port}-{rule.to_port}"
        proto = f"{rule.protocol} dport {ports}"
    elif rule.protocol == "icmp":
        proto = "meta l4proto icmp"
    else:
        raise ValueError(f"security group protocol {rule.protocol} is not rehearsed")
    return [" ".join(part for part in (peer, proto, "accept") if part)]


def ruleset(groups: list[str], rules: dict[str, dict[str, list[Rule]]], members: dict[str, list[str]]) -> str:
    """An nftables ruleset for a server in `groups`: what its security groups allow, and nothing else."""
    lines = {"ingress": [], "egress": []}
    for group in groups:
        for direction in ("ingress", "egress"):
            for rule in rules[group][direction]:
                lines[direction] += _match(rule, direction, members)
    chain = "\n".join
    return f"""flush ruleset
table inet security_groups {{
  chain input {{
    type filter hook input priority 0; policy drop;
    iif "lo" accept
    ct state established,related accept
    {chain(lines["ingress"]) or "# no ingress rule"}
  }}
  chain output {{
    type filter hook output priority 0; policy drop;
    oif "lo" accept
    ct state established,related accept
    {chain(lines["egress"]) or "# no egress rule"}
  }}
}}
"""
