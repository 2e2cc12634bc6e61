"""Migration runner, compatible with the Supabase CLI's history table.

Order: the Supabase shim (plain Postgres only), migrations/ (immutable, by version), then the
repeatable files of functions/ and sql/, each folder in this order (`repeatable_files`):

    <folder>/*.sql              the shared foundation (core, worker, ...), by file name
    <folder>/<area>/*.sql       one chapter per topic of an area: areas by name, topics by name

A repeatable file is re-applied when its checksum changes, and every one of them once the set of
applied migrations changed since they were last applied -- by this runner or by `supabase db push`
(a migration may drop or alter what they define; the row MIGRATIONS_SEEN of the bookkeeping table
holds the set they were applied after). Rows of the bookkeeping table
for files that no longer exist (a file split or renamed) are forgotten: a moved file is a new file,
never "changed history". One transaction per file; an advisory lock keeps two migrators from
interleaving. `supabase db push` applies migrations/ only; `luna db migrate` then applies the rest.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from . import ROOT

LOCK_KEY = 0x4C554E41  # "LUNA"
MIGRATIONS_SEEN = "migrations/"  # luna_repeatables row: digest of the migration versions repeatables followed
MIGRATION_RE = re.compile(r"^(\d+)_(.+)\.sql$")


class MigrationError(Exception):
    """A file could not be applied, or an applied migration was edited."""


@dataclass
class Plan:
    shim: list[Path] = field(default_factory=list)
    migrations: list[Path] = field(default_factory=list)
    repeatables: list[Path] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.shim or self.migrations or self.repeatables)


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def migration_files(root: Path = ROOT) -> list[Path]:
    files = [p for p in (root / "migrations").glob("*.sql") if MIGRATION_RE.match(p.name)]
    return sorted(files, key=lambda p: MIGRATION_RE.match(p.name).group(1))


def repeatable_files(root: Path = ROOT) -> list[Path]:
    """functions/ then sql/; in each, top-level files by name, then <area>/<topic>.sql by area and topic.

    A file may use at creation time (a `language sql` body, a default, a trigger) only what comes before it.
    """
    files: list[Path] = []
    for folder in (root / "functions", root / "sql"):
        files += sorted(folder.glob("*.sql"))
        for area in sorted(p for p in folder.glob("*") if p.is_dir()):
            files += sorted(area.glob("*.sql"))
    return files


def shim_files(root: Path = ROOT) -> list[Path]:
    return sorted((root / "supabase" / "shim").glob("*.sql"))


def seed_files(root: Path = ROOT) -> list[Path]:
    return sorted((root / "seed").glob("*.sql"))


def is_supabase(conn: psycopg.Connection) -> bool:
    """A Supabase database has its internal admin role; the shim never creates it."""
    return conn.execute("select exists (select 1 from pg_roles where rolname = 'supabase_admin')").fetchone()[0]


def _bootstrap(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        create schema if not exists supabase_migrations;
        create table if not exists supabase_migrations.schema_migrations (
          version text primary key, statements text[], name text);
        -- LUNA's own bookkeeping: content checksums, so an edited migration is caught.
        create table if not exists supabase_migrations.luna_checksums (
          version text primary key, checksum text not null, applied_at timestamptz not null default now());
        create table if not exists supabase_migrations.luna_repeatables (
          path text primary key, checksum text not null, applied_at timestamptz not null default now());
        """
    )


def _applied(conn) -> tuple[set[str], dict[str, str], dict[str, str]]:
    versions = {r[0] for r in conn.execute("select version from supabase_migrations.schema_migrations")}
    sums = dict(conn.execute("select version, checksum from supabase_migrations.luna_checksums").fetchall())
    reps = dict(conn.execute("select path, checksum from supabase_migrations.luna_repeatables").fetchall())
    return versions, sums, reps


def plan(conn: psycopg.Connection, root: Path = ROOT) -> Plan:
    """What `migrate` would apply. Raises MigrationError for an applied migration that was edited."""
    _bootstrap(conn)
    versions, sums, reps = _applied(conn)
    result = Plan()
    if not is_supabase(conn):
        result.shim = [p for p in shim_files(root) if reps.get(_rel(p, root)) != checksum(p)]
    for path in migration_files(root):
        version = MIGRATION_RE.match(path.name).group(1)
        if version in versions:
            if version in sums and sums[version] != checksum(path):
                raise MigrationError(
                    f"{_rel(path, root)} was already applied and has been edited since. Applied migrations "
                    "are immutable: revert the edit and put the change in a new migration "
                    "(or run `luna db reset` on a development database)."
                )
            continue
        result.migrations.append(path)
    # a migration (ours or pushed by the Supabase CLI) may have dropped or altered what they define
    everything = reps.get(MIGRATIONS_SEEN) != _versions_digest(versions, result.migrations)
    result.repeatables = [p for p in repeatable_files(root) if everything or reps.get(_rel(p, root)) != checksum(p)]
    return result


