"""Every security promise of the stacks, asserted on the synthesized templates."""

from __future__ import annotations

import json
import re

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Match
from cfn import ingress_rules, logical_id, path_of, resources
from stack_support import SHIPPED, VARIANTS

from app_tier import render
from cdk_constructs.props import LoadBalancerProps, ServerProps
from cdk_constructs.stages.load_balanced import LoadBalanced
from envconfig import Stage
from tools.rollout import rollout_settings

ALL = SHIPPED + VARIANTS
PUBLIC_CIDRS = {"0.0.0.0/0", "::/0"}


def _config(cdk_app, env):
    return cdk_app[1][env].config


@pytest.mark.parametrize("env", ALL)
def test_only_the_web_entry_point_is_open_to_the_internet(synthesized_templates, cdk_app, env):
    template = synthesized_templates[env]
    stage = _config(cdk_app, env).stage
    entry = "LoadBalancer/SecurityGroup" if stage.load_balanced else "AppServer/SecurityGroup"
    entry_group = logical_id(template, f"Service/{entry}/Resource")
    public = [r for r in ingress_rules(template) if r.source in PUBLIC_CIDRS]
    assert public, "the service must be reachable"
    for rule in public:
        assert rule.group == entry_group, rule
        assert (rule.from_port, rule.to_port) in {(80, 80), (443, 443)}, rule


@pytest.mark.parametrize("env", ALL)
def test_database_port_is_reachable_only_from_the_app_servers(synthesized_templates, cdk_app, env):
    config = _config(cdk_app, env)
    template = synthesized_templates[env]
    if config.stage == Stage.SINGLE_SERVER:
        # PostgreSQL runs on the app server and listens on localhost only: no rule opens its port.
        assert not [r for r in ingress_rules(template) if r.from_port == config.database.port]
        (server,) = resources(template, "AWS::EC2::Instance").values()
        assert "listen_addresses = 'localhost'" in json.dumps(server["Metadata"]).replace("\\n", "\n")
        return
    db_group = logical_id(template, "Service/Database/SecurityGroup/Resource")
    app_group = logical_id(template, "Service/AppServer/SecurityGroup/Resource" if config.stage < 3
                           else "Service/AppServers/SecurityGroup/Resource")
    rules = [r for r in ingress_rules(template) if r.group == db_group]
    ssh = [r for r in rules if r.from_port == 22]
    rule, port = type(rules[0]), config.database.port
    expected = {rule(db_group, app_group, port, port)}
    if config.database.carry_from:
        # Moving to RDS: the app servers keep the old server's port until they move (its forwarder), and
        # the old server reaches RDS in the group the two share.
        old_port = config.database.carry_from.port
        expected |= {rule(db_group, app_group, old_port, old_port), rule(db_group, db_group, port, port)}
    assert {r for r in rules if r not in ssh} == expected
    assert all(r.source in config.access.admin_cidrs for r in ssh)


@pytest.mark.parametrize("env", ["staging", "prod", "https"])
def test_app_port_is_reachable_only_from_the_load_balancer(synthesized_templates, env):
    template = synthesized_templates[env]
    app_group = logical_id(template, "Service/AppServers/SecurityGroup/Resource")
    alb_group = logical_id(template, "Service/LoadBalancer/SecurityGroup/Resource")
    rules = [r for r in ingress_rules(template) if r.group == app_group and r.from_port != 22]
    assert [(r.source, r.from_port) for r in rules] == [(alb_group, 80)]


@pytest.mark.parametrize("env", ALL)
def test_ssh_opens_only_to_admin_cidrs_and_only_with_a_key_pair(synthesized_templates, cdk_app, env):
    config = _config(cdk_app, env)
    ssh = [r for r in ingress_rules(synthesized_templates[env]) if r.from_port == 22]
    if config.access.key_pair == "none":
        assert ssh == []
    else:
        assert ssh and {r.source for r in ssh} == set(config.access.admin_cidrs)


