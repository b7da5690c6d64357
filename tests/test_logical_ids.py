"""Construct IDs are a contract: a refactor must not replace a VPC, a database or a bucket.

If this test fails, a change renamed a stateful resource's logical ID and CloudFormation
would replace it (new VPC, new empty database, new bucket). Do not update the pins unless
that replacement is intended and a migration is written down.
"""

from __future__ import annotations

import pytest
from cfn import path_of
from stack_support import _variant, build_app

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
