"""App versions: the AppVersion output and the `app-version` tag, recorded deploys, and `status` /
`rollback` against the local emulator (deploy v1, deploy a changed app as v2, roll back to v1)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from aws_cdk import App
from cfn import resources
from stack_support import CDK_CONTEXT, build_app

from app_tier import render
from envconfig import load_environment
from rehearsal.run import changed_resources
from rehearsal.synth import changed_app
from stacks import add_environments
from stacks.web_service import APP_VERSION_TAG, COMMIT_CONTEXT
from tools import deploys
from tools.local_aws import cli as local_aws
from tools.local_aws import emulator as emu


def _with_source(config, source: Path):
    return dataclasses.replace(config, app=dataclasses.replace(config.app, source=str(source)))


def _synth(configs, outdir: Path, *, target: str = "aws", commit: str | None = None):
    if commit is None:
        app, stacks = build_app(configs, target=target, outdir=str(outdir))
    else:   # what `-c app-commit=...` gives app.py
        app = App(context={**CDK_CONTEXT, COMMIT_CONTEXT: commit}, outdir=str(outdir),
                  builtin_cloud_formation_validation=False)
        stacks = add_environments(app, configs, target=target)
    return app.synth(), stacks


# --- the version in the template ----------------------------------------------------------------


def _app_asset_hashes(stack) -> set[str]:
    """The assets the app servers' Init sources fetch, as the assets manifest names them."""
    manifest = json.loads(Path(stack.assembly.directory, f"{stack.stack_name}.assets.json").read_text())
    servers = json.dumps([r.get("Metadata", {}).get("AWS::CloudFormation::Init", {}).get("app", {}).get("sources")
                          for r in resources(stack.template, "AWS::EC2::Instance").values()])
    return {h for h in re.findall(r"/([0-9a-f]{64})\.zip", servers) if h in manifest["files"]}


def test_the_version_is_the_app_asset_hash_as_output_and_server_tag(cdk_app):
    _, stacks, assembly = cdk_app   # the session's synthesis: dev as shipped
    stack = assembly.get_stack_by_name(stacks["dev"].stack_name)
    version = stack.template["Outputs"]["AppVersion"]["Value"]
    (asset,) = _app_asset_hashes(stack)
    assert version == asset[:12]
    (server,) = resources(stack.template, "AWS::EC2::Instance").values()
    assert {"Key": APP_VERSION_TAG, "Value": version} in server["Properties"]["Tags"]
    # Not on the launch template: a new launch template version would replace the server.
    assert APP_VERSION_TAG not in json.dumps(resources(stack.template, "AWS::EC2::LaunchTemplate"))


def test_an_app_change_changes_the_version_and_only_the_servers_metadata_and_tag(synthesized_templates,
                                                                                 changed_app_templates):
    before, after = synthesized_templates["dev"], changed_app_templates["dev"]
    assert before["Outputs"]["AppVersion"] != after["Outputs"]["AppVersion"]
    (server_id,) = resources(before, "AWS::EC2::Instance")
    assert changed_resources(before, after, ignore_metadata_of=server_id) == []
    # The check stays strict: any other change to the server still shows.
    other = json.loads(json.dumps(after))
    other["Resources"][server_id]["Properties"]["Tags"].append({"Key": "extra", "Value": "x"})
    assert changed_resources(before, other, ignore_metadata_of=server_id) == [server_id]


def test_the_commit_joins_the_version_and_a_bad_one_is_refused(tmp_path):
    dev = load_environment("dev")
    assembly, stacks = _synth([dev], tmp_path / "ok", commit="5854475-dirty")
    version = assembly.get_stack_by_name(stacks["dev"].stack_name).template["Outputs"]["AppVersion"]["Value"]
    assert version.endswith("+5854475-dirty")
    with pytest.raises(Exception, match=r"context app-commit: got 'main; rm'; allowed: a git commit"):
        _synth([dev], tmp_path / "bad", commit="main; rm")


