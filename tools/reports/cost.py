"""Monthly cost estimate per environment, from the synthesized templates.

    python -m tools.reports.cost [--env NAME] [--markdown]

Every priced line comes from a resource in `cdk.out/<stack>.template.json` (instances and
their volumes, NAT gateways, the load balancer, RDS, public IPv4 addresses, endpoints,
secrets, keys, log groups, buckets, alarms). Prices and usage assumptions live in one file
per region, `tools/reports/prices/<region>.toml`, which states the date its prices were taken.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from envconfig import ConfigError, EnvironmentConfig, load_environments
from tools import ROOT
from tools.templates import Resource, SynthError, Template, ensure_synthesized, load_template

PRICES_DIR = Path(__file__).resolve().parent / "prices"


class PriceError(Exception):
    """A resource has no price in the region's price table."""


@dataclass(frozen=True)
class Prices:
    file: Path
    region: str
    currency: str
    as_of: str
    hours: float
    ec2_hourly: dict[str, float]
    rds_hourly: dict[str, float]
    unit: dict[str, float]
    assume: dict[str, float]

    def ec2(self, instance_type: str) -> float:
        if instance_type not in self.ec2_hourly:
            raise PriceError(f"no price for EC2 instance type {instance_type!r} in {self.file}; add its on-demand "
                             f"Linux price per hour to [ec2_hourly] (known: {', '.join(sorted(self.ec2_hourly))})")
        return self.ec2_hourly[instance_type]

    def rds(self, instance_class: str) -> float:
        if instance_class not in self.rds_hourly:
            raise PriceError(f"no price for RDS instance class {instance_class!r} in {self.file}; add its "
                             f"Single-AZ price per hour to [rds_hourly] (known: {', '.join(sorted(self.rds_hourly))})")
        return self.rds_hourly[instance_class]


def load_prices(region: str, prices_dir: Path = PRICES_DIR) -> Prices:
    file = prices_dir / f"{region}.toml"
    if not file.is_file():
        raise PriceError(f"no price table for region {region!r}: copy {prices_dir / 'ap-northeast-2.toml'} "
                         f"to {file} and fill in that region's prices")
    raw = tomllib.loads(file.read_text(encoding="utf-8"))
    if raw.get("region") != region:
        raise PriceError(f"{file} says region = {raw.get('region')!r}, expected {region!r}")
    return Prices(file=file, region=region, currency=raw["currency"], as_of=raw["prices_as_of"],
                  hours=float(raw["hours_per_month"]), ec2_hourly=raw["ec2_hourly"], rds_hourly=raw["rds_hourly"],
                  unit=raw["unit_prices"], assume=raw["assumptions"])


@dataclass(frozen=True)
class Line:
    item: str
    quantity: float
    unit: str
    unit_price: float
    note: str = ""             # what was assumed, when the template cannot tell

    @property
    def monthly(self) -> float:
        return self.quantity * self.unit_price


@dataclass
class Estimate:
    config: EnvironmentConfig
    prices: Prices
    lines: list[Line] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(line.monthly for line in self.lines)

    def add(self, item: str, quantity: float, unit: str, unit_price: float, note: str = "") -> None:
        if quantity:
            self.lines.append(Line(item, quantity, unit, unit_price, note))


# --- what the template holds --------------------------------------------------------------

_ROLES = {"Service/AppServer/": "app server", "Service/AppServers/": "app servers", "Service/Database/": "database"}


def _role(resource: Resource) -> str:
    return next((role for prefix, role in _ROLES.items() if resource.is_under(prefix)),
                resource.path.rsplit("/", 1)[0] or resource.logical_id)


@dataclass(frozen=True)
class Servers:
    """One instance, or an Auto Scaling group's servers, with what each one carries."""
    role: str
    instance_type: str
    count: int
    max_count: int
    volumes: tuple[tuple[str, int], ...]     # (volume type, GiB) per server
    detailed_monitoring: bool


