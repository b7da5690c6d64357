"""What a deploy would do, said before it runs: `make plan ENV=name`.

    python -m tools.plan --env NAME [--json] [--accept-data-loss]

The environment is synthesized in-process, offline (as `make deploy` would synthesize it: with the
git commit; with `-c target=emulator` when the target is the emulator), and compared with the
template CloudFormation holds for the deployed stack: GetTemplate through boto3, which goes to the
local emulator when AWS_ENDPOINT_URL is set (what `make deploy-local` prints, as `make status`
does) and to AWS with your credentials otherwise. No deployed stack: everything is created.

It says in plain words what is created, replaced, restarted, updated in place and deleted; what
happens to every resource that holds data; the expected downtime; and the monthly cost before and
after (tools/reports/cost.py on both templates). A step that would lose data prints lines starting
`DATA:` and exits 3, unless --accept-data-loss.

Replacement is read from the resource provider schemas cfn-lint ships (`createOnlyProperties`): a
changed type, a changed create-only property, or a create-only property that refers to a resource
being replaced (or to a launch template's version number, which an update of that template moves).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app_tier.render import CARRIED_RECORD
from envconfig import ConfigError, EnvironmentConfig, load_environment
from tools import ROOT
from tools.templates import INIT

CREATE, REPLACE, RESTART, UPDATE, DELETE = "create", "replace", "restart", "update", "delete"
ACTIONS = (CREATE, REPLACE, RESTART, UPDATE, DELETE)
LABELS = {CREATE: "created", REPLACE: "REPLACED", RESTART: "restarted", UPDATE: "updated", DELETE: "DELETED"}
EXIT_DATA_LOSS = 3

# A step outside the deploy that moves a database's data into a new one (e.g. "make migrate ENV=name").
# None: there is none; only the two carries below move data. When one exists, name it here: `data_fates`
# then says any new database is filled by it instead of flagging the step as losing data.
MIGRATION: str | None = None
NO_MIGRATION = "only the two carries move a database's data; README: Growing the service"
# The two carries, both a server's Init step on the update (app_tier/carry.py), both read from the templates:
# - 1 -> 2: a stage-1 server growing to stage 2 keeps its own PostgreSQL until its first Init step copies
#   it into the new database, verifies every table's row count and only then retires it (LOCAL_CARRY);
# - EC2 PostgreSQL -> RDS, in two deploys: the first, with [database.carry_from], keeps the EC2 database
#   server next to the new RDS instance, and that server's last Init step (CARRY_CONFIG) copies its data into
#   RDS, verifies every table's row count, retires PostgreSQL and forwards its old port to RDS
#   (DATABASE_CARRY); the deploy completes only if it did. The second, without carry_from, deletes the
#   server and its volume (PREVIOUS_CARRY). Without the first, the move is flagged (USE_CARRY_FROM).
CARRY_DOWNTIME = ("errors for about the copy's time: 3-5 s for 62 MB in the rehearsal, 19 s for 1.2 GiB in the benchmark "
                  "(README: Growing the service)")
LOCAL_CARRY = ("the app server's carry step on this update (app_tier/carry.py: pg_dump | psql, every "
               "table's row count verified, then the local PostgreSQL retired, its files kept)")
DATABASE_CARRY = ("the database server's carry step on this update (app_tier/carry.py: the app's role frozen, "
                  "pg_dump | psql --single-transaction, every table's row count verified, then PostgreSQL retired "
                  "and its old port forwarded to RDS; a failure rolls the whole deploy back, the EC2 database "
                  "untouched and serving)")
PREVIOUS_CARRY = ("the previous deploy's carry step (app_tier/carry.py), which that deploy completed only after "
                  "every table's row count matched")
DATABASE_CARRY_DOWNTIME = ("requests that need the database fail for about the copy's time: 1.4-2.3 s of errors "
                           "for 62 MB at stage 4 in the growth rehearsal; the copy runs at the 1 -> 2 carry's rate "
                           "(about 17 s of errors per GiB, make bench-grow)")
USE_CARRY_FROM = ("an EC2 database server's data moves into RDS only by a deploy with [database.carry_from] "
                  "first, then one without it; README: Growing the service")

# Updates with some interruption, from CloudFormation's reference pages ("Update requires: Some
# interruptions"). The provider schemas say what needs a replacement (createOnlyProperties), not this.
INTERRUPTING = {
    "AWS::EC2::Instance": {"UserData", "InstanceType", "EbsOptimized", "KernelId", "RamdiskId"},
    "AWS::RDS::DBInstance": {"DBInstanceClass", "EngineVersion"},
}
# Attributes an in-place update changes: a launch template's new version (the instance or group that
# names it by version sees its LaunchTemplate property change).
MOVED_BY_UPDATE = {("AWS::EC2::LaunchTemplate", "LatestVersionNumber"),
                   ("AWS::EC2::LaunchTemplate", "DefaultVersionNumber")}

# Downtime estimates: approximations, stated with what they rest on.
BOOT_ON_AWS = "about 3-6 min"
BOOT_BASIS = ("EC2's launch plus cfn-init installing packages and the app on AWS (an estimate); the boot "
              "rehearsal's 5-15 s from boot to signal leave out EC2's launch and the downloads")


# --- comparing two templates -------------------------------------------------------------------

@dataclass
class Change:
    logical_id: str
    type: str
    name: str                  # construct path below the stack, e.g. "Service/Database/Server"
    action: str                # one of ACTIONS
    reasons: list[str] = field(default_factory=list)
    policy: str = ""           # delete: the DeletionPolicy; replace: the old resource's UpdateReplacePolicy
    init_changed: bool = False  # update: its CloudFormation Init metadata changed (cfn-hup applies it in place)


def readable_name(logical_id: str, resource: dict) -> str:
    path = (resource.get("Metadata") or {}).get("aws:cdk:path", "")
    if not path:
        return logical_id
    path = path.partition("/")[2]
    return path.removesuffix("/Resource").removesuffix("/Resource") or logical_id


@functools.cache
def create_only_properties(resource_type: str, region: str) -> tuple[str, ...] | None:
    """The JSON pointers (/properties/...) CloudFormation cannot update in place, from the provider
    schema cfn-lint ships for the region; None for a type it has no schema for (Custom::...)."""
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER, ResourceNotFoundError

    try:
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(region, resource_type).schema
    except ResourceNotFoundError:
        return None
    return tuple(schema.get("createOnlyProperties", []))


def _select(properties: dict, pointer: str) -> list:
    """The values a schema pointer (`/properties/A/*/B`) selects."""
    values: list = [properties]
    for part in pointer.split("/")[2:]:
        found = []
        for value in values:
            if part == "*" and isinstance(value, list):
                found += value
            elif isinstance(value, dict) and part in value:
                found.append(value[part])
        values = found
    return values


def references(value: Any) -> set[tuple[str, str | None]]:
    """(logical ID, attribute or None for a Ref) for every Ref, Fn::GetAtt and Fn::Sub name in a value."""
    found: set[tuple[str, str | None]] = set()
    if isinstance(value, dict):
        if isinstance(value.get("Ref"), str):
            found.add((value["Ref"], None))
        att = value.get("Fn::GetAtt")
        if isinstance(att, list) and att:
            found.add((str(att[0]), str(att[1]) if len(att) > 1 else None))
        elif isinstance(att, str):
            name, _, attr = att.partition(".")
            found.add((name, attr or None))
        sub = value.get("Fn::Sub")
        text = sub if isinstance(sub, str) else sub[0] if isinstance(sub, list) and sub else ""
        for match in re.finditer(r"\$\{([^!}][^}]*)\}", text if isinstance(text, str) else ""):
            name, _, attr = match.group(1).partition(".")
            found.add((name, attr or None))
        for inner in value.values():
            found |= references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= references(inner)
    return found


def _pointer_name(pointer: str) -> str:
    return pointer.removeprefix("/properties/").replace("/*", "[]").replace("/", ".")


def _init(resource: dict) -> dict:
    metadata = resource.get("Metadata") or {}
    return {k: metadata[k] for k in (INIT, "AWS::CloudFormation::Authentication") if k in metadata}


def compare(before: dict | None, after: dict, region: str) -> list[Change]:
    """Every resource that is created, replaced, restarted, updated or deleted by deploying `after`
    over `before` (None: no stack yet), by logical ID. Resources that stay as they are are left out."""
    old = (before or {}).get("Resources", {})
    new = after.get("Resources", {})
    changes: dict[str, Change] = {}
    for lid in new.keys() - old.keys():
        changes[lid] = Change(lid, new[lid]["Type"], readable_name(lid, new[lid]), CREATE)
    for lid in old.keys() - new.keys():
        changes[lid] = Change(lid, old[lid]["Type"], readable_name(lid, old[lid]), DELETE,
                              policy=old[lid].get("DeletionPolicy", "Delete"))

    common = sorted(old.keys() & new.keys())
    # What each kept resource sees change: (property or "Init metadata", why)
    changed: dict[str, dict[str, str]] = {lid: {} for lid in common}
    replace: dict[str, list[str]] = {}
    for lid in common:
        o, n = old[lid], new[lid]
        if o["Type"] != n["Type"]:
            replace[lid] = [f"its type changes from {o['Type']}"]
            continue
        op, np = o.get("Properties") or {}, n.get("Properties") or {}
        for key in sorted(op.keys() | np.keys()):
            if op.get(key) != np.get(key):
                changed[lid][key] = "changed"
        if _init(o) != _init(n):
            changed[lid]["Init metadata"] = "changed"
        pointers = create_only_properties(n["Type"], region) or ()
        reasons = [f"{_pointer_name(p)} cannot be updated in place" for p in pointers
                   if _select(op, p) != _select(np, p)]
        if reasons:
            replace[lid] = reasons

    def moved(target: str, attr: str | None) -> str | None:
        """Why a reference to `target`'s `attr` has a new value after the deploy (None: it does not)."""
        if target in replace:
            return f"{readable_name(target, new[target])} is replaced"
        if target in changes and changes[target].action == CREATE:
            return None   # a new reference shows as a changed literal already
        if target in new and (new[target]["Type"], attr) in MOVED_BY_UPDATE and changed.get(target):
            return f"{readable_name(target, new[target])} gets a new version"
        return None

    # A property that refers to a replaced resource changes too; when it is create-only, that resource
    # is replaced in turn. Repeat until nothing more moves.
    while True:
        grew = False
        for lid in common:
            n = new[lid]
            np = n.get("Properties") or {}
            pointers = create_only_properties(n["Type"], region) or ()
            if lid in replace:   # already replaced: name every create-only reason once
                for pointer in pointers:
                    whys = sorted({why for v in _select(np, pointer) for ref in references(v) if (why := moved(*ref))})
                    reason = f"{_pointer_name(pointer)} changes because {'; '.join(whys)}"
                    if whys and reason not in replace[lid]:
                        replace[lid].append(reason)
                continue
            parts = {**np, "Init metadata": _init(n)}
            for key, value in parts.items():
                whys = sorted({why for ref in references(value) if (why := moved(*ref))})
                if whys and key not in changed[lid]:
                    changed[lid][key] = f"changes because {'; '.join(whys)}"
                    grew = True
            for pointer in pointers:
                whys = sorted({why for v in _select(np, pointer) for ref in references(v) if (why := moved(*ref))})
                if whys:
                    replace[lid] = [f"{_pointer_name(pointer)} cannot be updated in place and changes "
                                    f"because {'; '.join(whys)}"]
                    grew = True
                    break
        if not grew:
            break

    for lid in common:
        n, o = new[lid], old[lid]
        name = readable_name(lid, n)
        if lid in replace:
            changes[lid] = Change(lid, n["Type"], name, REPLACE, replace[lid],
                                  policy=o.get("UpdateReplacePolicy", "Delete"))
            continue
        props = {k: why for k, why in changed[lid].items() if k != "Init metadata"}
        interrupting = sorted(set(props) & INTERRUPTING.get(n["Type"], set()))
        reasons = [f"{k} {why}" for k, why in props.items() if k not in interrupting]
        if "Init metadata" in changed[lid]:
            reasons.append("CloudFormation Init metadata " + changed[lid]["Init metadata"]
                           + (" (cfn-hup re-runs cfn-init on the server)" if n["Type"] == "AWS::EC2::Instance"
                              else " (what new servers run at boot)"))
        policies = [f"{k} {o.get(k)} -> {n.get(k)} (no change to the resource itself)"
                    for k in ("DeletionPolicy", "UpdateReplacePolicy", "UpdatePolicy", "CreationPolicy")
                    if o.get(k) != n.get(k)]
        if interrupting:
            changes[lid] = Change(lid, n["Type"], name, RESTART,
                                  [f"{', '.join(interrupting)} changes: an update with interruption"]
                                  + reasons + policies)
        elif reasons or policies:
            changes[lid] = Change(lid, n["Type"], name, UPDATE, reasons + policies,
                                  init_changed="Init metadata" in changed[lid])
    if before is not None:
        _fold_wait_conditions(changes, old, new)
    order = {a: i for i, a in enumerate((DELETE, REPLACE, RESTART, CREATE, UPDATE))}
    return sorted(changes.values(), key=lambda c: (order[c.action], c.name))


