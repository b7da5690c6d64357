"""render.py: pure functions whose output real tools accept (systemd-analyze verify, nginx -t)."""

import dataclasses
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from app_tier import render
from app_tier.lab import find_nginx, free_port, nginx_command
from app_tier.render import AppSecret, AppSpec, DatabaseEndpoint, ServerLayout

TOKEN_HOST = "${Token[TOKEN.123]}"
TOKEN_SECRET = "${Token[TOKEN.456]}"
DATABASE = DatabaseEndpoint(host=TOKEN_HOST, secret_arn=TOKEN_SECRET)
LOCAL_DATABASE = DatabaseEndpoint(host="127.0.0.1", secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:db")


def every_rendered_file(layout: ServerLayout) -> dict[str, render.ServerFile]:
    files = dict(render.app_server_files(layout, DATABASE))
    files.update(render.database_server_files(DATABASE, "10.0.0.0/16"))
    return files


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_tokens_pass_through_unchanged_and_no_password_is_rendered(stage, monkeypatch):
    # A password in this process's environment must not leak into anything rendered.
    monkeypatch.setenv("DB_PASSWORD", "hunter2-in-the-environment")
    monkeypatch.setenv(render.PASSWORD_ENV, "hunter2-in-the-environment")
    files = every_rendered_file(ServerLayout(proxy=stage == 4, processes=2))
    text = "\n".join(f.content for f in files.values())
    assert f"DB_HOST=\"{TOKEN_HOST}\"\n" in files[render.ENV_FILE].content
    assert f"secret_arn='{TOKEN_SECRET}'" in files[render.FETCH_PASSWORD_SCRIPT].content
    assert "hunter2" not in text
    assert not re.search(r"(?<![A-Z_])DB_PASSWORD=", text)  # only ever DB_PASSWORD_FILE


def test_rendering_is_pure():
    layout = ServerLayout(proxy=True, processes=3)
    assert every_rendered_file(layout) == every_rendered_file(layout)
    assert render.app_server_commands(layout) == render.app_server_commands(layout)
    assert layout == ServerLayout(proxy=True, processes=3)


def test_stages_1_to_3_run_one_process_and_stage_4_one_port_per_copy():
    assert ServerLayout(processes=8).processes == 1
    assert ServerLayout(proxy=True, processes=3).app_ports == [8001, 8002, 8003]
    assert render.app_units(ServerLayout(proxy=True, processes=2)) == ["app@8001.service", "app@8002.service"]
    assert render.app_binds(ServerLayout(processes=1)) == ["0.0.0.0:80"]
    for bad in ({"proxy": True, "processes": 0}, {"proxy": True, "processes": 2, "service_port": 8002},
                {"app_root": "relative/path"}):
        with pytest.raises(ValueError):
            ServerLayout(**bad)


def test_one_start_command_swaps_the_app():
    layout = ServerLayout(proxy=True, processes=2,
                          app=AppSpec(start_command="/opt/webapp/venv/bin/myapp --fd {fd} --name {bind} --fmt 50%"))
    unit = render.app_server_files(layout, DATABASE)[f"{render.UNIT_DIR}/app@.service"].content
    assert "ExecStart=/opt/webapp/venv/bin/myapp --fd 3 --name 127.0.0.1:%i --fmt 50%%\n" in unit
    assert render.app_start_command(layout, "127.0.0.1:8002") == \
        "/opt/webapp/venv/bin/myapp --fd 3 --name 127.0.0.1:8002 --fmt 50%"


@pytest.mark.parametrize("bad", [
    {"start_command": "myapp --port 8000"},                       # serves no inherited socket
    {"start_command": "uvicorn app:app --host {host} --port {port}"},  # binds the port systemd holds
    {"start_command": "myapp --fd {fd} --log {logfile}"},         # an unknown placeholder
    {"start_command": "myapp --fd {fd}\nrm -rf /"},               # two lines
    {"release_command": "migrate --port {port}"},                 # a release has no port
    {"release_command": "migrate\nrm -rf /"},                     # two lines
    {"health_path": "health"},
    {"environment": {"lower": "x"}},
    {"environment": {"DB_HOST": "elsewhere"}},                    # the platform's
    {"environment": {"TOKEN": "a"}, "secrets": {"TOKEN": AppSecret(store="ssm", name="/t")}},
    {"packages": ("bad package",)},
])
def test_the_app_contract_refuses_what_a_server_could_not_run(bad):
    with pytest.raises(ValueError):
        AppSpec(**bad)


def test_the_app_contract_reaches_the_server_and_secrets_stay_references():
    app = AppSpec(packages=("libpq", "logrotate"), environment={"GREETING": "hello"},
                  secrets={"API_TOKEN": AppSecret(store="secretsmanager", name="prod/api", key="token"),
                           "FLAG": AppSecret(store="ssm", name="/app/flag")})
    layout = ServerLayout(app=app)
    files = render.app_server_files(layout, LOCAL_DATABASE)
    assert files[render.ENV_FILE].content.endswith('GREETING="hello"\n')
    assert "API_TOKEN" not in files[render.ENV_FILE].content and "FLAG" not in files[render.ENV_FILE].content
    unit = files[f"{render.UNIT_DIR}/app.service"].content
    assert f"EnvironmentFile={render.APP_SECRETS_FILE}\n" in unit
    assert f"Requires={render.FETCH_APP_SECRETS_UNIT}\n" in unit
    script = files[render.FETCH_APP_SECRETS_SCRIPT].content
    assert '["API_TOKEN", "secretsmanager", "prod/api", "token"]' in script and '["FLAG", "ssm", "/app/flag", ""]' in script
    assert files[render.FETCH_APP_SECRETS_SCRIPT].mode == "000700"
    compile(script, "fetch-app-secrets", "exec")
    packages = render.app_server_packages(layout, database=LOCAL_DATABASE)
    assert packages.count("logrotate") == 1 and "libpq" in packages and "awscli-2" in packages
    start = dict(render.app_server_commands(layout))["25-app-start"]
    assert start.index(render.FETCH_APP_SECRETS_UNIT) < start.index("restart app.service")
    # Without secrets, none of it.
    plain = render.app_server_files(ServerLayout(), LOCAL_DATABASE)
    assert render.FETCH_APP_SECRETS_SCRIPT not in plain
    assert "EnvironmentFile=/run" not in plain[f"{render.UNIT_DIR}/app.service"].content


def test_the_secrets_file_quotes_what_systemd_would_otherwise_expand(tmp_path):
    """The rendered fetch script's quoting, run for real: systemd reads `\\`, `"`, `$` and backquotes literally."""
    app = AppSpec(secrets={"ODD": AppSecret(store="ssm", name="/odd")})
    script = render.app_server_files(ServerLayout(app=app), LOCAL_DATABASE)[render.FETCH_APP_SECRETS_SCRIPT].content
    namespace: dict = {}
    exec(script.split("\nlines = []")[0], namespace)  # the definitions, not the fetching
    assert namespace["quoted"]('a"b$c`d\\e') == '"a\\"b\\$c\\`d\\\\e"'
    # The same quoting as the plain variables' file: one rule for both of systemd's environment files.
    for value in ('a"b$c`d\\e', "plain", "${HOME} `x`"):
        assert namespace["quoted"](value) == render.environment_file_value(value)


@pytest.mark.parametrize("value", ['plain', 'two words', 'a"b', "$HOME and ${X}", "C:\\path\\", "`id`", "'single'"])
def test_environment_file_values_read_back_unchanged(value):
    line = f"V={render.environment_file_value(value)}"
    assert render.read_environment_file(line) == {"V": value}


def test_stage_4_nginx_spreads_over_every_copy_and_retries():
    conf = render.nginx_config(ServerLayout(proxy=True, processes=3))
    for port in (8001, 8002, 8003):
        assert f"server 127.0.0.1:{port} max_fails=0;" in conf
    assert "proxy_next_upstream error timeout http_502 http_503;" in conf
    assert "listen 80 default_server;" in conf
    assert "server_tokens off;" in conf


def test_stage_1_server_has_database_then_app_with_shared_secret_fetch_once():
    layout = ServerLayout(processes=1)
    server = render.single_server_bootstrap(layout, LOCAL_DATABASE)
    names = [name for name, _ in server.commands]
    assert names == sorted(names) and names[0] == "10-database-setup"
    assert "postgresql15-server" in server.packages and server.packages.count("awscli-2") == 1
    assert "127.0.0.1/32" in server.files[f"{render.PG_CONF_DIR}/pg_hba.conf"].content
    assert "listen_addresses = 'localhost'" in server.files[f"{render.PG_CONF_DIR}/postgresql.conf"].content
    unit = server.files[f"{render.UNIT_DIR}/app.service"].content
    # systemd binds port 80 (app.socket); the app keeps no capability at all.
    assert "AmbientCapabilities" not in unit and "CapabilityBoundingSet=\n" in unit
    assert "Requires=app.socket\n" in unit
    assert f"LoadCredential=db-password:{render.PASSWORD_FILE}" in unit
    assert server.files[render.FETCH_PASSWORD_SCRIPT].mode == "000700"


# --- the rendered files, checked by the tools that will read them -------------------------


def write_tree(root: Path, files: dict[str, render.ServerFile]) -> None:
    for path, file in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file.content)
        target.chmod(int(file.mode, 8))


