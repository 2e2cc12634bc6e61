"""A few of Supabase's database linter (splinter) rules, checked on our schema."""


def test_security_definer_functions_pin_search_path(conn):
    rows = conn.execute("""
        select n.nspname || '.' || p.proname as fn, p.proconfig
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where p.prosecdef and n.nspname in ('public', 'private', 'audit')""").fetchall()
    assert rows, "expected some security definer functions"
    bad = [r["fn"] for r in rows if not any(c in ("search_path=", 'search_path=""') for c in (r["proconfig"] or []))]
    assert bad == []


def test_security_definer_functions_not_executable_by_anon(conn):
    rows = conn.execute("""
        select n.nspname || '.' || p.proname as fn
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where p.prosecdef and n.nspname in ('public', 'private', 'audit')
          and has_function_privilege('anon', p.oid, 'execute')""").fetchall()
    assert [r["fn"] for r in rows] == []


def test_no_extensions_in_public(conn):
    rows = conn.execute("""select e.extname from pg_extension e join pg_namespace n on n.oid = e.extnamespace
                           where n.nspname = 'public'""").fetchall()
    assert rows == []


def test_foreign_keys_are_indexed(conn):
    """splinter 0001 unindexed_foreign_keys: every FK's columns lead some index."""
    rows = conn.execute("""
        select c.conrelid::regclass::text as tbl, c.conname
        from pg_constraint c join pg_namespace n on n.oid = (select relnamespace from pg_class where oid = c.conrelid)
        where c.contype = 'f' and n.nspname = 'public'
          and not exists (
            select 1 from pg_index i
            where i.indrelid = c.conrelid
              and (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)""").fetchall()
    assert [f"{r['tbl']}.{r['conname']}" for r in rows] == []
