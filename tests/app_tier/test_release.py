"""The release script for real: the script a server's 24-app-release runs, against a real PostgreSQL
(the lab's), with a stand-in runner for systemd-run. Once per version across concurrent servers,
never recorded when the command fails, and run again until it succeeds."""

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app_tier import render
from app_tier.lab import Lab, find_postgres_bin

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(lab_tools):
    with Lab(stage=1, port=0) as running:
        yield running


def release(lab: Lab, tmp_path: Path, version: str, *, exit_code: int = 0,
            host: str = "server") -> subprocess.CompletedProcess:
    """Render the server's release script with lab paths and run it as a server would."""
    # Each server its own files: concurrent servers must not read a file another is rewriting.
    version_file = tmp_path / f"version-{host}"
    version_file.write_text(version + "\n")
    env_file = tmp_path / f"app-{host}.env"
    env_file.write_text("".join(f"{k}={render.environment_file_value(v)}\n" for k, v in lab.env.items()
                                if k.startswith("DB_")))
    command = tmp_path / "command"  # what the release command does: one line per run, then its exit code
    command.write_text(f'sleep 0.3; echo "$APP_VERSION $DB_NAME" >> {tmp_path}/runs; exit {exit_code}\n')
    script = render.release_script(lab.layout, lab.database, runner=f"bash {command}",
                                   version_file=str(version_file), env_file=str(env_file),
                                   password_file=lab.env["DB_PASSWORD_FILE"])
    path = tmp_path / f"release-{host}"
    path.write_text(script)
    env = {"PATH": f"{find_postgres_bin()}:/usr/bin:/bin", "HOSTNAME": host}
    return subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=60, check=False)


def runs(tmp_path: Path) -> list[str]:
    path = tmp_path / "runs"
    return path.read_text().splitlines() if path.exists() else []


def test_a_version_is_released_once_across_concurrent_servers(lab, tmp_path):
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: release(lab, tmp_path, "aaaaaaaaaaa1", host=f"s{i}"), range(3)))
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert runs(tmp_path) == ["aaaaaaaaaaa1 app"]  # once, with the app's environment and APP_VERSION
    assert sum("nothing to run" in r.stdout for r in results) == 2
    again = release(lab, tmp_path, "aaaaaaaaaaa1")
    assert again.returncode == 0 and "nothing to run" in again.stdout and len(runs(tmp_path)) == 1
    # A new version runs again.
    assert release(lab, tmp_path, "aaaaaaaaaaa2").returncode == 0
    assert runs(tmp_path)[-1] == "aaaaaaaaaaa2 app"


def test_a_failed_release_fails_the_script_and_is_not_recorded(lab, tmp_path):
    failed = release(lab, tmp_path, "bbbbbbbbbbb1", exit_code=3)
    assert failed.returncode != 0 and "failed; the running version keeps serving" in failed.stderr
    retried = release(lab, tmp_path, "bbbbbbbbbbb1")
    assert retried.returncode == 0 and "released" in retried.stdout
    assert runs(tmp_path) == ["bbbbbbbbbbb1 app", "bbbbbbbbbbb1 app"]  # the failed run, then the good one


def test_the_release_script_fails_without_a_version_or_a_database(lab, tmp_path):
    assert release(lab, tmp_path, "not-a-version").returncode != 0
    lab.stop_database()
    try:
        result = release(lab, tmp_path, "ccccccccccc1")
    finally:
        lab.start_database()
    assert result.returncode != 0 and runs(tmp_path) == []


def test_the_lab_ran_the_sample_apps_release_command(lab):
    """The sample app's schema comes from its release command (migrate.py), not from requests."""
    out = subprocess.run([str(find_postgres_bin() / "psql"), "-h", "127.0.0.1", "-p", str(lab.database.port),
                          "-U", lab.database.user, "-d", lab.database.name, "-tAc",
                          "SELECT version FROM release_runs"],
                         env={"PGPASSWORD": Path(lab.env["DB_PASSWORD_FILE"]).read_text()},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["lab"]
