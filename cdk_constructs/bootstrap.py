"""CloudFormation Init built from `app_tier.render`: what a server gets is what the local lab runs.

This module only translates. Every file, package and command comes from the app tier's
render module, so there is one copy of the server software and the lab tests it.
"""

from __future__ import annotations

from aws_cdk import FileSystem, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2

from app_tier import carry, render

APP_CONFIG_SET = "webapp"
UPDATES_CONFIG = "updates"
CFN_HUP_UNIT = "/etc/systemd/system/cfn-hup.service"


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
        configs["carry"] = _config(carry.carry_bootstrap(layout, database))
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
                         agent: ec2.InitConfig | None = None) -> ec2.CloudFormationInit:
    """PostgreSQL on its own server; `before` runs first (e.g. attaching the data volume)."""
    configs: dict[str, ec2.InitConfig] = {"agent": agent} if agent else {}
    if before:
        configs["storage"] = _config(render.ServerBootstrap(commands=list(before)))
    configs["database"] = _config(render.database_server_bootstrap(database, allowed_cidr))
    return _init(configs, in_place_updates)


def _init(configs: dict[str, ec2.InitConfig], in_place_updates: bool) -> ec2.CloudFormationInit:
    # "updates" (cfn-hup) is added by apply_with_in_place_updates, once the instance exists.
    config_set = list(configs) + ([UPDATES_CONFIG] if in_place_updates else [])
    return ec2.CloudFormationInit.from_config_sets(config_sets={APP_CONFIG_SET: config_set}, configs=configs)


def init_options_for_group() -> autoscaling.ApplyCloudFormationInitOptions:
    """An Auto Scaling group's servers signal through the group's creation/update policy."""
    return autoscaling.ApplyCloudFormationInitOptions(config_sets=[APP_CONFIG_SET], print_log=True,
                                                      ignore_failures=False)


def apply_with_in_place_updates(instance: ec2.Instance, init: ec2.CloudFormationInit, *,
                                signal_timeout) -> None:
    """Bootstrap a single server and keep it updated in place.

    cfn-hup re-runs cfn-init when the instance's Init metadata changes, so a single server
    (stages 1–2) takes an app update without being replaced, and without losing the data
    on it. The fingerprint is not embedded in the user data for the same reason.
    """
    stack = Stack.of(instance)
    logical_id = stack.get_logical_id(instance.node.default_child)
    reload_action = (f"/opt/aws/bin/cfn-init -v --stack {stack.stack_name} --resource {logical_id} "
                     f"--configsets {APP_CONFIG_SET} --region {stack.region}")
    init.add_config(UPDATES_CONFIG, _config(render.ServerBootstrap(files={
        "/etc/cfn/cfn-hup.conf": render.ServerFile(
            f"[main]\nstack={stack.stack_id}\nregion={stack.region}\ninterval=1\n", mode="000400"),
        "/etc/cfn/hooks.d/cfn-auto-reloader.conf": render.ServerFile(
            "[cfn-auto-reloader-hook]\ntriggers=post.update\n"
            f"path=Resources.{logical_id}.Metadata.AWS::CloudFormation::Init\n"
            f"action={reload_action}\nrunas=root\n", mode="000400"),
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
    instance.apply_cloud_formation_init(init, config_sets=[APP_CONFIG_SET], timeout=signal_timeout,
                                        print_log=True, ignore_failures=False, embed_fingerprint=False)