WAIT_TYPES = ("AWS::CloudFormation::WaitCondition", "AWS::CloudFormation::WaitConditionHandle")


def _fold_wait_conditions(changes: dict[str, Change], old: dict, new: dict) -> None:
    """A single server's wait condition and handle are per version of its Init metadata
    (cdk_constructs/bootstrap.py): each metadata change creates a new pair and deletes the old one. They hold
    nothing and cost nothing, so they are not listed as created and DELETED; the server's update says that
    CloudFormation waits for it instead."""
    for lid in [lid for lid, c in changes.items() if c.type in WAIT_TYPES and c.action in (CREATE, DELETE)]:
        change = changes.pop(lid)
        resource = (new if change.action == CREATE else old)[lid]
        if change.action != CREATE or resource["Type"] != WAIT_TYPES[0]:
            continue
        timeout = int((resource.get("Properties") or {}).get("Timeout", 0)) // 60
        for server in resource.get("DependsOn", []):
            if server in changes:
                changes[server].reasons.append(
                    f"the deploy waits for the server to apply its new Init metadata (its new wait condition, "
                    f"up to {timeout} min) and rolls back if it fails")


# --- what holds data -------------------------------------------------------------------------

DATABASE, CREDENTIALS, BACKUPS, LOGS = "database", "credentials", "backups", "logs"


