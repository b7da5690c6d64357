"""`make plan`: what a deploy would create, replace and delete, what happens to the data, the downtime and
the cost, read from two templates (the deployed one and the synthesized one)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json

import pytest
from stack_support import build_app, from_files, variant_configs

from app_tier import render
from envconfig import load_environment
from envconfig.model import CarrySourceConfig
from tools import plan as planner
from tools.local_aws import cli as local_aws
from tools.local_aws import emulator as emu


def _stage2rds_on_ec2():
    """The stage2rds variant with an EC2 database server (the step before its move to RDS)."""
    rds = {c.name: c for c in variant_configs()}["stage2rds"]
    return dataclasses.replace(rds, database=dataclasses.replace(rds.database, kind="ec2", multi_az=False),
                               network=dataclasses.replace(rds.network, interface_endpoints=True))


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> dict[str, dict]:
    """What no session synthesis holds, in one synth: dev at stage 2 and staging at stage 4 (their own
    files with `stage` changed, named as the environments, as a user would grow them), and the stage2rds
    variant with an EC2 database (the step before its move to RDS)."""
    configs = [from_files("dev", "dev", {"stage": 2, "network": {"interface_endpoints": True}}),
               from_files("staging", "staging", {"stage": 4}), _stage2rds_on_ec2()]
    app, stacks = build_app(configs, outdir=str(tmp_path_factory.mktemp("cdk.out.grown")))
    assembly = app.synth()
    return {name: assembly.get_stack_by_name(stack.stack_name).template for name, stack in stacks.items()}


@pytest.fixture(scope="module")
def carrying(tmp_path_factory) -> dict:
    """The stage2rds variant between its EC2 database server (grown) and RDS (the session's synthesis): RDS
    with [database.carry_from] naming that server as deployed. Its own synth: the stack has the same name
    as the EC2 one in `grown`, as a deployed stack keeps its name."""
    on_ec2 = _stage2rds_on_ec2()
    rds = {c.name: c for c in variant_configs()}["stage2rds"]
    database = on_ec2.database
    source = CarrySourceConfig(kind="ec2", instance_type=database.instance_type, storage_gib=database.storage_gib,
                               port=database.port, root_volume_gib=database.root_volume_gib)
    config = dataclasses.replace(rds, database=dataclasses.replace(rds.database, carry_from=source),
                                 network=dataclasses.replace(rds.network, interface_endpoints=True))
    app, stacks = build_app([config], outdir=str(tmp_path_factory.mktemp("cdk.out.carrying")))
    return app.synth().get_stack_by_name(stacks["stage2rds"].stack_name).template


def _plan(before, after, env="dev"):
    return planner.make_plan(load_environment(env), before, after)


def _change(plan, name):
    hits = [c for c in plan.changes if c.name == name]
    assert len(hits) == 1, [(c.name, c.action) for c in plan.changes]
    return hits[0]


def _data_lines(plan) -> list[str]:
    return [line for line in planner.render_text(plan).splitlines() if line.startswith("DATA:")]


# --- the steps up ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_to_two(synthesized_templates, grown):
    return _plan(synthesized_templates["dev"], grown["dev"])


def test_stage_1_to_2_keeps_the_server_and_names_the_carry_into_the_new_database(one_to_two):
    plan = one_to_two
    # The stage-1 server holds the data: it is updated in place (its image stays resolved at launch in
    # its launch template), and its own PostgreSQL is carried into the new database by its Init.
    server = _change(plan, "Service/AppServer/Instance")
    assert server.action == planner.UPDATE, server.reasons
    assert not plan.data_loss, _data_lines(plan)
    fates = {f.name: f for f in plan.data}
    assert fates["Service/AppServer/Instance"].fate == "kept"
    assert planner.LOCAL_CARRY in fates["Service/AppServer/Instance"].detail
    assert fates["Service/Database/Data"].fate == "created"
    assert f"filled by {planner.LOCAL_CARRY}" in fates["Service/Database/Data"].detail
    assert _change(plan, "Service/Database/Server").action == planner.CREATE


def test_stage_1_to_2_names_downtime_and_cost_before_and_after(one_to_two):
    plan = one_to_two
    whats = [d.what for d in plan.downtime]
    assert "the app, while its database is carried" in whats, whats
    assert not any(w.endswith(": replaced") for w in whats), whats
    assert plan.cost_before and plan.cost_after and plan.cost_after > plan.cost_before
    text = planner.render_text(plan)
    assert f"before {plan.cost_before:,.2f}, after {plan.cost_after:,.2f}" in text


def test_ec2_to_rds_without_carry_from_flags_the_database_servers_volume(grown, synthesized_templates):
    plan = _plan(grown["stage2rds"], synthesized_templates["stage2rds"], env="prod")
    assert plan.data_loss
    volume = next(f for f in plan.data if f.name == "Service/Database/Data")
    # stage2rds keeps snapshots (removal_policy "snapshot"): the volume is deleted after a final snapshot.
    assert volume.loss and volume.fate == "deleted" and "final snapshot" in volume.detail
    rds = next(f for f in plan.data if f.name == "Service/Database/Instance")
    assert rds.loss and "created EMPTY" in rds.detail and "Service/Database/Data" in rds.detail
    # What would have carried it: a deploy with [database.carry_from] first.
    assert planner.USE_CARRY_FROM in volume.detail and planner.USE_CARRY_FROM in rds.detail
    assert f"and {planner.USE_CARRY_FROM}." in planner.render_text(plan)
    server = next(f for f in plan.data if f.name == "Service/Database/Server")
    assert server.fate == "deleted" and not server.loss
    assert _change(plan, "Service/AppServer/Instance").action == planner.UPDATE   # its Init: the new host
    assert plan.cost_after < plan.cost_before   # no interface endpoints, no database server


# --- EC2 PostgreSQL -> RDS, carried: a deploy with [database.carry_from], then one without ------------


@pytest.fixture(scope="module")
def carry_deploy(grown, carrying):
    return _plan(grown["stage2rds"], carrying, env="prod")


@pytest.fixture(scope="module")
def after_carry(carrying, synthesized_templates):
    return _plan(carrying, synthesized_templates["stage2rds"], env="prod")


def test_the_carry_deploy_keeps_the_database_server_and_fills_rds_from_its_volume(carry_deploy):
    plan = carry_deploy
    assert not plan.data_loss, _data_lines(plan)
    # The EC2 database server and its volume keep their logical IDs: updated in place (its Init gains the
    # carry step), the volume untouched; RDS is created next to them.
    assert _change(plan, "Service/Database/Server").action == planner.UPDATE
    assert not [c for c in plan.changes if c.name == "Service/Database/Data"]
    assert _change(plan, "Service/Database/Instance").action == planner.CREATE
    fates = {f.name: f for f in plan.data}
    rds = fates["Service/Database/Instance"]
    assert rds.fate == "created" and not rds.loss
    assert rds.detail == (f"created, then filled by {planner.DATABASE_CARRY} from Service/Database/Data "
                          "(on Service/Database/Server)")
    volume = fates["Service/Database/Data"]
    assert volume.fate == "kept" and not volume.loss
    assert "its data is carried into Service/Database/Instance on this update" in volume.detail
    # It stays until the next deploy, whose deletion follows its policy (stage2rds: a final snapshot).
    assert "until the next deploy without [database.carry_from]" in volume.detail
    assert "final snapshot" in volume.detail and "(DeletionPolicy Snapshot)" in volume.detail


def test_the_carry_deploy_names_the_carrys_downtime(carry_deploy):
    carry = [d for d in carry_deploy.downtime if "carries its database" in d.what]
    assert [(d.what, d.estimate) for d in carry] == [
        ("the app, while Service/Database/Server carries its database into Service/Database/Instance",
         planner.DATABASE_CARRY_DOWNTIME)]
    assert "forwards its old port to RDS" in carry[0].basis and "rolls the deploy back" in carry[0].basis
    # Not "its bootstrap re-runs in place: none": the carry retires that PostgreSQL.
    assert not [d for d in carry_deploy.downtime if d.what.startswith("Service/Database/Server")]
    # The app server moves after the carry, onto RDS: not "a few seconds, within about a minute of the deploy".
    (app_server,) = [d for d in carry_deploy.downtime if d.what.startswith("Service/AppServer/Instance")]
    assert app_server.what.endswith("on RDS") and app_server.estimate.startswith("none of its own")


def test_the_deploy_after_the_carry_deletes_the_database_server_without_data_loss(after_carry, monkeypatch,
                                                                                   capsys, carrying,
                                                                                   synthesized_templates):
    plan = after_carry
    assert not plan.data_loss and not _data_lines(plan)
    assert {_change(plan, name).action for name in ("Service/Database/Server", "Service/Database/Data")} == \
        {planner.DELETE}
    fates = {f.name: f for f in plan.data}
    volume = fates["Service/Database/Data"]
    assert volume.fate == "deleted" and not volume.loss
    assert f"its data was carried into Service/Database/Instance by {planner.PREVIOUS_CARRY}" in volume.detail
    assert "final snapshot" in volume.detail   # what its DeletionPolicy does with the old copy
    server = fates["Service/Database/Server"]
    assert "the previous deploy carried its data into Service/Database/Instance" in server.detail
    assert fates["Service/Database/Instance"].fate == "kept"
    assert not [d for d in plan.downtime if "carries" in d.what]
    monkeypatch.setattr(planner, "plan_environment", lambda config, state_dir: planner.make_plan(
        config, carrying, synthesized_templates["stage2rds"]))
    assert planner.main(["--env", "prod"]) == 0
    assert "by the previous deploy's carry step" in capsys.readouterr().out


def test_a_previous_carry_counts_only_into_the_rds_instance_kept_from_a_settled_stack(carrying,
                                                                                       synthesized_templates):
    after = synthesized_templates["stage2rds"]
    # The deployed stack stuck mid-way: its template is not known to be one whose carry completed.
    plan = planner.make_plan(load_environment("prod"), carrying, after, deployed="UPDATE_ROLLBACK_FAILED")
    volume = next(f for f in plan.data if f.name == "Service/Database/Data")
    assert plan.data_loss and volume.loss
    assert "the deployed stack is UPDATE_ROLLBACK_FAILED, so its carry into Service/Database/Instance is not " \
           "known to have completed" in volume.detail
    # RDS replaced by the same deploy (a create-only property): the carried data goes with the old instance.
    replaced = copy.deepcopy(after)
    (rds,) = [k for k, r in replaced["Resources"].items() if r["Type"] == "AWS::RDS::DBInstance"]
    replaced["Resources"][rds]["Properties"]["DBName"] = "other"
    plan = _plan(carrying, replaced, env="prod")
    assert _change(plan, "Service/Database/Instance").action == planner.REPLACE
    volume = next(f for f in plan.data if f.name == "Service/Database/Data")
    assert volume.loss and "carried" not in volume.detail


def test_stage_3_to_4_rolls_the_fleet_and_touches_no_data(synthesized_templates, grown):
    plan = _plan(synthesized_templates["staging"], grown["staging"], env="staging")
    assert not plan.data_loss and not _data_lines(plan)
    assert plan.count(planner.REPLACE) == plan.count(planner.DELETE) == 0
    assert [(d.what, d.estimate) for d in plan.downtime if "AppServers" in d.what] == \
        [("Service/AppServers/Group/ASG: rolled", "none")]
    assert {f.fate for f in plan.data} <= {"kept", "created"}


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_an_app_only_change_replaces_nothing_and_has_no_data_line(synthesized_templates, changed_app_templates,
                                                                    env):
    plan = _plan(synthesized_templates[env], changed_app_templates[env], env=env)
    assert plan.changes and plan.count(planner.REPLACE) == plan.count(planner.DELETE) == 0
    assert not plan.data_loss and not _data_lines(plan)
    assert plan.cost_before == pytest.approx(plan.cost_after)
    if env == "dev":
        (server,) = [c for c in plan.changes if c.type == "AWS::EC2::Instance"]
        assert server.action == planner.UPDATE and server.init_changed
        assert [d.estimate for d in plan.downtime] == ["a few seconds, within about a minute of the deploy"]
    else:
        assert [d.estimate for d in plan.downtime] == ["none"]


def test_no_deployed_stack_creates_everything_and_flags_nothing(synthesized_templates):
    plan = _plan(None, synthesized_templates["dev"])
    assert {c.action for c in plan.changes} == {planner.CREATE}
    assert plan.count(planner.CREATE) == len(synthesized_templates["dev"]["Resources"])
    assert not plan.data_loss and plan.cost_before is None and plan.cost_after > 0
    assert "no deployed stack, so everything is created" in planner.render_text(plan)


def test_the_same_template_is_no_change(synthesized_templates):
    plan = _plan(synthesized_templates["prod"], synthesized_templates["prod"], env="prod")
    assert plan.changes == [] and plan.downtime == [] and not plan.data_loss
    assert "Resources: no change" in planner.render_text(plan)


# --- the rules, on small edits of a real template ----------------------------------------------


def _server_id(template) -> str:
    (lid,) = [k for k, r in template["Resources"].items() if r["Type"] == "AWS::EC2::Instance"]
    return lid


def test_the_replacement_rule_comes_from_the_provider_schemas():
    pointers = planner.create_only_properties("AWS::EC2::Instance", "ap-northeast-2")
    assert "/properties/ImageId" in pointers and "/properties/SubnetId" in pointers
    assert "/properties/UserData" not in pointers
    assert planner.create_only_properties("AWS::RDS::DBInstance", "ap-northeast-2")
    assert planner.create_only_properties("AWS::Nothing::Here", "ap-northeast-2") is None


def test_user_data_restarts_the_server_and_a_subnet_replaces_it(synthesized_templates):
    before = synthesized_templates["dev"]
    lid = _server_id(before)
    user_data = copy.deepcopy(before)
    user_data["Resources"][lid]["Properties"]["UserData"] = {"Fn::Base64": "#!/bin/bash\necho changed\n"}
    plan = _plan(before, user_data)
    assert [(c.logical_id, c.action) for c in plan.changes] == [(lid, planner.RESTART)]
    assert plan.downtime[0].estimate == "about 1-3 min"
    # The stage-1 server holds the database: a restart keeps the data.
    assert not plan.data_loss and any(f.fate == "restarted" for f in plan.data)

    subnet = copy.deepcopy(before)
    subnet["Resources"][lid]["Properties"]["NetworkInterfaces"][0]["SubnetId"] = {"Ref": "Other"}
    plan = _plan(before, subnet)
    assert _change(plan, "Service/AppServer/Instance").action == planner.REPLACE
    assert plan.data_loss and _data_lines(plan)


def test_a_replaced_resource_replaces_what_names_it_in_a_create_only_property(synthesized_templates):
    before = synthesized_templates["dev"]
    after = copy.deepcopy(before)
    groups = [k for k, r in after["Resources"].items() if r["Type"] == "AWS::EC2::SecurityGroup"
              and "AppServer" in k]
    # GroupDescription is create-only on a security group: the group is replaced, and the server's
    # NetworkInterfaces (create-only) name it, so the server is replaced too.
    after["Resources"][groups[0]]["Properties"]["GroupDescription"] = "changed"
    plan = _plan(before, after)
    replaced = {c.logical_id for c in plan.changes if c.action == planner.REPLACE}
    assert {groups[0], _server_id(before)} <= replaced
    server = _change(plan, "Service/AppServer/Instance")
    assert any("NetworkInterfaces" in r and "is replaced" in r for r in server.reasons), server.reasons


def test_a_migration_when_one_exists_carries_the_data(synthesized_templates, grown):
    plan = planner.make_plan(load_environment("dev"), synthesized_templates["dev"], grown["dev"],
                             migration="make grow ENV=dev")
    assert not plan.data_loss
    new = next(f for f in plan.data if f.name == "Service/Database/Data")
    assert "filled by make grow ENV=dev from Service/AppServer/Instance" in new.detail


def test_json_and_exit_code(synthesized_templates, grown, monkeypatch, capsys):
    # EC2 PostgreSQL -> RDS without [database.carry_from]: nothing moves that data, so the plan refuses
    # without --accept-data-loss.
    monkeypatch.setattr(planner, "plan_environment", lambda config, state_dir: planner.make_plan(
        config, grown["stage2rds"], synthesized_templates["stage2rds"]))
    assert planner.main(["--env", "prod", "--json"]) == planner.EXIT_DATA_LOSS
    shown = json.loads(capsys.readouterr().out)
    assert shown["data_loss"] and shown["counts"]["deleted"] >= 1 and shown["cost_after"] != shown["cost_before"]
    assert planner.main(["--env", "prod", "--accept-data-loss"]) == 0
    assert "DATA: Service/Database/Data" in capsys.readouterr().out
    # 1 -> 2: the carry moves the data, so the plan passes on its own.
    monkeypatch.setattr(planner, "plan_environment", lambda config, state_dir: planner.make_plan(
        config, synthesized_templates["dev"], grown["dev"]))
    assert planner.main(["--env", "dev"]) == 0
    assert "carried" in capsys.readouterr().out


# --- against the emulator ------------------------------------------------------------------------


@pytest.mark.emulator
@pytest.mark.slow
def test_plan_against_the_emulator_names_the_carry(tmp_path, monkeypatch):
    """dev deployed to the emulator as `make deploy-local` does; then the plan of dev as deployed (no
    change) and of dev grown to stage 2, both against the emulator's stack."""
    state_dir = tmp_path / "emulator"
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = local_aws.run("deploy", "dev", emu.free_port(), state_dir, state_dir / "cdk.out")
        assert code == 0, printed.getvalue()[-3000:]
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.running(state_dir).endpoint_url)
        same = planner.plan_environment(load_environment("dev"), state_dir=state_dir)
        assert same.target == "emulator" and same.deployed == "CREATE_COMPLETE"
        assert same.changes == [], [(c.name, c.action, c.reasons) for c in same.changes]
        grown = from_files("dev", "dev", {"stage": 2, "network": {"interface_endpoints": True}})
        plan = planner.plan_environment(grown, state_dir=state_dir)
        assert not plan.data_loss and _change(plan, "Service/AppServer/Instance").action == planner.UPDATE
        data = next(f for f in plan.data if f.name == "Service/Database/Data")
        assert f"filled by {planner.LOCAL_CARRY}" in data.detail
        assert "the app, while its database is carried" in [d.what for d in plan.downtime]
    finally:
        emu.stop(state_dir)