def _volumes(mappings: list[dict], default_gib: int) -> tuple[tuple[str, int], ...]:
    volumes = tuple((m["Ebs"].get("VolumeType", "gp2"), int(m["Ebs"].get("VolumeSize", default_gib)))
                    for m in mappings if "Ebs" in m)
    # No mapping: the AMI's own root volume (Amazon Linux 2023: 8 GiB gp3).
    return volumes or (("gp3", 8),)


def servers_in(template: Template, config: EnvironmentConfig) -> list[Servers]:
    found = []
    for instance in template.of_type("AWS::EC2::Instance"):
        data = template.launch_data(instance)
        itype = instance.get("InstanceType") or data.get("InstanceType")
        mappings = instance.get("BlockDeviceMappings") or data.get("BlockDeviceMappings", [])
        monitoring = bool(instance.get("Monitoring") or data.get("Monitoring", {}).get("Enabled"))
        found.append(Servers(_role(instance), itype, 1, 1, _volumes(mappings, config.servers.root_volume_gib),
                             monitoring))
    for group in template.of_type("AWS::AutoScaling::AutoScalingGroup"):
        data = template.launch_data(group)
        # The template states min and max only: the group runs at MinSize until load scales it out,
        # so that is the baseline cost (and MaxSize the ceiling).
        desired = int(group.get("DesiredCapacity") or group.get("MinSize"))
        found.append(Servers(_role(group), data["InstanceType"], desired, int(group.get("MaxSize", desired)),
                             _volumes(data.get("BlockDeviceMappings", []), config.servers.root_volume_gib),
                             bool(data.get("Monitoring", {}).get("Enabled"))))
    return found


def public_ipv4_count(template: Template) -> tuple[int, int]:
    """(Elastic IPs incl. the NAT gateways', public IPs an internet-facing load balancer holds: one per zone)."""
    eips = len(template.of_type("AWS::EC2::EIP"))
    alb = sum(len(lb.get("Subnets") or lb.get("SubnetMappings") or [])
              for lb in template.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer")
              if lb.get("Scheme", "internet-facing") == "internet-facing")
    return eips, alb


# --- pricing ------------------------------------------------------------------------------

