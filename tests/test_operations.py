"""Operating the service: alarms and dashboard, logs, backups and retention, scaling, and
rolling out an app change without touching anything stateful."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cfn import name_of, path_of, resources
from stack_support import build_app
from test_logical_ids import STATEFUL_TYPES

from app_tier import render
from envconfig import load_environment


def _alarms(template: dict) -> dict[str, dict]:
    return {r["Properties"]["AlarmName"]: r["Properties"] for r in resources(template, "AWS::CloudWatch::Alarm").values()}


def test_prod_alarms_cover_errors_health_latency_cpu_and_the_database(synthesized_templates):
    template = synthesized_templates["prod"]
    alarms = _alarms(template)
    expected = ["LoadBalancer-Alb5xxRate", "LoadBalancer-Target5xxRate", "LoadBalancer-UnhealthyHosts",
                "LoadBalancer-P99Latency", "AppServers-Cpu", "Database-CPU-Usage", "Database-Min-Usage-Count",
                "Database-Connection-Count-High"]
    for name in expected:
        assert f"staged-web-prod-{name}-Critical" in alarms, sorted(alarms)
    topic = [lid for lid, r in resources(template, "AWS::SNS::Topic").items()]
    for props in alarms.values():
        assert props["AlarmActions"] == [{"Ref": topic[0]}]
    p99 = alarms["staged-web-prod-LoadBalancer-P99Latency-Critical"]
    assert p99["ExtendedStatistic"] == "p99" and p99["Threshold"] == 1.5
    assert len(resources(template, "AWS::CloudWatch::Dashboard")) == 1


def test_ec2_database_alarms_on_cpu_and_disk_through_the_cloudwatch_agent(synthesized_templates):
    alarms = _alarms(synthesized_templates["staging"])
    disk = alarms["staged-web-staging-DatabaseServer-DiskData-Critical"]
    assert disk["Namespace"] == "CWAgent" and disk["MetricName"] == "disk_used_percent"
    assert {d["Name"] for d in disk["Dimensions"]} == {"InstanceId", "path"}
    assert "staged-web-staging-DatabaseServer-Cpu-Critical" in alarms
    server = [r for r in resources(synthesized_templates["staging"], "AWS::EC2::Instance").values()
              if "Database/Server" in path_of(r)][0]
    init = json.dumps(server["Metadata"]["AWS::CloudFormation::Init"])
    assert "amazon-cloudwatch-agent" in init and "/var/lib/pgsql" in init


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_logs_go_to_cloudwatch_with_the_configured_retention(synthesized_templates, env):
    config = load_environment(env)
    # Retained groups (prod) carry the stack-ID suffix, so a re-created stack does not collide.
    prefix = f"/staged-web-{env}" + ("-<stack-id>/" if config.is_production else "/")
    groups = {name_of(r["Properties"]["LogGroupName"]): r
              for r in resources(synthesized_templates[env], "AWS::Logs::LogGroup").values()
              if name_of(r["Properties"].get("LogGroupName", "")).startswith(prefix)}
    streams = ["app", "cfn-init"] + (["nginx-access", "nginx-error"] if config.stage == 4 else []) + (
        ["postgresql"] if config.database.kind == "ec2" else [])
    assert sorted(g.rsplit("/", 1)[1] for g in groups) == sorted(streams)
    for stream in streams:
        group = groups[f"{prefix}{stream}"]
        assert group["Properties"]["RetentionInDays"] == config.operations.log_retention_days
        assert group["DeletionPolicy"] == ("Retain" if config.is_production else "Delete")


def test_alarm_topic_is_encrypted_ssl_only_and_mails_the_configured_address(synthesized_templates, cdk_app):
    template = synthesized_templates["prod"]
    (policy,) = resources(template, "AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false" for s in statements)
    assert resources(template, "AWS::SNS::Subscription") == {}   # alarm_email is "" in prod.toml


def test_an_alarm_email_subscribes_to_the_topic():

    prod = load_environment("prod")
    config = dataclasses.replace(prod, name="mailed", operations=dataclasses.replace(
        prod.operations, alarm_email="ops@example.com"))
    app, stacks = build_app([config])
    template = app.synth().get_stack_by_name(stacks["mailed"].stack_name).template
    (sub,) = resources(template, "AWS::SNS::Subscription").values()
    assert sub["Properties"]["Protocol"] == "email" and sub["Properties"]["Endpoint"] == "ops@example.com"


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_target_tracking_scales_on_requests_per_server_and_cpu(synthesized_templates, env):
    config = load_environment(env)
    policies = [r["Properties"]["TargetTrackingConfiguration"]
                for r in resources(synthesized_templates[env], "AWS::AutoScaling::ScalingPolicy").values()]
    by_type = {p["PredefinedMetricSpecification"]["PredefinedMetricType"]: p for p in policies}
    assert by_type["ALBRequestCountPerTarget"]["TargetValue"] == config.load_balancer.target_requests_per_server
    assert by_type["ASGAverageCPUUtilization"]["TargetValue"] == config.load_balancer.target_cpu_percent


def test_prod_keeps_every_stateful_resource_and_protects_the_database(synthesized_templates):
    template = synthesized_templates["prod"]
    for lid, res in template["Resources"].items():
        # Data holders; the VPC and EIPs hold none (the stack itself has termination protection).
        if res["Type"] in STATEFUL_TYPES - {"AWS::EC2::EIP", "AWS::EC2::VPC"}:
            assert res.get("DeletionPolicy") in ("Retain", "Snapshot"), lid
    (db,) = resources(template, "AWS::RDS::DBInstance").values()
    assert db["Properties"]["DeletionProtection"] is True
    # RDS's exported logs land in a group the stack owns, with the environment's retention.
    rds_logs = [r for r in resources(template, "AWS::Logs::LogGroup").values()
                if name_of(r["Properties"].get("LogGroupName", "")) ==
                f"/aws/rds/instance/{name_of(db['Properties']['DBInstanceIdentifier'])}/postgresql"]
    assert len(rds_logs) == 1 and rds_logs[0]["Properties"]["RetentionInDays"] == 90
    assert db["Properties"]["MultiAZ"] is True
    assert db["Properties"]["BackupRetentionPeriod"] == load_environment("prod").operations.backup_retention_days
    assert json.dumps(template).count('"deletion_protection.enabled", "Value": "true"') == 1


@pytest.mark.parametrize("env", ["dev", "staging"])
def test_ec2_held_data_is_backed_up_daily_with_the_configured_retention(synthesized_templates, env):
    template = synthesized_templates[env]
    (plan,) = resources(template, "AWS::Backup::BackupPlan").values()
    (rule,) = plan["Properties"]["BackupPlan"]["BackupPlanRule"]
    assert rule["ScheduleExpression"] == "cron(0 18 * * ? *)"
    assert rule["Lifecycle"]["DeleteAfterDays"] == load_environment(env).operations.backup_retention_days
    (selection,) = resources(template, "AWS::Backup::BackupSelection").values()
    selected = json.dumps(selection["Properties"]["BackupSelection"]["Resources"])
    assert ("volume/" in selected) if env == "staging" else ("instance/" in selected)


# --- rolling out an app change ------------------------------------------------------------------


def _stateful(template: dict) -> dict:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] in STATEFUL_TYPES}


def test_an_app_change_rolls_the_group_and_leaves_stateful_resources_alone(synthesized_templates,
                                                                           changed_app_templates):
    before, after = synthesized_templates["prod"], changed_app_templates["prod"]
    assert _stateful(before) == _stateful(after)
    (lt_before,) = resources(before, "AWS::EC2::LaunchTemplate").values()
    (lt_after,) = resources(after, "AWS::EC2::LaunchTemplate").values()
    # A new launch template version (the init fingerprint is in the user data) is what
    # triggers the group's instance refresh.
    assert lt_before["Properties"]["LaunchTemplateData"]["UserData"] != \
        lt_after["Properties"]["LaunchTemplateData"]["UserData"]
    (group_before,) = resources(before, "AWS::AutoScaling::AutoScalingGroup").values()
    (group_after,) = resources(after, "AWS::AutoScaling::AutoScalingGroup").values()
    assert group_before["UpdatePolicy"] == group_after["UpdatePolicy"]
    assert group_after["UpdatePolicy"]["AutoScalingInstanceRefresh"]["Strategy"] == "Rolling"
    changed = {lid for lid in before["Resources"] if before["Resources"][lid] != after["Resources"].get(lid)}
    assert changed <= {lid for lid, r in before["Resources"].items()
                       if r["Type"] in ("AWS::EC2::LaunchTemplate", "AWS::AutoScaling::AutoScalingGroup",
                                        "AWS::IAM::Policy")}, changed


def test_an_app_change_updates_a_single_server_in_place(synthesized_templates, changed_app_templates):
    before, after = synthesized_templates["dev"], changed_app_templates["dev"]
    assert _stateful(before) == _stateful(after)
    (server_before,) = resources(before, "AWS::EC2::Instance").values()
    (server_after,) = resources(after, "AWS::EC2::Instance").values()
    # Same user data: CloudFormation does not replace the instance (and its database);
    # the Init metadata changes and cfn-hup applies it on the running server.
    assert server_before["Properties"]["UserData"] == server_after["Properties"]["UserData"]
    assert server_before["Metadata"] != server_after["Metadata"]
    assert "cfn-auto-reloader" in json.dumps(server_after["Metadata"])


# --- the optional pipeline ----------------------------------------------------------------------

CONNECTION = "arn:aws:codeconnections:ap-northeast-2:123456789012:connection/11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def pipeline_assembly(tmp_path_factory):

    from envconfig import load_environments

    configs = []
    for config in load_environments():
        if config.name == "prod":
            config = dataclasses.replace(config, pipeline=dataclasses.replace(
                config.pipeline, enabled=True, repository="acme/web", connection_arn=CONNECTION))
        configs.append(config)
    app, stacks = build_app(configs, outdir=str(tmp_path_factory.mktemp("pipeline")))
    return app.synth(), stacks   # cdk-nag runs in this synth: any finding fails it


def test_pipeline_is_off_by_default(cdk_app):
    assert not any(name.endswith("-pipeline") for name in cdk_app[1])


def test_pipeline_promotes_dev_staging_then_prod_after_a_manual_approval(pipeline_assembly):
    assembly, stacks = pipeline_assembly
    template = assembly.get_stack_by_name("staged-web-pipeline").template
    (pipeline,) = resources(template, "AWS::CodePipeline::Pipeline").values()
    stages = [s["Name"] for s in pipeline["Properties"]["Stages"]]
    assert stages[:2] == ["Source", "Build"]
    assert stages.index("Dev") < stages.index("Staging") < stages.index("Prod")
    prod_actions = next(s for s in pipeline["Properties"]["Stages"] if s["Name"] == "Prod")["Actions"]
    first = min(prod_actions, key=lambda a: a["RunOrder"])
    assert first["ActionTypeId"]["Category"] == "Approval"
    source = pipeline["Properties"]["Stages"][0]["Actions"][0]["Configuration"]
    assert source["ConnectionArn"] == CONNECTION and source["FullRepositoryId"] == "acme/web"


def test_pipeline_template_passes_cfn_lint(pipeline_assembly):
    import subprocess
    import sys
    from pathlib import Path

    assembly, _ = pipeline_assembly
    stack = assembly.get_stack_by_name("staged-web-pipeline")
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), "--", str(Path(assembly.directory) / stack.template_file)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("stage", [1, 4])
def test_the_cloudwatch_agent_ships_the_files_the_servers_write(stage):
    """The agent's file paths and the rendered units / nginx config must agree, or logs vanish."""
    import fnmatch

    from cdk_constructs.observability import ServerLogs

    layout = render.ServerLayout(proxy=stage == 4, processes=2)
    database = render.DatabaseEndpoint(host="10.0.0.5", secret_arn="arn:aws:secretsmanager:ap-northeast-2:1:secret:x")
    files = render.app_server_files(layout, database)
    units = [f.content for path, f in files.items() if path.endswith(".service") and "/app" in path]
    written = [line.split("append:", 1)[1] for unit in units for line in unit.splitlines()
               if line.startswith("StandardOutput=append:")]
    assert written
    for path in written:
        assert fnmatch.fnmatch(path.replace("%i", "8001"), ServerLogs.STREAMS["app"]), path
    if stage == 4:
        nginx = files[render.NGINX_CONF].content
        assert ServerLogs.STREAMS["nginx-access"] in nginx and ServerLogs.STREAMS["nginx-error"] in nginx