@pytest.mark.lab
@pytest.mark.parametrize("stage", [1, 4])
def test_rendered_units_pass_systemd_analyze_verify(stage, tmp_path, systemd_analyze):
    # Stage 1 with the app's own secrets too: their unit and EnvironmentFile= must verify as well.
    app = AppSpec(secrets={"API_TOKEN": AppSecret(store="ssm", name="/app/token")}) if stage == 1 else AppSpec()
    layout = ServerLayout(proxy=stage == 4, processes=2, app=app)
    files = render.app_server_files(layout, LOCAL_DATABASE)
    write_tree(tmp_path, files)
    # What a server has by the time the units start: systemd's own units, and the app's venv
    # (created by the rendered commands; a stand-in executable here).
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    gunicorn = tmp_path / layout.app_root.lstrip("/") / "venv/bin/gunicorn"
    gunicorn.parent.mkdir(parents=True)
    gunicorn.write_text("#!/bin/sh\n")
    gunicorn.chmod(stat.S_IRWXU)
    units = render.app_units(layout) + render.app_sockets(layout) + [render.FETCH_PASSWORD_UNIT] + \
        ([render.FETCH_APP_SECRETS_UNIT] if app.secrets else [])
    result = subprocess.run([systemd_analyze, "verify", f"--root={tmp_path}", *units],
                            check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # warnings (unknown keys, bad values) count too


@pytest.fixture(scope="module")
def nginx(lab_tools):
    return find_nginx()


def nginx_test(conf: Path, error_log: str, user: dict) -> subprocess.CompletedProcess:
    return subprocess.run(nginx_command(conf, error_log) + ["-t"], check=False, capture_output=True, text=True,
                          **user)


@pytest.mark.lab
def test_lab_nginx_config_passes_nginx_t(tmp_path, nginx):
    layout = ServerLayout(proxy=True, processes=2, service_port=18080)
    paths = render.NginxPaths(pid=str(tmp_path / "nginx.pid"), error_log=str(tmp_path / "error.log"),
                              access_log=str(tmp_path / "access.log"), temp_dir=str(tmp_path), user=None)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render.nginx_config(layout, paths, listen_host="127.0.0.1"))
    result = nginx_test(conf, paths.error_log, {})
    assert result.returncode == 0, result.stderr


