"""The growth rehearsal: one live environment grown 1 -> 2 -> 3 -> 4 on real servers, every row counted.

dev starts at stage 1 (its server booted as the boot rehearsal boots it: a container with systemd,
the template's user data and Init metadata), gets real data (customers, orders referencing them,
events referencing orders: foreign keys and one large table) and steady traffic (a client polling
`/` every 100 ms, which counts a visit in the database each time). Then config's `stage` changes and
the environment is deployed again, as a user grows it:

  1 -> 2  the synthesized change must keep the stage-1 server (tools.plan: updated in place, no data
          lost); the new database server boots; the server gets the new Init metadata (cfn-hup), whose
          first step carries its own PostgreSQL into the new database (app_tier/carry.py). Checked:
          every table's row count on the new database equals what was seeded and what stage 1 held,
          the local PostgreSQL was retired only after the carry verified the counts, its files are
          kept, the app serves from the new database with no visit lost, and the seconds the polling
          client saw errors;
  2 -> 3, 3 -> 4  the change must replace no data holder (tools.plan); a server of the new stage's
          group boots against the same database server; every row is still there and the app serves;
  4 ec2 -> rds  EC2 PostgreSQL -> RDS, the deploy with [database.carry_from]: the plan must keep the database
          server (updated in place) and create RDS (PostgreSQL in a container stands in for it, with the
          secret the two share); the server's cfn-hup carries its data into RDS, verified, then forwards its
          port there. Checked: every row on RDS, the order freeze -> verified -> retired -> forwarding, the
          server's wait condition SUCCESS, the old app server serving through the forwarder, the client's
          seconds of errors; then a server of the new launch template serves from RDS directly;
  4 rds only  the next deploy, without carry_from: the plan must say the server and its volume go with
          their data carried; the server goes; RDS keeps every row and the app serves;
  1 -> 2 rds  a second stage-1 server, grown to stage 2 on RDS (its stand-in, with its secret's master
          user): the app server's carry into the other kind of target;
  2 ec2 -> rds, 2 rds only  a third one grown 1 -> 2 on EC2, then moved to RDS as at stage 4, except that the
          app server's update after the carry is in place (cfn-hup; its wait condition must get SUCCESS).

One line per step; the last reads `growth rehearsal: N steps, M failed, R rows checked`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from app_tier import carry, render
from rehearsal import container as ct
from rehearsal import run, synth
from rehearsal import template as tpl
from tools import plan as planner

ENVIRONMENT = "dev"
# What each stage needs besides `stage` in dev's file (envconfig says why when it is missing).
STAGE_CHANGES: dict[int, dict] = {2: {"network": {"interface_endpoints": True}}, 3: {"network": {"nat_gateways": 1}},
                                  4: {}}
SEED_TABLES = ("customers", "orders", "events")
STATE = run.STATE / "grow"
POLL_SEC = 0.1
CARRY_WAIT_SEC = 900
RDS_EVENTS = 50_000  # the second carry, into RDS's stand-in: the same path, less data


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Step(run.Outcome):
    rows_checked: int = 0
    numbers: dict = field(default_factory=dict)   # the benchmark's figures (bench/grow.py)

    def line(self) -> str:
        return self.report("growth rehearsal", 8)


def raw_at(stage: int, *, database: str = "ec2") -> dict:
    raw = synth.raw_config(ENVIRONMENT)
    for step in range(2, stage + 1):
        for table, values in STAGE_CHANGES[step].items():
            raw.setdefault(table, {}).update(values)
    raw["stage"] = stage
    raw.setdefault("database", {})["kind"] = database
    if database == "rds":  # what cdk-nag requires of RDS (AwsSolutions-RDS3, -RDS10, -RDS11), as prod sets it
        raw["database"].update(multi_az=True, port=5433)
        raw.setdefault("operations", {})["removal_policy"] = "snapshot"
    return raw


class Poller:
    """A client polling `/` every 100 ms: the seconds it saw errors (no answer, or not 200)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=1) as reply:
                    ok = reply.status == 200
            except Exception:  # noqa: BLE001 - any failure is an error the client saw
                ok = False
            self.results.append((time.monotonic(), ok))
            self._stop.wait(max(0.0, POLL_SEC - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)

    def error_seconds(self) -> tuple[float, int]:
        """(seconds from the first failed poll to the first success after the last one, failed polls)."""
        failed = [i for i, (_, ok) in enumerate(self.results) if not ok]
        if not failed:
            return 0.0, 0
        first, last = failed[0], failed[-1]
        end = self.results[last + 1][0] if last + 1 < len(self.results) else self.results[last][0]
        return end - self.results[first][0] + POLL_SEC, len(failed)


def sql(c: ct.Container, database: str, query: str, *, check: bool = True, port: int = 5432) -> str:
    out = c.run(f"cd / && runuser -u postgres -- psql -X -qtA -v ON_ERROR_STOP=1 -p {port} -d {database} "
                f"-c \"{query}\"",
                check=check, timeout=3600)
    return out.stdout.strip()


def row_counts(c: ct.Container, database: str, port: int = 5432) -> dict[str, int]:
    """Every table of the public schema and its row count, read on the database's own server."""
    tables = sql(c, database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                 port=port).split()
    return {t: int(sql(c, database, f"SELECT count(*) FROM public.{t}", port=port)) for t in tables}


def seed(c: ct.Container, database: str, owner: str, events: int) -> dict[str, int]:
    """Real data, owned by the app's role: foreign keys, and one large table (about 250 bytes a row)."""
    customers, orders = max(1, events // 50), max(1, events // 5)
    script = c.merged / "root" / "seed.sql"
    script.write_text(f"""SET ROLE {owner};
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers (id),
                     total numeric(12, 2) NOT NULL);
CREATE TABLE events (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders (id), payload text NOT NULL);
INSERT INTO customers (id, name) SELECT g, 'customer ' || g FROM generate_series(1, {customers}) g;
INSERT INTO orders SELECT g, 1 + g % {customers}, (g % 100000) / 100.0 FROM generate_series(1, {orders}) g;
INSERT INTO events (order_id, payload) SELECT 1 + g % {orders}, repeat(md5(g::text), 6) FROM generate_series(1, {events}) g;
""")
    c.run(f"chmod 644 /root/seed.sql && cp /root/seed.sql /tmp/seed.sql && cd / && runuser -u postgres -- "
          f"psql -X -q -v ON_ERROR_STOP=1 -d {database} -f /tmp/seed.sql", timeout=3600)
    return {"customers": customers, "orders": orders, "events": events}


def database_size(c: ct.Container, database: str) -> str:
    return sql(c, database, f"SELECT pg_size_pretty(pg_database_size('{database}'))")


def plan_between(before: dict, after: dict, config) -> planner.Plan:
    return planner.make_plan(config, before, after)


@dataclass
class Growth:
    """What the rehearsal keeps across steps."""

    env: run.Environment
    app: ct.Container
    database: ct.Container            # where the data lives now
    seeded: dict[str, int]
    visits: int
    template: dict


def measure_floor(g: Growth, db: ct.Container, config) -> float:
    """The benchmark's floor: a plain `pg_dump | psql` of the same data between the same two servers,
    into a scratch database on the new database server (a rehearsal-only pg_hba line lets the app's
    role reach it; both are removed afterwards)."""
    name, user = config.database.name, config.database.user
    # The newest secret of that user: stage 2's database server's (stage 1's is the local one's).
    password = next(v["password"] for v in reversed(list(g.env.secret_values.values()))
                    if v.get("username") == user)
    hba = f"{render.PG_CONF_DIR}/pg_hba.conf"
    db.run(f"echo 'host floor {user} {g.app.address}/32 scram-sha-256 # rehearsal floor' >> {hba} && "
           f"cd / && runuser -u postgres -- psql -X -q -c 'CREATE DATABASE floor OWNER {user}' && "
           "runuser -u postgres -- psql -X -q -c 'SELECT pg_reload_conf()'")
    g.app.run(f"umask 077 && echo '*:*:floor:{user}:{password}' > /root/.floor-pgpass")
    started = time.monotonic()
    g.app.run(f"cd / && runuser -u postgres -- pg_dump -d {name} | PGPASSFILE=/root/.floor-pgpass psql -X -q "
              f"-v ON_ERROR_STOP=1 -h {db.address} -U {user} -d floor >/dev/null", timeout=3600)
    took = time.monotonic() - started
    g.app.run("rm -f /root/.floor-pgpass")
    db.run(f"cd / && runuser -u postgres -- psql -X -q -c 'DROP DATABASE floor' && "
           f"sed -i '/# rehearsal floor$/d' {hba} && runuser -u postgres -- psql -X -q -c 'SELECT pg_reload_conf()'")
    return took


def grow_to_2(g: Growth, workdir: Path, step: Step, *, floor: bool = False, database: str = "ec2") -> Growth | None:
    raw = raw_at(2, database=database)
    config = synth.parse(ENVIRONMENT, raw)
    assembly = synth.synthesize([config], workdir / f"cdk.out.stage2.{database}")
    template = tpl.load(assembly, config.stack_name)
    plan = plan_between(g.template, template, config)
    server = next((c for c in plan.changes if c.type == "AWS::EC2::Instance" and c.logical_id in {
        s.logical_id for s in g.env.servers if s.is_app_server}), None)
    if server is None or server.action != planner.UPDATE or plan.data_loss:
        what = f"{server.action} ({'; '.join(server.reasons)})" if server else "unchanged"
        step.fail(f"make plan: the stage-1 server is {what}, data loss {plan.data_loss}: the data would not be carried")
        return None
    step.facts.append("plan: server updated in place, data carried")

    env = g.env
    env.adopt(assembly, template, raw, config)
    app_server = next(s for s in env.servers if s.is_app_server)
    db = start_rds_standin(env, template, config) if database == "rds" else \
        boot_database_server(env, template, assembly, g, step)
    if db is None:
        return None
    # The app server's security groups as stage 2 has them (it now reaches the database server), and what
    # CloudFormation resolves in its new metadata (the new database's secret).
    env.enforce_security_groups(g.app, app_server.logical_id)
    g.app.refs.update({k: v for k, v in env.refs.items() if k not in g.app.refs})

    if floor:
        step.numbers["floor_seconds"] = measure_floor(g, db, config)
        step.facts.append(f"floor: plain pg_dump | psql of the same data took {step.numbers['floor_seconds']:.1f} s")
    before_local = row_counts(g.app, config.database.name)
    def served_from_the_new_database() -> bool:
        record = g.app.run(f"cat {carry.CARRIED_RECORD}", check=False)
        host = g.app.run(f"grep -h '^DB_HOST=' {render.ENV_FILE}", check=False).stdout
        units_up = g.app.run("systemctl is-active app.service", check=False).stdout.strip() == "active"
        return record.returncode == 0 and env.address("db") in host and units_up

    applied = apply_carry(env, g.app, app_server, assembly, template,
                          f"http://{g.app.address}:{app_server.service_port}/", served_from_the_new_database, step)
    if applied is None:
        return None
    took, log, poller = applied
    after = row_counts(db, config.database.name, config.database.port)
    error_sec, failed_polls = poller.error_seconds()
    check_rows(step, g.seeded, before_local, after)
    # The local copy is retired only after the verification, and kept on disk.
    lines = [line for line in log.splitlines() if carry.CARRY_LOG_PREFIX in line]
    verified = next((i for i, line in enumerate(lines) if "verified:" in line), None)
    retired = next((i for i, line in enumerate(lines) if "retired the local PostgreSQL" in line), None)
    if verified is None or retired is None or retired < verified:
        step.fail(f"the local PostgreSQL was not retired after the verification: {lines}")
    check_retired(step, g.app, "the local PostgreSQL")
    visits = run.visits(g.app, app_server)
    if visits is None or visits <= g.visits:
        step.fail(f"visits {g.visits} before, {visits} after: the app lost data or does not answer")
    copy_line = next((line for line in lines if "the copy took" in line), "")
    copy_seconds = copy_line.split("the copy took", 1)[1].split()[0] if copy_line else ""
    step.numbers.update({"rows": sum(after.values()), "error_seconds": round(error_sec, 2),
                         "failed_polls": failed_polls, "polls": len(poller.results),
                         "carry_seconds": float(copy_seconds) if copy_seconds.replace(".", "").isdigit() else None,
                         "metadata_to_served_seconds": round(took, 1),
                         "database_bytes": int(sql(db, config.database.name,
                                                   f"SELECT pg_database_size('{config.database.name}')",
                                                   port=config.database.port))})
    step.facts.append(f"{sum(after.values())} rows in {len(after)} tables equal on both sides")
    step.facts.append(f"errors seen by a client polling every 100 ms: {error_sec:.1f} s ({failed_polls} failed polls)")
    step.facts.append(f"new metadata to new database served in {took:.0f} s"
                      + (f" ({copy_line.split('the copy took', 1)[1].strip()} copy)" if copy_line else ""))
    step.facts.append("local PostgreSQL retired after the verification, files kept")
    return Growth(env, g.app, db, g.seeded, visits or 0, template)


def check_retired(step: Step, c: ct.Container, what: str) -> None:
    """After a verified carry, the source PostgreSQL is stopped and disabled, and its files are kept."""
    state = c.run("systemctl is-enabled postgresql.service; systemctl is-active postgresql.service; "
                  f"test -f {render.PG_DATA_DIR}/PG_VERSION && echo files-kept", check=False).stdout.split()
    if state[:3] != ["disabled", "inactive", "files-kept"]:
        step.fail(f"{what} after the carry: {state} (expected disabled, inactive, files kept)")


def apply_carry(env: run.Environment, c: ct.Container, server, assembly: Path, template: dict, poll_url: str,
                done, step: Step) -> tuple[float, str, Poller] | None:
    """The deploy, for the server `c` whose Init carries its data: its new metadata published (cfn-hup takes it
    from there), then a wait, with a client polling `poll_url`, until `done()` and the client is served again,
    or the carry failed. CloudFormation waits for the new metadata's wait condition, which the server signals
    only once the carry and the rest of its Init applied: it must get SUCCESS. Returns (seconds from the
    metadata, the carry's log lines, the poller), or None when the carry did not finish (the step failed)."""
    poller = Poller(poll_url)
    try:
        time.sleep(2)
        started = time.monotonic()
        env.publish(c, server, assembly, template)
        deadline, carried = time.monotonic() + CARRY_WAIT_SEC, False
        while time.monotonic() < deadline:
            if done() and poller.results and poller.results[-1][1]:
                carried = True
                break
            # The carry's own verdict (its log lines in capitals), or cfn-init reporting its command failed.
            if c.run(f"grep -h '{carry.CARRY_LOG_PREFIX}' /var/log/cfn-init-cmd.log 2>/dev/null "
                     "| grep -q 'FAILED\\|REFUSED' || grep -h 'carry-local-database' /var/log/cfn-init.log "
                     "2>/dev/null | grep -qi 'error\\|failed'", check=False).returncode == 0:
                break
            time.sleep(0.5)
        took = time.monotonic() - started
        time.sleep(2)
    finally:
        poller.stop()
    log = c.run(f"grep -h '{carry.CARRY_LOG_PREFIX}' /var/log/cfn-init-cmd.log /var/log/cfn-init.log "
                "2>/dev/null | uniq", check=False).stdout
    if not carried:
        step.fail(f"the carry did not finish in {CARRY_WAIT_SEC} s:\n{log[-2000:]}\n{run.diagnose(c)}")
        return None
    handle = c.cfn_stack.wait_for_signal(server.wait_handle, 120) if server.wait_handle else None
    if not handle or handle["status"] != "SUCCESS":
        step.fail(f"the wait condition handle {server.wait_handle} of {server.logical_id} got "
                  f"{handle['status'] if handle else 'no signal'}: CloudFormation would fail the deploy")
    else:
        step.facts.append(f"the {server.kind}'s wait condition got SUCCESS")
    return took, log, poller


def boot_database_server(env: run.Environment, template: dict, assembly: Path, g: Growth,
                         step: Step) -> ct.Container | None:
    """Stage 2's EC2 database server, booted from the template like any server, on a volume of its own."""
    (db_server,) = [s for s in env.servers if s.kind == "database server"]
    env.attributes[(db_server.logical_id, "PrivateIp")] = env.address("db")
    volume = next(lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::EC2::Volume")
    env.create_volume(volume)
    size_mib = max(1024, 4 * sum(g.seeded.values()) * 400 // (1024 * 1024))
    db = env.container("db", data_volume_mib=size_mib)
    env.stage_server(db, db_server, assembly, template)
    result = run.Result(ENVIRONMENT, db_server.kind)
    if not run.boot_and_signal(db, db_server, result) or result.failures:
        step.fail(f"the database server did not boot: {result.failures}")
        return None
    return db


def start_rds_standin(env: run.Environment, template: dict, config) -> ct.Container:
    """RDS cannot run here: PostgreSQL in a container of its own with its secret's master user,
    behind the instance's security groups (as the boot and deploy rehearsals stand it in)."""
    (rds,) = [lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::RDS::DBInstance"]
    props = template["Resources"][rds]["Properties"]
    port = int(props.get("Port", 5432))
    env.attributes[(rds, "Endpoint.Address")] = env.address("rds")
    env.attributes[(rds, "Endpoint.Port")] = str(port)
    db = env.container("rds")
    env.enforce_security_groups(db, rds)
    # The secret the instance's master password comes from (an EC2 database server moving to RDS shares it).
    (secret,) = {lid for lid, _ in planner.references(props.get("MasterUserPassword"))
                 if template["Resources"].get(lid, {}).get("Type") == "AWS::SecretsManager::Secret"}
    run.start_rds_standin(db, env.secret_values[secret], props.get("DBName", config.database.name), port)
    return db


def check_rows(step: Step, seeded: dict[str, int], before: dict[str, int], after: dict[str, int]) -> None:
    for table, rows in seeded.items():
        if after.get(table) != rows:
            step.fail(f"{table}: {rows} rows seeded, {after.get(table)} now")
    for table, rows in before.items():
        # The app's own tables may only grow (visits count, release runs); every other table is equal.
        if table in seeded:
            continue
        if after.get(table) is None or after[table] < rows:
            step.fail(f"{table}: {rows} rows before, {after.get(table)} after")
    step.rows_checked += sum(after.get(t, 0) for t in before)


def grow_fleet_stage(g: Growth, stage: int, workdir: Path, step: Step) -> Growth | None:
    """2 -> 3 or 3 -> 4: no data holder may change; a server of the new stage serves the same rows."""
    raw = raw_at(stage)
    config = synth.parse(ENVIRONMENT, raw)
    assembly = synth.synthesize([config], workdir / f"cdk.out.stage{stage}")
    template = tpl.load(assembly, config.stack_name)
    plan = plan_between(g.template, template, config)
    touched = [f for f in plan.data if f.fate in ("replaced", "deleted") and "database" in f.what.lower()
               or f.loss]
    if touched:
        step.fail("make plan: " + "; ".join(f"{f.name}: {f.detail}" for f in touched))
        return None
    step.facts.append("plan: no data holder replaced or deleted")
    env = g.env
    env.adopt(assembly, template, raw, config)
    (db_server,) = [s for s in env.servers if s.kind == "database server"]
    env.attributes[(db_server.logical_id, "PrivateIp")] = env.address("db")
    env.enforce_security_groups(g.database, db_server.logical_id)
    member = next(s for s in env.servers if s.is_app_server)
    before = row_counts(g.database, config.database.name)
    # The previous stage's app server goes: from here on the new stage's group serves.
    g.app.poweroff(60)
    c = env.container("broken" if stage == 3 else "app")  # a free slot of the environment
    env.stage_server(c, member, assembly, template)
    result = run.Result(ENVIRONMENT, member.kind)
    if not run.boot_and_signal(c, member, result) or result.failures:
        step.fail(f"the stage-{stage} server did not boot: {result.failures}")
        return None
    visits = run.visits(c, member)
    after = row_counts(g.database, config.database.name)
    check_rows(step, g.seeded, before, after)
    if visits is None or visits <= g.visits:
        step.fail(f"visits {g.visits} before, {visits} after")
    step.facts.append(f"a stage-{stage} server signalled in {result.boot_to_signal_sec:.0f} s and serves "
                      f"{sum(after.values())} rows in {len(after)} tables, all kept")
    step.facts.append("the service moves to the load balancer's address (DNS): the client's errors are not "
                      "measured here" if stage == 3 else "rolled by instance refresh (make rehearse-deploy)")
    return Growth(env, c, g.database, g.seeded, visits or 0, template)


def raw_moving_to_rds(stage: int) -> dict:
    """The transitional config: RDS, with the EC2 database server's settings under [database.carry_from]
    (dev's: all defaults)."""
    raw = raw_at(stage, database="rds")
    raw["database"]["carry_from"] = {"kind": "ec2"}
    return raw


def move_to_rds(g: Growth, stage: int, workdir: Path, step: Step) -> tuple[Growth, ct.Container] | None:
    """EC2 PostgreSQL -> RDS on a load-balanced stage, the first of two deploys ([database.carry_from]):
    the database server is kept and carries its data into RDS (its stand-in), verified, then forwards
    its old port there; the app servers' update (here: one new server of the new launch template) comes
    after, as its dependency on the carry's wait condition orders it. The old server serves throughout,
    through the forwarder once the carry is done."""
    raw = raw_moving_to_rds(stage)
    config = synth.parse(ENVIRONMENT, raw)
    assembly = synth.synthesize([config], workdir / f"cdk.out.stage{stage}.carry")
    template = tpl.load(assembly, config.stack_name)
    plan = plan_between(g.template, template, config)
    (db_server,) = [s for s in g.env.servers if s.kind == "database server"]
    server_change = next((c for c in plan.changes if c.logical_id == db_server.logical_id), None)
    rds_change = next((c for c in plan.changes if c.type == "AWS::RDS::DBInstance"), None)
    gone = [f for f in plan.data if f.fate in ("replaced", "deleted") and "database" in f.what.lower()]
    if server_change is None or server_change.action != planner.UPDATE or rds_change is None \
            or rds_change.action != planner.CREATE or gone or plan.data_loss:
        step.fail(f"make plan: database server {server_change.action if server_change else 'unchanged'}, "
                  f"RDS {rds_change.action if rds_change else 'absent'}, data loss {plan.data_loss}, "
                  f"{'; '.join(f'{f.name}: {f.detail}' for f in gone)}")
        return None
    step.facts.append("plan: database server updated in place, RDS created, no data lost")
    env = g.env
    env.adopt(assembly, template, raw, config)
    (db_server,) = [s for s in env.servers if s.kind == "database server"]
    member = next(s for s in env.servers if s.is_app_server)
    env.SLOTS = {**env.SLOTS, "rds": 3}  # RDS next to the database server (the two share slot 0 otherwise)
    rds = start_rds_standin(env, template, config)
    env.attributes[(db_server.logical_id, "PrivateIp")] = env.address("db")
    for c, lid in ((g.database, db_server.logical_id), (g.app, member.logical_id)):
        env.enforce_security_groups(c, lid)
        c.refs.update({k: v for k, v in env.refs.items() if k not in c.refs})
    before = row_counts(g.database, config.database.name)
    def forwarding() -> bool:
        record = g.database.run(f"cat {carry.CARRIED_RECORD}", check=False)
        return record.returncode == 0 and g.database.run(f"systemctl is-active {render.FORWARD_SOCKET}",
                                                         check=False).stdout.strip() == "active"

    # The deploy: the database server's cfn-hup; the old app server is the one the client polls.
    applied = apply_carry(env, g.database, db_server, assembly, template,
                          f"http://{g.app.address}:{member.service_port}/", forwarding, step)
    if applied is None:
        return None
    took, log, poller = applied
    after = row_counts(rds, config.database.name, config.database.port)
    check_rows(step, g.seeded, before, after)
    lines = [line for line in log.splitlines() if carry.CARRY_LOG_PREFIX in line]
    order = [next((i for i, line in enumerate(lines) if text in line), None)
             for text in ("downtime starts", "verified:", "retired the local PostgreSQL", "forwarding")]
    if None in order or order != sorted(order):
        step.fail(f"freeze, verification, retirement and forwarding out of order: {lines}")
    check_retired(step, g.database, "the database server's PostgreSQL")
    # The old app server, not yet moved, reaches RDS through the forwarder.
    visits = run.visits(g.app, member)
    if visits is None or visits <= g.visits:
        step.fail(f"visits {g.visits} before, {visits} after the carry through the forwarder")
    error_sec, failed_polls = poller.error_seconds()
    copy_line = next((line for line in lines if "the copy took" in line), "")
    step.facts.append(f"{sum(after.values())} rows in {len(after)} tables equal on both sides")
    step.facts.append(f"errors seen by a client polling every 100 ms: {error_sec:.1f} s ({failed_polls} failed "
                      f"polls); new metadata to served through the forwarder in {took:.0f} s"
                      + (f" ({copy_line.split('the copy took', 1)[1].strip()} copy)" if copy_line else ""))
    step.numbers.update({"rds_error_seconds": round(error_sec, 2), "rds_failed_polls": failed_polls})
    if stage < 3:
        return move_single_server_to_rds(g, env, member, assembly, template, rds, visits, step), g.database
    # Then the app servers' update: a server of the new launch template, straight to RDS; the old one goes.
    c = env.container("broken")
    env.stage_server(c, member, assembly, template)
    result = run.Result(ENVIRONMENT, member.kind)
    if not run.boot_and_signal(c, member, result) or result.failures:
        step.fail(f"a server of the new launch template did not boot: {result.failures}")
        return None
    host = c.run(f"grep -h '^DB_HOST=' {render.ENV_FILE}", check=False).stdout
    if env.address("rds") not in host:
        step.fail(f"the new server's database host is {host.strip()!r}, not RDS ({env.address('rds')})")
    g.app.poweroff(60)
    new_visits = run.visits(c, member)
    if new_visits is None or new_visits <= (visits or 0):
        step.fail(f"visits {visits} through the forwarder, {new_visits} on the new server")
    step.facts.append(f"a server of the new launch template signalled in {result.boot_to_signal_sec:.0f} s and "
                      "serves from RDS directly; the old server went")
    return Growth(env, c, rds, g.seeded, new_visits or 0, template), g.database


def move_single_server_to_rds(g: Growth, env: run.Environment, server, assembly: Path, template: dict,
                              rds: ct.Container, visits: int | None, step: Step) -> Growth | None:
    """Stage 2's app server after the carry (its update waits for the carry's wait condition): cfn-hup
    applies its new metadata in place, and the app restarts on RDS directly, under the polling client."""
    poller = Poller(f"http://{g.app.address}:{server.service_port}/")
    try:
        time.sleep(1)
        env.publish(g.app, server, assembly, template)
        handle = g.app.cfn_stack.wait_for_signal(server.wait_handle, 300) if server.wait_handle else None
        time.sleep(2)
    finally:
        poller.stop()
    if not handle or handle["status"] != "SUCCESS":
        step.fail(f"the app server's wait condition handle {server.wait_handle} got "
                  f"{handle['status'] if handle else 'no signal'}\n{run.diagnose(g.app)}")
        return None
    host = g.app.run(f"grep -h '^DB_HOST=' {render.ENV_FILE}", check=False).stdout
    if env.address("rds") not in host:
        step.fail(f"the app server's database host is {host.strip()!r}, not RDS ({env.address('rds')})")
    new_visits = run.visits(g.app, server)
    if new_visits is None or new_visits <= (visits or 0):
        step.fail(f"visits {visits} through the forwarder, {new_visits} on RDS directly")
    error_sec, failed_polls = poller.error_seconds()
    step.facts.append(f"then the app server's update, in place: its wait condition got SUCCESS, it serves from RDS "
                      f"directly, {error_sec:.1f} s of errors ({failed_polls} failed polls)")
    return Growth(env, g.app, rds, g.seeded, new_visits or 0, template)


def retire_database_server(g: Growth, old_server: ct.Container, stage: int, workdir: Path, step: Step) -> Growth | None:
    """The second deploy, without [database.carry_from]: the EC2 database server (and its volume, per its
    policy) goes. The plan must know its data was carried by the deploy before; RDS and every row stay."""
    raw = raw_at(stage, database="rds")
    config = synth.parse(ENVIRONMENT, raw)
    assembly = synth.synthesize([config], workdir / f"cdk.out.stage{stage}.rds")
    template = tpl.load(assembly, config.stack_name)
    plan = plan_between(g.template, template, config)
    deleted = {c.type for c in plan.changes if c.action == planner.DELETE}
    rds_change = next((c for c in plan.changes if c.type == "AWS::RDS::DBInstance"), None)
    if plan.data_loss or "AWS::EC2::Instance" not in deleted or "AWS::EC2::Volume" not in deleted \
            or (rds_change and rds_change.action in (planner.REPLACE, planner.DELETE)):
        step.fail("make plan: " + "; ".join(f"{f.name}: {f.detail}" for f in plan.data if f.loss or
                                            f.fate in ("deleted", "replaced")))
        return None
    step.facts.append("plan: the database server and its volume deleted, its data carried by the deploy before; "
                      "RDS kept")
    g.env.adopt(assembly, template, raw, config)
    before = row_counts(g.database, config.database.name, config.database.port)
    old_server.poweroff(60)
    member = next(s for s in g.env.servers if s.is_app_server)
    visits = run.visits(g.app, member)
    after = row_counts(g.database, config.database.name, config.database.port)
    check_rows(step, g.seeded, before, after)
    if visits is None or visits <= g.visits:
        step.fail(f"visits {g.visits} before, {visits} after the database server went")
    step.facts.append(f"the database server is gone; {sum(after.values())} rows on RDS, the app serves")
    return Growth(g.env, g.app, g.database, g.seeded, visits or 0, template)


def start_stage_1(env: run.Environment, assembly: Path, template: dict, config, events: int,
                  step: Step) -> Growth | None:
    """dev's stage-1 server, booted from its template, with data and a first visit."""
    env.prepare_aws()
    server = next(s for s in env.servers if s.is_app_server)
    app = env.container("app")
    env.stage_server(app, server, assembly, template)
    result = run.Result(ENVIRONMENT, server.kind)
    if not run.boot_and_signal(app, server, result) or result.failures:
        step.fail(f"the stage-1 server did not boot: {result.failures}")
        return None
    seeded = seed(app, config.database.name, config.database.user, events)
    visits = run.visits(app, server) or 0
    step.numbers["database_size"] = size = database_size(app, config.database.name)
    step.facts.append(f"booted in {result.boot_to_signal_sec:.0f} s; seeded {sum(seeded.values())} rows "
                      f"({', '.join(f'{t} {n}' for t, n in seeded.items())}), database {size}")
    return Growth(env, app, app, seeded, visits, template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rehearsal.grow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000,
                        help="rows in the large table (about 250 bytes each; 4,300,000 is about 1 GiB)")
    parser.add_argument("--only-first", action="store_true", help="only 1 -> 2 (the benchmark)")
    parser.add_argument("--figures", type=Path, help="write the 1 -> 2 figures here (JSON)")
    parser.add_argument("--floor", action="store_true",
                        help="also time a plain pg_dump | psql of the same data between the same servers")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("growth rehearsal: needs root (systemd-nspawn, network namespaces)")
        return 2
    started = time.monotonic()
    lock, root = run.claim_machine("growth rehearsal")  # noqa: F841 - the lock is held until exit
    workdir = STATE / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    raw = raw_at(1)
    config = synth.parse(ENVIRONMENT, raw)
    assembly = synth.synthesize([config], workdir / "cdk.out.stage1")
    template = tpl.load(assembly, config.stack_name)
    wheels = run.wheelhouse(run.app_requirements(assembly, template))
    ct.bridge_up()
    emulator = run.Emulator()
    env = run.Environment(ENVIRONMENT, raw, config, assembly, emulator, root, wheels, first_index=0)
    steps: list[Step] = []
    figures: dict = {}
    try:
        first = Step("stage 1")
        steps.append(first)
        g: Growth | None = start_stage_1(env, assembly, template, config, args.events, first)
        if g:
            seeded, size = g.seeded, first.numbers["database_size"]
            step = Step("1 -> 2")
            steps.append(step)
            g = grow_to_2(g, workdir, step, floor=args.floor)
            figures = {"seeded_rows": sum(seeded.values()), "database_size": size, **step.numbers,
                       "facts": step.facts, "failures": step.failures}
            for stage in ((3, 4) if not args.only_first else ()):
                if not g:
                    break
                step = Step(f"{stage - 1} -> {stage}")
                steps.append(step)
                g = grow_fleet_stage(g, stage, workdir, step)
            if g and not args.only_first:
                # EC2 PostgreSQL -> RDS at stage 4, in its two deploys.
                step = Step("4 ec2 -> rds")
                steps.append(step)
                moved = move_to_rds(g, 4, workdir, step)
                if moved:
                    step = Step("4 rds only")
                    steps.append(step)
                    g = retire_database_server(moved[0], moved[1], 4, workdir, step)
        if not args.only_first:
            # 1 -> 2 into RDS (its stand-in): another stage-1 server, the same carry, the other kind of target.
            env.cleanup()
            env.cfn_stack.cf.delete_stack(StackName=env.cfn_stack.name)
            env = run.Environment(ENVIRONMENT, raw, config, assembly, emulator, root, wheels, first_index=10)
            first = Step("stage 1")
            steps.append(first)
            g = start_stage_1(env, assembly, template, config, RDS_EVENTS, first)
            if g:
                step = Step("1 -> 2 rds")
                steps.append(step)
                grow_to_2(g, workdir, step, database="rds")
            # EC2 PostgreSQL -> RDS at stage 2: a third environment grown to stage 2 on EC2, then moved.
            env.cleanup()
            env.cfn_stack.cf.delete_stack(StackName=env.cfn_stack.name)
            env = run.Environment(ENVIRONMENT, raw, config, assembly, emulator, root, wheels, first_index=20)
            first = Step("stage 1")
            steps.append(first)
            g = start_stage_1(env, assembly, template, config, RDS_EVENTS, first)
            for label, grow in (("1 -> 2", lambda g, step: grow_to_2(g, workdir, step)),
                                ("2 ec2 -> rds", lambda g, step: move_to_rds(g, 2, workdir, step)),
                                ("2 rds only", lambda g, step: retire_database_server(*g, 2, workdir, step))):
                if not g:
                    break
                step = Step(label)
                steps.append(step)
                g = grow(g, step)
    except Exception as error:  # noqa: BLE001 - reported as the step's failure
        crashed = Step("crash")
        crashed.fail(repr(error))
        steps.append(crashed)
    finally:
        if not os.environ.get("REHEARSAL_KEEP"):
            env.cleanup()
            emulator.stop()
            ct.bridge_down()
    for step in steps:
        say(step.line())
    say(f"growth rehearsal took {time.monotonic() - started:.0f} s")
    if args.figures and figures:
        args.figures.write_text(json.dumps(figures, indent=2))
    failed = sum(1 for s in steps if s.failures)
    say(f"growth rehearsal: {len(steps)} steps, {failed} failed, {sum(s.rows_checked for s in steps)} rows checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