@dataclass(frozen=True)
class Holder:
    logical_id: str
    name: str
    kind: str                  # DATABASE, CREDENTIALS, BACKUPS or LOGS
    what: str                  # plain words


def _postgresql_server(resource: dict) -> bool:
    """An instance whose CloudFormation Init installs PostgreSQL's server package."""
    init = (resource.get("Metadata") or {}).get(INIT, {})
    return any(re.match(r"postgresql[\d.]*-server$", pkg) for config in init.values() if isinstance(config, dict)
               for pkg in config.get("packages", {}).get("yum", {}))


def _data_volume_of(resource: dict, resources: dict) -> str | None:
    """The EBS volume a database server's Init attaches (its Ref in the Init commands), if any."""
    init = (resource.get("Metadata") or {}).get(INIT, {})
    found = {lid for lid, _ in references(init) if resources.get(lid, {}).get("Type") == "AWS::EC2::Volume"}
    return sorted(found)[0] if found else None


def data_holders(template: dict | None) -> dict[str, Holder]:
    """Every resource of a template that holds data, in this project's layouts: the stage-1 server
    (PostgreSQL on its own root volume), the EC2 database server's data volume, the RDS instance, the
    secrets (the database password), the backup vault (recovery points), log groups and log buckets."""
    resources = (template or {}).get("Resources", {})
    volumes_in_use = {v for r in resources.values() if r["Type"] == "AWS::EC2::Instance" and _postgresql_server(r)
                      if (v := _data_volume_of(r, resources))}
    found = {}
    for lid, res in resources.items():
        kind, what, rtype = None, "", res["Type"]
        if rtype == "AWS::RDS::DBInstance":
            kind, what = DATABASE, "the PostgreSQL database (RDS)"
        elif rtype == "AWS::EC2::Volume":
            kind, what = DATABASE, ("PostgreSQL's data volume" if lid in volumes_in_use else "an EBS volume")
        elif rtype == "AWS::EC2::Instance" and _postgresql_server(res) and not _data_volume_of(res, resources):
            kind, what = DATABASE, "PostgreSQL's data on the server's own root volume"
        elif rtype == "AWS::SecretsManager::Secret":
            kind, what = CREDENTIALS, "a secret (the database password)"
        elif rtype == "AWS::Backup::BackupVault":
            kind, what = BACKUPS, "the backup recovery points"
        elif rtype == "AWS::Logs::LogGroup":
            kind, what = LOGS, "logs"
        elif rtype == "AWS::S3::Bucket":
            kind, what = LOGS, "stored objects (logs)"
        if kind:
            found[lid] = Holder(lid, readable_name(lid, res), kind, what)
    return found


