"""Start, find and stop the local AWS emulator (moto's server mode) on loopback.

The emulator runs in the background and outlives the command that started it, so a user
can point the AWS CLI or boto3 at it after `make deploy-local`. Its pid and port are kept
in `.local/emulator.json`; its log goes to `.local/emulator.log`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tools import ROOT

DEFAULT_STATE_DIR = ROOT / ".local"
DEFAULT_REGION = "ap-northeast-2"
# Dummy credentials: the emulator accepts any, and they can never reach a real account.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Variables that would send a command to a real account or profile instead of the emulator.
_REAL_AWS_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                       "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                       "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
START_TIMEOUT_SEC = 30.0


class EmulatorError(RuntimeError):
    pass


@dataclass(frozen=True)
class Emulator:
    pid: int
    port: int
    log: str

    @property
    def endpoint_url(self) -> str:
        # `localhost`, not 127.0.0.1: moto reads the bucket name from the host of S3 URLs, and
        # takes `127.0.0.1`-style hosts for virtual-hosted buckets, so CDK's template upload fails.
        return f"http://localhost:{self.port}"

    def environment(self, region: str = DEFAULT_REGION, base: dict[str, str] | None = None) -> dict[str, str]:
        """Process environment that sends the AWS SDKs and the CDK CLI to this emulator only."""
        env = dict(os.environ if base is None else base)
        for name in _REAL_AWS_VARIABLES:
            env.pop(name, None)
        env.update(DUMMY_CREDENTIALS)
        env.update({
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            # Keep a user's ~/.aws/config (profiles, SSO, credential_process) out of it.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "CDK_DISABLE_CLI_TELEMETRY": "true",
        })
        return env

    def session(self, region: str = DEFAULT_REGION):
        """A boto3 session whose clients all talk to this emulator."""
        import boto3

        return EmulatorSession(boto3.session.Session(region_name=region, **_dummy_keys()), self.endpoint_url)


class EmulatorSession:
    """`client(name)` bound to the emulator's endpoint, so no call can reach a real account."""

    def __init__(self, session, endpoint_url: str):
        self._session = session
        self.endpoint_url = endpoint_url
        self.region_name = session.region_name

    def client(self, service: str):
        return self._session.client(service, endpoint_url=self.endpoint_url)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_healthy(port: int, timeout_sec: float = 2.0) -> bool:
    """True when the port answers an AWS API call (STS GetCallerIdentity) like an emulator."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    sts = boto3.session.Session(region_name=DEFAULT_REGION, **_dummy_keys()).client(
        "sts", endpoint_url=f"http://localhost:{port}",
        config=Config(connect_timeout=timeout_sec, read_timeout=timeout_sec, retries={"max_attempts": 1}))
    try:
        return bool(sts.get_caller_identity().get("Account"))
    except (BotoCoreError, ClientError, OSError):
        return False


def _dummy_keys() -> dict[str, str]:
    return {"aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_moto(pid: int) -> bool:
    """Guard against a recycled pid: only a moto server process is ever stopped."""
    try:
        return b"moto" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        # No /proc (macOS): trust the state file, which only `start` writes.
        return not Path("/proc").is_dir()


def _state_file(state_dir: Path) -> Path:
    return state_dir / "emulator.json"


def _recorded(state_dir: Path) -> Emulator | None:
    try:
        return Emulator(**json.loads(_state_file(state_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running(state_dir: Path = DEFAULT_STATE_DIR) -> Emulator | None:
    """The emulator recorded in the state file, if its process is alive and answers."""
    emulator = _recorded(state_dir)
    if emulator and _pid_alive(emulator.pid) and is_healthy(emulator.port):
        return emulator
    return None


def start(state_dir: Path = DEFAULT_STATE_DIR, port: int | None = None) -> tuple[Emulator, bool]:
    """Reuse the running emulator or start one. Returns (emulator, started_now)."""
    existing = running(state_dir)
    if existing and (port is None or port == existing.port):
        return existing, False
    if existing:
        raise EmulatorError(f"an emulator is already running on port {existing.port} (pid {existing.pid}); "
                            f"stop it with `python -m tools.local_aws down` or omit --port")
    port = port or free_port()
    if is_healthy(port):
        raise EmulatorError(f"port {port} already has an emulator that this checkout did not start")
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "emulator.log"
    command = [sys.executable, "-m", "tools.local_aws.patched_moto"]
    with open(log_path, "ab") as log:
        # A session of its own: the emulator keeps running after `make` returns, and Ctrl-C in
        # the terminal that started it does not stop it.
        process = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=ROOT)
    emulator = Emulator(pid=process.pid, port=port, log=str(log_path))
    deadline = time.monotonic() + START_TIMEOUT_SEC
    while not is_healthy(port, timeout_sec=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            _terminate(process.pid)
            raise EmulatorError(f"the emulator did not start on port {port}; see {log_path}")
        time.sleep(0.1)
    _state_file(state_dir).write_text(json.dumps(asdict(emulator)) + "\n")
    return emulator, True


def _terminate(pid: int, timeout_sec: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_sec
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def stop(state_dir: Path = DEFAULT_STATE_DIR) -> Emulator | None:
    """Stop the emulator this checkout started (only that pid) and forget it."""
    emulator = _recorded(state_dir)
    if emulator is None:
        return None
    if _pid_alive(emulator.pid) and _is_moto(emulator.pid):
        _terminate(emulator.pid)
    _state_file(state_dir).unlink(missing_ok=True)
    return emulator


def account_id(emulator: Emulator, region: str = DEFAULT_REGION) -> str:
    return emulator.session(region).client("sts").get_caller_identity()["Account"]
