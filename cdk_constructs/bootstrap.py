"""CloudFormation Init built from `app_tier.render`: what a server gets is what the local lab runs.

This module only translates. Every file, package and command comes from the app tier's
render module, so there is one copy of the server software and the lab tests it.
"""

from __future__ import annotations

import hashlib
import json

from aws_cdk import Duration, FileSystem, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudformation as cfn
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from app_tier import carry, render

APP_CONFIG_SET = "webapp"
UPDATES_CONFIG = "updates"
CFN_HUP_UNIT = "/etc/systemd/system/cfn-hup.service"
# In-place updates (stages 1-2): the first config writes the URL of this metadata version's wait condition
# handle, the last one signals it (apply_with_in_place_updates).
WAIT_HANDLE_CONFIG = "wait-handle"
UPDATE_SIGNAL_CONFIG = "update-applied"
WAIT_HANDLE_FILE = "/etc/cfn/webapp-wait-handle.url"
INIT_METADATA = "AWS::CloudFormation::Init"
CARRY_CONFIG = "carry"  # the Init config that carries a server's PostgreSQL into a new database (tools/plan.py reads it)
# How long CloudFormation waits for a single server to apply new Init metadata before it fails the update and
# rolls the metadata back. What it covers: cfn-hup's poll (interval=1: up to a minute, plus its start-up),
# pip when the requirements changed (minutes), the release command (the app's migrations: unbounded, say up to
# 20 min), the health gate (render: about 2 min before it gives up), and on 1 -> 2 the carry (the app's own
# database copied and verified: 27 s for 1.2 GiB measured, so tens of GiB of a stage-1 root volume take
# minutes). A failure is signalled at once (the hook's action), so the timeout only bounds a server that
# never answers; a timeout that cut a carry short would roll back the new database while the carry still ran,
# so it errs long.
UPDATE_WAIT_TIMEOUT = Duration.minutes(60)


def _config(part: render.ServerBootstrap, sources: list[ec2.InitElement] = ()) -> ec2.InitConfig:
    elements: list[ec2.InitElement] = [ec2.InitPackage.yum(name) for name in part.packages]
    elements += list(sources)
    elements += [ec2.InitFile.from_string(path, f.content, mode=f.mode, owner=f.owner, group=f.group)
                 for path, f in sorted(part.files.items())]
    # cfn-init runs a config's commands in the order of their keys, so number them.
    elements += [ec2.InitCommand.shell_command(cmd, key=f"{i:02d}-{name}")
                 for i, (name, cmd) in enumerate(part.commands)]
    return ec2.InitConfig(elements)


def app_server_init(layout: render.ServerLayout, database: render.DatabaseEndpoint, *,
                    local_database: bool = False, carry_local_database: bool = False,
                    in_place_updates: bool = False,
                    agent: ec2.InitConfig | None = None) -> ec2.CloudFormationInit:
    """The app tier of one server; with `local_database`, PostgreSQL on the same host (stage 1).

    `agent` (the CloudWatch agent) goes first, so a server that fails later still ships its logs."""
    configs: dict[str, ec2.InitConfig] = {"agent": agent} if agent else {}
    if carry_local_database:
        # Before the app's config: a stage-1 server growing to stage 2 carries its own PostgreSQL into
        # the new database while its files are still stage 1's (app_tier/carry.py says why).
        configs[CARRY_CONFIG] = _config(carry.carry_bootstrap(layout, database))
    version = app_version(layout)
    # Stage 1: render's whole-server bootstrap, PostgreSQL's setup first (the lab tests its order).
    server = render.single_server_bootstrap(layout, database, app_version=version) if local_database else \
        render.app_server_bootstrap(layout, database, app_version=version)
    # The app's code ships as an S3 asset: a change to it is a new asset, hence new Init metadata.
    app_source = ec2.InitSource.from_asset(f"{layout.app_root}/app", layout.app.source_dir)
    configs["app"] = _config(server, sources=[app_source])
    return _init(configs, in_place_updates)


