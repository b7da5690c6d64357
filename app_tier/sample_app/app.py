"""The sample web app (WSGI, under gunicorn): replace it with your own by editing [app] in config.

Standard library plus psycopg only. Endpoints:
  GET /         JSON pid, hostname, stage and a visit count kept in PostgreSQL
  GET /health   liveness only: 200 while the process is up, even when the database is down,
                so a database blip never makes the load balancer drain every server at once
  GET /ready    200 when the database answers, 503 when it does not
  GET /work?n=  CPU-bound work (sum of squares below n) for load benchmarks
  GET /sleep?ms= a slow request (sleeps, at most 30 s): in flight while a copy stops gracefully

Database settings come from the environment: DB_HOST, DB_PORT, DB_NAME, DB_USER and
DB_PASSWORD_FILE (preferred: a file holding the password) or DB_PASSWORD; APP_STAGE.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from urllib.parse import parse_qs

import psycopg

MAX_WORK_N = 5_000_000
MAX_SLEEP_MS = 30_000
DEFAULT_WORK_N = 100_000
# Short, so a request during a database outage answers 503 quickly instead of hanging.
CONNECT_TIMEOUT_SEC = 2

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


def _connect() -> psycopg.Connection:
    return psycopg.connect(
        host=os.environ.get("DB_HOST", "127.0.0.1"),
        port=int(os.environ.get("DB_PORT", "5432")),
        dbname=os.environ.get("DB_NAME", "app"),
        user=os.environ.get("DB_USER", "app"),
        password=_password(),
        connect_timeout=CONNECT_TIMEOUT_SEC,
        application_name=f"webapp-{os.getpid()}",
        autocommit=True,  # explicit transactions only, where a visit is counted
        # A database host that vanishes (no RST) must not hang requests for minutes.
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=2,
        options="-c statement_timeout=5000",
    )


_local = threading.local()  # one connection per worker thread; no pool needed


def _with_database(work):
    """Run work(conn) on this thread's connection, reconnecting once when it is broken.

    After a database restart the cached connection is dead; one fresh attempt makes the
    first request after the outage succeed, with no app restart.
    """
    for attempt in (1, 2):
        conn = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = _local.conn = _connect()
            return work(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as error:
            if conn is not None:
                conn.close()
            _local.conn = None
            if attempt == 2 or conn is None:
                raise DatabaseUnavailable(_first_line(error)) from error


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _count_visit(conn: psycopg.Connection) -> int:
    with conn.transaction():
        # The table is the release command's (migrate.py), made before any copy of a version starts.
        row = conn.execute(
            "INSERT INTO visits (id, count) VALUES (1, 1)"
            " ON CONFLICT (id) DO UPDATE SET count = visits.count + 1 RETURNING count"
        ).fetchone()
    return row[0]


def _ping(conn: psycopg.Connection) -> None:
    conn.execute("SELECT 1")


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


def _route(method: str, path: str, query: str) -> tuple[int, dict]:
    if method not in ("GET", "HEAD"):
        return 405, {"error": "method not allowed"}
    if path == "/health":
        return 200, {"status": "ok", "pid": os.getpid()}
    if path == "/ready":
        try:
            _with_database(_ping)
        except DatabaseUnavailable as error:
            return 503, {"status": "database unavailable", "detail": str(error)}
        return 200, {"status": "ready"}
    if path == "/":
        try:
            visits = _with_database(_count_visit)
        except DatabaseUnavailable as error:
            return 503, {"error": "database unavailable", "detail": str(error), "pid": os.getpid()}
        return 200, {"pid": os.getpid(), "hostname": HOSTNAME, "stage": STAGE, "visits": visits}
    if path == "/work":
        try:
            n = _parse_n(query)
        except ValueError:
            return 400, {"error": f"n must be an integer between 0 and {MAX_WORK_N}"}
        return 200, {"pid": os.getpid(), "n": n, "result": _work(n)}
    if path == "/sleep":
        try:
            ms = _parse_ms(query)
        except ValueError:
            return 400, {"error": f"ms must be an integer between 0 and {MAX_SLEEP_MS}"}
        time.sleep(ms / 1000)
        return 200, {"pid": os.getpid(), "slept_ms": ms}
    return 404, {"error": "not found", "path": path}


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def application(environ, start_response):
    try:
        status, payload = _route(environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"),
                                 environ.get("QUERY_STRING", ""))
    except Exception:  # noqa: BLE001 -- never a stack trace to the client; the log gets it
        traceback.print_exc(file=sys.stderr)
        status, payload = 500, {"error": "internal error"}
    body = json.dumps(payload).encode() + b"\n"
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if status == 503:
        headers.append(("Retry-After", "5"))
    start_response(f"{status} {_REASONS[status]}", headers)
    return [body]
