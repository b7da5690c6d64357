"""Construct IDs are a contract: a refactor must not replace a VPC, a database or a bucket.

If this test fails, a change renamed a stateful resource's logical ID and CloudFormation
would replace it (new VPC, new empty database, new bucket). Do not update the pins unless
that replacement is intended and a migration is written down.
"""

from __future__ import annotations

import json

import pytest
from cfn import path_of
from stack_support import _variant, build_app, from_files

from envconfig import Stage, load_environments

STATEFUL_TYPES = {
    "AWS::EC2::VPC", "AWS::RDS::DBInstance", "AWS::EC2::Volume", "AWS::S3::Bucket",
    "AWS::SecretsManager::Secret", "AWS::KMS::Key", "AWS::EC2::EIP", "AWS::Logs::LogGroup",
    "AWS::Backup::BackupVault",
}

# In every environment.
COMMON = {
    "NetworkVpc7FB7348F": "Network/Vpc/Resource",
    "NetworkFlowLogs2BEC3212": "Network/FlowLogs/Resource",
    "AlarmTopicKey57B0D3A7": "AlarmTopicKey/Resource",
    "LogsAppF4BD4232": "Logs/App/Resource",
    "LogsCfnInit90C3899D": "Logs/CfnInit/Resource",
}
POSTGRESQL_LOGS = {"LogsPostgresqlBDFEAA09": "Logs/Postgresql/Resource"}
NGINX_LOGS = {"LogsNginxAccess23484B0C": "Logs/NginxAccess/Resource",
              "LogsNginxError0D1C67AB": "Logs/NginxError/Resource"}

PINNED = {
    "dev": POSTGRESQL_LOGS | {
        "ServiceDatabaseSecret176BF66F": "Service/DatabaseSecret/Resource",
        "ServiceAppServerElasticIpEC472C3E": "Service/AppServer/ElasticIp",
        "BackupVaultADF21B19": "Backup/Vault/Resource",
    },
    "staging": POSTGRESQL_LOGS | {
        "ServiceDatabaseSecret18A24063": "Service/Database/Secret/Resource",
        "ServiceDatabaseData134234E8": "Service/Database/Data/Resource",
        "BackupVaultADF21B19": "Backup/Vault/Resource",
        "NetworkVpcPublicSubnet1EIPE0D52090": "Network/Vpc/PublicSubnet1/EIP",
        "ServiceLoadBalancerAccessLogsAudit4E09E458": "Service/LoadBalancer/AccessLogsAudit/Resource",
        "ServiceLoadBalancerAccessLogsDE1D0C2B": "Service/LoadBalancer/AccessLogs/Resource",
    },
    "prod": NGINX_LOGS | {
        "ServiceDatabaseSecret18A24063": "Service/Database/Secret/Resource",
        "ServiceDatabaseInstance13D659BC": "Service/Database/Instance/Resource",
        "ServiceDatabaseLogsDB46DC47": "Service/Database/Logs/Resource",
        "NetworkVpcPublicSubnet1EIPE0D52090": "Network/Vpc/PublicSubnet1/EIP",
        "NetworkVpcPublicSubnet2EIP24F41572": "Network/Vpc/PublicSubnet2/EIP",
        "ServiceLoadBalancerAccessLogsAudit4E09E458": "Service/LoadBalancer/AccessLogsAudit/Resource",
        "ServiceLoadBalancerAccessLogsDE1D0C2B": "Service/LoadBalancer/AccessLogs/Resource",
    },
}


@pytest.mark.parametrize("env", sorted(PINNED))
def test_stateful_logical_ids_are_pinned(synthesized_templates, env):
    template = synthesized_templates[env]
    stack = f"staged-web-{env}/"
    actual = {lid: path_of(r).removeprefix(stack) for lid, r in template["Resources"].items()
              if r["Type"] in STATEFUL_TYPES}
    pinned = COMMON | PINNED[env]
    missing = {lid: path for lid, path in pinned.items() if actual.get(lid) != path}
    assert not missing, f"stateful resources renamed or gone (would be replaced): {missing}"
    unpinned = set(actual) - set(pinned)
    assert not unpinned, f"new stateful resources: pin their logical IDs here: {sorted(unpinned)}"


@pytest.fixture(scope="module")
def staging_at_stage_4(tmp_path_factory) -> dict:
    """staging as it is, moved from stage 3 to stage 4 and nothing else: synthesized once, in an app of its own."""
    staging = {c.name: c for c in load_environments()}["staging"]
    assert staging.stage == Stage.LOAD_BALANCED, "staging is the stage-3 environment this test grows"
    app, stacks = build_app([_variant(staging, staging.name, stage=Stage.MULTI_PROCESS)],
                            outdir=str(tmp_path_factory.mktemp("staging-stage-4")))
    return app.synth().get_stack_by_name(stacks[staging.name].stack_name).template


def test_moving_from_stage_3_to_4_keeps_every_stateful_resource(synthesized_templates, staging_at_stage_4):
    """Stages share construct IDs, so growing an environment from stage 3 to 4 replaces no data."""
    def stateful(template):
        return {lid: (r["Type"], path_of(r).partition("/")[2]) for lid, r in template["Resources"].items()
                if r["Type"] in STATEFUL_TYPES}

    at_3, at_4 = stateful(synthesized_templates["staging"]), stateful(staging_at_stage_4)
    moved = {lid: at_3[lid] for lid in at_3 if at_4.get(lid) != at_3[lid]}
    assert not moved, f"moving staging to stage 4 would replace: {moved}"
    # The only stateful resources stage 4 adds: the logs of the in-server proxy.
    assert {lid: path for lid, (_, path) in at_4.items() if lid not in at_3} == NGINX_LOGS


