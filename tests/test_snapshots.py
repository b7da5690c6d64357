"""Whole-template snapshots per environment; asset hashes are masked so they stay stable.

A failing snapshot means the synthesized CloudFormation changed. Review the diff, then
accept it with `make snapshot-update`.
"""

from __future__ import annotations

import json
import re

import pytest
from stack_support import SHIPPED, VARIANTS
from syrupy.extensions.json import JSONSnapshotExtension

ASSET_HASH = re.compile(r"[0-9a-f]{64}")


def masked(template: dict) -> dict:
    return json.loads(ASSET_HASH.sub("<asset-hash>", json.dumps(template)))


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize("env", SHIPPED + VARIANTS)
def test_template_matches_snapshot(synthesized_templates, snapshot_json, env):
    assert masked(synthesized_templates[env]) == snapshot_json


def test_masking_removes_every_asset_hash(synthesized_templates):
    text = json.dumps(masked(synthesized_templates["prod"]))
    assert not ASSET_HASH.search(text)
    assert "<asset-hash>" in text
