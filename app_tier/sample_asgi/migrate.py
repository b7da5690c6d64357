"""The sample app's release command ([app] release_command): run once per deploy, before the new
version takes traffic (the server's release script holds a lock and records the version).

It creates the app's schema (the request path no longer does) and appends one row to release_runs,
(APP_VERSION, hostname), so a rehearsal can count how often a version's release ran. Idempotent:
a schema change here is written so the running, older version keeps working (expand, then contract
in a later release: README "The release command").
"""

from __future__ import annotations

import os
import socket
import sys

import psycopg


def _password() -> str | None:
    path = os.environ.get("DB_PASSWORD_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("DB_PASSWORD")


def main() -> int:
    version = os.environ.get("APP_VERSION", "")
    if not version:
        print("migrate: APP_VERSION is not set", file=sys.stderr)
        return 2
    with psycopg.connect(host=os.environ.get("DB_HOST", "127.0.0.1"), port=int(os.environ.get("DB_PORT", "5432")),
                         dbname=os.environ.get("DB_NAME", "app"), user=os.environ.get("DB_USER", "app"),
                         password=_password(), connect_timeout=10, application_name="webapp-release") as conn:
        # One transaction, committed when the block ends: all of it or nothing.
        conn.execute("CREATE TABLE IF NOT EXISTS visits (id int PRIMARY KEY, count bigint NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS release_runs (id bigserial PRIMARY KEY, version text NOT NULL,"
                     " host text NOT NULL, ran_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO release_runs (version, host) VALUES (%s, %s)", (version, socket.gethostname()))
    print(f"migrate: schema ready; release of {version} recorded on {socket.gethostname()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
