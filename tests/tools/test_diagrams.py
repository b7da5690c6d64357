"""`make diagrams`: one PNG per environment, drawn from the synthesized template."""

from __future__ import annotations

import pytest

from envconfig import Stage, load_environments
from tools.reports.diagrams import draw, stage_variant

SHIPPED = {c.name: c for c in load_environments()}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def drawn(synthesized_templates, tmp_path_factory):
    out = tmp_path_factory.mktemp("diagrams")
    return {name: (draw(synthesized_templates[name], config, out / f"{name}.png"), out / f"{name}.png")
            for name, config in SHIPPED.items()}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_environment_gets_a_png_of_sensible_size(drawn, name):
    _, png = drawn[name]
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 20_000 < len(data) < 5_000_000


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_picture_shows_the_vpc_its_zones_and_the_way_in(drawn, name):
    source, _ = drawn[name]
    config = SHIPPED[name]
    assert f"VPC {config.network.vpc_cidr}" in source
    for zone in config.network.availability_zones:
        assert zone in source
    assert "Public subnets" in source and "Internet" in source
    assert "tcp/80" in source


def test_load_balanced_environments_show_the_alb_and_the_group_bounds(drawn):
    for name in ("staging", "prod"):
        source, _ = drawn[name]
        servers = SHIPPED[name].servers
        assert "Application Load Balancer" in source
        assert f"min {servers.min_servers} / desired {servers.min_servers} / max {servers.max_servers}" in source
        assert source.count("NAT gateway") == SHIPPED[name].network.nat_gateways
    assert "Application Load Balancer" not in drawn["dev"][0]


def test_prod_shows_nginx_and_its_app_copies_on_every_server(drawn):
    source, _ = drawn["prod"]
    servers, processes = SHIPPED["prod"].servers, SHIPPED["prod"].app.processes_per_server
    assert source.count('label="nginx :80"') == servers.min_servers
    for n in range(processes):
        assert source.count(f'label="app copy :{8001 + n}"') == servers.min_servers
    assert f'label="app copy :{8001 + processes}"' not in source


def test_security_group_rules_become_labelled_arrows(drawn):
    source, _ = drawn["prod"]
    port = SHIPPED["prod"].database.port
    # One arrow per app server to the database on its port; the standby is not a target.
    assert source.count(f'label="tcp/{port}"') == SHIPPED["prod"].servers.min_servers
    assert "RDS standby" in source
    dev, _ = drawn["dev"]
    assert "PostgreSQL (localhost)" in dev and "Elastic IP" in dev


def test_stage_2_is_drawn_from_a_synthesized_variant(synthesized_templates, tmp_path):
    variant = stage_variant(2, list(SHIPPED.values()))
    assert variant.stage == Stage.SEPARATE_DATABASE and variant.network.interface_endpoints
    source = draw(synthesized_templates["stage2ec2"], variant, tmp_path / "stage-2.png")
    assert (tmp_path / "stage-2.png").read_bytes()[:8] == PNG_MAGIC
    assert "database server" in source and "app server" in source
    # The variant opens SSH to an admin range: an arrow from that range to the server on port 22.
    assert "admins\n203.0.113.0/24" in source and 'label="tcp/22"' in source
    assert "Application Load Balancer" not in source


@pytest.mark.slow
def test_a_stage_no_environment_runs_is_synthesized_in_process():
    from tools.templates import Template, synthesize_in_process

    template = Template(synthesize_in_process(stage_variant(2, list(SHIPPED.values()))))
    paths = {r.path for r in template.of_type("AWS::EC2::Instance")}
    assert paths == {"Service/AppServer/Instance/Resource", "Service/Database/Server/Resource"}
