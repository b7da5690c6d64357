"""Everything a server gets for the app tier, rendered in one place.

The CDK bootstrap turns these outputs into CloudFormation Init packages, files and commands for
Amazon Linux 2023; the local lab (app_tier.lab) runs the same start command, environment, nginx
config and database setup with lab paths and ports. There is no second copy of any of them.

Every function here is pure: no I/O, no environment reads. Values may be CDK token strings
(for example a database host "${Token[TOKEN.123]}"); they pass through unchanged, because
CloudFormation resolves them inside the rendered text at deploy time. Passwords never appear
in anything rendered: on AWS they are fetched from Secrets Manager at boot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

APP_SOURCE_DIR = Path(__file__).parent / "sample_app"

# Amazon Linux 2023's default python3 is 3.9; the pinned gunicorn and psycopg need 3.10 or later.
PYTHON = "python3.11"

# One copy of the app is one gunicorn worker process: nginx (stage 4) or the ALB (stages 1-3)
# does the spreading. Threads let a copy keep idle keep-alive connections without blocking;
# keep-alive (75 s) outlasts nginx's upstream and the ALB's idle timeouts (60 s), so the proxy
# in front always closes an idle connection first. No control socket: copies would share it.
# Every copy serves a listening socket systemd holds (app.socket / app@.socket) and passes as fd 3
# (LISTEN_FDS=1, LISTEN_PID): a restart never closes it, so connections wait in its backlog while
# the new copy starts instead of being refused. gunicorn finds it through LISTEN_FDS by itself
# (--bind is then only a label); other servers take it as {fd} (uvicorn --fd {fd}).
# --graceful-timeout: on SIGTERM a copy finishes its in-flight requests for up to GRACEFUL_STOP_SEC,
# inside the ALB's 30 s drain and the units' TimeoutStopSec.
DEFAULT_START_COMMAND = (
    "{app_root}/venv/bin/gunicorn --workers 1 --threads 4 --keep-alive 75 --graceful-timeout 25"
    " --no-control-socket --chdir {app_root}/app --bind {bind} app:application"
)

# The sample app's release command (its schema), the default with its default source and start command.
DEFAULT_RELEASE_COMMAND = "{app_root}/venv/bin/python {app_root}/app/migrate.py"

DEFAULT_HEALTH_PATH = "/health"

RESTART_DELAY_SEC = 0.5  # systemd RestartSec; the lab supervisor waits the same
LISTEN_FD = 3  # SD_LISTEN_FDS_START: the listening socket a copy inherits ({fd} in a start command)
SOCKET_BACKLOG = 2048  # connections the kernel queues while a copy restarts (gunicorn's own default)
# A stopping copy finishes in-flight requests for up to this long (the default start command's
# --graceful-timeout; uvicorn: --timeout-graceful-shutdown; nginx: worker_shutdown_timeout), inside
# the ALB's 30 s deregistration delay; the units' TimeoutStopSec leaves 10 s more before SIGKILL.
GRACEFUL_STOP_SEC = 25
TIMEOUT_STOP_SEC = GRACEFUL_STOP_SEC + 10
APP_VERSION_FILE = "/etc/webapp/app-version"  # the app asset's hash (12 hex digits), written by Init
RELEASE_SCRIPT = "/usr/local/libexec/webapp/release"
NGINX_DROP_IN = "/etc/systemd/system/nginx.service.d/webapp-graceful-stop.conf"
ENV_FILE = "/etc/webapp/app.env"
SECRET_DIR = "/run/webapp"  # tmpfs: the password never reaches the disk or survives a reboot
PASSWORD_FILE = f"{SECRET_DIR}/db-password"
LIBEXEC_DIR = "/usr/local/libexec/webapp"
LOG_DIR = "/var/log/webapp"  # the units append the app's output here; the CloudWatch agent ships it
# cfn-init keeps a file it overwrites as <file>.bak, and logrotate reads every file in
# /etc/logrotate.d: a webapp.bak there would name the logs twice and fail the daily rotation. The
# config lives under /etc/webapp, linked from /etc/logrotate.d.
LOGROTATE_CONF = "/etc/webapp/logrotate.conf"
LOGROTATE_LINK = "/etc/logrotate.d/webapp"
# systemd opens a unit's StandardOutput=append: file before it creates LogsDirectory=, so the log
# directory must exist before the first start (and after every boot): tmpfiles.d makes it.
LOG_DIR_TMPFILES = "/etc/tmpfiles.d/webapp.conf"
FETCH_PASSWORD_SCRIPT = f"{LIBEXEC_DIR}/fetch-db-password"
FETCH_PASSWORD_UNIT = "webapp-db-password.service"
# The app's own secrets ([app.secrets]): read at every boot into a root-only tmpfs file that
# systemd passes to the app units as environment (EnvironmentFile is read before privileges drop).
APP_SECRETS_FILE = f"{SECRET_DIR}/app-secrets.env"
FETCH_APP_SECRETS_SCRIPT = f"{LIBEXEC_DIR}/fetch-app-secrets"
FETCH_APP_SECRETS_UNIT = "webapp-app-secrets.service"
# What the platform sets in the app's environment; [app.environment] cannot override these.
PLATFORM_ENVIRONMENT = ("APP_STAGE", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD_FILE",
                        "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")
UNIT_DIR = "/etc/systemd/system"
NGINX_CONF = "/etc/nginx/nginx.conf"
PG_CONF_DIR = "/etc/webapp/postgresql"
PG_DATA_DIR = "/var/lib/pgsql/data"  # Amazon Linux 2023 postgresql15-server default
PG_SETUP_SCRIPT = f"{LIBEXEC_DIR}/setup-postgresql"
PG_SETTINGS_APPLIED = f"{PG_CONF_DIR}/.applied"  # the checksum of the settings PostgreSQL runs with
PASSWORD_ENV = "WEBAPP_DB_PASSWORD"  # how the setup SQL receives the password (never argv)
# Written by a carry (app_tier/carry.py) once this server's data was copied into a new database and verified.
CARRIED_RECORD = "/var/lib/webapp/carried"
# An EC2 database server whose data was carried into RDS forwards its old address there (app_tier/carry.py).
FORWARD_SOCKET = "webapp-db-forward.socket"
FORWARD_SERVICE = "webapp-db-forward.service"

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NO_QUOTES = re.compile(r"^[^\s'\"\\]+$")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
START_COMMAND_PLACEHOLDERS = ("bind", "host", "port", "app_root", "fd")  # what app_start_command fills in
RELEASE_COMMAND_PLACEHOLDERS = ("app_root",)  # a release runs once per version, on no port of its own
_SERVES_LISTEN_FDS = ("gunicorn",)  # servers that take systemd's socket through LISTEN_FDS themselves


def start_command_problem(command: str) -> str | None:
    """Why a start command cannot serve the socket a copy inherits, or None. The rule: it names {fd}
    (the descriptor of the listening socket, 3) where its server takes one, or runs gunicorn, which
    finds the socket through LISTEN_FDS/LISTEN_PID by itself."""
    if "{fd}" in command:
        return None
    words = command.replace("{app_root}", "/app_root").split()
    if any(word.rsplit("/", 1)[-1] in _SERVES_LISTEN_FDS for word in words):
        return None
    return ("must serve the listening socket it inherits as file descriptor 3 (systemd socket activation: "
            "a restart never refuses a connection): put {fd} where the server takes a socket's descriptor "
            "(uvicorn --fd {fd}, hypercorn --bind fd://{fd}), or run gunicorn, which finds it through "
            "LISTEN_FDS by itself")


@dataclass(frozen=True, kw_only=True)
class AppSecret:
    """One environment variable of the app whose value is read at boot, never written into a template.

    `store`: "secretsmanager" (a secret's name or ARN; `key` picks a field of a JSON secret) or
    "ssm" (a Parameter Store parameter's name or ARN, String or SecureString)."""

    store: str
    name: str
    key: str = ""

    def __post_init__(self) -> None:
        _check(self.store in ("secretsmanager", "ssm"), f"secret store must be secretsmanager or ssm: {self.store!r}")
        _check(bool(_NO_QUOTES.match(self.name)), f"secret name has spaces or quotes: {self.name!r}")
        _check(not self.key or self.store == "secretsmanager", "only a Secrets Manager secret has a JSON key")


@dataclass(frozen=True, kw_only=True)
class AppSpec:
    """The app contract: everything about the app a server needs, and nothing about the server.

    `source_dir` holds the code and a requirements.txt (the server builds a venv from it);
    `start_command` is one command line with placeholders {bind} (host:port), {host}, {port},
    {app_root} and {fd}; it must serve the listening socket it inherits as file descriptor 3
    (systemd socket activation: LISTEN_FDS=1, LISTEN_PID), either through {fd} (uvicorn --fd {fd})
    or as gunicorn does by itself; {bind}/{port} then only say which address that socket has.
    On SIGTERM it should finish in-flight requests within GRACEFUL_STOP_SEC;
    `release_command` (optional) is one shell line ({app_root}) run once per app version, before the
    new version takes traffic (database migrations: see README "The release command");
    `health_path` answers 200 while the
    process is up (the boot health gate, nginx and the load balancer all read it);
    `packages` are extra Amazon Linux 2023 packages; `environment` plain variables;
    `secrets` variables read at boot from Secrets Manager or Parameter Store."""

    source_dir: str = str(APP_SOURCE_DIR)
    start_command: str = DEFAULT_START_COMMAND
    release_command: str = DEFAULT_RELEASE_COMMAND  # "" for none
    health_path: str = DEFAULT_HEALTH_PATH
    packages: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, AppSecret] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.health_path.startswith("/"), "health_path must start with /")
        problem = start_command_problem(self.start_command)
        _check(problem is None, f"start_command {problem}")
        _check("\n" not in self.start_command, "start_command is one line")
        unknown = {name for name in re.findall(r"{(\w*)}", self.start_command)} - set(START_COMMAND_PLACEHOLDERS)
        _check(not unknown, f"start_command: unknown placeholders {sorted(unknown)}; "
                            f"allowed: {list(START_COMMAND_PLACEHOLDERS)}")
        _check("\n" not in self.release_command and "\r" not in self.release_command, "release_command is one line")
        unknown = {name for name in re.findall(r"{(\w*)}", self.release_command)} - set(RELEASE_COMMAND_PLACEHOLDERS)
        _check(not unknown, f"release_command: unknown placeholders {sorted(unknown)}; "
                            f"allowed: {list(RELEASE_COMMAND_PLACEHOLDERS)}")
        for name, value in self.environment.items():
            _check(bool(_ENV_NAME.match(name)), f"bad environment variable name {name!r}")
            _check("\n" not in value, f"environment variable {name} has a newline")
        for name in self.secrets:
            _check(bool(_ENV_NAME.match(name)), f"bad environment variable name {name!r}")
            _check(name not in self.environment, f"{name} is both a plain variable and a secret")
        # APP_STAGE may come in `environment`: the stage constructs name themselves there.
        for name in (*(n for n in self.environment if n != "APP_STAGE"), *self.secrets):
            _check(name not in PLATFORM_ENVIRONMENT, f"{name} is set by the platform")
        for package in self.packages:
            _check(bool(re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", package)), f"bad package name {package!r}")


@dataclass(frozen=True, kw_only=True)
class ServerLayout:
    """How one server runs the app: how many copies, behind an in-server proxy or not, on which ports, as whom."""

    app: AppSpec = AppSpec()
    # nginx in front of `processes` loopback copies (stage 4); otherwise the one copy is the service.
    proxy: bool = False
    processes: int = 1
    service_port: int = 80  # what clients / the ALB connect to: nginx (proxy) or the app itself
    first_app_port: int = 8001  # behind the proxy, copies listen on 127.0.0.1:first_app_port+i
    app_root: str = "/opt/webapp"  # the app's code goes to f"{app_root}/app"
    run_user: str = "webapp"

    def __post_init__(self) -> None:
        _check(isinstance(self.processes, int) and self.processes >= 1,
               f"processes must be a positive integer, got {self.processes!r}")
        if not self.proxy:
            object.__setattr__(self, "processes", 1)  # without the proxy the one copy is the service
        last_app_port = self.first_app_port + self.processes - 1
        _check(0 < self.service_port < 65536, f"service_port out of range: {self.service_port}")
        _check(self.first_app_port > 0 and last_app_port < 65536,
               f"app ports {self.first_app_port}..{last_app_port} out of range")
        _check(not self.proxy or not self.first_app_port <= self.service_port <= last_app_port,
               f"service_port {self.service_port} collides with the app ports")
        _check(self.app_root.startswith("/") and bool(_NO_QUOTES.match(self.app_root)),
               f"app_root must be an absolute path without spaces or quotes: {self.app_root!r}")
        _check(bool(re.match(r"^[a-z_][a-z0-9_-]{0,31}$", self.run_user)), f"bad run_user {self.run_user!r}")

    @property
    def health_path(self) -> str:
        return self.app.health_path

    @property
    def start_command(self) -> str:
        return self.app.start_command

    @property
    def app_ports(self) -> list[int]:
        if self.proxy:
            return [self.first_app_port + i for i in range(self.processes)]
        return [self.service_port]


@dataclass(frozen=True)
class DatabaseEndpoint:
    """Where the app's PostgreSQL is, and where its password comes from."""

    host: str  # may be a CDK token string; never mangled
    port: int = 5432
    name: str = "app"
    user: str = "app"
    # On AWS: a Secrets Manager secret whose JSON has the key "password". Fetched at boot into a
    # root-only tmpfs file; the app reads it through a systemd credential.
    secret_arn: str | None = None
    region: str | None = None  # default: the region in the secret's ARN

    def __post_init__(self) -> None:
        _check(bool(_IDENTIFIER.match(self.name)), f"database name must be a plain identifier: {self.name!r}")
        _check(bool(_IDENTIFIER.match(self.user)), f"database user must be a plain identifier: {self.user!r}")
        for label, value in (("host", self.host), ("secret_arn", self.secret_arn), ("region", self.region)):
            _check(value is None or bool(_NO_QUOTES.match(value)), f"{label} has spaces or quotes: {value!r}")


@dataclass(frozen=True)
class ServerFile:
    content: str
    mode: str = "000644"  # CloudFormation Init style
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class ServerBootstrap:
    """packages, then files, then commands (in order): what CloudFormation Init applies."""

    packages: list[str] = field(default_factory=list)
    files: dict[str, ServerFile] = field(default_factory=dict)
    commands: list[tuple[str, str]] = field(default_factory=list)

    def __add__(self, other: ServerBootstrap) -> ServerBootstrap:
        """Merge two parts of one server; identical shared entries (the secret fetch) appear once."""
        for path in self.files.keys() & other.files.keys():
            _check(self.files[path] == other.files[path], f"two different files for {path}")
        return ServerBootstrap(
            packages=list(dict.fromkeys(self.packages + other.packages)),
            files={**self.files, **other.files},
            commands=list(dict.fromkeys(self.commands + other.commands)),
        )


# --- the app -------------------------------------------------------------------------------


def app_binds(layout: ServerLayout, *, public_host: str = "0.0.0.0") -> list[str]:
    """host:port each copy listens on. Stage 4 copies are loopback-only: nginx is the way in."""
    if layout.proxy:
        return [f"127.0.0.1:{port}" for port in layout.app_ports]
    return [f"{public_host}:{layout.service_port}"]


def app_start_command(layout: ServerLayout, bind: str) -> str:
    """The start command of one copy, as a single command line (systemd ExecStart / shlex)."""
    host, _, port = bind.rpartition(":")
    return layout.start_command.format(bind=bind, host=host, port=port, app_root=layout.app_root, fd=LISTEN_FD)


def app_release_command(layout: ServerLayout) -> str:
    """The release command as bash runs it (`bash -c`), or "" when the app has none."""
    return layout.app.release_command.format(app_root=layout.app_root)


def app_environment(layout: ServerLayout, database: DatabaseEndpoint, *,
                    password_file: str | None = None) -> dict[str, str]:
    """The app's environment. On a server the unit adds DB_PASSWORD_FILE (a systemd credential)."""
    env = {
        "DB_HOST": database.host,
        "DB_PORT": str(database.port),
        "DB_NAME": database.name,
        "DB_USER": database.user,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **layout.app.environment,
    }
    if password_file:
        env["DB_PASSWORD_FILE"] = password_file
    return env


def app_units(layout: ServerLayout) -> list[str]:
    """The systemd units that run the copies: app@8001.service ... (stage 4) or app.service."""
    if layout.proxy:
        return [f"app@{port}.service" for port in layout.app_ports]
    return ["app.service"]


def app_sockets(layout: ServerLayout) -> list[str]:
    """The socket units that hold each copy's listening socket: app@8001.socket ... or app.socket."""
    return [unit.removesuffix(".service") + ".socket" for unit in app_units(layout)]


def app_server_packages(layout: ServerLayout, *, database: DatabaseEndpoint | None = None) -> list[str]:
    packages = [PYTHON, f"{PYTHON}-pip", "logrotate"]
    if layout.proxy:
        packages.append("nginx")
    if layout.app.release_command:
        packages.append("postgresql15")  # psql: the release's lock and record on the app's database
    if layout.app.secrets or database is not None and database.secret_arn:
        packages.append("awscli-2")  # preinstalled on the standard AL2023 AMI, not on minimal
    return list(dict.fromkeys(packages + list(layout.app.packages)))


def app_server_files(layout: ServerLayout, database: DatabaseEndpoint, *,
                     app_version: str | None = None) -> dict[str, ServerFile]:
    """`app_version`: the app asset's hash (12 hex digits), written to APP_VERSION_FILE; the release
    script reads it. Only a new app changes it, so it adds no rollout of its own."""
    files = {ENV_FILE: ServerFile(_env_file(app_environment(layout, database)))}
    if app_version is not None:
        _check(bool(re.fullmatch(r"[0-9a-f]{12}", app_version)), f"app_version must be 12 hex digits: {app_version!r}")
        files[APP_VERSION_FILE] = ServerFile(app_version + "\n")
    if layout.proxy:
        files[f"{UNIT_DIR}/app@.service"] = ServerFile(_app_unit(layout, database, bind="127.0.0.1:%i"))
        files[f"{UNIT_DIR}/app@.socket"] = ServerFile(_app_socket(layout, bind="127.0.0.1:%i"))
        files[NGINX_CONF] = ServerFile(nginx_config(layout))
        files[NGINX_DROP_IN] = ServerFile(NGINX_GRACEFUL_STOP)
    else:
        files[f"{UNIT_DIR}/app.service"] = ServerFile(_app_unit(layout, database, bind=app_binds(layout)[0]))
        files[f"{UNIT_DIR}/app.socket"] = ServerFile(_app_socket(layout, bind=app_binds(layout)[0]))
    if layout.app.release_command:
        files.update(_release_files(layout, database))
    files[LOG_DIR_TMPFILES] = ServerFile(
        f"# Rendered by app_tier/render.py: the app units append their output here.\n"
        f"d {LOG_DIR} 0750 {layout.run_user} {layout.run_user} -\n")
    files[LOGROTATE_CONF] = ServerFile(
        f"{LOG_DIR}/*.log {{\n  daily\n  rotate 7\n  compress\n  missingok\n  notifempty\n  copytruncate\n}}\n")
    files.update(_password_fetch_files(database))
    files.update(_app_secrets_files(layout, region=database.region))
    return files


def app_server_commands(layout: ServerLayout, database: DatabaseEndpoint | None = None) -> list[tuple[str, str]]:
    root, user = layout.app_root, layout.run_user
    units, sockets = " ".join(app_units(layout)), " ".join(app_sockets(layout))
    # The sockets first, and never restarted: they hold the listening sockets, so restarting the copies
    # queues connections in their backlog instead of refusing them. A server whose copies still bind
    # the port themselves (set up before socket activation) stops them once to hand the port over.
    start = (f"systemctl daemon-reload && {{ systemctl is-active --quiet {sockets} || systemctl stop {units}; }}"
             f" && systemctl enable --now {sockets} && systemctl enable {units} && systemctl restart {units}")
    if layout.app.secrets:  # read them again: an update may have changed which secrets the app gets
        start = start.replace("systemctl restart", f"systemctl restart {FETCH_APP_SECRETS_UNIT} && systemctl restart", 1)
    if database is not None and database.secret_arn:  # and the password: 1 -> 2 moves to a new database's secret
        start = start.replace("systemctl restart", f"systemctl restart {FETCH_PASSWORD_UNIT} && systemctl restart", 1)
    if layout.proxy:
        start += " && systemctl enable nginx.service && systemctl reload-or-restart nginx.service"
    # The release runs with what the app gets: the password and the app's secrets, read first (at the
    # first boot nothing has started their units yet; on an update the secrets may have changed). Their
    # scripts run directly, not by restarting their units: the app units Require= those, and systemd
    # restarts a unit whose required unit is restarted, so the new code would start before the release ran
    # (and keep serving after it failed). 25-app-start restarts the units, then the copies.
    fetch = [f"(umask 077 && {FETCH_PASSWORD_SCRIPT})"] if database is not None and database.secret_arn else []
    fetch += [f"(umask 077 && {FETCH_APP_SECRETS_SCRIPT})"] if layout.app.secrets else []
    release = [("24-app-release", " && ".join(["systemctl daemon-reload", *fetch, RELEASE_SCRIPT]))] \
        if layout.app.release_command else []
    return [
        ("20-app-user", (f"id -u {user} >/dev/null 2>&1 || useradd --system --user-group"
                         f" --home-dir {root} --no-create-home --shell /sbin/nologin {user}")),
        ("21-app-log-dir", f"systemd-tmpfiles --create {LOG_DIR_TMPFILES} && ln -sfn {LOGROTATE_CONF} {LOGROTATE_LINK}"),
        ("22-app-venv", f"test -x {root}/venv/bin/python || {PYTHON} -m venv {root}/venv"),
        ("23-app-requirements", (f"{root}/venv/bin/pip install --disable-pip-version-check --no-input"
                                 f" --quiet -r {root}/app/requirements.txt")),
        # Before any copy of the new version starts: a failed release fails cfn-init and the running
        # copies keep serving the version they run.
        *release,
        ("25-app-start", start),
        # cfn-init succeeds, and the server signals CloudFormation, only once the service answers
        # its health check: a rolling update then waits for a working server and rolls back otherwise.
        ("26-app-healthy", (f"for attempt in $(seq 1 60); do curl -fsS -o /dev/null --max-time 2"
                            f" http://127.0.0.1:{layout.service_port}{layout.health_path} && exit 0; sleep 2; done;"
                            f" echo 'app not healthy after 120 s' >&2; exit 1")),
    ]


def app_server_bootstrap(layout: ServerLayout, database: DatabaseEndpoint, *,
                         app_version: str | None = None) -> ServerBootstrap:
    return ServerBootstrap(app_server_packages(layout, database=database),
                           app_server_files(layout, database, app_version=app_version),
                           app_server_commands(layout, database))


_TOKEN = re.compile(r"(\$\{Token\[[^\]]+\]\})")  # a CDK token in a string, resolved at deploy time
_ESCAPED = ("\\", '"', "$", "`")


def environment_file_value(value: str) -> str:
    """A value as systemd's EnvironmentFile= reads it back unchanged: double quotes, with a backslash
    before \\, ", $ and ` (unquoted, systemd would drop backslashes and trim or join lines). CDK tokens
    (a database host) pass through whole; what they resolve to has none of those characters."""
    parts = _TOKEN.split(value)
    for i in range(0, len(parts), 2):  # the even parts are text, the odd ones tokens
        for char in _ESCAPED:
            parts[i] = parts[i].replace(char, "\\" + char)
    return '"' + "".join(parts) + '"'


def read_environment_file(text: str) -> dict[str, str]:
    """What systemd reads from an environment file rendered here (the inverse of environment_file_value)."""
    env = {}
    for line in text.splitlines():
        if "=" not in line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        env[key] = value
    return env


def _env_file(env: Mapping[str, str]) -> str:
    lines = ["# Rendered by app_tier/render.py: the app's environment (no secrets here)."]
    lines += [f"{key}={environment_file_value(value)}" for key, value in env.items()]
    return "\n".join(lines) + "\n"


_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
UMask=0077"""


def _log_name(layout: ServerLayout) -> str:
    return "app-%i.log" if layout.proxy else "app.log"


def _app_unit(layout: ServerLayout, database: DatabaseEndpoint, *, bind: str) -> str:
    # '%' is a systemd specifier: escape the user's command, then put the instance (%i) back.
    marker = "\0port\0"
    command = app_start_command(layout, bind.replace("%i", marker)).replace("%", "%%").replace(marker, "%i")
    what = f"Web app copy on {bind}" if layout.proxy else f"Web app on {bind}"
    socket = "app@%i.socket" if layout.proxy else "app.socket"
    unit = ["[Unit]", f"Description={what}",
            "After=network-online.target", "Wants=network-online.target",
            # The listening socket is the socket unit's; systemd passes it as fd 3 (LISTEN_FDS).
            f"Requires={socket}", f"After={socket}",
            # Restart=always means always: never give up after a burst of crashes.
            "StartLimitIntervalSec=0"]
    service = ["[Service]", "Type=simple", f"User={layout.run_user}", f"Group={layout.run_user}",
               f"WorkingDirectory={layout.app_root}/app", f"EnvironmentFile={ENV_FILE}"]
    if database.secret_arn:
        unit += [f"Requires={FETCH_PASSWORD_UNIT}", f"After={FETCH_PASSWORD_UNIT}"]
        # systemd reads the root-only file and hands the service a private, readable copy.
        service += [f"LoadCredential=db-password:{PASSWORD_FILE}", "Environment=DB_PASSWORD_FILE=%d/db-password"]
    if layout.app.secrets:
        unit += [f"Requires={FETCH_APP_SECRETS_UNIT}", f"After={FETCH_APP_SECRETS_UNIT}"]
        # systemd reads this root-only file before it drops privileges; the app sees only its values.
        service += [f"EnvironmentFile={APP_SECRETS_FILE}"]
    service += [f"ExecStart={command}", "Restart=always", f"RestartSec={int(RESTART_DELAY_SEC * 1000)}ms",
                # SIGTERM to gunicorn's master only; it stops its worker gracefully, finishing
                # in-flight requests for up to GRACEFUL_STOP_SEC; SIGKILL only after this.
                "KillMode=mixed", f"TimeoutStopSec={TIMEOUT_STOP_SEC}",
                # A file per copy, so the CloudWatch agent can ship it; logrotate truncates it daily.
                # The directory comes from tmpfiles.d (LOG_DIR_TMPFILES), not LogsDirectory=: systemd
                # would open this file before creating that directory, and fail with 209/STDOUT.
                f"StandardOutput=append:{LOG_DIR}/{_log_name(layout)}", "StandardError=inherit",
                _HARDENING]
    # No capability, not even to bind port 80: systemd binds the socket (app.socket) as root.
    service += ["CapabilityBoundingSet="]
    install = ["[Install]", "WantedBy=multi-user.target"]
    header = "# Rendered by app_tier/render.py; the start command is the app's ([app] start_command in config)."
    return "\n".join([header, *unit, "", *service, "", *install]) + "\n"


def _app_socket(layout: ServerLayout, *, bind: str) -> str:
    """The copy's listening socket, held by systemd across the copy's restarts."""
    what = f"copy on {bind}" if layout.proxy else f"on {bind}"
    return "\n".join([
        "# Rendered by app_tier/render.py: systemd holds the app's listening socket, so a restart of the app",
        "# (an update, a crash) queues connections here instead of refusing them.",
        "[Unit]", f"Description=Listening socket of the web app {what}", "",
        "[Socket]", f"ListenStream={bind}", f"Backlog={SOCKET_BACKLOG}", "NoDelay=yes", "",
        "[Install]", "WantedBy=sockets.target"]) + "\n"


# nginx stops gracefully on SIGQUIT (finishing in-flight requests, worker_shutdown_timeout at most);
# SIGTERM, systemd's default, is its fast shutdown, which drops them. The distributions' units already
# stop it with QUIT but give it about 5 s (Fedora's, hence AL2023's: KillSignal=SIGQUIT, TimeoutStopSec=5;
# Debian's: --retry QUIT/5); this drop-in keeps the signal whatever the unit says and waits the drain out.
NGINX_GRACEFUL_STOP = f"""# Rendered by app_tier/render.py: stop nginx gracefully (SIGQUIT), finishing in-flight requests.
[Service]
KillSignal=SIGQUIT
TimeoutStopSec={TIMEOUT_STOP_SEC}
"""


# --- the release command -----------------------------------------------------------------------


RELEASE_COMMAND_FILE = f"{LIBEXEC_DIR}/release-command"


def _release_files(layout: ServerLayout, database: DatabaseEndpoint) -> dict[str, ServerFile]:
    """The release script (root, run by cfn-init) and the release command it runs as the app's user."""
    return {RELEASE_SCRIPT: ServerFile(release_script(layout, database), mode="000700"),
            RELEASE_COMMAND_FILE: ServerFile(release_command_script(layout), mode="000755")}


def release_command_script(layout: ServerLayout) -> str:
    """The app's release command as a script of its own: bash runs it, not systemd (no $ or % rules)."""
    return f"""#!/bin/bash
# Rendered by app_tier/render.py: the app's release command ([app] release_command), run by {RELEASE_SCRIPT}
# as the app's user, in the app's directory, with the app's environment and APP_VERSION.
if [ -n "${{CREDENTIALS_DIRECTORY:-}}" ]; then export DB_PASSWORD_FILE="$CREDENTIALS_DIRECTORY/db-password"; fi
{app_release_command(layout)}
"""


def release_script(layout: ServerLayout, database: DatabaseEndpoint, *, runner: str | None = None,
                   version_file: str = APP_VERSION_FILE, env_file: str = ENV_FILE,
                   password_file: str | None = None) -> str:
    """The script cfn-init runs before it starts the app (24-app-release). `runner` is how it runs the
    command (default: systemd-run as the app's user, as its units run it); the lab tests pass their own
    runner and paths. APP_VERSION and the app's environment are set for the runner."""
    properties = [f"User={layout.run_user}", f"Group={layout.run_user}", f"WorkingDirectory={layout.app_root}/app",
                  f"EnvironmentFile={ENV_FILE}", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
                  "ProtectSystem=strict", "UMask=0077"]
    password_file = password_file or (PASSWORD_FILE if database.secret_arn else None)
    password = f"PGPASSWORD=$(cat {password_file})\nexport PGPASSWORD\n" if password_file else ""
    if database.secret_arn:
        properties.append(f"LoadCredential=db-password:{PASSWORD_FILE}")
    if layout.app.secrets:
        properties.append(f"EnvironmentFile={APP_SECRETS_FILE}")
    run = runner or " ".join(["systemd-run --quiet --wait --pipe --collect --service-type=exec",
                              '--unit="webapp-release-$version"', *(f"-p {p}" for p in properties),
                              '-E APP_VERSION="$version"', RELEASE_COMMAND_FILE])
    return f"""#!/bin/bash
# Rendered by app_tier/render.py: run the app's release command once per app version, before that version
# takes traffic. A PostgreSQL advisory lock on the app's database lets one server at a time in; the table
# webapp_release records each version whose command finished, so the first server runs it and the others
# find it done. One psql session (a coprocess) holds the lock while bash runs the command: psql itself
# would not report a failed command (\\! gives no exit status in PostgreSQL 15). cfn-init runs this
# before it (re)starts the app: a failure fails cfn-init, and the running copies keep their version.
set -euo pipefail
version=$(cat {version_file})
if ! [[ $version =~ ^[0-9a-f]{{12}}$ ]]; then echo "release: no app version in {version_file}" >&2; exit 1; fi
host=$(hostname)
[[ $host =~ ^[A-Za-z0-9._-]+$ ]] || host=unknown
set -a
. {env_file}
set +a
export APP_VERSION="$version"
{password}export PGCONNECT_TIMEOUT=10
coproc PSQL {{ exec psql --no-psqlrc -q -t -A -v ON_ERROR_STOP=1 -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" 2>&1; }}
exec {{to_psql}}>&"${{PSQL[1]}}" {{from_psql}}<&"${{PSQL[0]}}"
marker="--webapp-release-$$-done--"

sql() {{  # one statement in the held session; prints its rows; fails when psql stops (an error)
  local line rows=""
  printf '%s;\\n\\\\echo %s\\n' "$1" "$marker" >&"$to_psql"
  while IFS= read -r line <&"$from_psql"; do
    if [ "$line" = "$marker" ]; then printf '%s' "$rows"; return 0; fi
    rows+="$line"$'\\n'
  done
  echo "release: psql failed: $rows" >&2
  return 1
}}

sql "SELECT pg_advisory_lock(hashtext('webapp_release'))" >/dev/null
sql "CREATE TABLE IF NOT EXISTS webapp_release (version text PRIMARY KEY, host text NOT NULL,
  started timestamptz NOT NULL DEFAULT now(), finished timestamptz)" >/dev/null
done_by=$(sql "SELECT host || ' at ' || finished FROM webapp_release WHERE version = '$version' AND finished IS NOT NULL")
if [ -n "$done_by" ]; then
  echo "release: version $version was released by $done_by; nothing to run"
  exit 0
fi
sql "INSERT INTO webapp_release (version, host) VALUES ('$version', '$host')
  ON CONFLICT (version) DO UPDATE SET host = EXCLUDED.host, started = now(), finished = NULL" >/dev/null
echo "release: running the release command of version $version"
if ! {run}; then
  echo "release: the release command of version $version failed; the running version keeps serving" >&2
  exit 1
fi
sql "UPDATE webapp_release SET finished = now() WHERE version = '$version'" >/dev/null
echo "release: version $version released"
"""


# --- the database password ------------------------------------------------------------------


def _password_fetch_files(database: DatabaseEndpoint) -> dict[str, ServerFile]:
    """A oneshot unit that puts the secret's password into a root-only tmpfs file at every boot.

    It parses the secret with `python3`, the interpreter every Amazon Linux 2023 image has (dnf
    needs it): the database server installs no python3.11."""
    if not database.secret_arn:
        return {}
    region = database.region or ""
    script = f"""#!/bin/bash
# Rendered by app_tier/render.py: fetch the database password from Secrets Manager into
# {PASSWORD_FILE} (tmpfs, root-only). Retries while the network or IAM settles after boot.
set -euo pipefail
secret_arn='{database.secret_arn}'
region='{region}'
[ -n "$region" ] || region=$(cut -d: -f4 <<<"$secret_arn")
umask 077
install -d -m 0700 {SECRET_DIR}
tmp=$(mktemp {SECRET_DIR}/.db-password.XXXXXX)
trap 'rm -f "$tmp"' EXIT
for attempt in $(seq 1 30); do
  if aws secretsmanager get-secret-value --region "$region" --secret-id "$secret_arn" \\
       --query SecretString --output text \\
     | python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["password"])' > "$tmp"; then
    mv -f "$tmp" {PASSWORD_FILE}
    exit 0
  fi
  echo "fetch-db-password: attempt $attempt failed; retrying" >&2
  sleep 5
done
exit 1
"""
    return _boot_fetch(script, script_path=FETCH_PASSWORD_SCRIPT, unit=FETCH_PASSWORD_UNIT,
                       what=f"Fetch the database password from Secrets Manager into {PASSWORD_FILE}")


def _boot_fetch(script: str, *, script_path: str, unit: str, what: str) -> dict[str, ServerFile]:
    """A root-only script and the oneshot unit that runs it at every boot, before the units needing it."""
    text = f"""# Rendered by app_tier/render.py
[Unit]
Description={what}
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={script_path}
UMask=0077

[Install]
WantedBy=multi-user.target
"""
    return {script_path: ServerFile(script, mode="000700"), f"{UNIT_DIR}/{unit}": ServerFile(text)}


def _app_secrets_files(layout: ServerLayout, *, region: str | None) -> dict[str, ServerFile]:
    """A oneshot unit that reads the app's secrets at every boot into a root-only tmpfs env file.

    Only references (names, ARNs) are rendered; the values exist on the server only, in
    APP_SECRETS_FILE, and in the environment of the app's processes."""
    if not layout.app.secrets:
        return {}
    wanted = [[name, ref.store, ref.name, ref.key] for name, ref in sorted(layout.app.secrets.items())]
    script = f"""#!/usr/bin/python3
# Rendered by app_tier/render.py: read the app's secrets ([app.secrets]) into {APP_SECRETS_FILE}
# (tmpfs, root-only), which systemd hands to the app units as environment. Retries while the
# network or IAM settles after boot; fails the boot (and the unit) when one cannot be read.
import json
import os
import subprocess
import sys
import tempfile
import time

WANTED = {json.dumps(wanted)}
REGION = {json.dumps(region or "")}


def read(store, name, key):
    region = ["--region", REGION] if REGION else []
    if store == "ssm":
        command = ["aws", "ssm", "get-parameter", *region, "--name", name, "--with-decryption",
                   "--query", "Parameter.Value", "--output", "json"]
    else:
        command = ["aws", "secretsmanager", "get-secret-value", *region, "--secret-id", name,
                   "--query", "SecretString", "--output", "json"]
    value = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return str(json.loads(value)[key]) if key else value


def quoted(value):
    # systemd EnvironmentFile syntax: double quotes, with backslash escapes for \\ " $ and `.
    for char in ("\\\\", '"', "$", "`"):
        value = value.replace(char, "\\\\" + char)
    return '"' + value + '"'


lines = []
for variable, store, name, key in WANTED:
    for attempt in range(1, 31):
        try:
            lines.append(f"{{variable}}={{quoted(read(store, name, key))}}")
            break
        except (subprocess.CalledProcessError, ValueError, KeyError) as error:
            detail = getattr(error, "stderr", "") or repr(error)
            print(f"fetch-app-secrets: {{variable}} from {{store}} {{name}}: attempt {{attempt}} failed: {{detail.strip()}}",
                  file=sys.stderr)
            if attempt == 30:
                sys.exit(1)
            time.sleep(5)
os.makedirs("{SECRET_DIR}", mode=0o700, exist_ok=True)
fd, tmp = tempfile.mkstemp(dir="{SECRET_DIR}", prefix=".app-secrets.")
with os.fdopen(fd, "w") as out:
    out.write("\\n".join(lines) + "\\n")
os.replace(tmp, "{APP_SECRETS_FILE}")
"""
    return _boot_fetch(script, script_path=FETCH_APP_SECRETS_SCRIPT, unit=FETCH_APP_SECRETS_UNIT,
                       what=f"Read the app's secrets from Secrets Manager and Parameter Store into {APP_SECRETS_FILE}")


# --- nginx (stage 4) ------------------------------------------------------------------------


@dataclass(frozen=True)
class NginxPaths:
    """The only things the lab changes in the nginx config: where nginx writes."""

    pid: str = "/run/nginx.pid"
    error_log: str = "/var/log/nginx/error.log"
    access_log: str = "/var/log/nginx/access.log"
    temp_dir: str = "/var/lib/nginx/tmp"  # Amazon Linux 2023's compiled-in default
    user: str | None = "nginx"  # None: nginx's default (the lab)


def nginx_config(layout: ServerLayout, paths: NginxPaths = NginxPaths(), *, listen_host: str | None = None) -> str:
    """The whole nginx.conf for stage 4: nginx spreads requests over the loopback copies."""
    _check(layout.proxy, "nginx runs in front of the copies only in a layout with the proxy (stage 4)")
    listen = f"{listen_host}:{layout.service_port}" if listen_host else str(layout.service_port)
    # max_fails=0: a database outage makes every copy answer 503; with failure accounting nginx
    # would mark them all down and answer 502 even to /health, and the ALB would drain every
    # server at once. A dead copy costs one refused loopback connect, then the next copy serves.
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=0;" for port in layout.app_ports)
    user = f"user {paths.user};\n" if paths.user else ""
    return f"""# Rendered by app_tier/render.py: nginx in front of {layout.processes} app copies.
{user}worker_processes auto;
# A graceful stop (SIGQUIT, the unit's drop-in) finishes in-flight requests for this long at most.
worker_shutdown_timeout {GRACEFUL_STOP_SEC}s;
pid {paths.pid};
error_log {paths.error_log} warn;

events {{
    worker_connections 4096;
}}

http {{
    server_tokens off;
    log_format upstream '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                        '$request_time upstream=$upstream_addr/$upstream_status/$upstream_response_time';
    access_log {paths.access_log} upstream;
    client_body_temp_path {paths.temp_dir}/client_body;
    proxy_temp_path {paths.temp_dir}/proxy;
    fastcgi_temp_path {paths.temp_dir}/fastcgi;
    uwsgi_temp_path {paths.temp_dir}/uwsgi;
    scgi_temp_path {paths.temp_dir}/scgi;

    # Slow and oversized clients stop at nginx; a copy only ever sees a complete request.
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 10s;
    client_header_buffer_size 1k;
    large_client_header_buffers 4 8k;
    client_max_body_size 1m;
    # Longer than the ALB's idle timeout (60 s), so the ALB closes idle connections first.
    keepalive_timeout 75s;

    upstream app_copies {{
{servers}
        keepalive 32;
        keepalive_timeout 60s;
    }}

    server {{
        listen {listen} default_server;
        server_name _;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_connect_timeout 1s;
        proxy_read_timeout 30s;
        # A copy that dies or restarts mid-request: retry an idempotent request on another copy.
        # nginx never retries a non-idempotent one (POST) once it was sent, and tries each copy once.
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries 3;
        proxy_next_upstream_timeout 10s;

        location = {layout.health_path} {{
            access_log off;
            proxy_pass http://app_copies;
        }}

        location / {{
            proxy_pass http://app_copies;
        }}
    }}
}}
"""


# --- PostgreSQL -----------------------------------------------------------------------------


def postgresql_conf(database: DatabaseEndpoint, *, listen_addresses: str = "*",
                    hba_file: str = f"{PG_CONF_DIR}/pg_hba.conf",
                    extra: Mapping[str, str] | None = None) -> str:
    """Settings included from the data directory's postgresql.conf."""
    settings = {
        "listen_addresses": f"'{listen_addresses}'",
        "port": str(database.port),
        "password_encryption": "'scram-sha-256'",
        "hba_file": f"'{hba_file}'",
        **(extra or {}),
    }
    lines = ["# Rendered by app_tier/render.py"] + [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def postgresql_hba(database: DatabaseEndpoint, allowed_cidr: str, *, admin_role: str = "postgres") -> str:
    _check(bool(_NO_QUOTES.match(allowed_cidr)), f"bad allowed_cidr {allowed_cidr!r}")
    return f"""# Rendered by app_tier/render.py: the admin over the local socket, the app from its servers.
# TYPE  DATABASE  USER  ADDRESS  METHOD
local   all   {admin_role}   peer
host    {database.name}   {database.user}   {allowed_cidr}   scram-sha-256
"""


def database_setup_sql(database: DatabaseEndpoint) -> str:
    """Idempotent: the app role and database. The password arrives in the environment (psql 15+)."""
    name, user = database.name, database.user
    return f"""-- Rendered by app_tier/render.py; run with psql as the admin, ${PASSWORD_ENV} set.
\\getenv password {PASSWORD_ENV}
SELECT 'CREATE ROLE {user} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') \\gexec
ALTER ROLE {user} WITH LOGIN PASSWORD :'password';
SELECT 'CREATE DATABASE {name} OWNER {user}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}') \\gexec
"""


def database_server_packages(database: DatabaseEndpoint | None = None) -> list[str]:
    # postgresql15-server requires the client; named anyway, since the setup script runs its psql.
    packages = ["postgresql15-server", "postgresql15"]
    if database is None or database.secret_arn:
        packages.append("awscli-2")
    return packages


def _carried_record_check(carrying: bool) -> str:
    """What the setup does on a server whose data a carry copied away (its record exists).

    `carrying`: this metadata carries the data away (an EC2 database server moving to RDS): PostgreSQL
    stays retired, the carry's forwarder serves. Otherwise this database is the app's again, which after
    a carry means the deploy that carried it was rolled back: the forwarder goes, the record is moved
    aside (so a later carry copies again, with what was written since) and PostgreSQL starts."""
    if carrying:
        return f"""if [ -f {CARRIED_RECORD} ]; then
  echo "setup-postgresql: this server's data was carried away ($(head -n 1 {CARRIED_RECORD})): PostgreSQL stays retired"
  exit 0
fi
"""
    return f"""if [ -f {CARRIED_RECORD} ]; then
  echo "setup-postgresql: this database serves the app again (the deploy that carried it away rolled back)"
  systemctl disable --now {FORWARD_SOCKET} {FORWARD_SERVICE} 2>/dev/null || true
  mv {CARRIED_RECORD} {CARRIED_RECORD}.rolled-back-$(date -u +%Y%m%dT%H%M%SZ)
fi
"""


def database_server_files(database: DatabaseEndpoint, allowed_cidr: str, *,
                          listen_addresses: str = "*", carrying: bool = False) -> dict[str, ServerFile]:
    _check(bool(database.secret_arn), "the database server needs secret_arn: the app role's password")
    setup = f"""#!/bin/bash
# Rendered by app_tier/render.py: initialise PostgreSQL once, apply the webapp settings and set the
# app role's password from the secret fetched at boot. Idempotent, so cfn-hup may run it again.
set -euo pipefail
{_carried_record_check(carrying)}data={PG_DATA_DIR}
# The EC2 database server mounts a fresh, root-owned volume here: hand it to PostgreSQL first.
install -d -o postgres -g postgres -m 0700 "$(dirname "$data")"
[ -s "$data/PG_VERSION" ] || postgresql-setup --initdb
include="include '{PG_CONF_DIR}/postgresql.conf'"
grep -qxF "$include" "$data/postgresql.conf" || echo "$include" >> "$data/postgresql.conf"
systemctl enable postgresql.service
# cfn-hup runs this again on every update, an app-only one too: restart PostgreSQL only when its
# settings changed since they were last applied, and never under a running app for nothing.
settings=$(cat {PG_CONF_DIR}/postgresql.conf {PG_CONF_DIR}/pg_hba.conf | sha256sum | cut -d' ' -f1)
if ! systemctl is-active --quiet postgresql.service; then
  systemctl start postgresql.service
elif [ "$(cat {PG_SETTINGS_APPLIED} 2>/dev/null)" != "$settings" ]; then
  systemctl restart postgresql.service
fi
echo "$settings" > {PG_SETTINGS_APPLIED}
systemctl start {FETCH_PASSWORD_UNIT}
{PASSWORD_ENV}=$(cat {PASSWORD_FILE})
export {PASSWORD_ENV}
cd /
runuser -u postgres -- psql --no-psqlrc -q -v ON_ERROR_STOP=1 -p {database.port} -d postgres -f {PG_CONF_DIR}/setup.sql
"""
    files = {
        f"{PG_CONF_DIR}/postgresql.conf": ServerFile(postgresql_conf(database, listen_addresses=listen_addresses)),
        f"{PG_CONF_DIR}/pg_hba.conf": ServerFile(postgresql_hba(database, allowed_cidr), mode="000640",
                                                 owner="postgres", group="postgres"),
        f"{PG_CONF_DIR}/setup.sql": ServerFile(database_setup_sql(database)),
        PG_SETUP_SCRIPT: ServerFile(setup, mode="000700"),
    }
    files.update(_password_fetch_files(database))
    return files


def database_server_commands(database: DatabaseEndpoint) -> list[tuple[str, str]]:
    return [("10-database-setup", f"systemctl daemon-reload && {PG_SETUP_SCRIPT}")]


def database_server_bootstrap(database: DatabaseEndpoint, allowed_cidr: str, *,
                              listen_addresses: str = "*", carrying: bool = False) -> ServerBootstrap:
    return ServerBootstrap(database_server_packages(database),
                           database_server_files(database, allowed_cidr, listen_addresses=listen_addresses,
                                                 carrying=carrying),
                           database_server_commands(database))


def single_server_database(database: DatabaseEndpoint) -> ServerBootstrap:
    """Stage 1: the same database setup on the app server itself, reachable on loopback only."""
    _check(database.host in ("127.0.0.1", "localhost"), "stage 1's database host is 127.0.0.1")
    return database_server_bootstrap(database, "127.0.0.1/32", listen_addresses="localhost")


def single_server_bootstrap(layout: ServerLayout, database: DatabaseEndpoint, *,
                            app_version: str | None = None) -> ServerBootstrap:
    """Stage 1's whole server: the database first (its commands sort first), then the app."""
    return single_server_database(database) + app_server_bootstrap(layout, database, app_version=app_version)
