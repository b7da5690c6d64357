"""What a fresh clone and a forker rely on: layout, pins, flags."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from stack_support import ROOT, SHIPPED, VARIANTS


def test_no_top_level_constructs_folder_shadows_the_constructs_package():
    # A folder named constructs/ next to app.py is imported instead of the `constructs`
    # package aws-cdk-lib needs, and the app breaks.
    assert not (ROOT / "constructs").exists()
    origin = importlib.util.find_spec("constructs").origin
    assert "site-packages" in origin, origin


def test_cdk_json_has_the_recommended_flags_and_quiet_cli():
    cdk = json.loads((ROOT / "cdk.json").read_text())
    assert cdk["notices"] is False and cdk["cli-telemetry"] is False
    context = cdk["context"]
    assert context["@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig"] is True
    assert context["@aws-cdk/aws-ec2:restrictDefaultSecurityGroup"] is True
    assert len([k for k in context if k.startswith("@aws-cdk")]) >= 80


def test_cli_and_node_are_pinned():
    package = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    assert package["aws-cdk"].startswith("2.1") and package["aws-cdk"][0].isdigit()
    assert package["node"].startswith("22.")


def test_python_requirements_are_pinned_exactly():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert "==" in line, f"{name}: {line} is not pinned"


def test_synthesized_templates_hold_no_context_lookup_need(cdk_app):
    # Offline synth: nothing in the app asked for an account-bound lookup.
    context = json.loads((ROOT / "cdk.context.json").read_text())
    assert context == {}
    _, _, assembly = cdk_app
    # A lookup without its answer in context (Vpc.from_lookup, valueFromLookup, the AZs of an
    # account) is recorded in the manifest's "missing" and synthesized with a dummy value instead
    # of failing. (Read as JSON: jsii cannot hand the manifest's artifacts to Python.)
    manifest = json.loads((Path(assembly.directory) / "manifest.json").read_text())
    assert not manifest.get("missing"), [m["key"] for m in manifest["missing"]]
    # Every environment and variant, and nothing else, came out of that synth.
    assert {s.stack_name for s in assembly.stacks} == {f"staged-web-{name}" for name in SHIPPED + VARIANTS}


def test_cdk_cli_synthesizes_every_environment_offline_without_credentials(tmp_path):
    """The real CLI, no AWS credentials or config, an empty HOME: synth must still work."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), CDK_DISABLE_CLI_TELEMETRY="true", AWS_EC2_METADATA_DISABLED="true",
               PATH=f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["npx", "--no-install", "cdk", "synth", "--quiet", "--output", str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "end-of-life" not in result.stderr   # Node 22 from package.json, not the machine's Node 20
    for name in ("dev", "staging", "prod"):
        assert (tmp_path / "out" / f"staged-web-{name}.template.json").is_file()


def test_ruff_finds_nothing():
    import subprocess
    import sys

    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "--output-format", "concise", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