def estimate(template: Template, config: EnvironmentConfig, prices: Prices) -> Estimate:
    est = Estimate(config, prices)
    hours, unit, assume = prices.hours, prices.unit, prices.assume
    servers = servers_in(template, config)

    for s in servers:
        scale = f"desired {s.count}; up to {s.max_count} when scaled out" if s.max_count > s.count else ""
        est.add(f"EC2 {s.instance_type} × {s.count} ({s.role})", s.count * hours, "instance-h",
                prices.ec2(s.instance_type), scale)
    for s in servers:
        for volume_type, gib in s.volumes:
            est.add(f"EBS {volume_type} root, {gib} GiB × {s.count} ({s.role})", gib * s.count, "GiB-month",
                    unit[f"ebs_{volume_type}_gib_month"])
    for volume in template.of_type("AWS::EC2::Volume"):
        volume_type = volume.get("VolumeType", "gp2")
        est.add(f"EBS {volume_type} data volume ({_role(volume)})", int(volume.get("Size", 0)), "GiB-month",
                unit[f"ebs_{volume_type}_gib_month"])
    monitored = sum(s.count for s in servers if s.detailed_monitoring)
    metrics = assume["detailed_monitoring_metrics"]
    est.add(f"EC2 detailed monitoring × {monitored}", monitored * metrics, "metrics", unit["cloudwatch_metric_month"],
            f"{metrics:g} metrics per instance")

    nats = len(template.of_type("AWS::EC2::NatGateway"))
    est.add(f"NAT gateway × {nats}", nats * hours, "gateway-h", unit["nat_gateway_hour"])
    gib = assume["nat_gib_processed_per_gateway"]
    est.add(f"NAT gateway data processed × {nats}", nats * gib, "GiB", unit["nat_gateway_gib_processed"],
            f"assumed {gib:g} GiB per gateway")

    for lb in template.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer"):
        kind = "ALB" if lb.get("Type", "application") == "application" else "NLB"
        est.add(f"{kind} ({lb.get('Scheme', 'internet-facing')})", hours, "h", unit["alb_hour"])
        lcu = assume["alb_average_lcu"]
        est.add(f"{kind} capacity units", lcu * hours, "LCU-h", unit["alb_lcu_hour"], f"assumed {lcu:g} LCU average")

    for db in template.of_type("AWS::RDS::DBInstance"):
        copies = 2 if db.get("MultiAZ") else 1
        layout = "Multi-AZ: primary + standby" if copies == 2 else "Single-AZ"
        est.add(f"RDS {db.get('DBInstanceClass')} ({layout})", copies * hours, "instance-h",
                prices.rds(db.get("DBInstanceClass")))
        storage_type = db.get("StorageType", "gp2")
        storage = int(db.get("AllocatedStorage", 20))
        est.add(f"RDS {storage_type} storage, {storage} GiB × {copies}", storage * copies, "GiB-month",
                unit[f"rds_{storage_type}_gib_month"], "automated backups up to the storage size are free")

    eips, alb_ips = public_ipv4_count(template)
    est.add(f"Public IPv4: {eips} Elastic IP(s)" + (f" + {alb_ips} on the ALB" if alb_ips else ""),
            (eips + alb_ips) * hours, "address-h", unit["public_ipv4_hour"])

    endpoints = [e for e in template.of_type("AWS::EC2::VPCEndpoint") if e.get("VpcEndpointType") == "Interface"]
    zones = sum(len(e.get("SubnetIds", [])) for e in endpoints)
    est.add(f"Interface VPC endpoints: {len(endpoints)} in {zones // max(len(endpoints), 1)} zones", zones * hours,
            "endpoint-AZ-h", unit["interface_endpoint_az_hour"], "data processed not counted")

    secrets = len(template.of_type("AWS::SecretsManager::Secret"))
    est.add(f"Secrets Manager secret × {secrets}", secrets, "secret-month", unit["secrets_manager_secret_month"])
    keys = len(template.of_type("AWS::KMS::Key"))
    est.add(f"KMS customer-managed key × {keys}", keys, "key-month", unit["kms_key_month"])

    _price_logs(template, est)

    buckets = len(template.of_type("AWS::S3::Bucket"))
    gib = assume["s3_gib_per_log_bucket"]
    est.add(f"S3 log buckets × {buckets}", buckets * gib, "GiB-month", unit["s3_standard_gib_month"],
            f"assumed {gib:g} GiB kept per bucket")

    alarms = len(template.of_type("AWS::CloudWatch::Alarm"))
    est.add(f"CloudWatch alarms × {alarms}", alarms, "alarm-month", unit["cloudwatch_alarm_month"])
    dashboards = len(template.of_type("AWS::CloudWatch::Dashboard"))
    est.add(f"CloudWatch dashboards × {dashboards}", dashboards, "dashboard-month", unit["cloudwatch_dashboard_month"])

    if template.of_type("AWS::Backup::BackupPlan"):
        # Backups cover the database's data: its own volume, or (stage 1) the single server's disk.
        data_gib = sum(int(v.get("Size", 0)) for v in template.of_type("AWS::EC2::Volume")) or \
            sum(gib for s in servers if s.count == 1 for _, gib in s.volumes)
        fraction = assume["snapshot_fraction_of_volume"]
        est.add("AWS Backup EBS snapshots", data_gib * fraction, "GiB-month", unit["ebs_snapshot_gib_month"],
                f"assumed {fraction:g} × the backed-up volumes")
    return est