def _versions_digest(applied: set[str], pending: list[Path]) -> str:
    """The migration versions applied once `pending` is: what the repeatables are applied after."""
    after = applied | {MIGRATION_RE.match(p.name).group(1) for p in pending}
    return hashlib.sha256("\n".join(sorted(after)).encode()).hexdigest()


def _forget_gone_repeatables(conn: psycopg.Connection, root: Path) -> list[str]:
    """Bookkeeping rows of repeatable files that no longer exist (split, renamed, deleted)."""
    present = [_rel(p, root) for p in repeatable_files(root) + shim_files(root)] + [MIGRATIONS_SEEN]
    rows = conn.execute("delete from supabase_migrations.luna_repeatables where not (path = any(%s)) returning path",
                        (present,)).fetchall()
    return [r[0] for r in rows]


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _line_of(sql: str, position: int | None) -> int | None:
    if not position:
        return None
    return sql.count("\n", 0, position - 1) + 1


def apply_file(conn: psycopg.Connection, path: Path, root: Path, kind: str) -> None:
    sql = path.read_text(encoding="utf-8")
    try:
        with conn.transaction():
            conn.execute(sql)
            rel = _rel(path, root)
            if kind == "migration":
                m = MIGRATION_RE.match(path.name)
                conn.execute(
                    "insert into supabase_migrations.schema_migrations (version, statements, name) "
                    "values (%s, %s, %s)",
                    (m.group(1), [sql], m.group(2)),
                )
                conn.execute(
                    "insert into supabase_migrations.luna_checksums (version, checksum) values (%s, %s)",
                    (m.group(1), checksum(path)),
                )
            else:
                conn.execute(
                    "insert into supabase_migrations.luna_repeatables (path, checksum) values (%s, %s) "
                    "on conflict (path) do update set checksum = excluded.checksum, applied_at = now()",
                    (rel, checksum(path)),
                )
    except psycopg.Error as exc:
        diag = exc.diag
        line = _line_of(sql, int(diag.statement_position) if diag.statement_position else None)
        where = f"{_rel(path, root)}:{line}" if line else _rel(path, root)
        detail = f"\n  context: {diag.context.strip()}" if diag.context else ""
        raise MigrationError(f"{where}: {diag.sqlstate} {diag.message_primary}{detail}") from exc


def migrate(url: str, root: Path = ROOT, progress=None) -> Plan:
    """Apply everything pending. Returns what was applied (empty when already current)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            todo = plan(conn, root)
            for kind, files in (("shim", todo.shim), ("migration", todo.migrations), ("repeatable", todo.repeatables)):
                for path in files:
                    if progress:
                        progress(kind, path)
                    apply_file(conn, path, root, kind)
            versions, _, reps = _applied(conn)
            digest = _versions_digest(versions, [])
            if reps.get(MIGRATIONS_SEEN) != digest:
                conn.execute(
                    "insert into supabase_migrations.luna_repeatables (path, checksum) values (%s, %s) "
                    "on conflict (path) do update set checksum = excluded.checksum, applied_at = now()",
                    (MIGRATIONS_SEEN, digest))
            _forget_gone_repeatables(conn, root)
            return todo
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))


def status(url: str, root: Path = ROOT) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            todo = plan(conn, root)
            error = None
        except MigrationError as exc:
            todo, error = None, str(exc)
        versions, _, _ = _applied(conn)
        return {
            "supabase": is_supabase(conn),
            "applied": sorted(versions),
            "pending_migrations": [p.name for p in todo.migrations] if todo else [],
            "pending_repeatables": [_rel(p, root) for p in todo.repeatables] if todo else [],
            "pending_shim": [p.name for p in todo.shim] if todo else [],
            "current": bool(todo and todo.empty),
            "error": error,
        }


def seed(url: str, root: Path = ROOT) -> list[Path]:
    """Load the demo data. Seed files are idempotent (on conflict do nothing / update)."""
    files = seed_files(root)
    with psycopg.connect(url, autocommit=True) as conn:
        for path in files:
            sql = path.read_text(encoding="utf-8")
            try:
                with conn.transaction():
                    conn.execute(sql)
            except psycopg.Error as exc:
                line = _line_of(sql, int(exc.diag.statement_position) if exc.diag.statement_position else None)
                raise MigrationError(f"{_rel(path, root)}:{line or '?'}: {exc.diag.message_primary}") from exc
    return files
