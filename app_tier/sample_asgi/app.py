"""The second sample app: a plain ASGI callable served by uvicorn, swapped in by config alone.

It keeps the contract of the WSGI sample (app_tier/sample_app): the same endpoints, the same
database settings, a liveness path that never touches the database. Only its kind differs: one
event loop per process, asynchronous PostgreSQL (psycopg's AsyncConnection), no framework.

  GET /         JSON pid, hostname, stage, a visit count kept in PostgreSQL, and the names of the
                reported environment variables that are set (never their values)
  GET /health   liveness only: 200 while the process is up, even when the database is down
  GET /ready    200 when the database answers, 503 when it does not
  GET /work?n=  CPU-bound work (sum of squares below n) for load benchmarks
  GET /sleep?ms= a slow request (sleeps, at most 30 s): in flight while a copy stops gracefully

Environment: DB_HOST, DB_PORT, DB_NAME, DB_USER and DB_PASSWORD_FILE (preferred) or DB_PASSWORD;
APP_STAGE; GREETING (a plain setting, shown); REPORTED_VARIABLES, comma-separated names whose
presence "/" reports, so a deploy can show that its secrets arrived without showing them.

Start command (config [app] start_command): uvicorn with one worker, so the process systemd or
the lab supervises is the one that serves, on the listening socket it inherits (--fd {fd}: systemd
socket activation), and keep-alive longer than the proxies' 60 s:
  {app_root}/venv/bin/uvicorn --app-dir {app_root}/app app:app --fd {fd}
  --http graceful:LingeringH11Protocol --workers 1 --timeout-keep-alive 75
  --timeout-graceful-shutdown 25 --no-server-header
uvicorn stops gracefully on SIGTERM: it stops accepting, finishes in-flight requests (25 s at most),
then exits; graceful.py keeps it from dropping a request just sent on a kept-alive connection. Release command: {app_root}/venv/bin/python {app_root}/app/migrate.py (the schema).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import traceback
from urllib.parse import parse_qs

import psycopg

MAX_WORK_N = 5_000_000
MAX_SLEEP_MS = 30_000
DEFAULT_WORK_N = 100_000
# Short, so a request during a database outage answers 503 quickly instead of hanging.
CONNECT_TIMEOUT_SEC = 2
# One event loop serves every request of this process; a few connections let database requests
# overlap without opening one per request.
MAX_CONNECTIONS = 4
# uvicorn puts no limit on a header that arrives whole; gunicorn refuses one over 8190 bytes and
# nginx (stage 4) one over 8 KiB. Where this app faces clients itself (stages 1-2), it refuses too.
MAX_HEADER_BYTES = 8190

HOSTNAME = socket.gethostname()
STAGE = os.environ.get("APP_STAGE", "")


class DatabaseUnavailable(Exception):
    pass


def _password() -> str | None:
    # Read on every connect, so a rotated secret is picked up without a restart.
    path = os.environ.get("DB_PASSWORD_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("DB_PASSWORD")


async def _connect() -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(
        host=os.environ.get("DB_HOST", "127.0.0.1"),
        port=int(os.environ.get("DB_PORT", "5432")),
        dbname=os.environ.get("DB_NAME", "app"),
        user=os.environ.get("DB_USER", "app"),
        password=_password(),
        connect_timeout=CONNECT_TIMEOUT_SEC,
        application_name=f"webapp-asgi-{os.getpid()}",
        autocommit=True,  # explicit transactions only, where a visit is counted
        # A database host that vanishes (no RST) must not hang requests for minutes.
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=2,
        options="-c statement_timeout=5000",
    )


class Connections:
    """At most MAX_CONNECTIONS connections, reused; a broken one is dropped and replaced once.

    After a database restart every idle connection is dead; one fresh attempt makes the first
    request after the outage succeed, with no app restart."""

    def __init__(self, size: int) -> None:
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(size)

    async def run(self, work):
        async with self._slots:
            for attempt in (1, 2):
                conn = self._idle.pop() if self._idle else None
                fresh = conn is None or conn.closed
                try:
                    if fresh:
                        conn = await _connect()
                    result = await work(conn)
                except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as error:
                    if conn is not None:
                        await conn.close()
                    # A fresh connection that fails means the database is down: no second try.
                    if attempt == 2 or fresh:
                        raise DatabaseUnavailable(_first_line(error)) from error
                    continue
                except BaseException:  # a bug or a cancelled request: the connection's state is unknown
                    if conn is not None:
                        await conn.close()
                    raise
                self._idle.append(conn)
                return result
        raise AssertionError("unreachable")

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


_connections = Connections(MAX_CONNECTIONS)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


async def _count_visit(conn: psycopg.AsyncConnection) -> int:
    async with conn.transaction():
        # The table is the release command's (migrate.py), made before any copy of a version starts.
        cursor = await conn.execute(
            "INSERT INTO visits (id, count) VALUES (1, 1)"
            " ON CONFLICT (id) DO UPDATE SET count = visits.count + 1 RETURNING count"
        )
        row = await cursor.fetchone()
    return row[0]


async def _ping(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("SELECT 1")


def _work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def _parse_ms(query: str) -> int:
    ms = int(parse_qs(query).get("ms", ["1000"])[-1])  # ValueError on bad input
    if not 0 <= ms <= MAX_SLEEP_MS:
        raise ValueError(f"ms must be between 0 and {MAX_SLEEP_MS}")
    return ms


def _parse_n(query: str) -> int:
    values = parse_qs(query).get("n", [str(DEFAULT_WORK_N)])
    n = int(values[-1])  # ValueError on bad input
    if not 0 <= n <= MAX_WORK_N:
        raise ValueError(f"n must be between 0 and {MAX_WORK_N}")
    return n


def _variables_set() -> list[str]:
    """Names only: a value (a secret's) never leaves the process."""
    names = [name.strip() for name in os.environ.get("REPORTED_VARIABLES", "").split(",") if name.strip()]
    return sorted(name for name in names if os.environ.get(name))


async def _route(method: str, path: str, query: str) -> tuple[int, dict]:
    if method not in ("GET", "HEAD"):
        return 405, {"error": "method not allowed"}
    if path == "/health":
        return 200, {"status": "ok", "pid": os.getpid()}
    if path == "/ready":
        try:
            await _connections.run(_ping)
        except DatabaseUnavailable as error:
            return 503, {"status": "database unavailable", "detail": str(error)}
        return 200, {"status": "ready"}
    if path == "/":
        try:
            visits = await _connections.run(_count_visit)
        except DatabaseUnavailable as error:
            return 503, {"error": "database unavailable", "detail": str(error), "pid": os.getpid()}
        # "visits" closes the dict: the boot rehearsal's in-place update adds a release marker after it.
        return 200, {"app": "sample_asgi", "server": "uvicorn" if "uvicorn" in sys.modules else "unknown",
                     "greeting": os.environ.get("GREETING", ""), "variables_set": _variables_set(),
                     "pid": os.getpid(), "hostname": HOSTNAME, "stage": STAGE, "visits": visits}
    if path == "/work":
        try:
            n = _parse_n(query)
        except ValueError:
            return 400, {"error": f"n must be an integer between 0 and {MAX_WORK_N}"}
        # In a thread: the event loop keeps answering /health while the work runs.
        return 200, {"pid": os.getpid(), "n": n, "result": await asyncio.to_thread(_work, n)}
    if path == "/sleep":
        try:
            ms = _parse_ms(query)
        except ValueError:
            return 400, {"error": f"ms must be an integer between 0 and {MAX_SLEEP_MS}"}
        await asyncio.sleep(ms / 1000)
        return 200, {"pid": os.getpid(), "slept_ms": ms}
    return 404, {"error": "not found", "path": path}


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _connections.close()  # after uvicorn finished the in-flight requests
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return  # no websockets here
    try:
        if any(len(name) + len(value) + 2 > MAX_HEADER_BYTES for name, value in scope["headers"]):
            status, payload = 431, {"error": "request header too large"}
        else:
            status, payload = await _route(scope["method"], scope["path"],
                                           scope.get("query_string", b"").decode("latin-1"))
    except Exception:  # noqa: BLE001 -- never a stack trace to the client; the log gets it
        traceback.print_exc(file=sys.stderr)
        status, payload = 500, {"error": "internal error"}
    body = json.dumps(payload).encode() + b"\n"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"5"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
