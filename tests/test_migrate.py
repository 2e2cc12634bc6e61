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


def test_repeatables_run_foundation_first_then_areas_by_topic(project_copy):
    """functions/*.sql, then functions/<area>/<topic>.sql by area and topic, then sql/ alike."""
    for rel in ("functions/zz_last.sql", "functions/aa_area/b.sql", "functions/aa_area/a.sql", "sql/zz_area/v.sql"):
        (project_copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (project_copy / rel).write_text("select 1;")
    order = [str(p.relative_to(project_copy)) for p in migrate.repeatable_files(project_copy)]
    top = [p for p in order if p.startswith("functions/") and p.count("/") == 1]
    assert order.index("functions/zz_last.sql") < order.index("functions/aa_area/a.sql") < order.index("functions/aa_area/b.sql")
    assert order[:len(top)] == top and top == sorted(top)
    assert order.index("functions/aa_area/b.sql") < order.index("sql/crm.sql") < order.index("sql/zz_area/v.sql")


def test_moved_repeatable_is_a_new_file_not_changed_history(fresh_url, project_copy):
    """A repeatable file split or renamed: the new paths are applied, the old row is forgotten."""
    migrate.migrate(fresh_url, root=project_copy)
    (project_copy / "sql" / "zz_probe.sql").write_text("create or replace view public.zz_probe as select 1 as v;")
    migrate.migrate(fresh_url, root=project_copy)
    (project_copy / "sql" / "zz").mkdir()
    (project_copy / "sql" / "zz_probe.sql").rename(project_copy / "sql" / "zz" / "probe.sql")
    applied = migrate.migrate(fresh_url, root=project_copy)
    assert [str(p.relative_to(project_copy)) for p in applied.repeatables] == ["sql/zz/probe.sql"]
    assert migrate.status(fresh_url, root=project_copy)["current"]
    with psycopg.connect(fresh_url) as c:
        paths = [r[0] for r in c.execute("select path from supabase_migrations.luna_repeatables")]
    assert "sql/zz/probe.sql" in paths and "sql/zz_probe.sql" not in paths


DROP_PAGE = "drop function public.crm_board_page(uuid, uuid, text, jsonb, int);"


def _board_page_exists(url) -> bool:
    with psycopg.connect(url) as c:
        return c.execute("select to_regprocedure('public.crm_board_page(uuid, uuid, text, jsonb, int)')").fetchone()[0] is not None


def test_a_migration_reapplies_every_repeatable(fresh_url, project_copy):
    """A migration may drop what a repeatable file defines: the same run creates it again."""
    migrate.migrate(fresh_url, root=project_copy)
    (project_copy / "migrations" / "29991231000000_drop.sql").write_text(DROP_PAGE)
    applied = migrate.migrate(fresh_url, root=project_copy)
    assert applied.migrations and len(applied.repeatables) == len(migrate.repeatable_files(project_copy))
    assert _board_page_exists(fresh_url)
    assert migrate.migrate(fresh_url, root=project_copy).empty


def test_a_migration_pushed_by_the_supabase_cli_reapplies_every_repeatable(fresh_url, project_copy):
    """`supabase db push` runs migrations only; the next `luna db migrate` re-applies the repeatables."""
    migrate.migrate(fresh_url, root=project_copy)
    (project_copy / "migrations" / "29991231000000_drop.sql").write_text(DROP_PAGE)
    with psycopg.connect(fresh_url) as c:  # what the CLI does: run the file, record its version
        c.execute(DROP_PAGE)
        c.execute("insert into supabase_migrations.schema_migrations (version, statements, name) "
                  "values ('29991231000000', %s, 'drop')", ([DROP_PAGE],))
    assert not migrate.status(fresh_url, root=project_copy)["current"]
    applied = migrate.migrate(fresh_url, root=project_copy)
    assert not applied.migrations and len(applied.repeatables) == len(migrate.repeatable_files(project_copy))
    assert _board_page_exists(fresh_url)
    assert migrate.migrate(fresh_url, root=project_copy).empty
