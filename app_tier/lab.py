"""Run one server's app tier on loopback, for real: PostgreSQL, N app copies and nginx (stage 4).

    python -m app_tier.lab --stage 4 --processes 2 --port 8080
    python -m app_tier.lab --env dev            # the app that config/dev.toml's [app] names
    python -m app_tier.lab --app-source app_tier/sample_asgi --start-command '...' --health-path /health

Everything comes from app_tier.render, as on a server: the copies' start command and
environment, the nginx config (only its paths and listen address differ) and the database's
settings, access rules and setup SQL. A supervisor plays systemd's Restart=always. The lab
installs nothing; when nginx or PostgreSQL is missing it says which package to install.

The app is the one an environment's [app] names (render.AppSpec): its source, start command,
health path and environment. Its secrets cannot be read from AWS here: their values come from
`secret_values`, else from the lab's own environment (a variable of the same name), else a
placeholder, and reach the copies' environment as systemd's EnvironmentFile= would.

Tests and benchmarks use the Python API:

    with Lab(stage=4, processes=2, port=0, app=render.AppSpec(...)) as lab:
        lab.url, lab.app_pids(), lab.stop_database(), lab.start_database()
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from app_tier import render
from app_tier.supervisor import Supervisor, listening_socket

NGINX_HINT = "nginx is not installed: install the nginx package (apt-get install nginx / dnf install nginx)"
POSTGRES_HINT = ("PostgreSQL 15 is not installed: install postgresql-15 (apt-get install postgresql-15)"
                 " or postgresql15-server (dnf), or set PG_BIN to its bin directory")
# PostgreSQL refuses to run as root; a root lab runs it as this user.
UNPRIVILEGED_USER = "nobody"


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def find_postgres_bin() -> Path | None:
    candidates = [os.environ.get("PG_BIN"), "/usr/lib/postgresql/15/bin", "/usr/pgsql-15/bin"]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in filter(None, candidates):
        if all(os.access(Path(candidate, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "psql")):
            return Path(candidate)
    return None


def missing_tools(stage: int) -> list[str]:
    """What the lab needs and cannot find, each with the package to install."""
    missing = [] if find_postgres_bin() else [POSTGRES_HINT]
    if stage == 4 and not find_nginx():
        missing.append(NGINX_HINT)
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_range(count: int, attempts: int = 100) -> int:
    """First of `count` consecutive free loopback ports (stage 4 copies use first_app_port+i)."""
    for _ in range(attempts):
        first = secrets.randbelow(50000 - count) + 10000
        if all(port_is_free(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found")


def http_status(url: str, timeout: float = 2) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, urllib.error.URLError):
        return None


def wait_for(condition, timeout_sec: float, what: str) -> None:
    deadline = time.monotonic() + timeout_sec
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_sec:.0f} s waiting for {what}")
        time.sleep(0.05)


class LabDatabase:
    """PostgreSQL in a temporary directory, set up with render's settings, access rules and SQL."""

    def __init__(self, directory: Path, database: render.DatabaseEndpoint, password: str) -> None:
        self.dir, self.database, self._password = directory, database, password
        self.bin = find_postgres_bin()
        if self.bin is None:
            raise RuntimeError(POSTGRES_HINT)
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            self.admin, self._ids = user.pw_name, {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        else:
            self.admin, self._ids = getpass.getuser(), {}
        self.data = directory / "data"
        self.log = directory / "postgresql.log"

    def _run(self, *argv: str, env: dict[str, str] | None = None) -> None:
        result = subprocess.run(argv, check=False, cwd=self.dir, env=env, capture_output=True, text=True, **self._ids)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {result.stderr or result.stdout}\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def create(self) -> None:
        self.dir.mkdir(mode=0o700)
        if self._ids:
            os.chown(self.dir, self._ids["user"], self._ids["group"])
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.admin, "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")
        hba = self.dir / "pg_hba.conf"
        settings = self.dir / "webapp.conf"
        hba.write_text(render.postgresql_hba(self.database, "127.0.0.1/32", admin_role=self.admin))
        settings.write_text(render.postgresql_conf(
            self.database, listen_addresses="127.0.0.1", hba_file=str(hba),
            extra={"unix_socket_directories": f"'{self.dir}'"}))
        with open(self.data / "postgresql.conf", "a") as conf:  # as the server's setup script does
            conf.write(f"include '{settings}'\n")
        self.start()
        sql = self.dir / "setup.sql"
        sql.write_text(render.database_setup_sql(self.database))
        self._run(str(self.bin / "psql"), "--no-psqlrc", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir),
                  "-p", str(self.database.port), "-U", self.admin, "-d", "postgres", "-f", str(sql),
                  env={"PATH": os.environ.get("PATH", ""), render.PASSWORD_ENV: self._password})

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