@dataclass(frozen=True)
class DatabaseCarry:
    """An EC2 database server whose Init carries its data into RDS ([database.carry_from]), by logical ID."""
    server: str
    volume: str                # the server's data volume
    target: str                # the RDS instance its carry step copies into


def database_carries(template: dict | None) -> dict[str, DatabaseCarry]:
    """The EC2 database servers of a template that carry their data into RDS, by data volume: an instance
    with a data volume whose Init has a carry config (CARRY_CONFIG) naming an RDS instance."""
    from cdk_constructs.bootstrap import CARRY_CONFIG  # it imports the CDK: not at the module's import

    resources = (template or {}).get("Resources", {})
    found = {}
    for lid, res in sorted(resources.items()):
        carry = (res.get("Metadata") or {}).get(INIT, {}).get(CARRY_CONFIG) \
            if res["Type"] == "AWS::EC2::Instance" else None
        volume = _data_volume_of(res, resources) if carry else None
        targets = sorted(t for t, _ in references(carry)
                         if resources.get(t, {}).get("Type") == "AWS::RDS::DBInstance")
        if volume and targets:
            found[volume] = DatabaseCarry(lid, volume, targets[0])
    return found


def settled(status: str) -> bool:
    """Whether the deployed stack's template is one CloudFormation finished deploying or rolling back to
    (an unknown status, "" or "deployed", counts as finished): not one in progress or failed."""
    return not ("FAILED" in status or ("IN_PROGRESS" in status and "CLEANUP" not in status))


@dataclass
class DataFate:
    name: str
    logical_id: str
    what: str
    fate: str                  # "kept", "restarted", "replaced", "deleted", "retained", "created"
    detail: str
    loss: bool = False         # printed as a `DATA:` line; the plan exits non-zero without --accept-data-loss


def _ends(policy: str) -> str:
    return {"Retain": "retained, out of the stack, with its data",
            "Snapshot": "deleted after a final snapshot (the data stays only in that snapshot)"}.get(
        policy, "deleted with its data")


def carries_on_this_update(before: dict | None, after: dict) -> dict[str, DatabaseCarry]:
    """The database carries this deploy runs, by data volume: a carry step the deployed template does not
    have yet (a carry runs once: run again, it finds its record and copies nothing), from a volume it has
    (a new one holds nothing to carry)."""
    deployed, done = (before or {}).get("Resources", {}), database_carries(before)
    return {volume: c for volume, c in database_carries(after).items() if volume in deployed and volume not in done}


