"""Repeatable SQL reads as one chapter per topic (issue 11, item 5).

- no `drop function` in a repeatable file (a signature change's drop is history: a migration);
- no `to_regclass` / `to_regprocedure` guard: every area is always installed, so SQL names its tables
  and functions directly (dynamic SQL only where the statement itself is built, as merge_customers'
  foreign-key rewrite);
- in functions/<area>/<topic>.sql every grant or revoke names one function, defined in the same file
  before it (the grant beside its function), and blanket `on all functions in schema` statements are
  not used (execution is denied by default; each function is granted by name).
"""

import re
from pathlib import Path

from luna import migrate

ROOT = Path(__file__).resolve().parent.parent
BODY = re.compile(r"\$([A-Za-z_]\w*)?\$.*?\$\1\$", re.S)
COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
STRING = re.compile(r"'(?:[^']|'')*'")
FUNC = re.compile(r"^create\s+(?:or\s+replace\s+)?(?:function|procedure)\s+([\w.]+)\s*\(", re.I)
GRANT = re.compile(r"^(?:grant|revoke)\s+\w+\s+on\s+(function|functions|routine|procedure)\s+(.*?)\s+(?:to|from)\s", re.I | re.S)


def statements(path: Path) -> list[str]:
    """Top-level statements, with bodies, strings and comments blanked (enough for these checks)."""
    text = BODY.sub("$$ $$", path.read_text(encoding="utf-8"))
    text = COMMENT.sub(" ", text)
    text = STRING.sub("''", text)
    return [" ".join(s.split()) for s in text.split(";") if s.strip()]


def test_no_drop_function_and_no_installed_guards_in_repeatables():
    bad = []
    for path in migrate.repeatable_files(ROOT):
        rel = path.relative_to(ROOT)
        raw = COMMENT.sub(" ", path.read_text(encoding="utf-8"))
        for stmt in statements(path):
            if re.match(r"drop\s+function\b", stmt, re.I):
                bad.append(f"{rel}: {stmt[:70]}")
        # A guard names a fixed object ("is the customers table there?"); a name computed at run time
        # (the queue generator looking for a queue's optional hooks) is a lookup, not a guard.
        for m in re.finditer(r"\bto_reg(?:class|procedure|proc|type)\s*\(\s*'", raw):
            bad.append(f"{rel}: {m.group(0)} at line {raw.count(chr(10), 0, m.start()) + 1}")
    assert bad == []


def test_each_grant_stands_beside_its_function():
    chapters = [p for p in migrate.repeatable_files(ROOT) if p.parent.parent.name in ("functions", "sql")
                and p.parent.name not in ("functions", "sql")]
    assert len(chapters) > 20, "the areas are split into topic files"
    bad = []
    for path in chapters:
        rel = path.relative_to(ROOT)
        defined: set[str] = set()
        for stmt in statements(path):
            if m := FUNC.match(stmt):
                defined.add(m.group(1).lower())
            elif m := GRANT.match(stmt):
                kind, objects = m.groups()
                names = [o.split("(")[0].strip().lower() for o in re.split(r",\s*(?![^()]*\))", objects)]
                if kind.lower() == "functions" or len(names) != 1:
                    bad.append(f"{rel}: one function per grant: {stmt[:80]}")
                elif names[0] not in defined:
                    bad.append(f"{rel}: grant before (or away from) its function: {stmt[:80]}")
    assert bad == []
