"""Growing one environment 1 -> 2 -> 3 -> 4, then back to 3, then EC2 PostgreSQL -> RDS, on the local emulator
(issue 11).

dev's own file with `stage` changed (and only what envconfig requires of each stage) is synthesized for
the emulator and deployed over the previous stage with the real CDK CLI (`cdk deploy --app`, as the
rollback and test_versions do), one stack in one emulator. Before each update, `tools.plan` plans it from
the deployed template and the new one; after it, the stack's resources (DescribeStackResources, before
and after) must agree with that plan: every physical ID that changed was named REPLACED, every resource
named REPLACED got a new one, every resource that left was named DELETED, and everything the plan says
keeps its data (the database server's volume, the secrets, the backup vault, the logs) kept its physical ID.

Then, at stage 3, the database moves from EC2 PostgreSQL to RDS in the two deploys of [database.carry_from]
(envconfig's CarrySourceConfig), with what cdk-nag requires of RDS (rehearsal/grow.py's raw_at: port 5433,
Multi-AZ, and operations.removal_policy "snapshot", which also changes other resources' deletion policies,
renames the retained log groups and protects the stack and the load balancer; the plan names each): the
transitional deploy ([database] kind "rds" plus [database.carry_from], dev's old EC2 settings) keeps the EC2
database server and its data volume (same physical IDs, updated in place) and creates the RDS instance; the
final deploy (carry_from removed) deletes the server and its volume and keeps the RDS instance. The carry
itself (the server's Init step: pg_dump | psql into RDS; its wait condition holding the app servers' update)
runs nowhere here, as no server runs on the emulator and moto completes wait conditions unsignalled: it
needs a server (rehearsal/grow.py rehearses it at stages 2 and 4, into RDS's stand-in). The final deploy's plan
must flag no data loss and name the previous deploy's carry.

The assertions compare against the plan, not a list of today's resources, so they hold whether or not the
stage-2 app server is replaced at 1 -> 2 (it is not: both stages resolve its image at launch, and the carry
moves its data).

What the emulator cannot show is named, not passed: resource types moto does not model (secrets and their
RDS attachment, the backup vault and plan, alarms...) have no physical ID in it, nor have security group
rules and RDS subnet groups, so a plan line about them is checked only as "a type the emulator skips"
(EMULATOR_SKIPS). Where moto replaced what CloudFormation updates in place, or the reverse, or dropped a
resource it could not update, tools/local_aws/patched_moto.py now does what CloudFormation does (each patch
cites the CloudFormation reference): an instance whose create-only property changes is replaced, an Auto
Scaling group, a VPC endpoint, a security group and a load balancer are updated in place, a log group is
replaced when renamed, a change of DeletionPolicy, UpdateReplacePolicy or DependsOn alone updates nothing,
a removed volume follows its DeletionPolicy (a final snapshot), updates follow references, and the stack's
termination protection can be turned on.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from stack_support import build_app, from_files

from envconfig import ConfigError
from tools import plan as planner
from tools.local_aws import cli as local_aws
from tools.local_aws import emulator as emu

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

# What envconfig requires of dev's file at each stage besides `stage` (test_each_stage_needs_only_... below).
STAGE_CHANGES: dict[int, dict] = {
    1: {},
    2: {"stage": 2, "network": {"interface_endpoints": True}},      # the EC2 database server's isolated subnet
    3: {"stage": 3, "network": {"interface_endpoints": True, "nat_gateways": 1}},   # app servers in private subnets
    4: {"stage": 4, "network": {"interface_endpoints": True, "nat_gateways": 1}},
}
# What cdk-nag requires of RDS (AwsSolutions-RDS3, -RDS10, -RDS11), as rehearsal/grow.py's raw_at sets it.
RDS = {"database": {"kind": "rds", "port": 5433, "multi_az": True}, "operations": {"removal_policy": "snapshot"}}
# dev's database as each point has it: its own EC2 PostgreSQL; the transitional deploy of the move to RDS
# (the EC2 server's old settings: the defaults are dev's); RDS alone, the final deploy.
DATABASE_CHANGES: dict[str, tuple[dict, ...]] = {
    "ec2": (),
    "carry": (RDS, {"database": {"carry_from": {"kind": "ec2"}}}),
    "rds": (RDS,),
}


class At(NamedTuple):
    """A point of the growth: a stage and dev's database there (a key of DATABASE_CHANGES)."""
    stage: int
    database: str = "ec2"

    def __str__(self) -> str:
        return str(self.stage) if self.database == "ec2" else f"{self.stage}-{self.database}"