@pytest.fixture
def unprivileged_dir():
    """A directory nobody can use when the tests run as root (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="render-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.lab
def test_server_nginx_config_passes_nginx_t_under_a_prefix(unprivileged_dir, nginx):
    """The server's config, except that its paths move under a prefix and it listens on a free
    port: `nginx -t` binds the listen address, and port 80 needs root."""
    prefix = unprivileged_dir
    conf_text = render.nginx_config(ServerLayout(proxy=True, processes=4, service_port=free_port()))
    for field in dataclasses.fields(render.NginxPaths):
        value = getattr(render.NginxPaths(), field.name)
        if field.name != "user":
            conf_text = conf_text.replace(f" {value}", f" {prefix}{value}")
            directory = Path(f"{prefix}{value}")  # the package creates these on a server
            (directory if field.name == "temp_dir" else directory.parent).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    # Run as an unprivileged user: nginx then ignores `user nginx;` (no such user here) with a
    # warning, where root would fail looking it up.
    user = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        for path in [prefix, *prefix.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    result = nginx_test(conf, f"{prefix}{render.NginxPaths().error_log}", user)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_sample_app_pins_are_the_ones_the_lab_runs():
    """Servers install sample_app/requirements.txt; the lab runs the project venv (requirements-dev.txt)."""
    def pins(path: Path) -> set[str]:
        return {line.split("#")[0].strip() for line in path.read_text().splitlines()
                if "==" in line and not line.lstrip().startswith("#")}

    app_pins = pins(render.APP_SOURCE_DIR / "requirements.txt")
    assert app_pins and app_pins <= pins(Path(__file__).parents[2] / "requirements-dev.txt")


# --- socket activation, graceful stops, the release command -------------------------------


@pytest.mark.parametrize("proxy", [False, True], ids=["stage1-3", "stage4"])
def test_every_copy_serves_a_socket_systemd_holds_across_its_restarts(proxy):
    layout = ServerLayout(proxy=proxy, processes=2)
    files = render.app_server_files(layout, DATABASE)
    name = "app@" if proxy else "app"
    socket_unit = files[f"{render.UNIT_DIR}/{name}.socket"].content
    listen = "127.0.0.1:%i" if proxy else "0.0.0.0:80"
    assert f"ListenStream={listen}\n" in socket_unit and f"Backlog={render.SOCKET_BACKLOG}\n" in socket_unit
    service = files[f"{render.UNIT_DIR}/{name}.service"].content
    socket_name = "app@%i.socket" if proxy else "app.socket"
    assert f"Requires={socket_name}\n" in service and f"After={socket_name}\n" in service
    assert f"TimeoutStopSec={render.TIMEOUT_STOP_SEC}\n" in service
    assert render.TIMEOUT_STOP_SEC > render.GRACEFUL_STOP_SEC and render.GRACEFUL_STOP_SEC < 30  # the ALB's drain
    start = dict(render.app_server_commands(layout))["25-app-start"]
    sockets = " ".join(render.app_sockets(layout))
    # Sockets are started (enable --now: a no-op once running), never restarted; only the copies are.
    assert f"systemctl enable --now {sockets}" in start and "restart app" in start
    assert not re.search(r"restart [^&]*\.socket", start)
    assert start.index(f"enable --now {sockets}") < start.index("systemctl restart")


def test_the_default_start_commands_stop_gracefully():
    assert "--graceful-timeout 25" in render.DEFAULT_START_COMMAND
    assert f"{render.GRACEFUL_STOP_SEC}" == "25"
    from rehearsal.synth import stage2_config
    from stacks.config_mapping import app_spec
    uvicorn = app_spec(stage2_config()).start_command
    assert "--fd {fd}" in uvicorn and "--timeout-graceful-shutdown 25" in uvicorn


def test_stage_4_nginx_stops_gracefully():
    files = render.app_server_files(ServerLayout(proxy=True, processes=2), DATABASE)
    drop_in = files[render.NGINX_DROP_IN].content
    assert "KillSignal=SIGQUIT\n" in drop_in and f"TimeoutStopSec={render.TIMEOUT_STOP_SEC}\n" in drop_in
    assert f"worker_shutdown_timeout {render.GRACEFUL_STOP_SEC}s;" in files[render.NGINX_CONF].content
    assert render.NGINX_DROP_IN not in render.app_server_files(ServerLayout(), DATABASE)


def test_the_release_command_runs_before_the_new_version_starts():
    app = AppSpec(release_command="{app_root}/venv/bin/python -m myapp.migrate --to head",
                  secrets={"API_TOKEN": AppSecret(store="ssm", name="/t")})
    layout = ServerLayout(app=app)
    server = render.app_server_bootstrap(layout, DATABASE, app_version="0123456789ab")
    names = [name for name, _ in server.commands]
    assert names.index("24-app-release") == names.index("25-app-start") - 1
    # The password and the app's secrets are read (again) before it: at first boot nothing else has started
    # them, and an update may have changed them (1 -> 2 moves the app to a new database and its secret).
    # By their scripts, not by restarting their units: the app units Require= those, so a restart of one
    # would restart the running copies on the new code before the release ran.
    assert dict(server.commands)["24-app-release"] == (
        f"systemctl daemon-reload && (umask 077 && {render.FETCH_PASSWORD_SCRIPT}) && "
        f"(umask 077 && {render.FETCH_APP_SECRETS_SCRIPT}) && {render.RELEASE_SCRIPT}")
    assert "systemctl restart" not in dict(server.commands)["24-app-release"]
    # The app's start reads them again too, with or without a release command.
    start = dict(server.commands)["25-app-start"]
    assert start.index(f"systemctl restart {render.FETCH_PASSWORD_UNIT}") < start.index("systemctl restart app.service")
    assert "postgresql15" in server.packages
    assert server.files[render.APP_VERSION_FILE].content == "0123456789ab\n"
    assert server.files[render.RELEASE_SCRIPT].mode == "000700"
    command = server.files[render.RELEASE_COMMAND_FILE].content
    assert command.rstrip().endswith("/opt/webapp/venv/bin/python -m myapp.migrate --to head")
    script = server.files[render.RELEASE_SCRIPT].content
    # As the app's units run it: its user, directory, environment, password credential and secrets.
    for part in ("-p User=webapp", "-p WorkingDirectory=/opt/webapp/app", f"-p EnvironmentFile={render.ENV_FILE}",
                 f"-p LoadCredential=db-password:{render.PASSWORD_FILE}",
                 f"-p EnvironmentFile={render.APP_SECRETS_FILE}", '-E APP_VERSION="$version"'):
        assert part in script
    assert "pg_advisory_lock" in script and "webapp_release" in script
    for text in (script, command):
        assert subprocess.run(["bash", "-n"], input=text, text=True, check=False).returncode == 0
    # Without a release command, none of it.
    plain = render.app_server_bootstrap(ServerLayout(app=AppSpec(release_command="")), DATABASE)
    assert "24-app-release" not in dict(plain.commands) and render.RELEASE_SCRIPT not in plain.files
    assert "postgresql15" not in plain.packages