def test_cloudwatch_and_auto_scaling_can_publish_to_the_encrypted_topic(synthesized_templates):
    """Alarms publish as cloudwatch.amazonaws.com, Auto Scaling as its service-linked role; the
    AWS-managed SNS key admits neither, so the key's own policy must."""
    (key,) = resources(synthesized_templates["prod"], "AWS::KMS::Key").values()
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    cloudwatch = [s for s in statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert cloudwatch and "kms:GenerateDataKey*" in cloudwatch[0]["Action"]
    slr = [s for s in statements if "ArnEquals" in s.get("Condition", {})]
    assert len(slr) == 1 and "AWSServiceRoleForAutoScaling" in json.dumps(slr[0]["Condition"])
    assert set(slr[0]["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}


WAIT_CONDITION, WAIT_HANDLE = "AWS::CloudFormation::WaitCondition", "AWS::CloudFormation::WaitConditionHandle"


def test_a_single_servers_update_is_waited_for_by_a_wait_condition_per_metadata_version(synthesized_templates,
                                                                                        changed_app_templates):
    """Stages 1-2: CloudFormation waits for the server to apply new Init metadata (cfn-hup), and fails the
    update when it does not: a wait condition and handle per version of the metadata."""
    before, after = synthesized_templates["dev"], changed_app_templates["dev"]
    (server_id,) = resources(before, "AWS::EC2::Instance")
    (old_id, old), = resources(before, WAIT_CONDITION).items()
    (new_id, new), = resources(after, WAIT_CONDITION).items()
    assert old_id != new_id and set(resources(before, WAIT_HANDLE)).isdisjoint(resources(after, WAIT_HANDLE))
    for template, condition in ((before, old), (after, new)):
        assert condition["DependsOn"] == [server_id]
        assert condition["Properties"]["Count"] == 1 and int(condition["Properties"]["Timeout"]) == 3600
        handle = condition["Properties"]["Handle"]["Ref"]
        init = template["Resources"][server_id]["Metadata"]["AWS::CloudFormation::Init"]
        steps = init["configSets"]["webapp"]
        # The handle's URL is written first (a later failure can be signalled); SUCCESS is the last command.
        assert steps[0] == "wait-handle" and steps[-1] == "update-applied"
        (url_file,) = init["wait-handle"]["files"].values()
        assert url_file["content"] == {"Ref": handle} and url_file["mode"] == "000400"
        (signal,) = init["update-applied"]["commands"].values()
        assert signal["command"].startswith("/opt/aws/bin/cfn-signal -e 0 ")
        hook = init["updates"]["files"]["/etc/cfn/hooks.d/cfn-auto-reloader.conf"]["content"]
        assert "|| /opt/aws/bin/cfn-signal -e 1 " in hook
    # The Auto Scaling groups of stages 3-4 have none: their instance refresh is what CloudFormation waits for.
    assert not resources(synthesized_templates["prod"], "AWS::CloudFormation::WaitCondition") or all(
        c["DependsOn"][0] in resources(synthesized_templates["prod"], "AWS::EC2::Instance")
        for c in resources(synthesized_templates["prod"], WAIT_CONDITION).values())


def test_an_unchanged_synthesis_keeps_the_wait_condition(synthesized_templates, tmp_path):
    app, stacks = build_app([load_environment("dev")], outdir=str(tmp_path / "again"))
    again = app.synth().get_stack_by_name(stacks["dev"].stack_name).template
    assert set(resources(again, WAIT_CONDITION)) == set(resources(synthesized_templates["dev"], WAIT_CONDITION))