SEQUENCE = (At(1), At(2), At(3), At(4), At(3), At(3, "carry"), At(3, "rds"))
STEPS = [(SEQUENCE[i], SEQUENCE[i + 1]) for i in range(len(SEQUENCE) - 1)]
STEP_IDS = [f"{a}->{b}" for a, b in STEPS]
GROW_1_2 = (At(1), At(2))
CARRY = (At(3), At(3, "carry"))              # the transitional deploy: EC2 PostgreSQL kept next to RDS
CARRIED = (At(3, "carry"), At(3, "rds"))     # the final deploy: the EC2 database server removed
assert CARRY in STEPS and CARRIED in STEPS

# Known emulator differences: types moto 5.2.5 does not model (the stack deploys without them; a Ref to one
# resolves to a placeholder, tools/local_aws/patched_moto.py), so DescribeStackResources gives them no
# logical or physical ID; and security group rules and RDS subnet groups, which it lists without a physical
# ID (moto's subnet group has none: a Ref to it resolves to the model itself, which its DB instance reads).
# A plan line about one of these cannot be checked against the emulator.
EMULATOR_SKIPS = frozenset({
    "AWS::SecretsManager::Secret", "AWS::SecretsManager::SecretTargetAttachment", "AWS::Backup::BackupVault",
    "AWS::Backup::BackupPlan", "AWS::Backup::BackupSelection", "AWS::CloudWatch::Alarm", "AWS::SNS::TopicPolicy",
    "AWS::S3::BucketPolicy", "AWS::AutoScaling::ScalingPolicy", "AWS::EC2::SecurityGroupIngress",
    "AWS::EC2::SecurityGroupEgress", "AWS::RDS::DBSubnetGroup",
})


def stage_config(stage: int):
    return from_files("dev", "dev", STAGE_CHANGES[stage])


def config_at(at: At):
    return from_files("dev", "dev", STAGE_CHANGES[at.stage], *DATABASE_CHANGES[at.database])


def _by_name(template: dict, name: str) -> str:
    """The logical ID of the resource at a construct path below the stack (Service/Database/Server)."""
    (found,) = [lid for lid, res in template["Resources"].items() if planner.readable_name(lid, res) == name]
    return found


def _physical_ids(cfn, stack_name: str) -> dict[str, tuple[str, str]]:
    """Logical ID -> (type, physical ID) for every resource the emulator shows with both."""
    listed = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
    return {r["LogicalResourceId"]: (r["ResourceType"], r["PhysicalResourceId"])
            for r in listed if r.get("LogicalResourceId") and r.get("PhysicalResourceId")}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """One emulator for the module, on a free port."""
    state_dir = tmp_path_factory.mktemp("emulator")
    try:
        started, _ = emu.start(state_dir, emu.free_port())
        yield started, state_dir
    finally:
        emu.stop(state_dir)


@pytest.fixture(scope="module")
def grown(emulator):
    """Deploy stage 1, then each step of SEQUENCE; per step: the plan, the stack status and the physical
    IDs before and after. A failed deploy ends the sequence (its step and the later ones fail with it)."""
    emulator, state_dir = emulator
    saved = os.environ.get("AWS_ENDPOINT_URL")
    started = time.monotonic()
    result: dict = {"steps": {}, "error": None}
    try:
        # What `make deploy-local` prints: tools.plan reads the deployed template from the emulator.
        os.environ["AWS_ENDPOINT_URL"] = emulator.endpoint_url
        first = config_at(SEQUENCE[0])
        local_aws.bootstrap(emulator, [first.region], state_dir)
        session = emulator.session(first.region)
        cfn = session.client("cloudformation")
        for index, at in enumerate(SEQUENCE):
            config = config_at(at)
            app, stacks = build_app([config], target="emulator", outdir=str(state_dir / f"cdk.out.{index}"))
            assembly = app.synth()
            after = assembly.get_stack_by_name(stacks[config.name].stack_name).template
            before, status = planner.deployed_template(config, state_dir)
            plan = planner.make_plan(config, before, after, target="emulator", deployed=status)
            ids_before = _physical_ids(cfn, config.stack_name) if before else {}
            # The plan's --accept-data-loss, for the emulator only: it holds no data (test_the_plan_names_...).
            try:
                local_aws.deploy_assembly(emulator, config, Path(assembly.directory), state_dir)
            except local_aws.DeployError as err:
                result["error"] = f"deploy of {at} (step {index}) failed: {err}"
                break
            stack = cfn.describe_stacks(StackName=config.stack_name)["Stacks"][0]
            ids_after = _physical_ids(cfn, config.stack_name)
            addresses = session.client("ec2").describe_addresses()["Addresses"]
            instances = {i["InstanceId"]: i["State"]["Name"] for r in session.client("ec2").describe_instances()
                         ["Reservations"] for i in r["Instances"]}
            volumes = {v["VolumeId"] for v in session.client("ec2").describe_volumes()["Volumes"]}
            databases = {d["DBInstanceIdentifier"] for d in session.client("rds").describe_db_instances()
                         ["DBInstances"]}
            if index == 0:
                result["first"] = {"status": stack["StackStatus"], "ids": ids_after}
                continue
            result["steps"][(SEQUENCE[index - 1], at)] = {
                "plan": plan, "status": stack["StackStatus"], "before": ids_before, "after": ids_after,
                "template_before": before, "template": after, "addresses": addresses, "instances": instances,
                "volumes": volumes, "databases": databases}
        result["seconds"] = time.monotonic() - started
        yield result
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved


def _step(grown, step) -> dict:
    assert grown["error"] is None or step in grown["steps"], grown["error"]
    assert step in grown["steps"], f"step {step} did not run"
    return grown["steps"][step]


def _named(plan, *actions: str) -> dict[str, str]:
    return {c.logical_id: c.type for c in plan.changes if c.action in actions}


def _unobservable(named: dict[str, str], *listings: dict) -> dict[str, str]:
    """The resources a plan names that some listing lacks: they must be of a type the emulator skips."""
    return {lid: t for lid, t in named.items() if any(lid not in listed for listed in listings)}


# --- the configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [2, 3, 4])
def test_each_stage_needs_only_what_envconfig_names(stage):
    """dev's file with `stage` alone changed is refused for exactly the settings STAGE_CHANGES adds."""
    with pytest.raises(ConfigError) as refused:
        from_files("dev", "dev", {"stage": stage})
    named = {"network.interface_endpoints"} | ({"network.nat_gateways"} if stage >= 3 else set())
    problems = " ".join(refused.value.problems)
    assert all(name in problems for name in named), problems
    config = stage_config(stage)
    assert int(config.stage) == stage and config.network.interface_endpoints
    assert (config.servers.min_servers, config.servers.max_servers) == (1, 1)


# --- the deploys ---------------------------------------------------------------------------------


