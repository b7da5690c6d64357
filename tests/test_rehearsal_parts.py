"""The boot rehearsal's own parts, on the synthesized templates (no containers here: `make
rehearse` boots them, and `make test` runs it). Plus the boot findings of issue 8 that a
template can show: each of these failed before its fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app_tier import render
from rehearsal import template as tpl
from rehearsal.packages import PACKAGES, debian_packages

ROOT = Path(__file__).resolve().parent.parent
# Server paths, from the app tier's own constants.
TMPFILES_DIR = Path(render.LOG_DIR_TMPFILES).parent        # /etc/tmpfiles.d
LOGROTATE_DIR = Path(render.LOGROTATE_LINK).parent         # /etc/logrotate.d
CFN_HUP_UNIT = f"{render.UNIT_DIR}/cfn-hup.service"


def _servers(synthesized_templates, name):
    return {s.kind: s for s in tpl.servers(synthesized_templates[name], f"staged-web-{name}")}


@pytest.mark.parametrize("name, kinds", [
    ("dev", {"stage-1 server"}),
    ("stage2ec2", {"stage-2 app server", "database server"}),
    ("staging", {"stage-3 group member", "database server"}),
    ("prod", {"stage-4 group member"}),
])
def test_every_kind_of_server_is_found_in_the_template(synthesized_templates, name, kinds):
    servers = _servers(synthesized_templates, name)
    assert set(servers) == kinds
    for server in servers.values():
        assert server.signal_timeout_sec == 20 * 60
        if server.is_app_server:
            assert (server.service_port, server.health_path) == (80, "/health")


def test_every_amazon_linux_package_has_a_debian_mapping_with_a_reason(synthesized_templates):
    asked = set()
    for template in synthesized_templates.values():
        for resource in template["Resources"].values():
            init = resource.get("Metadata", {}).get("AWS::CloudFormation::Init", {})
            for name, config in init.items():
                if name != "configSets":
                    asked |= set(config.get("packages", {}).get("yum", {}))
    assert asked <= set(PACKAGES), f"no rehearsal mapping for {sorted(asked - set(PACKAGES))}"
    assert all(entry["reason"] for entry in PACKAGES.values())


def test_the_rehearsal_root_installs_every_mapped_debian_package():
    script = (ROOT / "scripts" / "rehearsal-root.sh").read_text()
    listed = set(re.search(r"PACKAGES=\(\n(.*?)\n\)", script, re.S).group(1).split())
    assert debian_packages() <= listed


def test_resolver_handles_what_servers_receive_and_names_what_it_cannot():
    template = {"Resources": {"Db": {"Type": "AWS::EC2::Instance"}, "Lg": {"Type": "AWS::Logs::LogGroup"}}}
    resolver = tpl.Resolver(template, {"AWS::Region": "ap-northeast-2",
                                       "AWS::StackId": "arn:aws:cloudformation:r:1:stack/s/6f1c3a2e-0b7d-11f0"},
                            {("Db", "PrivateIp"): "10.213.0.5"})
    value = {"Fn::Join": ["", ["host=", {"Fn::GetAtt": ["Db", "PrivateIp"]}, " ",
                               {"Fn::Sub": "${AWS::Region}/${!Literal}"}, " ",
                               {"Fn::Select": [0, {"Fn::Split": ["-", {"Fn::Select": [2, {"Fn::Split": [
                                   "/", {"Ref": "AWS::StackId"}]}]}]}]}]]}
    assert resolver.resolve(value) == "host=10.213.0.5 ap-northeast-2/${Literal} 6f1c3a2e"
    with pytest.raises(tpl.UnresolvedError, match="Ref Lg"):
        resolver.resolve({"Ref": "Lg"})
    with pytest.raises(tpl.UnresolvedError, match="Fn::If"):
        resolver.resolve({"Fn::If": ["C", "a", "b"]})


# --- issue 8, finding 1: the app unit's log directory ----------------------------------------


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_app_units_append_only_to_a_directory_made_before_they_start(stage):
    layout = render.ServerLayout(proxy=stage == 4, processes=2)
    boot = render.app_server_bootstrap(layout, render.DatabaseEndpoint(host="10.0.0.5", secret_arn="arn:x:y:z:1:s"))
    tmpfiles = "".join(f.content for path, f in boot.files.items() if path.startswith(f"{TMPFILES_DIR}/"))
    made = {line.split()[1] for line in tmpfiles.splitlines() if line.startswith("d ")}
    for path, unit in boot.files.items():
        if not path.endswith(".service") or "ExecStart=" not in unit.content:
            continue
        # systemd opens the output file before it creates LogsDirectory=: 209/STDOUT (systemd 252).
        assert "LogsDirectory=" not in unit.content
        for target in re.findall(r"^StandardOutput=append:(\S+)$", unit.content, re.M):
            assert str(Path(target).parent) in made, f"{path} appends to {target}, whose directory nothing makes"
    names = [name for name, _ in boot.commands]
    assert names.index("21-app-log-dir") < names.index("25-app-start")


# --- issue 8, finding 4: cfn-hup's unit ----------------------------------------------------------


@pytest.mark.parametrize("name", ["dev", "stage2ec2", "staging"])
def test_single_servers_get_their_own_cfn_hup_unit(synthesized_templates, name):
    for resource in synthesized_templates[name]["Resources"].values():
        init = resource.get("Metadata", {}).get("AWS::CloudFormation::Init")
        if resource["Type"] != "AWS::EC2::Instance" or not init:
            continue
        updates = init["updates"]
        unit = updates["files"][CFN_HUP_UNIT]["content"]
        assert "ExecStart=/opt/aws/bin/cfn-hup" in unit and "WantedBy=multi-user.target" in unit
        command = json.dumps(updates["commands"])
        # Enabled and started, never restarted: the hook's own cfn-init run would be killed with it.
        assert "daemon-reload" in command and "enable --now cfn-hup.service" in command
        assert "restart" not in command


# --- the security groups the rehearsal enforces ------------------------------------------------


def test_the_database_server_firewall_is_its_security_groups(synthesized_templates):
    from rehearsal import firewall
    template = synthesized_templates["staging"]
    db = _servers(synthesized_templates, "staging")["database server"]
    app = _servers(synthesized_templates, "staging")["stage-3 group member"]
    members = {group: ["10.213.0.10"] for group in firewall.groups_of(template, db.logical_id)}
    members.update({group: ["10.213.0.11"] for group in firewall.groups_of(template, app.logical_id)})
    rules = firewall.group_rules(template, "10.213.0.0/24")
    ruleset = firewall.ruleset(firewall.groups_of(template, db.logical_id), rules, members)
    ingress, egress = ruleset.split("chain output")
    # PostgreSQL from the app servers only; HTTPS out (the endpoints), nothing else.
    assert "ip saddr { 10.213.0.11 } tcp dport 5432 accept" in ingress
    assert ingress.count(" accept") == 3  # lo, established, the app servers
    assert "tcp dport 443 accept" in egress and egress.count(" accept") == 3


def test_a_group_without_egress_gets_a_firewall_that_lets_nothing_out():
    from rehearsal import firewall
    template = {"Resources": {"Sg": {"Type": "AWS::EC2::SecurityGroup", "Properties": {"SecurityGroupEgress": [
        {"CidrIp": "255.255.255.255/32", "Description": "Disallow all traffic", "FromPort": 252,
         "IpProtocol": "icmp", "ToPort": 86}]}}}}
    ruleset = firewall.ruleset(["Sg"], firewall.group_rules(template, "10.213.0.0/24"), {})
    egress = ruleset.split("chain output")[1]
    assert "policy drop" in egress and "ip daddr 255.255.255.255/32 meta l4proto icmp accept" in egress
    assert "tcp" not in egress


@pytest.mark.parametrize("name", ["dev", "stage2ec2", "staging", "prod"])
def test_every_server_has_security_groups_the_rehearsal_enforces(synthesized_templates, name):
    from rehearsal import firewall
    template = synthesized_templates[name]
    for server in _servers(synthesized_templates, name).values():
        groups = firewall.groups_of(template, server.logical_id)
        assert groups and all(template["Resources"][g]["Type"] == "AWS::EC2::SecurityGroup" for g in groups)


@pytest.mark.parametrize("name", ["dev", "stage2ec2", "staging", "prod", "https"])
def test_every_command_a_server_runs_comes_from_a_package_it_installs(synthesized_templates, name):
    """A fresh Amazon Linux 2023 instance has python3 (3.9), not python3.11; nginx and PostgreSQL
    only once installed. What a server's boot calls must be in its own package list (the database
    server once parsed its secret with python3.11, which it never installed)."""
    template = synthesized_templates[name]
    for server in _servers(synthesized_templates, name).values():
        init = template["Resources"][server.init_resource]["Metadata"]["AWS::CloudFormation::Init"]
        declared = {pkg for key, config in init.items() if key != "configSets"
                    for pkg in config.get("packages", {}).get("yum", {})}
        text = json.dumps({key: {"files": config.get("files", {}), "commands": config.get("commands", {})}
                           for key, config in init.items() if key != "configSets"})
        for package, entry in PACKAGES.items():
            for command in (Path(p).name for p in entry["provides"] if "/bin/" in p):
                if re.search(rf"(?<![\w.-]){re.escape(command)}(?![\w.-])", text):
                    assert package in declared, f"{name} {server.kind} runs {command} without installing {package}"


def test_no_init_file_lives_where_its_bak_copy_would_be_read():
    """cfn-init keeps an overwritten file as <file>.bak; logrotate reads every file in logrotate.d,
    so a config written there would be read twice after the first in-place update."""
    layout = render.ServerLayout(processes=1)
    boot = render.single_server_bootstrap(layout, render.DatabaseEndpoint(host="127.0.0.1", secret_arn="arn:x:y:z:1:s"))
    assert not [path for path in boot.files if path.startswith(f"{LOGROTATE_DIR}/")]
    assert any(render.LOGROTATE_LINK in command for _, command in boot.commands)


def test_each_server_reports_the_stand_ins_its_boot_goes_through(synthesized_templates):
    from rehearsal.run import standins_for
    staging = _servers(synthesized_templates, "staging")
    database = standins_for(staging["database server"])
    assert {"EBS loop device", "ec2-metadata", "cfn-hup", "AL2023 postgresql.service/postgresql-setup"} <= set(database)
    assert "S3 asset" not in database and "PyPI wheelhouse" not in database
    member = standins_for(_servers(synthesized_templates, "prod")["stage-4 group member"])
    assert {"S3 asset", "PyPI wheelhouse", "CloudWatch agent"} <= set(member)
    assert "cfn-hup" not in member and "EBS loop device" not in member


# --- the app the rehearsal boots: swapped by config alone -----------------------------------------


def test_stage2_is_dev_moved_to_stage_2_and_swapped_to_the_asgi_app_by_config_alone():
    import tomllib

    from rehearsal import synth
    dev = tomllib.loads((ROOT / "config" / "dev.toml").read_text())
    raw = synth.stage2_raw()
    # What differs from dev.toml: the stage, interface endpoints and the [app] table; nothing else.
    assert {key for key in raw.keys() | dev.keys() if raw.get(key) != dev.get(key)} == {"stage", "network", "app"}
    assert {k for k in raw["network"].keys() | dev["network"].keys()
            if raw["network"].get(k) != dev["network"].get(k)} == {"interface_endpoints"}
    assert raw["app"] == tomllib.loads(synth.ASGI_APP.read_text())["app"]
    config = synth.stage2_config()  # through envconfig's own parser and checks
    assert (int(config.stage), config.network.interface_endpoints) == (2, True)
    assert synth.app_source(config) == ROOT / "app_tier" / "sample_asgi"
    stores = {name: ref.store for name, ref in config.app.secrets.items()}
    assert stores == {"API_TOKEN": "secretsmanager", "SIGNING_KEY": "ssm"}
    assert config.app.secrets["API_TOKEN"].key and config.app.environment["GREETING"]


@pytest.mark.parametrize("app", ["sample_app", "sample_asgi"])
def test_the_rehearsal_can_change_every_sample_app(tmp_path, app):
    """The in-place update and the broken app change one line that each sample app has."""
    from rehearsal import synth
    source = ROOT / "app_tier" / app
    released = (synth.changed_app(source, tmp_path, release="r1") / "app.py").read_text()
    broken = (synth.changed_app(source, tmp_path, broken=True) / "app.py").read_text()
    assert '"release": "r1"}' in released and synth.BROKEN in broken
    assert synth.HEALTHY not in broken
    assert (tmp_path / f"{app}-r1" / "requirements.txt").read_text() == (source / "requirements.txt").read_text()


def test_the_wheelhouse_covers_the_app_each_server_runs(synthesized_templates, template_files):
    """Read from each server's Init sources (its app's S3 asset), not from a fixed path."""
    from rehearsal.run import app_requirements
    for name in ("dev", "staging", "prod"):
        found = app_requirements(template_files[name].parent, synthesized_templates[name])
        assert [r.read_text() for r in found] == [(ROOT / "app_tier" / "sample_app" / "requirements.txt").read_text()]
    template = {"Resources": {}}
    assert app_requirements(template_files["dev"].parent, template) == []


def test_the_stage2_server_is_built_with_the_asgi_app_through_synth(tmp_path):
    """What the rehearsal boots as "stage2": its template runs uvicorn from the ASGI app's asset,
    reads the secrets config names at boot, and gates its boot on the config's health path."""
    from rehearsal import synth
    from rehearsal.run import app_requirements
    config = synth.stage2_config()
    assembly = synth.synthesize([config], tmp_path / "cdk.out")
    template = tpl.load(assembly, config.stack_name)
    servers = {s.kind: s for s in tpl.servers(template, config.stack_name)}
    assert set(servers) == {"stage-2 app server", "database server"}
    app = servers["stage-2 app server"]
    assert (app.service_port, app.health_path) == (80, config.app.health_path)
    found = app_requirements(assembly, template)
    assert [r.read_text() for r in found] == [(ROOT / "app_tier" / "sample_asgi" / "requirements.txt").read_text()]
    files = app.metadata["AWS::CloudFormation::Init"]["app"]["files"]
    unit = files[f"{render.UNIT_DIR}/app.service"]["content"]
    assert "ExecStart=/opt/webapp/venv/bin/uvicorn --app-dir /opt/webapp/app app:app --fd 3 " in unit
    script = json.dumps(files[render.FETCH_APP_SECRETS_SCRIPT]["content"])
    for ref in config.app.secrets.values():
        assert ref.name in script
