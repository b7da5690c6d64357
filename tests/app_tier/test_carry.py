"""The 1 -> 2 carry for real: the script a growing stage-2 app server runs first (app_tier/carry.py),
rendered with lab paths and run against two real PostgreSQL servers: the stage-1 server's own (reached
as its admin over the local socket, as `runuser -u postgres` reaches it on a server) and the new
database (over TCP with the app's role and password, as from the app server). Stand-ins, on PATH:
`systemctl` (records what it is asked; the units are not under test here), `aws` (prints the target's
secret) and `runuser` (runs the command as the lab database's admin). The happy path on real servers
with systemd is the growth rehearsal's (rehearsal/grow.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from app_tier import carry, render
from app_tier.lab import LabDatabase, find_postgres_bin, free_port

pytestmark = pytest.mark.lab
PASSWORD = "s3cret:with\\odd"  # a colon and a backslash: pgpass escaping


def _database(tmp_path: Path, name: str) -> LabDatabase:
    db = LabDatabase(tmp_path / name, render.DatabaseEndpoint(host="127.0.0.1", port=free_port()), PASSWORD)
    db.create()
    return db


@pytest.fixture
def servers(lab_tools):
    # As the lab does: a directory under the system's temp dir, which PostgreSQL's unprivileged user can reach.
    base = Path(tempfile.mkdtemp(prefix="webapp-carry-"))
    base.chmod(0o755)
    source, target = _database(base, "source"), _database(base, "target")
    yield source, target
    for db in (source, target):
        if db.is_running():
            db.stop()
    shutil.rmtree(base, ignore_errors=True)


def psql(db: LabDatabase, query: str, *, as_admin: bool = False) -> str:
    user = ["-U", db.admin, "-h", str(db.dir)] if as_admin else ["-U", "app", "-h", "127.0.0.1"]
    # The admin connects over the socket by peer authentication, as its own OS user.
    runner = ["/usr/sbin/runuser", "-u", db.admin, "--"] if as_admin and os.geteuid() == 0 else []
    out = subprocess.run([*runner, str(db.bin / "psql"), "-X", "-qtA", "-v", "ON_ERROR_STOP=1", *user, "-p",
                          str(db.database.port), "-d", "app", "-c", query], env={"PGPASSWORD": PASSWORD},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def seed(db: LabDatabase) -> None:
    psql(db, "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);"
             "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers (id));"
             "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 300) g;"
             "INSERT INTO orders SELECT g, 1 + g % 300 FROM generate_series(1, 1000) g;")


def stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_carry(tmp_path: Path, source: LabDatabase, target: LabDatabase, *, data_dir: Path | None = None,
              database_server: bool = False):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "systemctl.log"
    stub(bin_dir, "systemctl", f'echo "$*" >> {log}\n'
                               '[ "$1" = show ] && echo loaded\nexit 0\n')
    stub(bin_dir, "aws", f"echo '{{\"password\": \"{PASSWORD.replace(chr(92), chr(92) * 2)}\"}}'\n")
    # runuser -u postgres -- CMD...: CMD as the lab database's admin, over its socket directory.
    stub(bin_dir, "runuser", f'shift 3\nexec /usr/sbin/runuser -u {source.admin} -- env PGHOST={source.dir} '
                             f'PGPORT={source.database.port} PGUSER={source.admin} PATH="$PATH" "$@"\n')
    target_env = tmp_path / "carry-target.env"
    target_env.write_text(carry.target_file(render.DatabaseEndpoint(
        host="127.0.0.1", port=target.database.port, secret_arn="arn:aws:secretsmanager:ap-northeast-2:1:secret:db")))
    script = tmp_path / "carry.sh"
    paths = {"target": str(target_env), "record": str(tmp_path / "record" / "carried"),
             "pg_data_dir": str(data_dir or source.data), "work_dir": str(tmp_path / "run")}
    script.write_text(carry.database_server_carry_script("app", **paths) if database_server
                      else carry.carry_script(render.ServerLayout(), **paths))
    env = {"PATH": f"{bin_dir}:{find_postgres_bin()}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120, check=False)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def counts(db: LabDatabase) -> dict[str, int]:
    return {t: int(psql(db, f"SELECT count(*) FROM {t}")) for t in ("customers", "orders")}


def test_the_carry_copies_verifies_and_only_then_retires_the_local_database(servers, tmp_path):
    source, target = servers
    seed(source)
    result, calls = run_carry(tmp_path, source, target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(target) == counts(source) == {"customers": 300, "orders": 1000}
    # The foreign key came across too.
    with pytest.raises(subprocess.CalledProcessError):
        psql(target, "INSERT INTO orders VALUES (5000, 999999)")
    record = (tmp_path / "record" / "carried").read_text()
    assert "2 tables, 1300 rows" in record and "public.customers 300" in record
    assert psql(target, "SELECT count(*) FROM pg_namespace WHERE nspname = 'webapp_carry'") == "0"
    # The app stops before the copy; the local server is retired after the verification, never before.
    stop = calls.index("stop app.socket app.service")
    assert calls.index("disable --now postgresql.service") > stop
    lines = result.stdout.splitlines()
    assert [i for i, line in enumerate(lines) if "verified:" in line] < \
        [i for i, line in enumerate(lines) if "retired the local PostgreSQL" in line]
    assert PASSWORD not in result.stdout + result.stderr
    # A second run does nothing.
    again, calls = run_carry(tmp_path, source, target)
    assert again.returncode == 0 and "already carried" in again.stdout and calls[-1] == "disable --now postgresql.service"


def test_a_target_holding_other_data_is_refused_and_the_app_starts_again_on_the_local_database(servers, tmp_path):
    source, target = servers
    seed(source)
    psql(target, "CREATE TABLE theirs (id int); INSERT INTO theirs VALUES (1)")
    result, calls = run_carry(tmp_path, source, target)
    assert result.returncode != 0 and "REFUSED" in result.stdout
    assert psql(target, "SELECT count(*) FROM theirs") == "1"  # untouched
    assert calls[-1] == "start app.socket app.service" and "disable --now postgresql.service" not in calls
    assert not (tmp_path / "record" / "carried").exists()


def test_an_unfinished_earlier_carry_is_copied_again_with_what_changed_since(servers, tmp_path):
    source, target = servers
    seed(source)
    first, _ = run_carry(tmp_path, source, target)
    assert first.returncode == 0
    # As if that run had stopped after its copy, before its record: the marker is back, the record gone,
    # and the local database took writes meanwhile (the app ran on it again after the failure).
    source_id = psql(source, "SELECT system_identifier FROM pg_control_system()", as_admin=True)
    psql(target, f"CREATE SCHEMA webapp_carry; CREATE TABLE webapp_carry.source (source text);"
                 f"INSERT INTO webapp_carry.source VALUES ('{source_id}')")
    (tmp_path / "record" / "carried").unlink()
    psql(source, "INSERT INTO customers VALUES (301, 'late')")
    again, _ = run_carry(tmp_path, source, target)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "copying again" in again.stdout and counts(target)["customers"] == 301


def test_no_local_data_is_nothing_to_carry_but_an_unreachable_local_database_stops_the_carry(servers, tmp_path):
    source, target = servers
    empty = tmp_path / "no-data"
    empty.mkdir()
    result, calls = run_carry(tmp_path, source, target, data_dir=empty)
    assert result.returncode == 0 and "nothing to carry" in result.stdout and not calls
    seed(source)
    source.stop()
    result, calls = run_carry(tmp_path, source, target)
    assert result.returncode != 0 and "nothing to carry" not in result.stdout
    assert not (tmp_path / "record" / "carried").exists() and "stop app.socket app.service" not in calls
    assert psql(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


def test_the_rendered_script_is_root_only_and_names_no_secret():
    bootstrap = carry.carry_bootstrap(render.ServerLayout(), render.DatabaseEndpoint(
        host="10.0.0.5", secret_arn="arn:aws:secretsmanager:ap-northeast-2:1:secret:db"))
    assert bootstrap.files[carry.CARRY_SCRIPT].mode == "000700"
    assert bootstrap.files[carry.CARRY_TARGET].mode == "000600"
    assert bootstrap.commands == [("carry-local-database", carry.CARRY_SCRIPT)]
    assert subprocess.run(["bash", "-n"], input=bootstrap.files[carry.CARRY_SCRIPT].content, text=True).returncode == 0
    assert os.path.basename(carry.CARRY_SCRIPT) == "carry-local-database"


# --- EC2 PostgreSQL -> RDS: the database server carries its own data and then forwards its port -------------

def can_log_in(db: LabDatabase) -> bool:
    try:
        psql(db, "SELECT 1")
        return True
    except subprocess.CalledProcessError:
        return False


def test_a_database_server_freezes_the_app_role_copies_verifies_then_retires_and_forwards(servers, tmp_path):
    source, target = servers
    seed(source)
    result, calls = run_carry(tmp_path, source, target, database_server=True)
    assert result.returncode == 0, result.stdout + result.stderr
    source_counts = {t: int(psql(source, f"SELECT count(*) FROM {t}", as_admin=True)) for t in ("customers", "orders")}
    assert counts(target) == source_counts == {"customers": 300, "orders": 1000}
    assert "2 tables, 1300 rows" in (tmp_path / "record" / "carried").read_text()
    # The app servers could not write meanwhile (the role may not log in), and the retired copy stays so.
    assert not can_log_in(source)
    assert calls == ["start postgresql.service", "disable --now postgresql.service",
                     f"enable --now {render.FORWARD_SOCKET}"]
    lines = result.stdout.splitlines()
    assert [i for i, line in enumerate(lines) if "verified:" in line] < \
        [i for i, line in enumerate(lines) if "retired the local PostgreSQL" in line] < \
        [i for i, line in enumerate(lines) if "forwarding this server's PostgreSQL address" in line]
    # A rerun (cfn-hup applying the metadata again) copies nothing and keeps the forwarder serving.
    again, calls = run_carry(tmp_path, source, target, database_server=True)
    assert again.returncode == 0 and "already carried" in again.stdout
    assert calls[-1] == f"enable --now {render.FORWARD_SOCKET}"


def test_a_refused_database_server_carry_lets_the_app_role_log_in_again(servers, tmp_path):
    source, target = servers
    seed(source)
    psql(target, "CREATE TABLE theirs (id int); INSERT INTO theirs VALUES (1)")
    result, calls = run_carry(tmp_path, source, target, database_server=True)
    assert result.returncode != 0 and "REFUSED" in result.stdout
    assert can_log_in(source) and counts(source)["orders"] == 1000
    assert psql(target, "SELECT count(*) FROM theirs") == "1"
    assert not any("disable" in c or render.FORWARD_SOCKET in c for c in calls)
    assert not (tmp_path / "record" / "carried").exists()


def test_the_setup_of_a_carried_server_keeps_it_retired_or_serves_again_after_a_rollback():
    carrying = render.database_server_files(render.DatabaseEndpoint(host="0.0.0.0", secret_arn="arn:x"), "10.0.0.0/16",
                                            carrying=True)[render.PG_SETUP_SCRIPT].content
    serving = render.database_server_files(render.DatabaseEndpoint(host="0.0.0.0", secret_arn="arn:x"), "10.0.0.0/16",
                                           )[render.PG_SETUP_SCRIPT].content
    # Both check the record before anything starts PostgreSQL.
    for script in (carrying, serving):
        assert script.index(render.CARRIED_RECORD) < script.index("systemctl start postgresql.service")
    assert "PostgreSQL stays retired" in carrying and "exit 0" in carrying.split("systemctl enable")[0]
    assert f"mv {render.CARRIED_RECORD} {render.CARRIED_RECORD}.rolled-back-" in serving
    assert f"disable --now {render.FORWARD_SOCKET}" in serving


def test_a_record_whose_target_holds_nothing_is_stale_and_stops_the_carry(servers, tmp_path):
    """The record says carried, but the target is empty (deleted and made again since, e.g. by a rollback under
    a setup that predates the record check): copying nothing would lose the data, so the carry fails."""
    source, target = servers
    seed(source)
    record = tmp_path / "record" / "carried"
    record.parent.mkdir()
    record.write_text("to 127.0.0.1:5432/app at 2026-01-01T00:00:00Z: 2 tables, 1300 rows\n")
    for database_server in (False, True):
        result, calls = run_carry(tmp_path, source, target, database_server=database_server)
        assert result.returncode != 0 and "the target holds no tables" in result.stdout, result.stdout
        assert not any("disable" in c or "stop" in c for c in calls)
    assert counts(source) == {"customers": 300, "orders": 1000}


def test_a_database_server_without_the_apps_data_fails_instead_of_forwarding_an_empty_database(servers, tmp_path):
    source, target = servers  # no tables: a changed [database] name would look like this
    result, calls = run_carry(tmp_path, source, target, database_server=True)
    assert result.returncode != 0 and "FAILED: no data of the app here" in result.stdout
    assert render.FORWARD_SOCKET not in " ".join(calls) and not (tmp_path / "record" / "carried").exists()


def test_the_forwarder_unit_reaches_postgresql_by_name_with_systemds_own_proxy(servers, tmp_path):
    """The forwarder's ExecStart, as rendered, run by systemd's own socket-proxyd (systemd 252, as on Amazon
    Linux 2023) behind a listening socket (systemd-socket-activate plays the .socket unit): a client reaches
    PostgreSQL through it, the target given by name (RDS's endpoint is a DNS name). Loopback only."""
    _, target = servers
    proxyd = shutil.which("systemd-socket-activate")
    if proxyd is None or not os.path.exists(carry.SOCKET_PROXYD):
        pytest.skip("systemd-socket-activate or systemd-socket-proxyd is missing (scripts/setup.sh installs systemd)")
    units = carry.forward_units(5432, render.DatabaseEndpoint(host="localhost", port=target.database.port))
    service = units[f"{render.UNIT_DIR}/{render.FORWARD_SERVICE}"].content
    (exec_start,) = [line.split("=", 1)[1] for line in service.splitlines() if line.startswith("ExecStart=")]
    port = free_port()
    forwarder = subprocess.Popen([proxyd, "-l", f"127.0.0.1:{port}", *exec_start.split()],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        psql(target, "CREATE TABLE through (id int); INSERT INTO through VALUES (7)")
        for _ in range(50):
            out = subprocess.run([str(target.bin / "psql"), "-X", "-qtA", "-U", "app", "-h", "127.0.0.1", "-p",
                                  str(port), "-d", "app", "-c", "SELECT id FROM through"],
                                 env={"PGPASSWORD": PASSWORD}, capture_output=True, text=True, check=False)
            if out.returncode == 0:
                break
            time.sleep(0.1)
        assert out.returncode == 0 and out.stdout.strip() == "7", out.stderr
    finally:
        forwarder.terminate()
        forwarder.wait(10)