def data_fates(changes: list[Change], before: dict | None, after: dict,
               migration: str | None = MIGRATION, *, deployed: str = "") -> list[DataFate]:
    """What happens to each resource that holds data: kept, replaced or deleted (retained or destroyed
    per its policy), and which new database starts empty. The one place that knows whether a carry or a
    migration moves a database's data into the new one: the carries are read from the two templates (a
    database server's carry into RDS counts for the deploy after it only when the deployed stack's status,
    `deployed`, is settled); `migration` is a step outside the deploy that does (None: none)."""
    old_holders, new_holders = data_holders(before), data_holders(after)
    old_resources, new_resources = (before or {}).get("Resources", {}), after.get("Resources", {})
    by_id = {c.logical_id: c for c in changes}
    fates: list[DataFate] = []
    left_behind: list[DataFate] = []   # old databases whose data the app will no longer read
    carried_away: list[DataFate] = []  # old databases deleted after a previous deploy carried their data

    def kept(lid: str) -> bool:
        return lid in new_resources and (by_id.get(lid) is None or by_id[lid].action in (UPDATE, RESTART))

    # EC2 PostgreSQL -> RDS: carried by the previous deploy (the deployed template's carry step, into an RDS
    # instance this deploy keeps: that deploy completed only if the carry did), or by this one.
    carried_before = database_carries(before)
    carried = {v: c for v, c in carried_before.items() if kept(c.target)} if settled(deployed) else {}
    carrying = carries_on_this_update(before, after)
    server_volumes = {v for r in old_resources.values() if r["Type"] == "AWS::EC2::Instance"
                      and _postgresql_server(r) if (v := _data_volume_of(r, old_resources))}
    into_rds = any(new_resources[lid]["Type"] == "AWS::RDS::DBInstance" and lid not in old_resources
                   for lid in new_holders)

    def why_not_moved(sources: list[DataFate]) -> str:
        """Why nothing moves these databases' data, and what would."""
        from_server = into_rds and any(f.logical_id in server_volumes for f in sources)
        return USE_CARRY_FROM if from_server else NO_MIGRATION

    def until_removed(volume: str) -> str:
        policy = new_resources[volume].get("DeletionPolicy", "Delete")
        return (f"the volume stays until the next deploy without [database.carry_from], which removes it from "
                f"the stack: {_ends(policy)} (DeletionPolicy {policy})")

    for lid, holder in sorted(old_holders.items(), key=lambda kv: kv[1].name):
        change = by_id.get(lid)
        action = change.action if change else None
        still_database = lid in new_holders and new_holders[lid].kind == DATABASE
        if holder.kind == DATABASE:
            if action in (None, UPDATE, RESTART) and still_database:
                detail = "kept" + (" (the server restarts; the data on its disks stays)" if action == RESTART else "")
                if lid in carrying:
                    detail += (f": its data is carried into {_name(carrying[lid].target, after)} on this update "
                               f"(by {_name(carrying[lid].server, after)}'s carry step); {until_removed(lid)}")
                elif lid in carried:
                    detail += (f": its data was carried into {_name(carried[lid].target, after)} by "
                               f"{PREVIOUS_CARRY}; {until_removed(lid)}")
                fates.append(DataFate(holder.name, lid, holder.what, "restarted" if action == RESTART else "kept",
                                      detail))
                continue
            if action == DELETE and lid in carried:
                fate = DataFate(holder.name, lid, holder.what, "retained" if change.policy == "Retain" else "deleted",
                                f"DELETED from the stack: {_ends(change.policy)} (DeletionPolicy {change.policy}); "
                                f"its data was carried into {_name(carried[lid].target, after)} by {PREVIOUS_CARRY}")
                fates.append(fate)
                carried_away.append(fate)
                continue
            if action in (None, UPDATE, RESTART):
                fate = DataFate(holder.name, lid, holder.what, "kept",
                                "kept, but the app no longer uses it: the data stays on it", loss=True)
            elif action == REPLACE:
                root = "; its root volume goes with the instance" if "root volume" in holder.what \
                    and change.policy not in ("Retain", "Snapshot") else ""
                fate = DataFate(holder.name, lid, holder.what, "replaced",
                                f"REPLACED ({'; '.join(change.reasons)}): the new one "
                                f"{'starts EMPTY' if still_database else 'holds no database'}; the old one is "
                                f"{_ends(change.policy)}{root}", loss=True)
            else:
                fate = DataFate(holder.name, lid, holder.what, "retained" if change.policy == "Retain" else "deleted",
                                f"DELETED from the stack: {_ends(change.policy)} (DeletionPolicy {change.policy})",
                                loss=True)
            fates.append(fate)
            left_behind.append(fate)
            continue
        if action in (None, UPDATE, RESTART):
            fates.append(DataFate(holder.name, lid, holder.what, "kept", "kept"))
            continue
        kept = change.policy in ("Retain", "Snapshot")
        if action == REPLACE:
            detail = ("REPLACED: a new value is generated; the old secret is " if holder.kind == CREDENTIALS else
                      "REPLACED: the new one starts empty; the old one is ") + ("retained" if kept else "deleted")
        else:
            detail = ("removed from the stack but retained" if kept else "DELETED") + \
                f" (DeletionPolicy {change.policy})"
        fates.append(DataFate(holder.name, lid, holder.what, "replaced" if action == REPLACE else
                              "retained" if kept else "deleted", detail, loss=holder.kind == BACKUPS and not kept))

    # An EC2 database server replaced while its data volume stays: the data is kept, but the new server
    # can attach the volume only once the old one has let go of it.
    for lid, res in sorted(old_resources.items()):
        change = by_id.get(lid)
        volume = _data_volume_of(res, old_resources) if res["Type"] == "AWS::EC2::Instance" \
            and _postgresql_server(res) else None
        if volume and change and change.action == DELETE:
            retired = f": the previous deploy carried its data into {_name(carried[volume].target, after)} " \
                "and retired its PostgreSQL" if volume in carried else ""
            fates.append(DataFate(change.name, lid, "the database server (its data is on its volume)", "deleted",
                                  f"DELETED (DeletionPolicy {change.policy}){retired}; its data volume: "
                                  f"{old_holders[volume].name}, above"))
        if volume and change and change.action == REPLACE and by_id.get(volume) is None:
            fates.append(DataFate(change.name, lid, "the database server (its data is on its volume)", "replaced",
                                  f"REPLACED ({'; '.join(change.reasons)}): the data stays on "
                                  f"{old_holders[volume].name}, which the new server attaches at boot; stop "
                                  "PostgreSQL and detach the volume from the old server first (README: Keeping the "
                                  "data), or the new server fails its boot signal and the update rolls back"))

    for lid, holder in sorted(new_holders.items(), key=lambda kv: kv[1].name):
        if lid in old_holders and old_holders[lid].kind == holder.kind and \
                (by_id.get(lid) is None or by_id[lid].action != REPLACE):
            continue   # kept: said above
        if holder.kind != DATABASE:
            if lid not in old_holders:
                fates.append(DataFate(holder.name, lid, holder.what, "created", "created"))
            continue
        if lid in old_holders and old_holders[lid].kind == DATABASE:
            continue   # a replaced database: said above
        carried_in = [c for c in carrying.values() if c.target == lid]
        if carried_in:
            fates.append(DataFate(holder.name, lid, holder.what, "created", "created, then filled by " + ", ".join(
                f"{DATABASE_CARRY} from {_name(c.volume, after)} (on {_name(c.server, after)})" for c in carried_in)))
            continue
        if not left_behind:
            fates.append(DataFate(holder.name, lid, holder.what, "created", "created (empty)"))
            continue
        sources = ", ".join(f.name for f in left_behind)
        movers = {_carried_by(f, migration) for f in left_behind}
        if None not in movers:
            mover = " and ".join(sorted(movers))
            fates.append(DataFate(holder.name, lid, holder.what, "created",
                                  f"created, then filled by {mover} from {sources}"))
            for fate in left_behind:
                fate.loss = False
                fate.detail += f" (its data is first moved by {_carried_by(fate, migration)} into {holder.name})"
        else:
            fates.append(DataFate(holder.name, lid, holder.what, "created",
                                  f"created EMPTY: the data in {sources} is not moved into it "
                                  f"({why_not_moved(left_behind)})", loss=True))
    for fate in left_behind:
        if _carried_by(fate, migration):
            continue
        unsure = carried_before.get(fate.logical_id)
        if unsure and not settled(deployed):
            fate.detail += (f"; the deployed stack is {deployed}, so its carry into "
                            f"{_name(unsure.target, before)} is not known to have completed")
        else:
            fate.detail += f"; nothing moves the data ({why_not_moved([fate])})"
    for fate in left_behind + carried_away:
        vault = _backed_up_in(fate.logical_id, before, by_id)
        if vault:
            fate.detail += f"; its AWS Backup recovery points stay in {vault} until they expire"
    # A server that carries on this update must run a setup that knows the carry's record: a rollback after
    # the carry re-applies the deployed metadata, and one from before the record check would serve a stale
    # copy next to the forwarder and leave a record that makes the next carry copy nothing.
    carriers = {c.server for c in carrying.values()} | {f.logical_id for f in fates if LOCAL_CARRY in f.detail}
    for lid in sorted(carriers):
        if lid in old_resources and CARRIED_RECORD not in json.dumps(old_resources[lid].get("Metadata") or {}):
            fates.append(DataFate(_name(lid, before), lid, "the server that carries the data", "kept",
                                  f"its deployed setup predates the carry's record check ({CARRIED_RECORD}), so a "
                                  "rollback after the carry would not know of it: deploy this version once without "
                                  "the move first (README: Growing the service)", loss=True))
    return fates


