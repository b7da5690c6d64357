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

The same script, rendered for the EC2 database server (`database_server_carry_script`), carries an
EC2 database server's PostgreSQL into RDS ([database.carry_from], README: Growing the service). It runs
last in that server's Init, on the deploy that creates RDS next to it. The app servers stay where they
are meanwhile, so the freeze is in the database: the app's role may not log in and its sessions end
(and may log in again on a failure). After the verification PostgreSQL is retired and systemd's
forwarder takes its port, passing each connection to RDS, until the app servers' own update (which
waits for this step's wait condition) points them at RDS. A rerun keeps PostgreSQL retired and the
forwarder serving; the setup script skips PostgreSQL once the record exists (render.CARRIED_RECORD),
and, on a server whose metadata no longer carries (a rolled-back deploy), moves the record aside and
serves again.

Run as root by cfn-init. The target's password is read from its Secrets Manager secret into a
root-only file on tmpfs, never argv or the environment of another process.
"""

from __future__ import annotations

from app_tier import render

CARRY_SCRIPT = f"{render.LIBEXEC_DIR}/carry-local-database"
CARRY_TARGET = "/etc/webapp/carry-target.env"
CARRIED_RECORD = render.CARRIED_RECORD  # written once the copy is verified; its presence makes a rerun a no-op
CARRY_LOG_PREFIX = "carry-local-database:"
MARKER_SCHEMA = "webapp_carry"  # on the target while a carry is unfinished: which cluster it came from
# systemd's own TCP forwarder (in the systemd package on Amazon Linux 2023 and Debian)
SOCKET_PROXYD = "/usr/lib/systemd/systemd-socket-proxyd"


def target_file(database: render.DatabaseEndpoint) -> str:
    return "".join(f"{name}={render.environment_file_value(value)}\n" for name, value in (
        ("TARGET_HOST", database.host), ("TARGET_PORT", str(database.port)), ("TARGET_DB", database.name),
        ("TARGET_USER", database.user), ("TARGET_SECRET_ARN", database.secret_arn or ""),
        ("TARGET_REGION", database.region or "")))


def carry_script(layout: render.ServerLayout, *, target: str = CARRY_TARGET, record: str = CARRIED_RECORD,
                 pg_data_dir: str = render.PG_DATA_DIR, work_dir: str = render.SECRET_DIR) -> str:
    """The app server's script (stage 1 -> 2); the paths are parameters so the lab can run it against
    real PostgreSQL servers. The app is frozen by stopping its units and sockets."""
    # Sockets first: stopping a socket unit stops its service too, and no request starts it again.
    units = " ".join(render.app_sockets(layout) + render.app_units(layout))
    return _script(
        what="this server's own PostgreSQL (stage 1)\n# into the database the app uses from stage 2 on",
        setup=f"""units=""
for unit in {units}; do  # a server set up before socket activation has no socket units yet
  if [ "$(systemctl show -p LoadState --value "$unit")" = loaded ]; then units="$units $unit"; fi
done""",
        freeze="""say "downtime starts: stopping the app ($units)"
systemctl stop $units""",
        thaw="""say "FAILED: the app starts again on the local database, which is untouched"
systemctl start $units || true""",
        retire=f"""# The copy is verified and recorded: the update goes on even if the local server will not stop.
if systemctl disable --now postgresql.service; then
  say "retired the local PostgreSQL (stopped, disabled; its data stays in {pg_data_dir} until you delete it)"
else
  say "the copy is verified, but the local PostgreSQL did not stop: stop and disable it by hand"
fi""",
        already="", nothing="exit 0", target=target, record=record, pg_data_dir=pg_data_dir, work_dir=work_dir)


def database_server_carry_script(app_user: str, *, target: str = CARRY_TARGET, record: str = CARRIED_RECORD,
                                 pg_data_dir: str = render.PG_DATA_DIR, work_dir: str = render.SECRET_DIR) -> str:
    """The EC2 database server's script (EC2 PostgreSQL -> RDS). The app servers stay where they are, so
    the app is frozen in the database: its role may not log in and its sessions end (the app answers
    errors meanwhile). After the verification PostgreSQL is retired and systemd's forwarder takes its
    address, so every app server not yet moved to RDS reaches RDS through this server, the same user
    and password (the two share the secret) and the same database name."""
    unfreeze = f"""local_sql "ALTER ROLE {app_user} LOGIN" postgres >/dev/null || true"""
    # Forwarding works end to end once PostgreSQL's protocol answers on the old port (RDS, through it).
    forward_check = """for attempt in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p "$source_port" -t 5 && break; sleep 1
  done
  pg_isready -q -h 127.0.0.1 -p "$source_port" -t 5"""
    forward = f"""if systemctl enable --now {render.FORWARD_SOCKET} && {{
  {forward_check}
}}; then
  say "forwarding this server's PostgreSQL address to $TARGET_HOST:$TARGET_PORT ({render.FORWARD_SOCKET})"
