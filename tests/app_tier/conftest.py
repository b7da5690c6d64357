"""Shared fixtures for the app tier: the lab's tools must be present, or CI fails."""

import os
import shutil

import pytest

from app_tier.lab import missing_tools


def require(missing: list[str]) -> None:
    """Skip on a developer machine without the tools; fail in CI, where a skip would hide the gap."""
    if missing:
        message = "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"the app tier tests cannot run: {message}")
        pytest.skip(message)


@pytest.fixture(scope="session")
def lab_tools() -> None:
    require(missing_tools(stage=4))


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    require([] if path else ["systemd-analyze is not installed: install the systemd package"])
    return path