def _said_not_moved(fates: list[DataFate]) -> str:
    """Why the data lines say nothing moves the data: whether a carry_from deploy would have (data_fates)."""
    return USE_CARRY_FROM if any(USE_CARRY_FROM in f.detail for f in fates if f.loss) else NO_MIGRATION


def _name(logical_id: str, template: dict | None) -> str:
    return readable_name(logical_id, (template or {}).get("Resources", {}).get(logical_id, {}))


def _carried_by(fate: DataFate, migration: str | None) -> str | None:
    """What moves a left-behind database's data into the new one: the named migration, or the carry
    step when it is a kept server's own PostgreSQL (stage 1 -> 2); None: nothing does."""
    if migration:
        return migration
    return LOCAL_CARRY if fate.fate == "kept" and "own root volume" in fate.what else None


def _backed_up_in(logical_id: str, before: dict | None, by_id: dict[str, Change]) -> str | None:
    """The backup vault (kept or retained) whose plan selected this resource, if any."""
    resources = (before or {}).get("Resources", {})
    for res in resources.values():
        if res["Type"] != "AWS::Backup::BackupSelection" or \
                logical_id not in {lid for lid, _ in references(res.get("Properties", {}))}:
            continue
        plan_ids = {lid for lid, _ in references(res["Properties"].get("BackupPlanId"))}
        plan = resources.get(next(iter(plan_ids), ""), {})
        for vault in {lid for lid, _ in references(plan.get("Properties", {}))}:
            vault_res = resources.get(vault, {})
            change = by_id.get(vault)
            if vault_res.get("Type") == "AWS::Backup::BackupVault" and (
                    change is None or change.action not in (DELETE, REPLACE) or change.policy == "Retain"):
                return readable_name(vault, vault_res)
    return None


# --- downtime --------------------------------------------------------------------------------

@dataclass
class Downtime:
    what: str
    estimate: str
    basis: str


def _is_app_server(resource: dict) -> bool:
    """An instance whose CloudFormation Init runs the app (the single server of stages 1-2)."""
    init = (resource.get("Metadata") or {}).get(INIT, {})
    return resource["Type"] == "AWS::EC2::Instance" and "app" in init