def app_version(layout: render.ServerLayout) -> str:
    """The app's version as the server knows it (render.APP_VERSION_FILE): the first 12 hex digits of
    the source asset's hash, which is CDK's fingerprint of the directory (the stack's AppVersion
    output without the commit, so a commit alone changes no server). It changes only with the app."""
    return FileSystem.fingerprint(layout.app.source_dir)[:12]


def database_server_init(database: render.DatabaseEndpoint, *, allowed_cidr: str,
                         before: list[tuple[str, str]] = (), in_place_updates: bool = False,
                         agent: ec2.InitConfig | None = None,
                         carry: render.ServerBootstrap | None = None) -> ec2.CloudFormationInit:
    """PostgreSQL on its own server; `before` runs first (e.g. attaching the data volume); `carry`, last,
    moves its data into RDS (app_tier/carry.py), after which the setup leaves PostgreSQL retired."""
    configs: dict[str, ec2.InitConfig] = {"agent": agent} if agent else {}
    if before:
        configs["storage"] = _config(render.ServerBootstrap(commands=list(before)))
    configs["database"] = _config(render.database_server_bootstrap(database, allowed_cidr,
                                                                   carrying=carry is not None))
    if carry is not None:
        configs[CARRY_CONFIG] = _config(carry)
    return _init(configs, in_place_updates)


def _init(configs: dict[str, ec2.InitConfig], in_place_updates: bool) -> ec2.CloudFormationInit:
    # "updates" (cfn-hup) and the update's signal are added by apply_with_in_place_updates, once the instance
    # exists; so is the wait handle's URL, first (wait_for_update).
    config_set = list(configs) + ([UPDATES_CONFIG, UPDATE_SIGNAL_CONFIG] if in_place_updates else [])
    return ec2.CloudFormationInit.from_config_sets(config_sets={APP_CONFIG_SET: config_set}, configs=configs)


def init_options_for_group() -> autoscaling.ApplyCloudFormationInitOptions:
    """An Auto Scaling group's servers signal through the group's creation/update policy."""
    return autoscaling.ApplyCloudFormationInitOptions(config_sets=[APP_CONFIG_SET], print_log=True,
                                                      ignore_failures=False)


