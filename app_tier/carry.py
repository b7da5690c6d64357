"""Carrying the data when a stage-1 server grows to stage 2: its own PostgreSQL into the new database.

At stage 1 the app server runs PostgreSQL itself. Moving the environment to stage 2 (config's
`stage = 2`) keeps that server (updated in place, never replaced: its image is resolved at launch
in both stages) and gives it a database of its own: a database server, or RDS. The new database
starts empty. This step, the first config of the server's Init after the update, carries the data
across, once, before anything of stage 2 touches the server:

  1. nothing to do when the server has no local PostgreSQL data (a fresh stage-2 server) or the
     carry already happened (its record, CARRIED_RECORD, names the target and the row counts);
  2. the target must be empty, or hold exactly what a previous, interrupted run put there (same
     row counts): it never overwrites data;
  3. the downtime window: the app's units and sockets stop (requests are refused: an open socket
     would start the app again on stage 1's settings, writing to the copy's source), `pg_dump | pg_restore --single-transaction` copies the app's database
     (all of it or nothing), and every table's row count is compared on both sides;
  4. only after the counts match: the record is written, and the local PostgreSQL is retired
     (stopped and disabled; its data directory is kept until you delete it, README: Growing the
     service); then the rest of the Init (stage 2's files, the release command, the app's start on
     the new database) runs;
  5. any failure before that: the app is started again, still on the old settings (the rest of the
     Init has not run: its env file and password are stage 1's), the local database serving and
     untouched; cfn-init fails, and the next run (a redeploy, or cfn-init by hand) starts over.

Run as root by cfn-init. The target's password is read from its Secrets Manager secret into a
root-only file on tmpfs, never argv or the environment of another process.
"""

from __future__ import annotations

from app_tier import render

CARRY_SCRIPT = f"{render.LIBEXEC_DIR}/carry-local-database"
CARRY_TARGET = "/etc/webapp/carry-target.env"
CARRIED_RECORD = "/var/lib/webapp/carried"  # written once the copy is verified; its presence makes a rerun a no-op
CARRY_LOG_PREFIX = "carry-local-database:"


