"""Carrying the data when a stage-1 server grows to stage 2: its own PostgreSQL into the new database.

At stage 1 the app server runs PostgreSQL itself. Moving the environment to stage 2 (config's
`stage = 2`) keeps that server (updated in place, never replaced: its image is resolved at launch
in both stages) and gives it a database of its own: a database server, or RDS. The new database
starts empty. This step, the first config of the server's Init after the update, carries the data
across, once, before anything of stage 2 touches the server:

  1. nothing to do when the server has no local PostgreSQL data or database (a fresh stage-2 server;
     a query that must succeed says so: an error stops the carry instead), or once the carry
     happened (its record, CARRIED_RECORD, names the target and the row counts);
  2. the downtime window starts: the app's units and sockets stop, so nothing writes to the local
     database any more (an open socket would start the app again, on stage 1's settings);
  3. the target must be empty, or hold an unfinished earlier carry from this same server (a marker
     schema, written in the copy's own transaction, names the source cluster): that one is dropped
     and copied again, since the local data may have changed since. Anything else is refused:
     it never overwrites data it did not put there;
  4. `pg_dump | psql --single-transaction` copies the app's database with the marker (all of it or
     nothing), and every table's row count is compared on both sides;
  5. only after the counts match: the marker goes, the record is written, and the local PostgreSQL
     is retired (stopped and disabled; its data directory is kept until you delete it, README:
     Growing the service); then the rest of the Init (stage 2's files, the release command, the
     app's start on the new database) runs;
  6. any failure before that: the app starts again, still on the old settings (the rest of the Init
     has not run: its env file and password are stage 1's), the local database serving and
     untouched; cfn-init fails, the server's wait condition gets FAILURE, the deploy rolls back to
     stage 1, and the next deploy of stage 2 starts over.

Run as root by cfn-init. The target's password is read from its Secrets Manager secret into a
root-only file on tmpfs, never argv or the environment of another process.
"""

from __future__ import annotations

from app_tier import render

CARRY_SCRIPT = f"{render.LIBEXEC_DIR}/carry-local-database"
CARRY_TARGET = "/etc/webapp/carry-target.env"
CARRIED_RECORD = "/var/lib/webapp/carried"  # written once the copy is verified; its presence makes a rerun a no-op
CARRY_LOG_PREFIX = "carry-local-database:"
MARKER_SCHEMA = "webapp_carry"  # on the target while a carry is unfinished: which cluster it came from


def target_file(database: render.DatabaseEndpoint) -> str:
    return "".join(f"{name}={render.environment_file_value(value)}\n" for name, value in (
        ("TARGET_HOST", database.host), ("TARGET_PORT", str(database.port)), ("TARGET_DB", database.name),
        ("TARGET_USER", database.user), ("TARGET_SECRET_ARN", database.secret_arn or ""),
        ("TARGET_REGION", database.region or "")))