def test_a_group_tags_the_instances_it_launches_not_the_launch_template(synthesized_templates):
    template = synthesized_templates["staging"]
    (group,) = resources(template, "AWS::AutoScaling::AutoScalingGroup").values()
    version = template["Outputs"]["AppVersion"]["Value"]
    assert {"Key": APP_VERSION_TAG, "Value": version, "PropagateAtLaunch": True} in group["Properties"]["Tags"]
    assert APP_VERSION_TAG not in json.dumps(resources(template, "AWS::EC2::LaunchTemplate"))


def test_git_commit_is_short_head_with_dirty_and_none_without_git(tmp_path):
    assert deploys.git_commit(tmp_path) is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1\n")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert deploys.git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2\n")
    assert deploys.git_commit(tmp_path) == f"{head}-dirty"


# --- recorded deploys ---------------------------------------------------------------------------


def _fake_assembly(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(json.dumps({"artifacts": {"s": {
        "type": "aws:cloudformation:stack", "properties": {"templateFile": "s.template.json"}}}}))
    (directory / "s.template.json").write_text(json.dumps({"Outputs": {"AppVersion": {"Value": version}}}))
    return directory


def test_records_keep_the_last_five_per_target_and_rollback_picks_the_previous_version(tmp_path):
    records = tmp_path / "deploys"
    for n in range(7):
        deploys.record("dev", _fake_assembly(tmp_path / f"a{n}", f"v{n}"), "s", target="aws", deploys_dir=records)
    deploys.record("dev", _fake_assembly(tmp_path / "e", "emu"), "s", target="emulator", deploys_dir=records)
    kept = deploys.history("dev", "aws", records)
    assert [r.number for r in kept] == [3, 4, 5, 6, 7]
    assert kept[-1].path.name == "7-v6" and (kept[-1].assembly / "manifest.json").is_file()
    assert [r.version for r in deploys.history("dev", "emulator", records)] == ["emu"]
    assert deploys.previous("dev", "aws", records).version == "v5"
    # After a rollback (v5 recorded again), the next rollback goes back to v6, not to v5 itself.
    deploys.record("dev", kept[-2].assembly, "s", target="aws", how="rollback to 6", deploys_dir=records)
    assert deploys.previous("dev", "aws", records).version == "v6"
    assert deploys.previous("dev", "aws", records, to=5).version == "v4"


def test_rollback_refuses_without_a_previous_deploy(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    records = tmp_path / "deploys"
    with pytest.raises(deploys.DeployRecordError, match="no recorded deploy .* nothing to roll back to"):
        deploys.previous("dev", "aws", records)
    deploys.record("dev", _fake_assembly(tmp_path / "a", "v1"), "s", target="aws", deploys_dir=records)
    assert deploys.main(["rollback", "--env", "dev", "--deploys-dir", str(records)]) == 2
    assert "environment 'dev': no previous deploy to roll back to" in capsys.readouterr().err
    with pytest.raises(deploys.DeployRecordError, match="no recorded deploy number 9 .* recorded: 1"):
        deploys.previous("dev", "aws", records, to=9)


# --- against the emulator -----------------------------------------------------------------------

STATEFUL = ("AWS::EC2::VPC", "AWS::SecretsManager::Secret", "AWS::EC2::EIP", "AWS::Logs::LogGroup")


def _physical_ids(session, stack_name: str) -> dict[str, tuple[str, str]]:
    listed = session.client("cloudformation").list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    return {r["LogicalResourceId"]: (r["ResourceType"], r.get("PhysicalResourceId"))
            for r in listed if r["ResourceType"] in STATEFUL}


def _deploy(*args, **kwargs) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = local_aws.run(*args, **kwargs)
    assert code == 0, printed.getvalue()[-3000:]
    return printed.getvalue()


@pytest.fixture(scope="module")
def rolled(tmp_path_factory):
    """dev deployed as v1 (synthesized by the CLI, with the commit), then a changed app as v2
    (synthesized in-process, deployed with --app), then rolled back; status read after each."""
    state_dir = tmp_path_factory.mktemp("emulator")
    config = load_environment("dev")
    seen: dict = {"config": config, "state_dir": state_dir}
    saved = os.environ.get("AWS_ENDPOINT_URL")
    try:
        _deploy("deploy", "dev", emu.free_port(), state_dir, state_dir / "cdk.out")
        emulator = emu.running(state_dir)
        os.environ["AWS_ENDPOINT_URL"] = emulator.endpoint_url   # what `make deploy-local` prints
        session = emulator.session(config.region)
        kw = {"state_dir": state_dir, "deploys_dir": state_dir / "deploys"}
        seen["ids_v1"] = _physical_ids(session, config.stack_name)
        seen["status_v1"] = deploys.status(config, **kw)

        v2_dir = tmp_path_factory.mktemp("v2")
        v2 = _with_source(config, changed_app(render.APP_SOURCE_DIR, v2_dir, release="v2"))
        assembly, _ = _synth([v2], v2_dir / "cdk.out", target="emulator")
        _deploy("deploy", "dev", None, state_dir, app=Path(assembly.directory))
        seen["status_v2"] = deploys.status(config, **kw)

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = deploys.main(["rollback", "--env", "dev", "--state-dir", str(state_dir)])
        seen["rollback"] = (code, printed.getvalue())
        seen["status_back"] = deploys.status(config, **kw)
        seen["ids_back"] = _physical_ids(session, config.stack_name)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            deploys.print_status(seen["status_back"])
        seen["printed"] = printed.getvalue()
        yield seen
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved
        emu.stop(state_dir)


def _server_versions(status: dict) -> list[str]:
    return [s["version"] for s in status["servers"] if s["version"]]


@pytest.mark.emulator
@pytest.mark.slow
def test_status_shows_each_version_on_the_server_and_the_stack(rolled):
    v1, v2 = rolled["status_v1"], rolled["status_v2"]
    assert v1["version"] and v2["version"] and v1["version"].split("+")[0] != v2["version"].split("+")[0]
    commit = deploys.git_commit()
    if commit:   # the CLI synth of v1 carried the commit
        assert v1["version"].endswith(f"+{commit}")
    assert _server_versions(v1) == [v1["version"]]
    assert [r.version for r in v2["history"]] == [v1["version"], v2["version"]]


@pytest.mark.emulator
@pytest.mark.slow
def test_status_shows_v2_on_the_server_after_the_update(rolled):
    assert _server_versions(rolled["status_v2"]) == [rolled["status_v2"]["version"]]


@pytest.mark.emulator
@pytest.mark.slow
def test_rollback_puts_v1_back_without_replacing_anything_stateful(rolled):
    code, printed = rolled["rollback"]
    assert code == 0, printed
    back, v1 = rolled["status_back"], rolled["status_v1"]
    assert back["status"] == "UPDATE_COMPLETE"
    assert back["version"] == v1["version"] and _server_versions(back) == [v1["version"]]
    assert [r.how for r in back["history"]] == ["deploy", "deploy", "rollback to 1"]
    assert rolled["ids_v1"] and rolled["ids_back"] == rolled["ids_v1"]
    assert {t for t, _ in rolled["ids_v1"].values()} >= {"AWS::EC2::VPC", "AWS::EC2::EIP", "AWS::Logs::LogGroup"}
    assert f"AppVersion: {v1['version']}" in rolled["printed"] and "rollback to 1" in rolled["printed"]


@pytest.mark.emulator
@pytest.mark.slow
def test_status_against_a_stopped_emulator_says_what_to_do(rolled, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://localhost:{emu.free_port()}")
    assert deploys.main(["status", "--env", "dev", "--state-dir", str(rolled["state_dir"])]) == 2
    assert "no emulator this checkout started answers there" in capsys.readouterr().err


def test_every_app_server_knows_its_version_as_the_asset_hash(synthesized_templates, changed_app_templates):
    """/etc/webapp/app-version (what the release script records) is the AppVersion output without the
    commit, on the single server and the group's servers alike, and moves with the app."""
    for templates in (synthesized_templates, changed_app_templates):
        for name in ("dev", "prod"):
            template = templates[name]
            version = template["Outputs"]["AppVersion"]["Value"].split("+")[0]
            inits = [r["Metadata"]["AWS::CloudFormation::Init"] for r in template["Resources"].values()
                     if "AWS::CloudFormation::Init" in r.get("Metadata", {})
                     and "app" in r["Metadata"]["AWS::CloudFormation::Init"]]
            assert inits, name
            for init in inits:
                assert init["app"]["files"][render.APP_VERSION_FILE]["content"] == version + "\n"
