"""`make cost`: the estimate is read from the synthesized templates and priced from one data file."""

from __future__ import annotations

import copy

import pytest

from envconfig import load_environments
from tools.reports.cost import PriceError, estimate, load_prices, render_markdown, render_text
from tools.templates import Template

SHIPPED = {c.name: c for c in load_environments()}


@pytest.fixture(scope="module")
def estimates(synthesized_templates):
    return {name: estimate(Template(synthesized_templates[name]), config, load_prices(config.region))
            for name, config in SHIPPED.items()}


def _line(est, starts_with: str):
    hits = [line for line in est.lines if line.item.startswith(starts_with)]
    assert len(hits) == 1, f"{starts_with!r} in {[line.item for line in est.lines]}"
    return hits[0]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_environment_is_priced(estimates, name):
    est = estimates[name]
    assert est.total > 0
    assert est.total == pytest.approx(sum(line.monthly for line in est.lines))
    servers = SHIPPED[name].servers
    assert any(line.item.startswith(f"EC2 {servers.instance_type} ×") and line.monthly > 0 for line in est.lines)
    assert _line(est, "Secrets Manager").quantity >= 1


def test_dev_stays_within_its_budget(estimates):
    assert estimates["dev"].total <= 25.0, render_text([estimates["dev"]])


def test_dev_pays_for_no_nat_load_balancer_or_endpoint(estimates):
    items = " ".join(line.item for line in estimates["dev"].lines)
    assert "NAT" not in items and "ALB" not in items and "endpoint" not in items


def test_prod_pays_for_two_nat_gateways_and_a_multi_az_database(estimates):
    prod = estimates["prod"]
    hours = prod.prices.hours
    assert _line(prod, "NAT gateway ×").quantity == 2 * hours
    rds = _line(prod, "RDS db.")
    assert "Multi-AZ" in rds.item and rds.quantity == 2 * hours
    assert _line(prod, "RDS gp3 storage").quantity == 2 * SHIPPED["prod"].database.storage_gib
    assert _line(prod, "ALB (").quantity == hours
    # Two NAT Elastic IPs plus the load balancer's address in each of its two zones.
    assert _line(prod, "Public IPv4").quantity == 4 * hours


def test_app_servers_are_counted_at_the_group_floor_they_start_at(estimates):
    for name in ("staging", "prod"):
        servers = SHIPPED[name].servers
        line = _line(estimates[name], f"EC2 {servers.instance_type} × {servers.min_servers} (app servers)")
        assert line.quantity == servers.min_servers * estimates[name].prices.hours
        assert f"up to {servers.max_servers}" in line.note


def test_an_unknown_instance_type_stops_the_estimate_naming_it(synthesized_templates):
    template = copy.deepcopy(synthesized_templates["dev"])
    instance = next(r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::Instance")
    instance["Properties"]["InstanceType"] = "t3.enormous"
    with pytest.raises(PriceError, match=r"'t3\.enormous'.*ap-northeast-2\.toml"):
        estimate(Template(template), SHIPPED["dev"], load_prices("ap-northeast-2"))


def test_a_region_without_a_price_table_is_a_clear_error():
    with pytest.raises(PriceError, match="no price table for region 'eu-west-9'"):
        load_prices("eu-west-9")


def test_the_price_table_states_its_region_and_date():
    prices = load_prices("ap-northeast-2")
    assert prices.region == "ap-northeast-2" and prices.as_of[:2] == "20"
    text = prices.file.read_text()
    assert "refresh" in text and "not fetch" in text.lower()


def test_markdown_has_one_table_per_environment_with_a_total(estimates):
    md = render_markdown(list(estimates.values()))
    assert md.count("| **Total** |") == len(SHIPPED)
    assert "ap-northeast-2.toml as of" in md


def test_missing_templates_are_stale_so_the_tools_synthesize_first(tmp_path):
    from tools.templates import stale

    assert stale(list(SHIPPED.values()), cdk_out=tmp_path) == list(SHIPPED.values())
