"""cdk-nag (AwsSolutions) and cfn-lint over every environment and variant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cdk_nag import AwsSolutionsChecks
from stack_support import ROOT, SHIPPED, VARIANTS, build_app, variant_configs

from envconfig import load_environments


def test_cdk_nag_finds_nothing_unacknowledged(cdk_app):
    app = cdk_app[0]
    report = AwsSolutionsChecks().validate_scope(app)
    violations = [f"{v.rule_name} at {[r.construct_path for r in v.violating_resources]}"
                  for v in report.violations]
    assert report.success, violations
    assert violations == []


def test_cdk_nag_fails_the_synth_on_a_regression(tmp_path):
    """The check is live: an unencrypted bucket with no acknowledgment stops the synth."""
    from aws_cdk import aws_s3 as s3

    app, stacks = build_app([c for c in load_environments() if c.name == "dev"], outdir=str(tmp_path))
    s3.Bucket(stacks["dev"], "Regression")
    with pytest.raises(Exception, match="AwsSolutions-S1"):
        app.synth()


def test_emulator_target_builds_without_custom_resources():
    app, stacks = build_app(load_environments() + variant_configs(), target="emulator")
    assembly = app.synth()
    for name, stack in stacks.items():
        template = assembly.get_stack_by_name(stack.stack_name).template
        custom = [r["Type"] for r in template["Resources"].values()
                  if r["Type"].startswith("Custom::") or r["Type"] == "AWS::Lambda::Function"]
        assert custom == [], name


@pytest.mark.parametrize("env", SHIPPED + VARIANTS)
def test_cfn_lint_is_clean(template_files, env):
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), "--", str(template_files[env])],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_ignore_list_is_documented():
    config = (ROOT / ".cfnlintrc.yaml").read_text()
    ignored = [line.strip()[2:] for line in config.splitlines() if line.strip().startswith("- W") or
               line.strip().startswith("- E")]
    for rule in ignored:
        before = config.split(f"- {rule}")[0]
        assert rule in before.rsplit("ignore_checks:", 1)[-1], f"{rule} needs a comment with its reason"
    assert json.dumps(ignored) == json.dumps(["W3005"])