# EC2 PostgreSQL -> RDS in its two deploys (README: Growing the service): staging's [database] table moved
# under [database.carry_from], RDS as cdk-nag wants it (a non-default port, Multi-AZ, deletion protection).
KEEP = {"operations": {"removal_policy": "snapshot"}}
MOVING_TO_RDS = {"database": {"kind": "rds", "port": 5433, "multi_az": True,
                              "carry_from": {"kind": "ec2", "instance_type": "t3.small", "storage_gib": 20}}, **KEEP}
CARRIED = {"database": {"kind": "rds", "port": 5433, "multi_az": True}, **KEEP}
RDS_IDS = {"ServiceDatabaseInstance13D659BC": "Service/Database/Instance/Resource",
           "ServiceDatabaseLogsDB46DC47": "Service/Database/Logs/Resource"}


@pytest.fixture(scope="module")
def staging_moving_to_rds(tmp_path_factory) -> tuple[dict, dict]:
    """staging (stage 3, EC2 PostgreSQL) as the deploy that carries its data into RDS, then as the next one."""
    configs = [from_files("staging", "staging", MOVING_TO_RDS), from_files("carried", "staging", CARRIED)]
    app, stacks = build_app(configs, outdir=str(tmp_path_factory.mktemp("staging-to-rds")))
    assembly = app.synth()
    return tuple(assembly.get_stack_by_name(stacks[c.name].stack_name).template for c in configs)


def _stateful(template: dict) -> dict:
    return {lid: (r["Type"], path_of(r).partition("/")[2]) for lid, r in template["Resources"].items()
            if r["Type"] in STATEFUL_TYPES}


def test_moving_to_rds_keeps_the_database_server_until_its_data_is_carried(synthesized_templates,
                                                                           staging_moving_to_rds):
    """The carrying deploy keeps every stateful resource of the EC2 database (the server's volume, its
    secret, which RDS shares) under its logical ID and only adds RDS; the next one removes only the
    server's volume, its PostgreSQL logs and backup vault, and keeps RDS under the same IDs."""
    at_ec2, (carrying, carried) = _stateful(synthesized_templates["staging"]), staging_moving_to_rds
    at_carrying, at_carried = _stateful(carrying), _stateful(carried)
    assert {lid: at_ec2[lid] for lid in at_ec2 if at_carrying.get(lid) != at_ec2[lid]} == {}
    assert {lid: path for lid, (_, path) in at_carrying.items() if lid not in at_ec2} == RDS_IDS
    # ... and AWS Backup's vault, which only the server's volume needed (RDS backs itself up).
    assert {lid: path for lid, (_, path) in at_ec2.items() if lid not in at_carried} == {
        "ServiceDatabaseData134234E8": "Service/Database/Data/Resource", "BackupVaultADF21B19": "Backup/Vault/Resource",
        **POSTGRESQL_LOGS}
    assert all(at_carried[lid] == at_carrying[lid] for lid in RDS_IDS)
    # The server itself too: the same instance, updated in place.
    servers = {lid for lid, r in synthesized_templates["staging"]["Resources"].items()
               if r["Type"] == "AWS::EC2::Instance"}
    assert servers and servers <= set(carrying["Resources"])


def test_the_carrying_deploy_moves_the_app_servers_only_after_the_carry(staging_moving_to_rds):
    carrying, carried = staging_moving_to_rds
    resources = carrying["Resources"]
    (server_id,) = [lid for lid, r in resources.items() if r["Type"] == "AWS::EC2::Instance"
                    and "carry" in r.get("Metadata", {}).get("AWS::CloudFormation::Init", {})]
    server = resources[server_id]
    init = server["Metadata"]["AWS::CloudFormation::Init"]
    assert init["configSets"]["webapp"][-3:] == ["carry", "updates", "update-applied"]
    assert server["Properties"].get("DisableApiTermination") in (None, False)  # the next deploy removes it
    forwarder = json.dumps(init["carry"]["files"])
    assert "ServiceDatabaseInstance13D659BC" in forwarder and "Endpoint.Address" in forwarder
    # The app servers' group is updated after the server's wait condition, i.e. after the carry verified.
    (condition,) = [lid for lid, r in resources.items() if r["Type"] == "AWS::CloudFormation::WaitCondition"
                    and server_id in r.get("DependsOn", [])]
    (group,) = [r for r in resources.values() if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"]
    assert condition in group["DependsOn"]
    # Meanwhile the app servers reach the old port (the server, then its forwarder) and the new one (RDS),
    # and the server reaches RDS in the group they share.
    rules = [(r["Type"], r["Properties"].get("FromPort"), json.dumps(r["Properties"]))
             for r in resources.values() if r["Type"].startswith("AWS::EC2::SecurityGroupIngress")
             or r["Type"] == "AWS::EC2::SecurityGroupEgress"]
    ports = {(kind, port) for kind, port, _ in rules}
    assert {("AWS::EC2::SecurityGroupIngress", 5432), ("AWS::EC2::SecurityGroupIngress", 5433),
            ("AWS::EC2::SecurityGroupEgress", 5433)} <= ports
    # Without carry_from nothing of it is left.
    assert not any(r["Type"] == "AWS::CloudFormation::WaitCondition" for r in carried["Resources"].values())
    assert "carry-local-database" not in json.dumps(carried)