def test_stage_1_deploys(grown):
    assert "first" in grown, grown["error"]
    assert grown["first"]["status"] == "CREATE_COMPLETE"
    assert grown["first"]["ids"]


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_every_update_completes(grown, step):
    assert _step(grown, step)["status"] == "UPDATE_COMPLETE"


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_only_what_the_plan_replaced_has_a_new_physical_id(grown, step):
    seen = _step(grown, step)
    before, after, plan = seen["before"], seen["after"], seen["plan"]
    moved = {lid for lid in before.keys() & after.keys() if before[lid][1] != after[lid][1]}
    replaced = _named(plan, planner.REPLACE)
    assert moved <= replaced.keys(), (
        f"the emulator gave these resources a new physical ID, which the plan did not name REPLACED: "
        f"{sorted((lid, before[lid][0]) for lid in moved - replaced.keys())}")
    unseen = _unobservable(replaced, before, after)
    assert set(unseen.values()) <= EMULATOR_SKIPS, f"replaced resources the emulator does not list: {unseen}"
    kept_id = {lid: before[lid][0] for lid in replaced.keys() - unseen.keys() - moved}
    assert not kept_id, f"the plan names these REPLACED but the emulator kept their physical ID: {kept_id}"


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_only_what_the_plan_deleted_left_and_only_what_it_created_arrived(grown, step):
    seen = _step(grown, step)
    before, after, plan = seen["before"], seen["after"], seen["plan"]
    deleted, created = _named(plan, planner.DELETE), _named(plan, planner.CREATE)
    gone, arrived = before.keys() - after.keys(), after.keys() - before.keys()
    assert gone <= deleted.keys(), (f"these left the stack's resources but the plan did not name them DELETED "
                                    f"(the emulator dropped them?): {sorted((lid, before[lid][0]) for lid in gone - deleted.keys())}")
    stayed = {lid: t for lid, t in deleted.items() if lid in after}
    assert not stayed, f"the plan names these DELETED but the emulator still lists them: {stayed}"
    unseen = {lid: t for lid, t in deleted.items() if lid not in before}
    assert set(unseen.values()) <= EMULATOR_SKIPS, f"deleted resources the emulator did not list: {unseen}"
    assert arrived <= created.keys(), f"new in the stack, not named created: {sorted(arrived - created.keys())}"
    missing = {lid: t for lid, t in created.items() if lid not in after}
    assert set(missing.values()) <= EMULATOR_SKIPS, f"created by the plan, absent from the emulator: {missing}"


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_what_the_plan_says_keeps_its_data_keeps_its_physical_id(grown, step):
    seen = _step(grown, step)
    before, after, plan = seen["before"], seen["after"], seen["plan"]
    kept = {f.logical_id for f in plan.data if f.fate in ("kept", "restarted")}
    checked = {lid for lid in kept if lid in before and lid in after}
    changed = {lid: (before[lid][1], after[lid][1]) for lid in checked if before[lid] != after[lid]}
    assert not changed, f"the plan keeps these, but their physical IDs changed: {changed}"
    holders = planner.data_holders(seen["template"])
    unseen = {lid: holders[lid].what for lid in kept - checked if lid in holders}
    types = {seen["template"]["Resources"][lid]["Type"] for lid in unseen}
    assert types <= EMULATOR_SKIPS, f"kept data holders the emulator does not list: {unseen}"
    # The EC2 database server's data volume, from stage 2 on and until the final deploy of the move to RDS,
    # is seen kept; so is the RDS instance, once it exists.
    if step[0].stage >= 2 and step[1].database in ("ec2", "carry"):
        volumes = {lid for lid in checked if before[lid][0] == "AWS::EC2::Volume"}
        assert volumes, f"no data volume checked at {step}: kept {sorted(kept)}"
    if step[0].database != "ec2":
        instances = {lid for lid in checked if before[lid][0] == "AWS::RDS::DBInstance"}
        assert instances, f"no RDS instance checked at {step}: kept {sorted(kept)}"


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_the_plan_names_any_data_loss_and_only_the_database_move_has_one(grown, step):
    """No step up loses data: 1 -> 2 names the carry instead of flagging a loss, and the transitional deploy
    of the move to RDS keeps the EC2 database next to the new one (the emulator holds no data, so the
    carries themselves are proved by the growth rehearsal, rehearsal/grow.py)."""
    plan = _step(grown, step)["plan"]
    text = planner.render_text(plan)
    if step == CARRIED:
        # The deploy after the carry deletes the EC2 volume: not a loss, its data was carried by the deploy before.
        assert not plan.data_loss and planner.PREVIOUS_CARRY in text, text
    if plan.data_loss:
        assert step == GROW_1_2, f"only 1 -> 2 moves the database; {step} flags data loss:\n{text}"
        assert any(line.startswith("DATA: ") for line in text.splitlines()), text
    if step == GROW_1_2:
        # The stage-1 server is kept and its own PostgreSQL carried into the new database (app_tier/carry.py).
        assert not plan.data_loss and planner.LOCAL_CARRY in text, text


SINGLE_SERVER_STEPS = [s for s in STEPS if s[1].stage <= 2]


@pytest.mark.parametrize("step", SINGLE_SERVER_STEPS, ids=[f"{a}->{b}" for a, b in SINGLE_SERVER_STEPS])
def test_the_elastic_ip_points_at_the_single_server_after_the_update(grown, step):
    """Replaced or not, the single server the stack lists is the one its Elastic IP serves, and it runs."""
    seen = _step(grown, step)
    servers = {lid: pid for lid, (rtype, pid) in seen["after"].items() if rtype == "AWS::EC2::Instance"
               and planner._is_app_server(seen["template"]["Resources"][lid])}
    (server,) = servers.values()
    assert seen["instances"][server] == "running"
    assert [a.get("InstanceId") for a in seen["addresses"] if a.get("InstanceId") == server] == [server], \
        seen["addresses"]
    for lid in _named(seen["plan"], planner.REPLACE):
        if lid in seen["before"] and seen["before"][lid][0] == "AWS::EC2::Instance":
            assert seen["instances"][seen["before"][lid][1]] == "terminated"   # the replaced one is gone


# --- EC2 PostgreSQL -> RDS: the transitional deploy, then the final one ------------------------------

SERVER, VOLUME, INSTANCE = "Service/Database/Server", "Service/Database/Data", "Service/Database/Instance"