else
  # No app server has moved to RDS yet (their update waits for this step): this database is still the data.
  say "FAILED: the forwarder does not reach RDS; PostgreSQL serves again here, untouched since the copy"
  systemctl disable --now {render.FORWARD_SOCKET} {render.FORWARD_SERVICE} || true
  rm -f {record}
  systemctl enable --now postgresql.service
  {unfreeze}
  exit 1
fi"""
    return _script(
        what="this database server's PostgreSQL\n# into RDS, which the app uses from this deploy on",
        setup="",
        freeze=f"""say "downtime starts: the app's role may not log in, and its sessions end"
local_sql "ALTER ROLE {app_user} NOLOGIN" postgres >/dev/null
# pg_terminate_backend only asks: wait until no session of the app's role is left.
for attempt in $(seq 1 50); do
  left=$(local_sql "SELECT count(*) FROM pg_stat_activity WHERE usename = '{app_user}'" postgres)
  [ "$left" = 0 ] && break
  local_sql "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{app_user}'" postgres >/dev/null
  sleep 0.2
done
[ "$left" = 0 ] || {{ say "FAILED: $left sessions of the app's role did not end"; exit 1; }}""",
        thaw=f"""say "FAILED: the app's role may log in again; this database serves, untouched"
{unfreeze}""",
        retire=f"""systemctl disable --now postgresql.service
say "retired the local PostgreSQL (stopped, disabled; its data stays in {pg_data_dir} until its volume goes)"
{forward}""",
        # A rerun after the carry (cfn-hup applying this metadata again): PostgreSQL stays retired (the
        # setup skips it) and the forwarder must be serving. The app may be on RDS by now: never revive here.
        already=f"""systemctl disable --now postgresql.service 2>/dev/null || true
systemctl enable --now {render.FORWARD_SOCKET} || {{ say "FAILED: the forwarder did not start"; exit 1; }}""",
        # The database server holds the app's database: finding none means a wrong name, not an empty app.
        nothing="""say "FAILED: no data of the app here: check [database] name and user (RDS takes over both)"
exit 1""",
        target=target, record=record, pg_data_dir=pg_data_dir, work_dir=work_dir)


def _script(*, what: str, setup: str, freeze: str, thaw: str, retire: str, already: str, nothing: str,
            target: str, record: str, pg_data_dir: str, work_dir: str) -> str:
    """The carry both servers share: `freeze` stops the app's writes, `thaw` undoes it on a failure
    before the record, `retire` ends the local PostgreSQL after it, `already` runs on a rerun, `nothing`
    when there is no data to carry."""
    return f"""#!/bin/bash
# Rendered by app_tier/carry.py: carry {what}, once, verified table by table before the local copy is retired.
set -euo pipefail
say() {{ echo "{CARRY_LOG_PREFIX} $*"; }}
set -a; . {target}; set +a
[ -n "$TARGET_REGION" ] || TARGET_REGION=$(cut -d: -f4 <<<"$TARGET_SECRET_ARN")
# PostgreSQL's own account, as the owner of its data directory: the superuser over the local socket.
pg_admin=$(stat -c %U {pg_data_dir} 2>/dev/null || true)
source_port=5432
local_sql() {{ (cd / && runuser -u "$pg_admin" -- psql -X -qtA -v ON_ERROR_STOP=1 -p "$source_port" \\
  -d "${{2:-$TARGET_DB}}" -c "$1"); }}
target_sql() {{ PGPASSFILE="$work/pgpass" psql -X -qtA -v ON_ERROR_STOP=1 -h "$TARGET_HOST" -p "$TARGET_PORT" \\
  -U "$TARGET_USER" -d "$TARGET_DB" -c "$1"; }}
# The app's tables: every schema but PostgreSQL's own and the carry's marker.
USER_TABLES="SELECT schemaname AS s, tablename AS t FROM pg_tables
  WHERE schemaname NOT IN ('pg_catalog', 'information_schema', '{MARKER_SCHEMA}') AND schemaname !~ '^pg_'"
COUNT_TABLES="SELECT count(*) FROM ($USER_TABLES) tables"
# One line per table, "schema.name rows", in byte order of the names (not either database's collation).
ROW_COUNTS="SELECT string_agg(format('%s.%s %s', s, t, (xpath('/row/c/text()',
  query_to_xml(format('SELECT count(*) AS c FROM %I.%I', s, t), false, true, '')))[1]::text), E'\\n'
  ORDER BY s || '.' || t COLLATE \\"C\\") FROM ($USER_TABLES) tables"
umask 077
install -d -m 0700 {work_dir}
work=$(mktemp -d {work_dir}/.carry.XXXXXX)
frozen=""
finish() {{
  status=$?
  rm -rf "$work"
  if [ $status -ne 0 ] && [ -n "$frozen" ]; then
{thaw}
  fi
  exit $status
}}
trap finish EXIT
reach_target() {{
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
}}