class Lab:
    """One server's app tier on loopback. Use as a context manager; `url` is where clients go."""

    def __init__(self, *, stage: int = 4, processes: int | None = None, port: int = 0,
                 app: render.AppSpec | None = None, secret_values: Mapping[str, str] | None = None,
                 keep_dir: bool = False) -> None:
        self.stage = stage
        self.app = app or render.AppSpec()
        self.secret_values = dict(secret_values or {})
        self.processes = processes or os.cpu_count() or 1
        self.port = port or free_port()
        self.keep_dir = keep_dir
        self.layout: render.ServerLayout | None = None
        self.dir: Path | None = None
        self._db: LabDatabase | None = None
        self._apps: Supervisor | None = None
        self._nginx: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    # --- what tests and the CLI read -------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> render.DatabaseEndpoint:
        return self._db.database

    def app_urls(self) -> list[str]:
        """Each copy directly (in stage 1-3 the one app is the service itself)."""
        return [f"http://{bind}" for bind in render.app_binds(self.layout, public_host="127.0.0.1")]

    def app_pids(self) -> list[int]:
        """Main process id of each copy, in port order."""
        pids = self._apps.pids()
        return [pids[name] for name in self._copy_names()]

    def restarts(self) -> int:
        return sum(self._apps.restarts.values())

    def stop_database(self) -> None:
        self._db.stop()

    def start_database(self) -> None:
        self._db.start()

    def log_paths(self) -> list[Path]:
        logs = [self._apps.log_path(name) for name in self._copy_names()] + [self._db.log]
        return logs + ([self.dir / "nginx" / "error.log"] if self.stage == 4 else [])

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        missing = missing_tools(self.stage)
        if missing:
            raise RuntimeError("; ".join(missing))
        if not port_is_free(self.port):
            raise RuntimeError(f"port {self.port} is already in use: choose another with --port (0: any free port)")
        venv_bin = Path(sys.prefix, "bin")
        self.dir = Path(tempfile.mkdtemp(prefix="webapp-lab-"))
        self.dir.chmod(0o755)  # the unprivileged database user must reach its directory
        app_root = self.dir / "webapp"
        app_root.mkdir()
        # The layout a server has: {app_root}/venv and {app_root}/app, here links to this checkout.
        (app_root / "venv").symlink_to(Path(sys.prefix))
        (app_root / "app").symlink_to(Path(self.app.source_dir).resolve())
        first_app_port = free_port_range(self.processes) if self.stage == 4 else render.ServerLayout.first_app_port
        # Stage 4 is the layout with the in-server proxy; the lab names itself after the stage it plays.
        app = dataclasses.replace(self.app, environment={**self.app.environment, "APP_STAGE": str(self.stage)})
        self.layout = render.ServerLayout(app=app, proxy=self.stage == 4, processes=self.processes,
                                          service_port=self.port, first_app_port=first_app_port,
                                          app_root=str(app_root))
        self.processes = self.layout.processes
        program = shlex.split(render.app_start_command(self.layout, "127.0.0.1:0"))[0]
        if not os.access(program, os.X_OK):  # the lab runs the project's venv, not one built from the app's
            raise RuntimeError(f"the start command runs {program}, which is not installed here: add the app's "
                               "requirements to requirements-dev.txt (pinned as in its requirements.txt)")

        database = render.DatabaseEndpoint(host="127.0.0.1", port=free_port())
        password = secrets.token_urlsafe(24)
        password_file = self.dir / "secret" / "db-password"
        password_file.parent.mkdir(mode=0o700)
        password_file.touch(mode=0o600)
        password_file.write_text(password)
        self._db = LabDatabase(self.dir / "postgresql", database, password)
        self._db.create()

        env = {"PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "LANG": "C.UTF-8", "HOME": str(self.dir),
               **render.app_environment(self.layout, database, password_file=str(password_file)),
               **self.app_secrets()}
        self.env = env
        binds = render.app_binds(self.layout, public_host="127.0.0.1")
        programs = {name: shlex.split(render.app_start_command(self.layout, bind))
                    for name, bind in zip(self._copy_names(), binds, strict=False)}
        if self.app.release_command:  # once, before any copy starts, as the server's 24-app-release
            self.run_release(env)
        # The sockets the socket units hold on a server: open across the copies' restarts.
        sockets = {}
        for name, bind in zip(self._copy_names(), binds, strict=True):
            host, _, port = bind.rpartition(":")
            sockets[name] = listening_socket(host, int(port), render.SOCKET_BACKLOG)
        self._apps = Supervisor(programs, env=env, cwd=app_root / "app", log_dir=self.dir / "logs", sockets=sockets)
        self._apps.start()
        for url in self.app_urls():
            self._wait_ok(f"{url}{self.layout.health_path}", "an app copy")
        if self.stage == 4:
            self._start_nginx()
            self._wait_ok(f"{self.url}{self.layout.health_path}", "nginx")

    def run_release(self, env: Mapping[str, str], version: str = "lab") -> None:
        """The app's release command, as the server's release script runs it: bash, in the app's
        directory, with the app's environment and APP_VERSION (the lab has no versions: "lab")."""
        result = subprocess.run(["/bin/bash", "-c", render.app_release_command(self.layout)],
                                env={**env, "APP_VERSION": version}, cwd=self.dir / "webapp" / "app",
                                capture_output=True, text=True, check=False)
        (self.dir / "release.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"the release command failed ({result.returncode}): {result.stderr[-1500:]}")

    def restart_copy(self, index: int = 0) -> None:
        """systemctl restart of one copy: SIGTERM, then a new start on the same, still open socket."""
        self._apps.restart(self._copy_names()[index])

    def app_secrets(self) -> dict[str, str]:
        """The values the app's secrets get here (on a server: read at boot from AWS)."""
        return {name: self.secret_values.get(name) or os.environ.get(name) or placeholder_secret(name)
                for name in self.app.secrets}

    def _copy_names(self) -> list[str]:
        return [unit.removesuffix(".service") for unit in render.app_units(self.layout)]

    def _wait_ok(self, url: str, what: str) -> None:
        try:
            wait_for(lambda: http_status(url) == 200, 30, f"{what} at {url}")
        except TimeoutError as error:
            tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}"
                              for p in self.log_paths() if p.exists())
            raise TimeoutError(f"{error}\n{tails}") from None

    def _start_nginx(self) -> None:
        nginx_dir = self.dir / "nginx"
        temp_dir = nginx_dir / "tmp"
        temp_dir.mkdir(parents=True)
        if os.geteuid() == 0:  # workers run as nginx's default user and write request bodies here
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(temp_dir, user.pw_uid, user.pw_gid)
        paths = render.NginxPaths(pid=str(nginx_dir / "nginx.pid"), error_log=str(nginx_dir / "error.log"),
                                  access_log=str(nginx_dir / "access.log"), temp_dir=str(temp_dir), user=None)
        conf = nginx_dir / "nginx.conf"
        conf.write_text(render.nginx_config(self.layout, paths, listen_host="127.0.0.1"))
        with open(nginx_dir / "stderr.log", "ab") as stderr:
            self._nginx = subprocess.Popen(nginx_command(conf, paths.error_log) + ["-g", "daemon off;"],
                                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                           start_new_session=True)

    def stop(self) -> None:
        if self._nginx is not None:
            self._nginx.send_signal(signal.SIGQUIT)  # graceful, as the unit's drop-in stops it
            try:
                self._nginx.wait(10)
            except subprocess.TimeoutExpired:
                self._nginx.kill()
            self._nginx = None
        if self._apps is not None:
            self._apps.stop()
            self._apps = None
        if self._db is not None and self._db.is_running():
            try:
                self._db.stop()
            except RuntimeError as error:
                print(f"lab: {error}", file=sys.stderr)
        if self.dir is not None and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def placeholder_secret(name: str) -> str:
    return f"lab-placeholder-for-{name}"