def test_the_stage_2_app_server_is_updated_only_after_the_database_servers_carry(carrying):
    """Stage 2's app server (an instance, not a group) waits for the carry's wait condition too: until its
    update it reaches RDS through the old server's forwarder, on the old port it is still allowed."""
    resources = carrying["Resources"]
    (server,) = [lid for lid, r in resources.items() if r["Type"] == "AWS::EC2::Instance"
                 and "carry" in r.get("Metadata", {}).get("AWS::CloudFormation::Init", {})
                 and "ServiceDatabase" in lid]
    (condition,) = [lid for lid, r in resources.items() if r["Type"] == "AWS::CloudFormation::WaitCondition"
                    and server in r.get("DependsOn", [])]
    app_server = resources["ServiceAppServerInstance31F059BE"]
    assert condition in app_server["DependsOn"]


def test_a_carry_from_a_server_whose_deployed_setup_predates_the_record_check_is_flagged(grown, carrying):
    """A rollback after the carry re-applies the deployed metadata: one from before the record check would
    serve the stale copy next to the forwarder. The plan asks for one deploy of this version first."""
    before = json.loads(json.dumps(grown["stage2rds"]).replace(render.CARRIED_RECORD, "/var/lib/webapp/elsewhere"))
    plan = _plan(before, carrying, env="prod")
    assert plan.data_loss
    assert any("predates the carry's record check" in f.detail and f.loss for f in plan.data), _data_lines(plan)