if [ -f {record} ]; then
  # A record whose target holds nothing is stale (the target was deleted and made again since, e.g. by a
  # rollback under a setup that predates the record check): copying nothing would lose the data here.
  reach_target
  if [ "$(target_sql "$COUNT_TABLES")" = 0 ]; then
    say "FAILED: the record says carried ($(head -n 1 {record})), but the target holds no tables: the data is the"
    say "copy here; move {record} aside and deploy again"
    exit 1
  fi
  say "already carried: $(head -n 1 {record})"
{already}
  exit 0
fi
if [ ! -f {pg_data_dir}/PG_VERSION ]; then say "no local PostgreSQL data: nothing to carry"; {nothing}; fi
{setup}
systemctl start postgresql.service
# The port it listens on (its socket's name): the fourth line of its pid file.
source_port=$(sed -n 4p {pg_data_dir}/postmaster.pid 2>/dev/null || true)
source_port=${{source_port:-5432}}
# Whether the app's database exists here: only a query that succeeded may say "no" (an error stops the carry).
exists=$(local_sql "SELECT count(*) FROM pg_database WHERE datname = '$TARGET_DB'" template1)
if [ "$exists" = 0 ]; then say "no local database $TARGET_DB: nothing to carry"; {nothing}; fi
if [ "$(local_sql "$COUNT_TABLES")" = 0 ]; then say "the local database has no tables: nothing to carry"; {nothing}; fi
source_id=$(local_sql "SELECT system_identifier FROM pg_control_system()")
reach_target

started=$(date +%s.%N)
frozen=1
{freeze}
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
{{ (cd / && runuser -u "$pg_admin" -- pg_dump --no-owner --no-privileges -p "$source_port" -d "$TARGET_DB")
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
# Nothing may have written here meanwhile (a session the freeze missed): the counts again, after the copy.
if [ "$(local_sql "$ROW_COUNTS")" != "$local_counts" ]; then
  say "VERIFY FAILED: the local database changed during the copy"
  exit 1
fi
rows=$(awk '{{ s += $2 }} END {{ print s + 0 }}' <<<"$local_counts")
tables=$(wc -l <<<"$local_counts")
say "verified: $tables tables, $rows rows, equal on both sides"
target_sql "DROP SCHEMA {MARKER_SCHEMA} CASCADE" >/dev/null
install -d -m 0755 "$(dirname {record})"
{{ echo "to $TARGET_HOST:$TARGET_PORT/$TARGET_DB at $(date -u +%FT%TZ): $tables tables, $rows rows"; \\
   echo "$local_counts"; }} > {record}
frozen=""
{retire}
say "the copy took $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {{ printf "%.1f", b - a }}') s"
"""


def carry_bootstrap(layout: render.ServerLayout, database: render.DatabaseEndpoint) -> render.ServerBootstrap:
    """The Init config that runs before the app's on a stage-2 app server (see the module's doc)."""
    return render.ServerBootstrap(
        files={CARRY_TARGET: render.ServerFile(target_file(database), mode="000600"),
               CARRY_SCRIPT: render.ServerFile(carry_script(layout), mode="000700")},
        commands=[("carry-local-database", CARRY_SCRIPT)])


def forward_units(source_port: int, target: render.DatabaseEndpoint) -> dict[str, render.ServerFile]:
    """systemd's forwarder from the retired server's PostgreSQL port to RDS (enabled by the carry only)."""
    return {
        f"{render.UNIT_DIR}/{render.FORWARD_SOCKET}": render.ServerFile(
            "[Unit]\nDescription=The retired PostgreSQL's address, forwarded to the database it was carried into\n\n"
            f"[Socket]\nListenStream=0.0.0.0:{source_port}\nBacklog=1024\n\n[Install]\nWantedBy=sockets.target\n"),
        f"{render.UNIT_DIR}/{render.FORWARD_SERVICE}": render.ServerFile(
            "[Unit]\nDescription=Forward PostgreSQL connections to the database this server's data was carried into\n"
            f"Requires={render.FORWARD_SOCKET}\nAfter={render.FORWARD_SOCKET}\n\n"
            f"[Service]\nExecStart={SOCKET_PROXYD} --connections-max=1024 {target.host}:{target.port}\n"
            "User=nobody\nPrivateTmp=yes\nRestart=on-failure\n"),
    }


def database_server_carry_bootstrap(source_port: int, target: render.DatabaseEndpoint) -> render.ServerBootstrap:
    """The Init config that runs last on an EC2 database server moving to RDS (see the module's doc)."""
    return render.ServerBootstrap(
        files={CARRY_TARGET: render.ServerFile(target_file(target), mode="000600"),
               CARRY_SCRIPT: render.ServerFile(database_server_carry_script(target.user), mode="000700"),
               **forward_units(source_port, target)},
        commands=[("carry-local-database", f"systemctl daemon-reload && {CARRY_SCRIPT}")])