def carry_script(layout: render.ServerLayout, *, target: str = CARRY_TARGET, record: str = CARRIED_RECORD,
                 pg_data_dir: str = render.PG_DATA_DIR, work_dir: str = render.SECRET_DIR) -> str:
    """The script; the paths are parameters so the lab can run it against real PostgreSQL servers."""
    # Sockets first: stopping a socket unit stops its service too, and no request starts it again.
    units = " ".join(render.app_sockets(layout) + render.app_units(layout))
    return f"""#!/bin/bash
# Rendered by app_tier/carry.py: carry this server's own PostgreSQL (stage 1) into the database the
# app uses from stage 2 on, once, verified table by table before the local copy is retired.
set -euo pipefail
say() {{ echo "{CARRY_LOG_PREFIX} $*"; }}
if [ -f {record} ]; then say "already carried: $(head -n 1 {record})"; exit 0; fi
if [ ! -f {pg_data_dir}/PG_VERSION ]; then say "no local PostgreSQL data: nothing to carry"; exit 0; fi
set -a; . {target}; set +a
[ -n "$TARGET_REGION" ] || TARGET_REGION=$(cut -d: -f4 <<<"$TARGET_SECRET_ARN")
umask 077
install -d -m 0700 {work_dir}
work=$(mktemp -d {work_dir}/.carry.XXXXXX)
units=""
for unit in {units}; do  # a server set up before socket activation has no socket units yet
  if [ "$(systemctl show -p LoadState --value "$unit")" = loaded ]; then units="$units $unit"; fi
done
app_stopped=""
finish() {{
  status=$?
  rm -rf "$work"
  if [ $status -ne 0 ] && [ -n "$app_stopped" ]; then
    say "FAILED: the app starts again on the local database, which is untouched"
    systemctl start $units || true
  fi
  exit $status
}}
trap finish EXIT

# PostgreSQL's own account, as the owner of its data directory: the superuser over the local socket.
pg_admin=$(stat -c %U {pg_data_dir})
local_sql() {{ (cd / && runuser -u "$pg_admin" -- psql -X -qtA -v ON_ERROR_STOP=1 -d "${{2:-$TARGET_DB}}" -c "$1"); }}
target_sql() {{ PGPASSFILE="$work/pgpass" psql -X -qtA -v ON_ERROR_STOP=1 -h "$TARGET_HOST" -p "$TARGET_PORT" \\
  -U "$TARGET_USER" -d "$TARGET_DB" -c "$1"; }}
COUNT_TABLES="SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
# One line per table, "name rows", in byte order of the names (not either database's collation).
ROW_COUNTS="SELECT string_agg(format('%s %s', t, (xpath('/row/c/text()',
  query_to_xml(format('SELECT count(*) AS c FROM public.%I', t), false, true, '')))[1]::text), E'\\n'
  ORDER BY t COLLATE \\"C\\") FROM (SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public') tables"

systemctl start postgresql.service
# Whether the app's database exists here: only a query that succeeded may say "no" (an error stops the carry).
exists=$(local_sql "SELECT count(*) FROM pg_database WHERE datname = '$TARGET_DB'" template1)
if [ "$exists" = 0 ]; then say "no local database $TARGET_DB: nothing to carry"; exit 0; fi
if [ "$(local_sql "$COUNT_TABLES")" = 0 ]; then say "the local database has no tables: nothing to carry"; exit 0; fi
source_id=$(local_sql "SELECT system_identifier FROM pg_control_system()")

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

say "downtime starts: stopping the app ($units)"
started=$(date +%s.%N)
app_stopped=1
systemctl stop $units
if [ "$(target_sql "$COUNT_TABLES")" != 0 ]; then
  earlier=$(target_sql "SELECT source FROM {MARKER_SCHEMA}.source" 2>/dev/null || true)
  if [ "$earlier" != "$source_id" ]; then
    say "REFUSED: $TARGET_HOST/$TARGET_DB already holds data this carry did not put there; nothing was changed"
    exit 1
  fi
  say "the target holds an unfinished earlier carry from this server: copying again"
  target_sql "DROP SCHEMA public CASCADE; CREATE SCHEMA public; DROP SCHEMA {MARKER_SCHEMA} CASCADE" >/dev/null
fi
local_counts=$(local_sql "$ROW_COUNTS")
{{ (cd / && runuser -u "$pg_admin" -- pg_dump --no-owner --no-privileges -d "$TARGET_DB")
  echo "CREATE SCHEMA {MARKER_SCHEMA}; CREATE TABLE {MARKER_SCHEMA}.source (source text NOT NULL);"
  echo "INSERT INTO {MARKER_SCHEMA}.source VALUES ('$source_id');"
}} | PGPASSFILE="$work/pgpass" psql -X -q -v ON_ERROR_STOP=1 --single-transaction -h "$TARGET_HOST" \\
      -p "$TARGET_PORT" -U "$TARGET_USER" -d "$TARGET_DB" >/dev/null
target_counts=$(target_sql "$ROW_COUNTS")
if [ "$target_counts" != "$local_counts" ]; then
  say "VERIFY FAILED: row counts differ (local | target):"
  diff <(echo "$local_counts") <(echo "$target_counts") || true
  exit 1
fi
rows=$(awk '{{ s += $2 }} END {{ print s + 0 }}' <<<"$local_counts")
tables=$(wc -l <<<"$local_counts")
say "verified: $tables tables, $rows rows, equal on both sides"
target_sql "DROP SCHEMA {MARKER_SCHEMA} CASCADE" >/dev/null
install -d -m 0755 "$(dirname {record})"
{{ echo "to $TARGET_HOST:$TARGET_PORT/$TARGET_DB at $(date -u +%FT%TZ): $tables tables, $rows rows"; \\
   echo "$local_counts"; }} > {record}
app_stopped=""
# The copy is verified and recorded: the update goes on even if the local server will not stop.
if systemctl disable --now postgresql.service; then
  say "retired the local PostgreSQL (stopped, disabled; its data stays in {pg_data_dir} until you delete it)"
else
  say "the copy is verified, but the local PostgreSQL did not stop: stop and disable it by hand"
fi
say "the copy took $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {{ printf "%.1f", b - a }}') s"
"""


def carry_bootstrap(layout: render.ServerLayout, database: render.DatabaseEndpoint) -> render.ServerBootstrap:
    """The Init config that runs before the app's on a stage-2 app server (see the module's doc)."""
    return render.ServerBootstrap(
        files={CARRY_TARGET: render.ServerFile(target_file(database), mode="000600"),
               CARRY_SCRIPT: render.ServerFile(carry_script(layout), mode="000700")},
        commands=[("carry-local-database", CARRY_SCRIPT)])