def _price_logs(template: Template, est: Estimate) -> None:
    assume, unit = est.prices.assume, est.prices.unit
    ingest = assume["log_gib_ingested_per_log_group"]
    months_kept = []
    for group in template.of_type("AWS::Logs::LogGroup"):
        days = group.get("RetentionInDays")
        months_kept.append(days / 30 if days else assume["log_months_kept_without_retention"])
    # RDS creates one log group per exported log, outside the template; its retention is unset.
    for db in template.of_type("AWS::RDS::DBInstance"):
        months_kept += [assume["log_months_kept_without_retention"]] * len(db.get("EnableCloudwatchLogsExports", []))
    groups = len(months_kept)
    est.add(f"CloudWatch Logs ingestion, {groups} log group(s)", groups * ingest, "GiB", unit["cloudwatch_logs_gib_ingested"],
            f"assumed {ingest:g} GiB per group per month")
    est.add("CloudWatch Logs storage at each group's retention", sum(ingest * m for m in months_kept), "GiB-month",
            unit["cloudwatch_logs_gib_month"], "steady state: a month's logs × months kept")


# --- output -------------------------------------------------------------------------------

def _money(value: float) -> str:
    return f"{value:,.2f}"


def _quantity(line: Line) -> str:
    return f"{line.quantity:,.1f} {line.unit}" if line.quantity % 1 else f"{line.quantity:,.0f} {line.unit}"


def _heading(est: Estimate) -> str:
    c = est.config
    return f"{c.name} (stage {int(c.stage)}, {c.region}): {_money(est.total)} {est.prices.currency}/month"


def _footer(estimates: list[Estimate]) -> list[str]:
    files = sorted({(str(e.prices.file.relative_to(ROOT)), e.prices.as_of) for e in estimates})
    hours = estimates[0].prices.hours if estimates else 730
    return [f"Prices: on-demand list prices from {f} as of {d} (not fetched live; refresh that file)." for f, d in files] + \
        [f"A month is {hours:g} h. Not included: data transfer out, the free tier, taxes, discounts."]


def render_text(estimates: list[Estimate]) -> str:
    out = []
    for est in estimates:
        width = max(len(line.item) for line in est.lines) if est.lines else 10
        out.append(_heading(est))
        for line in est.lines:
            note = f"  ({line.note})" if line.note else ""
            out.append(f"  {line.item:<{width}}  {_quantity(line):>22} × {line.unit_price:<8g}"
                       f" {_money(line.monthly):>9}{note}")
        out.append(f"  {'total':<{width}}  {'':>22}   {'':<8} {_money(est.total):>9}")
        out.append("")
    return "\n".join(out + _footer(estimates)) + "\n"


def render_markdown(estimates: list[Estimate]) -> str:
    out = []
    for est in estimates:
        cur = est.prices.currency
        out += [f"#### {_heading(est)}", "", f"| Resource | Quantity | Unit price ({cur}) | Monthly ({cur}) | Assumption |",
                "| --- | ---: | ---: | ---: | --- |"]
        out += [f"| {line.item} | {_quantity(line)} | {line.unit_price:g} | {_money(line.monthly)} | {line.note} |"
                for line in est.lines]
        out += [f"| **Total** | | | **{_money(est.total)}** | |", ""]
    return "\n".join(out + _footer(estimates)) + "\n"


def estimates_for(configs: list[EnvironmentConfig], *, synthesize: bool = True) -> list[Estimate]:
    if synthesize:
        ensure_synthesized(configs)
    return [estimate(Template(load_template(c)), c, load_prices(c.region)) for c in configs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.reports.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="one environment (default: every config/*.toml)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables (for the README)")
    parser.add_argument("--no-synth", action="store_true", help="use cdk.out as it is, even when older than the code")
    args = parser.parse_args(argv)
    try:
        configs = load_environments([args.env] if args.env else None)
        estimates = estimates_for(sorted(configs, key=lambda c: (c.stage, c.name)), synthesize=not args.no_synth)
    except ConfigError as err:
        print("Config error:\n  " + "\n  ".join(err.problems), file=sys.stderr)
        return 1
    except (PriceError, SynthError) as err:
        print(f"cost: {err}", file=sys.stderr)
        return 1
    print(render_markdown(estimates) if args.markdown else render_text(estimates), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
