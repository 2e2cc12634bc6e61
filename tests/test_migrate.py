"""The migration runner: idempotent, refuses edited migrations, names file and line on failure."""

import shutil
import threading
import uuid

import psycopg
import pytest

from luna import ROOT, migrate


@pytest.fixture
def fresh_url(pg_url):
    name = f"m_{uuid.uuid4().hex[:10]}"
    from luna.embedded import with_database

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f"create database {name}")
    yield with_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f"drop database {name} with (force)")


@pytest.fixture
def project_copy(tmp_path):
    for d in ("migrations", "functions", "sql", "seed", "supabase/shim"):
        if (ROOT / d).exists():
            shutil.copytree(ROOT / d, tmp_path / d)
        else:
            (tmp_path / d).mkdir(parents=True)
    return tmp_path


def test_second_migrate_is_a_noop(db_url):
    status = migrate.status(db_url)
    assert status["current"] and status["applied"]
    again = migrate.migrate(db_url)
    assert again.empty


def test_edited_applied_migration_is_refused(fresh_url, project_copy):
    migrate.migrate(fresh_url, root=project_copy)
    first = sorted((project_copy / "migrations").glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(migrate.MigrationError, match="already applied and has been edited"):
        migrate.migrate(fresh_url, root=project_copy)
    assert "edited" in migrate.status(fresh_url, root=project_copy)["error"]


def test_repeatable_reapplied_when_changed(fresh_url, project_copy):
    migrate.migrate(fresh_url, root=project_copy)
    (project_copy / "sql" / "zz_probe.sql").write_text("create or replace view public.zz_probe as select 1 as v;")
    applied = migrate.migrate(fresh_url, root=project_copy)
    assert [p.name for p in applied.repeatables] == ["zz_probe.sql"] and not applied.migrations
    (project_copy / "sql" / "zz_probe.sql").write_text("create or replace view public.zz_probe as select 1 as v, 2 as w;")
    assert [p.name for p in migrate.migrate(fresh_url, root=project_copy).repeatables] == ["zz_probe.sql"]
    with psycopg.connect(fresh_url) as c:
        assert c.execute("select w from public.zz_probe").fetchone()[0] == 2


def test_failure_names_file_and_line_and_rolls_back(fresh_url, project_copy):
    migrate.migrate(fresh_url, root=project_copy)
    bad = project_copy / "migrations" / "29991231000000_broken.sql"
    bad.write_text("create table public.half_done (id int);\n\n-- the typo:\nselect * from no_such_table;\n")
    with pytest.raises(migrate.MigrationError) as err:
        migrate.migrate(fresh_url, root=project_copy)
    assert "migrations/29991231000000_broken.sql:4" in str(err.value) and "no_such_table" in str(err.value)
    with psycopg.connect(fresh_url) as c:  # one transaction per file: nothing of it remains
        assert c.execute("select to_regclass('public.half_done')").fetchone()[0] is None
        assert c.execute("select count(*) from supabase_migrations.schema_migrations where version = '29991231000000'").fetchone()[0] == 0


def test_concurrent_migrators_do_not_interleave(fresh_url):
    results, errors = [], []

    def run():
        try:
            results.append(migrate.migrate(fresh_url))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(1 for r in results if r.migrations) == 1  # exactly one applied, the others found it done
    assert migrate.status(fresh_url)["current"]


def test_history_is_the_supabase_cli_table(db_url):
    with psycopg.connect(db_url) as c:
        rows = c.execute("select version, name, statements from supabase_migrations.schema_migrations order by version").fetchall()
    names = [p.name for p in migrate.migration_files()]
    assert [f"{v}_{n}.sql" for v, n, _ in rows] == names
    assert all(s and s[0] for _, _, s in rows)