def carry_bootstrap(layout: render.ServerLayout, database: render.DatabaseEndpoint) -> render.ServerBootstrap:
    """The Init config that runs before the app's on a stage-2 app server (see the module's doc)."""
    target = "".join(f"{name}={render.environment_file_value(value)}\n" for name, value in (
        ("TARGET_HOST", database.host), ("TARGET_PORT", str(database.port)), ("TARGET_DB", database.name),
        ("TARGET_USER", database.user), ("TARGET_SECRET_ARN", database.secret_arn or ""),
        ("TARGET_REGION", database.region or "")))
    # The sockets stop too: an open socket would start the app again on the first request, on stage
    # 1's settings, writing to the database being copied. Requests are refused while the window lasts.
    units = " ".join(render.app_sockets(layout) + render.app_units(layout))
    script = f"""#!/bin/bash
# Rendered by app_tier/carry.py: carry this server's own PostgreSQL (stage 1) into the database the
# app uses from stage 2 on, once, verified table by table before the local copy is retired.
set -euo pipefail
say() {{ echo "{CARRY_LOG_PREFIX} $*"; }}
if [ -f {CARRIED_RECORD} ]; then say "already carried: $(head -n 1 {CARRIED_RECORD})"; exit 0; fi
if [ ! -f {render.PG_DATA_DIR}/PG_VERSION ]; then say "no local PostgreSQL data: nothing to carry"; exit 0; fi
set -a; . {CARRY_TARGET}; set +a
[ -n "$TARGET_REGION" ] || TARGET_REGION=$(cut -d: -f4 <<<"$TARGET_SECRET_ARN")
umask 077
work=$(mktemp -d {render.SECRET_DIR}/.carry.XXXXXX)
app_stopped=""
finish() {{
  status=$?
  rm -rf "$work"
  if [ $status -ne 0 ] && [ -n "$app_stopped" ]; then
    say "FAILED: the app starts again on the local database, which is untouched"
    systemctl start {units} || true
  fi
  exit $status
}}
trap finish EXIT

local_sql() {{ (cd / && runuser -u postgres -- psql -X -qtA -v ON_ERROR_STOP=1 -d "$TARGET_DB" -c "$1"); }}
target_sql() {{ PGPASSFILE="$work/pgpass" psql -X -qtA -v ON_ERROR_STOP=1 -h "$TARGET_HOST" -p "$TARGET_PORT" \\
  -U "$TARGET_USER" -d "$TARGET_DB" -c "$1"; }}
COUNT_TABLES="SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
# One line per table, "name rows", in name order: what both sides must agree on.
ROW_COUNTS="SELECT string_agg(format('%s %s', t, (xpath('/row/c/text()',
  query_to_xml(format('SELECT count(*) AS c FROM public.%I', t), false, true, '')))[1]::text), E'\\n' ORDER BY t)
  FROM (SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public') tables"

systemctl start postgresql.service
if ! local_sql "SELECT 1" >/dev/null 2>&1; then say "no local database $TARGET_DB: nothing to carry"; exit 0; fi
if [ "$(local_sql "$COUNT_TABLES")" = 0 ]; then say "the local database has no tables: nothing to carry"; exit 0; fi

for attempt in $(seq 1 30); do
  if aws secretsmanager get-secret-value --region "$TARGET_REGION" --secret-id "$TARGET_SECRET_ARN" \\
       --query SecretString --output text \\
     | python3 -c 'import json, sys; p = json.load(sys.stdin)["password"].replace("\\\\", "\\\\\\\\").replace(":", "\\\\:"); sys.stdout.write("*:*:*:*:" + p + "\\n")' \\
       > "$work/pgpass"; then break; fi
  say "reading the target's password: attempt $attempt failed; retrying"; sleep 5
done
[ -s "$work/pgpass" ] || {{ say "could not read the target's password"; exit 1; }}
for attempt in $(seq 1 60); do target_sql "SELECT 1" >/dev/null 2>&1 && break; sleep 2; done
target_sql "SELECT 1" >/dev/null

local_counts=$(local_sql "$ROW_COUNTS")
if [ "$(target_sql "$COUNT_TABLES")" != 0 ]; then
  if [ "$(target_sql "$ROW_COUNTS")" = "$local_counts" ]; then
    say "the target already holds exactly the local rows (an interrupted earlier run): verifying only"
  else
    say "REFUSED: $TARGET_HOST/$TARGET_DB already holds other data; nothing was changed"
    exit 1
  fi
else
  say "downtime starts: stopping the app ({units})"
  started=$(date +%s.%N)
  app_stopped=1
  systemctl stop {units}
  local_counts=$(local_sql "$ROW_COUNTS")
  (cd / && runuser -u postgres -- pg_dump -Fc -d "$TARGET_DB") \\
    | PGPASSFILE="$work/pgpass" pg_restore --single-transaction --exit-on-error --no-owner --no-privileges \\
        -h "$TARGET_HOST" -p "$TARGET_PORT" -U "$TARGET_USER" -d "$TARGET_DB"
fi
target_counts=$(target_sql "$ROW_COUNTS")
if [ "$target_counts" != "$local_counts" ]; then
  say "VERIFY FAILED: row counts differ (local | target):"
  diff <(echo "$local_counts") <(echo "$target_counts") || true
  exit 1
fi
rows=$(awk '{{ s += $2 }} END {{ print s + 0 }}' <<<"$local_counts")
tables=$(wc -l <<<"$local_counts")
say "verified: $tables tables, $rows rows, equal on both sides"
install -d -m 0755 "$(dirname {CARRIED_RECORD})"
{{ echo "to $TARGET_HOST:$TARGET_PORT/$TARGET_DB at $(date -u +%FT%TZ): $tables tables, $rows rows"; \\
   echo "$local_counts"; }} > {CARRIED_RECORD}
systemctl disable --now postgresql.service
say "retired the local PostgreSQL (stopped, disabled; its data stays in {render.PG_DATA_DIR} until you delete it)"
if [ -n "${{started:-}}" ]; then say "the copy took $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {{ printf "%.1f", b - a }}') s"; fi
"""
    return render.ServerBootstrap(
        files={CARRY_TARGET: render.ServerFile(target, mode="000600"),
               CARRY_SCRIPT: render.ServerFile(script, mode="000700")},
        commands=[("carry-local-database", CARRY_SCRIPT)])