def test_the_transitional_deploy_keeps_the_database_server_and_its_volume_and_creates_rds(grown):
    """[database.carry_from]: the EC2 database server is updated in place (its Init metadata gains the carry
    step) and its data volume kept, both with their physical IDs; the RDS instance is created next to them."""
    seen = _step(grown, CARRY)
    template, before, after = seen["template"], seen["before"], seen["after"]
    server, volume, instance = (_by_name(template, name) for name in (SERVER, VOLUME, INSTANCE))
    changes = {c.logical_id: c for c in seen["plan"].changes}
    assert changes[server].action == planner.UPDATE and changes[server].init_changed, changes.get(server)
    assert "carry" in template["Resources"][server]["Metadata"][planner.INIT]["configSets"]["webapp"]
    # The app servers' update waits for the server's new wait condition (signalled after the carry; moto
    # completes it unsignalled, so only the template's wiring is checked here).
    waits = {lid for lid, res in template["Resources"].items()
             if res["Type"] == "AWS::CloudFormation::WaitCondition" and server in res.get("DependsOn", [])}
    group = template["Resources"][_by_name(template, "Service/AppServers/Group/ASG")]
    assert waits & set(group.get("DependsOn", [])), (sorted(waits), group.get("DependsOn"))
    assert volume not in changes or changes[volume].action == planner.UPDATE, changes[volume]
    assert changes[instance].action == planner.CREATE, changes[instance]
    assert (before[server], before[volume]) == (after[server], after[volume]), (server, volume)
    assert seen["instances"][after[server][1]] == "running"
    assert after[volume][1] in seen["volumes"]
    assert instance not in before and after[instance][0] == "AWS::RDS::DBInstance"
    assert after[instance][1] in seen["databases"], seen["databases"]


def test_the_final_deploy_removes_the_database_server_and_its_volume_and_keeps_rds(grown):
    """carry_from removed: the EC2 database server and its data volume are deleted (the server terminated,
    the volume gone from EC2), and the RDS instance keeps its physical ID."""
    seen = _step(grown, CARRIED)
    old, template, before, after = seen["template_before"], seen["template"], seen["before"], seen["after"]
    server, volume = _by_name(old, SERVER), _by_name(old, VOLUME)
    instance = _by_name(template, INSTANCE)
    changes = {c.logical_id: c for c in seen["plan"].changes}
    assert (changes[server].action, changes[volume].action) == (planner.DELETE, planner.DELETE)
    assert instance not in changes or changes[instance].action == planner.UPDATE, changes[instance]
    assert server in before and volume in before
    assert server not in after and volume not in after, sorted(after)
    assert seen["instances"][before[server][1]] == "terminated"
    assert before[volume][1] not in seen["volumes"]
    assert before[instance] == after[instance] and after[instance][1] in seen["databases"], seen["databases"]
    assert after[instance] == grown["steps"][CARRY]["after"][instance]


# --- the emulator's updates, on a small template ---------------------------------------------------


def _server_template(user_data: str, tag: str) -> dict:
    """A launch template and an instance that names it by its latest version, the instance first (as CDK
    orders them): a new launch template version changes the instance's create-only LaunchTemplate."""
    return {"Resources": {
        "Server": {"Type": "AWS::EC2::Instance", "Properties": {
            "LaunchTemplate": {"LaunchTemplateId": {"Ref": "Template"},
                               "Version": {"Fn::GetAtt": ["Template", "LatestVersionNumber"]}},
            "Tags": [{"Key": "release", "Value": tag}]}},
        "Template": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {
            "ImageId": "ami-12c6146b", "InstanceType": "t3.micro", "UserData": {"Fn::Base64": user_data}}}},
    }}


def test_the_emulator_replaces_an_instance_exactly_when_the_plan_does(emulator):
    """A new launch template version replaces the instance that names it (CloudFormation, and the plan);
    a tag change updates it in place. The emulator agrees with the plan on both."""
    emulator, _ = emulator
    cfn = emulator.session(stage_config(1).region).client("cloudformation")
    ec2 = emulator.session(stage_config(1).region).client("ec2")
    # 1: a new launch template version alone; 2: a new version and a new tag (both resources change, the
    # instance first in the template); 3: a tag alone.
    templates = [_server_template("v1", "a"), _server_template("v2", "a"), _server_template("v3", "b"),
                 _server_template("v3", "c")]
    seen = []
    for index, template in enumerate(templates):
        call = cfn.create_stack if index == 0 else cfn.update_stack
        call(StackName="growth-replacement", TemplateBody=json.dumps(template))
        ids = _physical_ids(cfn, "growth-replacement")
        seen.append(ids["Server"][1])
        if index:
            plan = planner.compare(templates[index - 1], template, stage_config(1).region)
            replaced = {c.logical_id for c in plan if c.action == planner.REPLACE}
            assert (seen[-1] != seen[-2]) == ("Server" in replaced), (index, [(c.logical_id, c.action) for c in plan])
    assert len(set(seen)) == 3 and seen[2] == seen[3]
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"]
              for i in r["Instances"]}
    assert [states[i] for i in seen] == ["terminated", "terminated", "running", "running"]
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [seen[3]]}])["Tags"]
    assert {"release": "c"}.items() <= {t["Key"]: t["Value"] for t in tags}.items()
