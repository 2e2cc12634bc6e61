"""The worker's and edge's database API is SQL functions (README, issue 11 item 6): no SQL string in
worker/ or edge/ writes a table itself (insert / update / delete / merge / truncate / copy ... from);
each write is a function in functions/*.sql that holds its rule, granted beside it."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRITE = re.compile(r"\b(insert\s+into|update\s+[a-z_]+\.[a-z_]+\s+set|update\s+[a-z_]+\s+set|delete\s+from|"
                   r"merge\s+into|truncate\s|copy\s+[a-z_.]+\s*(\([^)]*\))?\s*from)", re.I)
# The claim loop's own housekeeping of finished schedule ticks (worker/runner.py, the queue protocol's
# owner, issue 11 item 2) moves with the lease functions; no other file may join this set.
KNOWN = {"worker/runner.py"}


def _sql_literals(path: Path):
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value for v in node.values if isinstance(v, ast.Constant))


def _writes(paths) -> list[str]:
    bad = set()  # an f-string's parts are visited as well as the f-string: one entry per line
    for path in paths:
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
        for line, text in _sql_literals(path):
            if WRITE.search(text) and rel not in KNOWN:
                bad.add(f"{rel}:{line}")
    return sorted(bad)


def test_worker_and_edge_write_tables_only_through_sql_functions():
    assert _writes(sorted((ROOT / "worker").rglob("*.py")) + sorted((ROOT / "edge").rglob("*.py"))) == []


def test_the_check_catches_a_direct_write(tmp_path):
    """The check can fail: the statements it is there to refuse are found."""
    probe = tmp_path / "direct_write.py"
    probe.write_text('SQL = "update public.ad_accounts set last_synced_at = now() where id = %s"\n'
                     'MORE = f"insert into private.lead_webhooks (provider) values ({1})"\n'
                     'READ = "select * from private.lead_webhooks where status = \'received\'"\n')
    assert _writes([probe]) == ["direct_write.py:1", "direct_write.py:2"]


def test_the_known_exceptions_are_still_needed():
    stale = [rel for rel in KNOWN if not any(WRITE.search(t) for _, t in _sql_literals(ROOT / rel))]
    assert stale == []
