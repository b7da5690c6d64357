"""A tiny process supervisor that plays systemd's part in the lab.

Like a socket unit: a program may be given a listening socket, which the supervisor holds for its
whole life and passes to every start of the program as file descriptor 3 with LISTEN_FDS=1 and
LISTEN_PID (sd_listen_fds), so a restart queues connections instead of refusing them.
Like a unit with Restart=always: each program runs in its own process group (its "control
group"). When the main process dies, what it left behind (a gunicorn worker) gets SIGTERM, as
systemd sends it, and finishes its in-flight requests; SIGKILL only after a timeout. Once the
group is empty the program starts again after RestartSec (render.RESTART_DELAY_SEC).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from app_tier.render import RESTART_DELAY_SEC

STOP_TIMEOUT_SEC = 10  # systemd's TimeoutStopSec, shorter for the lab
# Puts the inherited socket at fd 3 and names this very process in LISTEN_PID, then execs the
# program (same pid), as systemd does between fork and exec.
_LISTEN_FDS_SHIM = 'exec 3<&"$0"; [ "$0" = 3 ] || eval "exec $0<&-"; export LISTEN_FDS=1 LISTEN_PID=$$; exec "$@"'


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """What a socket unit's ListenStream= makes: a bound, listening TCP socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process in the group? Orphans may stay zombies where PID 1 does not
    reap them, so kill(pid, 0) cannot tell."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def _end_group(pgid: int, timeout_sec: float = STOP_TIMEOUT_SEC) -> None:
    """SIGTERM the group, wait for it to empty, SIGKILL what is left after timeout_sec."""
    _kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_sec
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            _kill_group(pgid, signal.SIGKILL)
            return
        time.sleep(0.05)


class Supervisor:
    def __init__(self, programs: Mapping[str, Sequence[str]], *, env: Mapping[str, str], cwd: str | Path,
                 log_dir: str | Path, restart_delay_sec: float = RESTART_DELAY_SEC,
                 sockets: Mapping[str, socket.socket] | None = None) -> None:
        self._programs = {name: list(argv) for name, argv in programs.items()}
        self._sockets = dict(sockets or {})
        self._env, self._cwd, self._log_dir = dict(env), str(cwd), Path(log_dir)
        self._delay = restart_delay_sec
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.restarts = {name: 0 for name in self._programs}

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for name in self._programs:
            self._spawn(name)
            thread = threading.Thread(target=self._watch, args=(name,), name=f"supervise-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _spawn(self, name: str) -> None:
        with self._lock, open(self.log_path(name), "ab") as log:
            if self._stopping.is_set():  # stop() already collected the processes to end
                return
            argv, fds = self._programs[name], ()
            if name in self._sockets:
                fd = self._sockets[name].fileno()
                argv, fds = ["/bin/bash", "-c", _LISTEN_FDS_SHIM, str(fd), *argv], (fd,)
            self._procs[name] = subprocess.Popen(
                argv, env=self._env, cwd=self._cwd, stdin=subprocess.DEVNULL, pass_fds=fds,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _watch(self, name: str) -> None:
        while True:
            proc = self._procs[name]
            proc.wait()
            _end_group(proc.pid)  # the rest of the "control group"
            if self._stopping.wait(self._delay):
                return
            self.restarts[name] += 1
            self._spawn(name)

    def pids(self) -> dict[str, int]:
        """Main process id of each program (what systemd calls MainPID)."""
        with self._lock:
            return {name: proc.pid for name, proc in self._procs.items()}

    def restart(self, name: str) -> None:
        """systemctl restart: SIGTERM the program's group; the watcher starts it again once it is gone.
        Its socket stays open meanwhile."""
        with self._lock:
            pid = self._procs[name].pid
        _kill_group(pid, signal.SIGTERM)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            procs = list(self._procs.values())
        for proc in procs:
            _kill_group(proc.pid, signal.SIGTERM)
        for proc in procs:
            _end_group(proc.pid)
            proc.poll()
        for thread in self._threads:
            thread.join(timeout=2)
        for sock in self._sockets.values():
            sock.close()
