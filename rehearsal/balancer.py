"""HAProxy standing in for the ALB: the target group's health check, drain and counts.

The ALB cannot run here. HAProxy (Debian's package) plays its part for the deploy rehearsal:
  - a listener on loopback in front of a pool of server slots on the rehearsal's bridge;
  - active health checks with the target group's path, interval and thresholds (interval scaled);
  - a registered server starts unhealthy and takes traffic after `healthy_threshold` passing
    checks, as a new ALB target does; a failing one leaves after `unhealthy_threshold` failures;
  - deregistration drains: no new requests, then the server is taken out;
  - what the rollout alarms read, per period: the servers' 5xx answers, all requests, and the
    most servers unhealthy at once (a server still starting, never yet healthy, is "initial" on
    an ALB and not counted).
A monitor samples HAProxy every 100 ms: the number of servers in service at each moment.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from rehearsal.refresh import Period, Timing
from tools.rollout import RolloutSettings

BACKEND = "app"
SAMPLE_SEC = 0.1


class BalancerError(RuntimeError):
    pass


def haproxy_config(settings: RolloutSettings, timing: Timing, slots: dict[str, str], *, port: int,
                   service_port: int, admin_socket: Path) -> str:
    """The configuration: every slot a server, in maintenance (not registered) until launched."""
    interval_ms = max(50, round(timing.health_interval * 1000))
    servers = "\n".join(f"  server {name} {address}:{service_port} check disabled"
                        for name, address in slots.items())
    return f"""# Rendered by rehearsal/balancer.py from the template's target group (times / {timing.scale}).
global
  stats socket {admin_socket} mode 600 level admin
  maxconn 4096
defaults
  mode http
  # No retries: an ALB answers 502 when a target fails, so a rehearsal must see every failure.
  retries 0
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout check {interval_ms}ms
frontend listener
  bind 127.0.0.1:{port}
  default_backend {BACKEND}
backend {BACKEND}
  balance roundrobin
  option httpchk GET {settings.health_check_path}
  http-check expect status 200
  default-server inter {interval_ms} rise {settings.healthy_threshold} fall {settings.unhealthy_threshold}
{servers}
"""


class Balancer:
    def __init__(self, settings: RolloutSettings, timing: Timing, slots: dict[str, str], *, port: int,
                 service_port: int, state_dir: Path) -> None:
        if not shutil.which("haproxy"):
            raise BalancerError("haproxy is not installed (scripts/setup.sh installs it)")
        self.settings, self.timing, self.port = settings, timing, port
        state_dir.mkdir(parents=True, exist_ok=True)
        self.admin = state_dir / "haproxy.sock"
        config = state_dir / "haproxy.cfg"
        config.write_text(haproxy_config(settings, timing, slots, port=port, service_port=service_port,
                                         admin_socket=self.admin))
        self.log = (state_dir / "haproxy.log").open("w")
        self.process = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.admin.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise BalancerError(f"haproxy did not start; see {state_dir / 'haproxy.log'}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/"
        self._lock = threading.Lock()
        self._registered: set[str] = set()
        self._been_healthy: set[str] = set()
        self._stop = threading.Event()
        self.min_in_service: int | None = None
        self._watching = False
        self.current = Period()
        self._last_totals: tuple[int, int] | None = None
        self.on_period = None  # called with each finished Period
        self._monitor = threading.Thread(target=self._watch, name="balancer-monitor", daemon=True)
        self._monitor.start()

    # --- the admin socket --------------------------------------------------------------------

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return {r["svname"]: r for r in rows if r["pxname"] == BACKEND and r["svname"] not in ("BACKEND", "FRONTEND")}

    # --- registration ------------------------------------------------------------------------

    def register(self, name: str) -> None:
        """As an ALB target: registered unhealthy, in service after `rise` passing checks. Both
        commands on one line, so no request reaches it between leaving maintenance and going down."""
        with self._lock:
            self._registered.add(name)
            self._been_healthy.discard(name)
        self.command(f"set server {BACKEND}/{name} state ready; set server {BACKEND}/{name} health down")

    def drain(self, name: str) -> None:
        self.command(f"set server {BACKEND}/{name} state drain")

    def deregister(self, name: str) -> None:
        with self._lock:
            self._registered.discard(name)
        self.command(f"set server {BACKEND}/{name} state maint")

    def in_service(self, name: str) -> bool:
        return self.servers()[name]["status"].startswith("UP")

    # --- the monitor -------------------------------------------------------------------------

    def watch(self) -> None:
        """Start counting: the minimum in service and alarm periods from now on."""
        with self._lock:
            self.min_in_service, self.current, self._watching = None, Period(), True
            self._last_totals = None

    def unwatch(self) -> None:
        with self._lock:
            self._watching = False

    def _watch(self) -> None:
        period_started = time.monotonic()
        while not self._stop.wait(SAMPLE_SEC):
            try:
                rows = self.servers()
            except OSError:
                continue
            in_service = sum(1 for r in rows.values() if r["status"].startswith("UP"))
            errors = sum(int(r["hrsp_5xx"] or 0) for r in rows.values())
            answered = sum(int(r[f"hrsp_{k}"] or 0) for r in rows.values()
                           for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))
            with self._lock:
                for name, row in rows.items():
                    if row["status"].startswith("UP"):
                        self._been_healthy.add(name)
                unhealthy = sum(1 for name, row in rows.items() if name in self._registered
                                and name in self._been_healthy and row["status"].startswith("DOWN"))
                if not self._watching:
                    period_started = time.monotonic()
                    continue
                if self.min_in_service is None or in_service < self.min_in_service:
                    self.min_in_service = in_service
                if self._last_totals is not None:
                    self.current.target_5xx += errors - self._last_totals[0]
                    self.current.requests += answered - self._last_totals[1]
                self._last_totals = (errors, answered)
                self.current.unhealthy_max = max(self.current.unhealthy_max, unhealthy)
                finished = None
                if time.monotonic() - period_started >= self.timing.alarm_period:
                    finished, self.current = self.current, Period()
                    period_started = time.monotonic()
            if finished is not None and self.on_period:
                self.on_period(finished)

    def stop(self) -> None:
        self._stop.set()
        self._monitor.join(2)
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