def test_a_created_key_pair_keeps_its_private_key_out_of_the_template(templates, synthesized_templates):
    templates["stage2ec2"].has_resource_properties("AWS::EC2::KeyPair", {"KeyType": "ed25519"})
    outputs = synthesized_templates["stage2ec2"]["Outputs"]
    assert "KeyPairParameter" in outputs
    assert "PRIVATE KEY" not in json.dumps(synthesized_templates["stage2ec2"])
    templates["https"].resource_count_is("AWS::EC2::KeyPair", 0)   # existing key: referenced by name


@pytest.mark.parametrize("env", ALL)
def test_servers_require_imdsv2_and_encrypt_their_volumes(synthesized_templates, env):
    template = synthesized_templates[env]
    launch_templates = resources(template, "AWS::EC2::LaunchTemplate")
    servers = resources(template, "AWS::EC2::Instance") | resources(template, "AWS::AutoScaling::AutoScalingGroup")
    assert len(launch_templates) == len(servers) >= 1
    for lt in launch_templates.values():
        data = lt["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
    for res in list(launch_templates.values()) + list(resources(template, "AWS::EC2::Instance").values()):
        props = res["Properties"].get("LaunchTemplateData", res["Properties"])
        for device in props.get("BlockDeviceMappings", []):
            assert device["Ebs"]["Encrypted"] is True
            assert device["Ebs"]["VolumeType"] == "gp3"
    for volume in resources(template, "AWS::EC2::Volume").values():
        assert volume["Properties"]["Encrypted"] is True


@pytest.mark.parametrize("env", ALL)
def test_stateful_stores_are_encrypted(synthesized_templates, env):
    template = synthesized_templates[env]
    for db in resources(template, "AWS::RDS::DBInstance").values():
        assert db["Properties"]["StorageEncrypted"] is True
        assert db["Properties"].get("PubliclyAccessible") is False, "RDS must say it is not public, not default it"
    for bucket in resources(template, "AWS::S3::Bucket").values():
        assert bucket["Properties"]["BucketEncryption"]
        assert bucket["Properties"]["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
    ssl_only = [s for p in resources(template, "AWS::S3::BucketPolicy").values()
                for s in p["Properties"]["PolicyDocument"]["Statement"]
                if s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert len(ssl_only) == len(resources(template, "AWS::S3::Bucket"))
    for topic in resources(template, "AWS::SNS::Topic").values():
        assert "KmsMasterKeyId" in topic["Properties"]


@pytest.mark.parametrize("env", ALL)
def test_no_secret_in_template_or_user_data(synthesized_templates, env):
    template = synthesized_templates[env]
    for secret in resources(template, "AWS::SecretsManager::Secret").values():
        assert "SecretString" not in secret["Properties"]
        assert secret["Properties"]["GenerateSecretString"]["GenerateStringKey"] == "password"
    # A dynamic reference resolves to plain text wherever it is used; only RDS's master
    # password may take one. In Init metadata or user data it would be readable by anyone
    # allowed to describe the stack.
    rds_passwords = [json.dumps(db["Properties"]["MasterUserPassword"])
                     for db in resources(template, "AWS::RDS::DBInstance").values()]
    assert all("resolve:secretsmanager" in p for p in rds_passwords)
    others = {lid: r for lid, r in template["Resources"].items() if r["Type"] != "AWS::RDS::DBInstance"}
    assert "resolve:secretsmanager" not in json.dumps([others, template.get("Outputs", {})])
    for server in list(resources(template, "AWS::EC2::Instance").values()) + list(
            resources(template, "AWS::EC2::LaunchTemplate").values()):
        boot = json.dumps([server.get("Metadata", {}), server["Properties"]])
        assert not re.search(r"(?i)password\s*=\s*[A-Za-z0-9]", boot.replace("\\n", "\n"))


@pytest.mark.parametrize("env", ALL)
def test_servers_signal_cfn_init_completion_with_a_realistic_timeout(synthesized_templates, env):
    template = synthesized_templates[env]
    servers = resources(template, "AWS::EC2::Instance") | resources(template, "AWS::AutoScaling::AutoScalingGroup")
    for lid, res in servers.items():
        assert res["CreationPolicy"]["ResourceSignal"]["Timeout"] == "PT20M", lid
        assert "AWS::CloudFormation::Init" in res.get("Metadata", {}), f"{lid} has no Init of its own"
    user_data = [json.dumps(r["Properties"].get("LaunchTemplateData", r["Properties"])["UserData"])
                 for r in list(resources(template, "AWS::EC2::LaunchTemplate").values())
                 + list(resources(template, "AWS::EC2::Instance").values())
                 if "UserData" in r["Properties"].get("LaunchTemplateData", r["Properties"])]
    assert len(user_data) == len(servers)
    assert all("cfn-init" in u and "cfn-signal" in u for u in user_data)


@pytest.mark.parametrize("env", ["staging", "prod", "https"])
def test_group_rolls_out_by_instance_refresh_as_the_props_say(synthesized_templates, cdk_app, env):
    """Read back through tools.rollout (what a deploy rehearsal reuses), so template and rehearsal cannot drift."""
    config, balancer = _config(cdk_app, env), LoadBalancerProps()
    template = synthesized_templates[env]
    settings = rollout_settings(template)
    assert settings.strategy == "Rolling"
    # launch before terminate, never below the desired capacity
    assert (settings.min_healthy_percent, settings.max_healthy_percent) == (
        balancer.rollout_min_healthy_percent, balancer.rollout_max_healthy_percent)
    assert settings.min_healthy_percent == 100 < settings.max_healthy_percent
    assert settings.min_in_service(config.servers.min_servers) == config.servers.min_servers
    assert (settings.warmup_seconds, settings.bake_seconds) == (
        balancer.rollout_warmup_seconds, balancer.rollout_bake_seconds)
    assert settings.drain_seconds == balancer.deregistration_delay_seconds
    assert settings.health_check_path == config.app.health_path
    # no size in the template: a deploy never resets a fleet that scaling grew
    assert not settings.desired_in_template
    assert (settings.min_servers, settings.max_servers) == (config.servers.min_servers, config.servers.max_servers)
    (group,) = resources(template, "AWS::AutoScaling::AutoScalingGroup").values()
    assert "AutoScalingRollingUpdate" not in group["UpdatePolicy"]
    assert group["Properties"]["HealthCheckType"] == "ELB"
    assert group["Properties"]["HealthCheckGracePeriod"] == 300
    assert len(group["Properties"]["VPCZoneIdentifier"]) == len(config.network.availability_zones)
    # the group's creation still waits for min_servers servers to signal success
    assert group["CreationPolicy"]["ResourceSignal"]["Count"] == config.servers.min_servers

    five_xx = settings.alarm("HTTPCode_Target_5XX_Count")
    assert five_xx.metrics == ("HTTPCode_Target_5XX_Count", "RequestCount")
    assert "100 * FILL(errors, 0) / requests" in five_xx.expression
    assert (five_xx.threshold, five_xx.statistic, five_xx.period_seconds) == (balancer.rollout_5xx_percent, "Sum", 60)
    unhealthy = settings.alarm("UnHealthyHostCount")
    assert (unhealthy.threshold, unhealthy.statistic, unhealthy.period_seconds) == (0, "Maximum", 60)
    for alarm in (five_xx, unhealthy):
        assert alarm.evaluation_periods == alarm.datapoints_to_alarm == balancer.rollout_alarm_minutes
        assert alarm.treat_missing_data == "notBreaching"
        # they trip inside the bake time: N bad minutes plus CloudWatch's couple of minutes' delay
        assert (alarm.evaluation_periods + 2) * alarm.period_seconds <= settings.bake_seconds
        # the same alarms reach whoever reads the notification topic
        props = template["Resources"][alarm.logical_id]["Properties"]
        assert props["AlarmActions"] == props["OKActions"] and len(props["AlarmActions"]) == 1


def test_rollout_alarm_rules_fire_on_consecutive_bad_minutes_only(synthesized_templates):
    five_xx = rollout_settings(synthesized_templates["prod"]).alarm("HTTPCode_Target_5XX_Count")
    assert five_xx.fires([0.0, 6.0, 50.0])
    assert not five_xx.fires([50.0, 0.0, 6.0])        # one bad minute is a blip
    assert not five_xx.fires([None, None])            # no requests is no evidence
    assert not five_xx.fires([5.0, 5.0])              # at the threshold is not over it


def test_a_desired_size_other_than_the_floor_is_refused_at_synth():
    with pytest.raises(ValueError, match=r"ServerProps.desired_servers: got 3, .*min_servers \(2\)"):
        stack = Stack(App(), "DesiredSize")
        LoadBalanced(stack, "Service", vpc=ec2.Vpc(stack, "Vpc"), app=render.AppSpec(),
                     servers=ServerProps(min_servers=2, desired_servers=3, max_servers=4))


@pytest.mark.parametrize("env", ["staging", "prod", "https"])
def test_health_check_takes_a_dead_server_out_within_15_seconds(templates, cdk_app, env):
    config = _config(cdk_app, env)
    templates[env].has_resource_properties("AWS::ElasticLoadBalancingV2::TargetGroup", {
        "HealthCheckPath": config.app.health_path,
        "HealthCheckIntervalSeconds": 5,
        "HealthCheckTimeoutSeconds": 4,
        "UnhealthyThresholdCount": 3,
        "HealthyThresholdCount": 2,
        "Matcher": {"HttpCode": "200"},
        "Port": 80,
        "TargetGroupAttributes": Match.array_with([
            {"Key": "deregistration_delay.timeout_seconds", "Value": "30"}]),
    })


@pytest.mark.parametrize("env", ["staging", "prod", "https"])
def test_load_balancer_drops_invalid_headers_logs_access_and_protects_prod(templates, cdk_app, env):
    protect = _config(cdk_app, env).is_production
    (alb,) = templates[env].find_resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    attributes = {a["Key"]: a["Value"] for a in alb["Properties"]["LoadBalancerAttributes"]}
    assert alb["Properties"]["Scheme"] == "internet-facing"
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes.get("deletion_protection.enabled", "false") == ("true" if protect else "false")


def test_https_listener_and_http_redirect_with_a_certificate(templates):
    template = templates["https"]
    template.has_resource_properties("AWS::ElasticLoadBalancingV2::Listener", {
        "Port": 443, "Protocol": "HTTPS", "Certificates": [{"CertificateArn": Match.string_like_regexp("acm")}]})
    template.has_resource_properties("AWS::ElasticLoadBalancingV2::Listener", {
        "Port": 80, "DefaultActions": [Match.object_like({"Type": "redirect",
                                                          "RedirectConfig": Match.object_like({"Port": "443"})})]})


def test_plain_http_listener_without_a_certificate(templates):
    templates["prod"].has_resource_properties("AWS::ElasticLoadBalancingV2::Listener", {"Port": 80, "Protocol": "HTTP"})
    assert not templates["prod"].find_resources("AWS::ElasticLoadBalancingV2::Listener",
                                                {"Properties": {"Port": 443}})


@pytest.mark.parametrize("env", ALL)
def test_vpc_spans_the_configured_zones_with_flow_logs(synthesized_templates, cdk_app, env):
    config = _config(cdk_app, env)
    template = synthesized_templates[env]
    zones = {s["Properties"]["AvailabilityZone"] for s in resources(template, "AWS::EC2::Subnet").values()}
    assert zones == set(config.network.availability_zones)
    assert len(resources(template, "AWS::EC2::NatGateway")) == config.network.nat_gateways
    assert len(resources(template, "AWS::EC2::FlowLog")) == 1
    (vpc,) = resources(template, "AWS::EC2::VPC").values()
    assert vpc["Properties"]["CidrBlock"] == config.network.vpc_cidr
    tags = {t["Key"]: t["Value"] for t in vpc["Properties"]["Tags"]}
    assert tags["project"] == config.project and tags["environment"] == config.name


@pytest.mark.parametrize("env", ALL)
def test_servers_use_session_manager_without_managed_policies(synthesized_templates, env):
    server_roles = [r for r in resources(synthesized_templates[env], "AWS::IAM::Role").values()
                    if "/Service/" in path_of(r) and path_of(r).endswith("/Role/Resource/Resource")]
    assert server_roles
    for role in server_roles:
        assert "ManagedPolicyArns" not in role["Properties"], path_of(role)
    ssm = [p for p in resources(synthesized_templates[env], "AWS::IAM::Policy").values()
           if path_of(p).endswith("SessionManager/Resource")]
    assert ssm and all("ssmmessages:OpenDataChannel" in json.dumps(p) for p in ssm)


@pytest.mark.parametrize("env", ALL)
def test_outputs_give_the_url_and_a_session_manager_command(synthesized_templates, env):
    outputs = synthesized_templates[env]["Outputs"]
    assert "Url" in outputs and "SessionManagerCommand" in outputs
    assert "ssm start-session" in json.dumps(outputs["SessionManagerCommand"])


def test_database_secret_is_granted_to_app_servers_only(synthesized_templates):
    template = synthesized_templates["prod"]
    secret = logical_id(template, "Service/Database/Secret/Resource")
    readers = {path_of(p).split("/Role/")[0] for p in resources(template, "AWS::IAM::Policy").values()
               if secret in json.dumps(p["Properties"]["PolicyDocument"])
               and "secretsmanager:GetSecretValue" in json.dumps(p)}
    assert readers == {"staged-web-prod/Service/AppServers"}


@pytest.mark.parametrize("env", ["staging", "stage2ec2"])
def test_ec2_database_keeps_data_on_its_own_volume_and_updates_in_place(synthesized_templates, env):
    template = synthesized_templates[env]
    (server,) = [r for r in resources(template, "AWS::EC2::Instance").values()
                 if "Service/Database/Server" in path_of(r)]
    (volume,) = resources(template, "AWS::EC2::Volume").values()
    assert volume["Properties"]["AvailabilityZone"] == server["Properties"]["AvailabilityZone"]
    init = json.dumps(server["Metadata"]["AWS::CloudFormation::Init"])
    assert "cfn-hup" in init and "attach-volume" in init


@pytest.mark.parametrize("env", ["dev", "stage2ec2"])
def test_a_public_server_can_signal_before_its_elastic_ip_is_attached(synthesized_templates, env):
    """The EIP association waits for the instance's success signal; without an address of its
    own at first boot the server could not reach CloudFormation (or PyPI) and would time out."""
    template = synthesized_templates[env]
    (server,) = [r for r in resources(template, "AWS::EC2::Instance").values() if "AppServer" in path_of(r)]
    (interface,) = server["Properties"]["NetworkInterfaces"]
    assert interface["AssociatePublicIpAddress"] is True
    (eip,) = resources(template, "AWS::EC2::EIP").values()
    assert eip["Properties"]["InstanceId"] == {"Ref": logical_id(template, "Service/AppServer/Instance/Resource")}


@pytest.mark.parametrize("env,arch", [("prod", "x86_64"), ("https", "arm64")])
def test_servers_boot_the_latest_amazon_linux_2023_of_their_architecture(synthesized_templates, env, arch):
    parameters = synthesized_templates[env]["Parameters"]
    amis = [p["Default"] for p in parameters.values() if p["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"]
    assert len(amis) == 1
    assert re.fullmatch(rf"/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-[\w.]+-{arch}", amis[0]), amis