def downtime(changes: list[Change], before: dict | None, after: dict, fates: list[DataFate]) -> list[Downtime]:
    """The expected downtime per change that causes any, approximately, with what each estimate rests on."""
    if before is None:
        return [Downtime("first deploy", "not serving yet", "nothing is deployed")]
    old, new = before.get("Resources", {}), after.get("Resources", {})
    carrying = {c.server: c for c in carries_on_this_update(before, after).values()}
    found: list[Downtime] = []
    for c in changes:
        res = new.get(c.logical_id) or old.get(c.logical_id)
        if c.action == UPDATE and c.init_changed and _is_app_server(res) and carrying:
            found.append(Downtime(f"{c.name}: the app restarts in place, on RDS", "none of its own: it moves after the "
                                  "database server's carry (below), which it reaches through the forwarder until then",
                                  "its update waits for the carry's wait condition; the growth rehearsal's stage-2 "
                                  "move saw at most one failed poll (0.2 s) while the app server moved onto RDS"))
        elif c.action == UPDATE and c.init_changed and _is_app_server(res):
            found.append(Downtime(f"{c.name}: the app restarts in place", "a few seconds, within about a minute "
                                  "of the deploy", "cfn-hup polls every minute and re-runs cfn-init; the boot "
                                  "rehearsal served an app change 3-4 s after the new metadata"))
        elif c.action == UPDATE and c.init_changed and _postgresql_server(res) and c.logical_id not in carrying:
            found.append(Downtime(f"{c.name}: its bootstrap re-runs in place", "none, unless PostgreSQL's own "
                                  "settings changed (then a restart: seconds)", "cfn-init re-runs; PostgreSQL is "
                                  "restarted only when its configuration files change (the boot rehearsal checks "
                                  "its PID)"))
        elif c.action == RESTART and c.type == "AWS::EC2::Instance":
            found.append(Downtime(f"{c.name}: stopped and started", "about 1-3 min",
                                  "EC2 stop, start and boot (an estimate); new user data does not run on a restart, "
                                  "cloud-init runs it at the first boot only"))
        elif c.action == RESTART and c.type == "AWS::RDS::DBInstance":
            multi_az = (res.get("Properties") or {}).get("MultiAZ")
            found.append(Downtime(f"{c.name}: modified", "about 1-2 min (Multi-AZ failover)" if multi_az else
                                  "several minutes (Single-AZ)", "AWS's guidance for a class or version change"))
        elif c.action == REPLACE and _is_app_server(res):
            found.append(Downtime(f"{c.name}: replaced", f"seconds, when the Elastic IP moves to the new server, "
                                  f"{BOOT_ON_AWS} into the deploy", "the old server serves until the new one has "
                                  f"signalled; {BOOT_BASIS}"))
        elif c.action == REPLACE and c.type == "AWS::EC2::Instance" and _postgresql_server(res):
            found.append(Downtime(f"{c.name}: replaced", f"no database from the volume's detach until the new server "
                                  f"runs PostgreSQL on it: {BOOT_ON_AWS}", BOOT_BASIS))
        elif c.type == "AWS::AutoScaling::AutoScalingGroup" and c.action in (UPDATE, REPLACE):
            found.append(Downtime(f"{c.name}: rolled", "none", "instance refresh: launch before terminate, never below "
                                  "the desired capacity (the deploy rehearsal: 0 failed requests)"))
        elif c.type == "AWS::ElasticLoadBalancingV2::LoadBalancer" and c.action == REPLACE:
            found.append(Downtime(f"{c.name}: replaced", "until clients follow its new DNS name",
                                  "a new load balancer has a new address"))
    created_lb = any(c.type == "AWS::ElasticLoadBalancingV2::LoadBalancer" and c.action == CREATE for c in changes)
    deleted_ip = any(c.type == "AWS::EC2::EIP" and c.action == DELETE for c in changes)
    if created_lb and deleted_ip:
        found.append(Downtime("the service moves from the server's Elastic IP to the load balancer",
                              "until clients and DNS follow the new address (the Url output)",
                              "the Elastic IP is released; a domain's record is updated by the deploy, "
                              "then its TTL"))
    for carry in carrying.values():
        found.append(Downtime(f"the app, while {_name(carry.server, after)} carries its database into "
                              f"{_name(carry.target, after)}", DATABASE_CARRY_DOWNTIME,
                              "the database server's carry step (app_tier/carry.py) freezes the app's role (it may "
                              "not log in, its sessions end) for pg_dump | psql --single-transaction and the row "
                              "counts, then retires PostgreSQL and forwards its old port to RDS: app servers not "
                              "yet moved reach RDS through it, and their update, which waits for the carry's wait "
                              "condition, moves them to RDS; a failed carry lets the role log in again and rolls "
                              "the deploy back"))
    if any(LOCAL_CARRY in f.detail for f in fates if f.fate == "kept"):
        found.append(Downtime("the app, while its database is carried", CARRY_DOWNTIME,
                              "the app's units and sockets stop for pg_dump | psql and the row counts "
                              "(requests are refused meanwhile), then start on the new database; measured by "
                              "`make rehearse-grow` and `make bench-grow` (README: Growing the service)"))
    emptied = [f for f in fates if f.fate == "created" and f.loss]
    if emptied:
        found.append(Downtime("the database", "until the data is restored into "
                              + ", ".join(f.name for f in emptied), f"the app serves an EMPTY database from the "
                              f"switch on ({_said_not_moved(emptied)})"))
    return found


# --- cost --------------------------------------------------------------------------------------

def monthly_cost(template: dict | None, config: EnvironmentConfig) -> tuple[float | None, str]:
    """The cost module's monthly total for a template (None without one) and its currency; the config
    gives only the default root volume size and the region's price table."""
    from tools.reports.cost import estimate, load_prices
    from tools.templates import Template

    prices = load_prices(config.region)
    if template is None:
        return None, prices.currency
    return estimate(Template(template), config, prices).total, prices.currency


# --- the deployed and the synthesized template -------------------------------------------------

def deployed_template(config: EnvironmentConfig, state_dir: Path) -> tuple[dict | None, str]:
    """The template CloudFormation holds for the stack (None: no such stack) and its status."""
    from tools import deploys

    session = deploys._session(config, state_dir)
    cfn = session.client("cloudformation")
    try:
        stack = cfn.describe_stacks(StackName=config.stack_name)["Stacks"][0]
    except cfn.exceptions.ClientError as err:
        if "does not exist" in str(err):
            return None, "no stack"
        raise
    if stack["StackStatus"] in ("REVIEW_IN_PROGRESS", "DELETE_COMPLETE"):
        return None, stack["StackStatus"]
    body = cfn.get_template(StackName=config.stack_name, TemplateStage="Original")["TemplateBody"]
    return (json.loads(body) if isinstance(body, str) else body), stack["StackStatus"]


def synthesized_template(config: EnvironmentConfig, target: str) -> dict:
    """The template `make deploy` (target "aws") or `make deploy-local` ("emulator") would deploy:
    synthesized in-process, offline, with the git commit as they pass it."""
    from stacks.web_service import COMMIT_CONTEXT
    from tools.deploys import git_commit
    from tools.templates import synthesize_in_process

    # The CLI reports the CDK version (a CDKMetadata resource) unless told not to; `make deploy` does not.
    context: dict = {"aws:cdk:version-reporting": True}
    commit = git_commit()
    if commit:
        context[COMMIT_CONTEXT] = commit
    return synthesize_in_process(config, target=target, context=context)