def apply_with_in_place_updates(instance: ec2.Instance, init: ec2.CloudFormationInit, *,
                                signal_timeout) -> cfn.CfnWaitCondition:
    """Bootstrap a single server and keep it updated in place, each update waited for.

    cfn-hup re-runs cfn-init when the instance's Init metadata changes, so a single server
    (stages 1–2) takes an app update without being replaced, and without losing the data
    on it. The fingerprint is not embedded in the user data for the same reason.

    CloudFormation does not wait for cfn-hup by itself: it would report the update complete before the
    server applied it, and a failed cfn-init there (the release command, the carry, an app that does not
    come up) would fail nothing. So each version of the metadata gets a wait condition and its handle
    (`wait_for_update`): the stack update waits until the server signals that it applied the whole config
    set, and fails, rolling the metadata back (which cfn-hup then applies: the old version again), when it
    signals a failure or the timeout passes.
    """
    stack = Stack.of(instance)
    logical_id = stack.get_logical_id(instance.node.default_child)
    reload_action = (f"/opt/aws/bin/cfn-init -v --stack {stack.stack_name} --resource {logical_id} "
                     f"--configsets {APP_CONFIG_SET} --region {stack.region}")
    # cfn-hup runs the hook file it has when the metadata changes, i.e. the previous version's; the new
    # version's first config has already written the new handle's URL when a later one fails. (A server
    # whose hook predates this line does not signal a failure: that one update waits out the timeout.)
    failed = (f"/opt/aws/bin/cfn-signal -e 1 --reason \"cfn-init failed applying new metadata on {logical_id}: "
              f"see /var/log/cfn-init.log\" \"$(cat {WAIT_HANDLE_FILE})\"")
    init.add_config(UPDATES_CONFIG, _config(render.ServerBootstrap(files={
        "/etc/cfn/cfn-hup.conf": render.ServerFile(
            f"[main]\nstack={stack.stack_id}\nregion={stack.region}\ninterval=1\n", mode="000400"),
        "/etc/cfn/hooks.d/cfn-auto-reloader.conf": render.ServerFile(
            "[cfn-auto-reloader-hook]\ntriggers=post.update\n"
            f"path=Resources.{logical_id}.Metadata.AWS::CloudFormation::Init\n"
            f"action=/bin/sh -c '{reload_action} || {failed}'\nrunas=root\n", mode="000400"),
        # Amazon Linux 2023's aws-cfn-bootstrap has shipped without an installed cfn-hup.service
        # (amazon-linux-2023 issue 728): write the unit AWS documents instead of relying on it.
        CFN_HUP_UNIT: render.ServerFile(
            "[Unit]\nDescription=cfn-hup daemon: applies Init metadata changes in place\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            "[Service]\nType=simple\nExecStart=/opt/aws/bin/cfn-hup\nRestart=always\nRestartSec=5\n\n"
            "[Install]\nWantedBy=multi-user.target\n"),
    # --now starts it only if it is not running: cfn-hup's own hook runs this config again, and a
    # restart from inside its action would kill the action (the unit's control group) midway.
    }, commands=[("enable-cfn-hup", f"systemctl daemon-reload && systemctl enable --now {CFN_HUP_UNIT.rsplit('/', 1)[1]}")])))
    # The last config: reached only when every config before it succeeded (cfn-init stops at the first
    # failure). On the first boot it runs before the user data's cfn-signal to the instance, so the first
    # version's handle is signalled too.
    init.add_config(UPDATE_SIGNAL_CONFIG, _config(render.ServerBootstrap(commands=[(
        "signal-update-applied",
        f"/opt/aws/bin/cfn-signal -e 0 --reason \"{logical_id} applied its Init metadata\" "
        f"\"$(cat {WAIT_HANDLE_FILE})\"")])))
    instance.apply_cloud_formation_init(init, config_sets=[APP_CONFIG_SET], timeout=signal_timeout,
                                        print_log=True, ignore_failures=False, embed_fingerprint=False)
    return wait_for_update(instance)


def metadata_version(init: dict) -> str:
    """A digest of Init metadata as CloudFormation will hold it (tokens resolved to their intrinsics; the
    app's asset by its content hash), taken before the wait handle's URL is added to it."""
    return hashlib.sha256(json.dumps(init, sort_keys=True).encode()).hexdigest()[:12]


def wait_for_update(instance: ec2.Instance) -> cfn.CfnWaitCondition:
    """A wait condition and handle for this version of the instance's Init metadata.

    Their construct IDs end in the metadata's digest: a deploy that changes the metadata creates a new pair
    (the old one is deleted in the update's clean-up), one that does not changes nothing. The condition
    depends on the instance, so CloudFormation updates the metadata first, then waits for one signal on
    the handle (a signal sent before the condition exists counts). The handle's URL is written into the
    metadata's first config, after the digest is taken, so the digest does not depend on itself."""
    resource = instance.instance
    init = Stack.of(resource).resolve(resource.get_metadata(INIT_METADATA))
    digest = metadata_version(init)
    scope = Construct(instance.node.scope, f"{instance.node.id}Updates{digest}")
    handle = cfn.CfnWaitConditionHandle(scope, "Handle")
    condition = cfn.CfnWaitCondition(scope, "Applied", count=1, handle=handle.ref,
                                     timeout=str(int(UPDATE_WAIT_TIMEOUT.to_seconds())))
    condition.add_resource_dependency(resource)
    # First in the config set: a failure in any later config can then be signalled to this version's handle.
    resource.add_override(f"Metadata.{INIT_METADATA}.{WAIT_HANDLE_CONFIG}", {"files": {WAIT_HANDLE_FILE: {
        "content": handle.ref, "encoding": "plain", "mode": "000400", "owner": "root", "group": "root"}}})
    resource.add_override(f"Metadata.{INIT_METADATA}.configSets.{APP_CONFIG_SET}",
                          [WAIT_HANDLE_CONFIG, *init["configSets"][APP_CONFIG_SET]])
    return condition