def app_for_environment(name: str):
    """(the environment's config, its app as render.AppSpec), through the stacks' one mapper."""
    from envconfig import load_environment  # the CDK app's modules: only when --env asks for them
    from stacks.config_mapping import app_spec

    config = load_environment(name)
    return config, app_spec(config)


def nginx_command(conf: Path, error_log: str) -> list[str]:
    """nginx with this config; -e keeps nginx's start-up messages out of the system's log path."""
    return [find_nginx() or "nginx", "-p", str(conf.parent), "-c", str(conf), "-e", error_log]


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app_tier.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=int, choices=(1, 2, 3, 4), default=None,
                        help="default: the environment's stage with --env, else 4")
    parser.add_argument("--processes", type=int, default=None,
                        help="app copies (stage 4); default: the environment's processes_per_server, else CPU count")
    parser.add_argument("--port", type=int, default=8080, help="where clients connect; 0 picks a free port")
    parser.add_argument("--env", help="run the app that config/ENV.toml's [app] names (default: the WSGI sample)")
    parser.add_argument("--app-source", help="the app's directory (code and requirements.txt)")
    parser.add_argument("--start-command", help="one line with {bind} or {host}/{port}, and {app_root}")
    parser.add_argument("--health-path", help="what answers 200 while the app is up")
    args = parser.parse_args(argv)
    app, stage, processes = render.AppSpec(), args.stage, args.processes
    if args.env:
        from envconfig import ConfigError
        try:
            config, app = app_for_environment(args.env)
        except (ConfigError, FileNotFoundError) as error:
            print(f"lab: --env {args.env}: {error}", file=sys.stderr)
            return 2
        stage = stage or int(config.stage)
        processes = processes or getattr(config.app, "processes_per_server", None)
    overrides = {key: value for key, value in (("source_dir", args.app_source), ("start_command", args.start_command),
                                               ("health_path", args.health_path)) if value is not None}
    try:
        app = dataclasses.replace(app, **overrides)
    except ValueError as error:
        print(f"lab: {error}", file=sys.stderr)
        return 2
    if not Path(app.source_dir, "requirements.txt").is_file():
        print(f"lab: the app's source {app.source_dir} has no requirements.txt", file=sys.stderr)
        return 2
    stage = stage or 4
    missing = missing_tools(stage)
    if missing:
        for message in missing:
            print(f"lab: {message}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(signum, _interrupt)
    try:
        with Lab(stage=stage, processes=processes, port=args.port, app=app) as lab:
            front = "nginx" if lab.stage == 4 else "the app itself"
            print(f"lab: stage {lab.stage}, {lab.processes} app process(es) behind {front}, PostgreSQL "
                  f"on 127.0.0.1:{lab.database.port}; files in {lab.dir}")
            print(f"lab: app {app.source_dir}: {app.start_command}")
            placeholders = sorted(name for name, value in lab.app_secrets().items()
                                  if value == placeholder_secret(name))
            if placeholders:
                print(f"lab: secrets not read from AWS here; placeholders for {', '.join(placeholders)}"
                      " (export a variable of the same name to give a value)")
            for url, pid in zip(lab.app_urls(), lab.app_pids(), strict=False):
                print(f"lab:   copy {url} (pid {pid})")
            print(f"lab: serving {lab.url}/  (also {app.health_path}); Ctrl-C stops")
            sys.stdout.flush()
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nlab: stopped")
    except (RuntimeError, TimeoutError) as error:
        print(f"lab: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
