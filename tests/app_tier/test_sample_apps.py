"""The ASGI sample's pins: what a server installs is what the lab runs (test_render.py checks the
WSGI sample's). The lab runs both apps for real in test_lab.py."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins(path: Path) -> set[str]:
    return {line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def test_the_asgi_sample_pins_exactly_what_the_lab_runs():
    """Servers build a venv from the app's requirements.txt; the lab runs the project's venv."""
    app_pins = pins(ROOT / "app_tier" / "sample_asgi" / "requirements.txt")
    assert app_pins and all("==" in pin for pin in app_pins)
    assert app_pins <= pins(ROOT / "requirements-dev.txt")