# --- the plan ----------------------------------------------------------------------------------

@dataclass
class Plan:
    environment: str
    stack: str
    stage: int
    target: str                # "aws" or "emulator"
    deployed: str              # the deployed stack's status, or "no stack"
    changes: list[Change]
    data: list[DataFate]
    downtime: list[Downtime]
    cost_before: float | None
    cost_after: float | None
    currency: str
    migration: str | None = MIGRATION

    @property
    def data_loss(self) -> bool:
        return any(f.loss for f in self.data)

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    def to_json(self) -> dict:
        return {**asdict(self), "data_loss": self.data_loss,
                "counts": {LABELS[a].lower(): self.count(a) for a in ACTIONS}}


def make_plan(config: EnvironmentConfig, before: dict | None, after: dict, *, target: str = "aws",
              deployed: str = "", migration: str | None = MIGRATION) -> Plan:
    """The plan for deploying `after` over `before` (None: nothing deployed), from the templates alone."""
    changes = compare(before, after, config.region)
    fates = data_fates(changes, before, after, migration=migration, deployed=deployed)
    cost_before, currency = monthly_cost(before, config)
    cost_after, _ = monthly_cost(after, config)
    return Plan(config.name, config.stack_name, int(config.stage), target,
                deployed or ("no stack" if before is None else "deployed"), changes, fates,
                downtime(changes, before, after, fates), cost_before, cost_after, currency, migration)


def plan_environment(config: EnvironmentConfig, *, state_dir: Path) -> Plan:
    """Synthesize the environment and compare it with its deployed stack (emulator or AWS)."""
    from tools.deploys import target_now

    target = target_now()
    before, status = deployed_template(config, state_dir)
    after = synthesized_template(config, target)
    return make_plan(config, before, after, target=target, deployed=status)


# --- output ------------------------------------------------------------------------------------

def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def render_text(plan: Plan) -> str:
    where = "the local emulator" if plan.target == "emulator" else "AWS"
    out = [f"plan: {plan.environment} ({plan.stack}) at stage {plan.stage}, against {where}: "
           + ("no deployed stack, so everything is created" if plan.deployed == "no stack"
              else f"deployed stack {plan.deployed}"), ""]
    counts = ", ".join(f"{plan.count(a)} {LABELS[a].lower()}" for a in ACTIONS)
    out.append(f"Resources: {counts}" if plan.changes else "Resources: no change")
    width = max((len(c.type) for c in plan.changes), default=0)
    for c in plan.changes:
        policy = f" (DeletionPolicy {c.policy})" if c.action == DELETE else \
            f" (the old one: UpdateReplacePolicy {c.policy})" if c.action == REPLACE else ""
        out.append(f"  {LABELS[c.action]:<9} {c.type:<{width}}  {c.name}  [{c.logical_id}]{policy}")
        for reason in c.reasons if c.action != CREATE else []:
            out.append(f"  {'':<9} {'':<{width}}    {reason}")
    out += ["", "Data:"]
    for f in plan.data:
        if f.loss:
            out.append(f"DATA: {f.name} ({f.what}): {f.detail}")
    shown = [f for f in plan.data if not f.loss and (f.fate != "created" or plan.deployed != "no stack")]
    for f in shown:
        out.append(f"  {f.fate:<9} {f.name} ({f.what}): {f.detail}")
    if not plan.data:
        out.append("  nothing holds data")
    out += ["", "Downtime (estimates):"]
    for d in plan.downtime:
        out.append(f"  {d.what}: {d.estimate}")
        out.append(f"      how: {d.basis}")
    if not plan.downtime:
        out.append("  none expected (no server, database or address changes)")
    out += ["", f"Cost (tools/reports/cost.py, {plan.currency}/month): before {_money(plan.cost_before)}, "
            f"after {_money(plan.cost_after)}"
            + (f" ({plan.cost_after - plan.cost_before:+,.2f})" if plan.cost_before is not None
               and plan.cost_after is not None else "")]
    if plan.data_loss:
        why = f"{plan.migration} does not cover it" if plan.migration else _said_not_moved(plan.data)
        out += ["", f"DATA: this deploy would lose data or leave it behind (the DATA lines above), and {why}. "
                "Back it up and restore it yourself (README: Keeping the data), then run with --accept-data-loss."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True, help="environment name (config/<name>.toml)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--accept-data-loss", action="store_true",
                        help="exit 0 even when the plan flags data loss (the DATA lines)")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".local",
                        help="where the emulator's state is (default: .local/)")
    args = parser.parse_args(argv)
    try:
        config = load_environment(args.env)
        plan = plan_environment(config, state_dir=args.state_dir)
    except ConfigError as err:
        print("Config error:\n  " + "\n  ".join(err.problems), file=sys.stderr)
        return 2
    except Exception as err:   # no emulator, no credentials, a price missing: one line, not a traceback
        from tools.deploys import DeployRecordError
        from tools.reports.cost import PriceError

        if isinstance(err, DeployRecordError | PriceError) or type(err).__module__.startswith("botocore"):
            print(f"plan: {err}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(plan.to_json(), indent=2) if args.json else render_text(plan), end="\n" if args.json else "")
    if plan.data_loss and not args.accept_data_loss:
        return EXIT_DATA_LOSS
    return 0


if __name__ == "__main__":
    sys.exit(main())
