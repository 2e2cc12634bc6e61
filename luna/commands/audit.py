"""Audit chain commands: `luna audit anchor` and `luna audit verify [--tenant T]`.

The chain in audit.events proves the events are consistent with each other; it cannot prove that nobody
with database superuser rights deleted its newest events (truncation) or rewrote an event and recomputed
every later hash (a rewrite). Anchors close that: `luna audit anchor` (also the worker's `audit.anchor`
schedule) appends each tenant's chain head -- last seq, event id and hash -- to a file outside the
database, each line signed with HMAC-SHA256 under LUNA_AUDIT_ANCHOR_KEY (an environment key the database
never sees) and linked to the tenant's previous anchor. `verify` checks the chain itself (audit.verify)
and every anchor: a head older than an anchor is a truncation, a different hash at an anchored position is
a rewrite, a line whose signature does not match is a forged or edited anchor.

The anchor file: LUNA_AUDIT_ANCHOR_FILE, default <data dir>/audit-anchors.jsonl (appended, fsynced, never
rewritten; keep it on storage the database administrator cannot write, or copy it off-host).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

KEY_ENV = "LUNA_AUDIT_ANCHOR_KEY"
FILE_ENV = "LUNA_AUDIT_ANCHOR_FILE"
SIGNED = ("tenant_id", "seq", "event_id", "hash", "anchored_at", "prev")


class AnchorError(ValueError):
    pass


def anchor_key() -> bytes:
    key = os.environ.get(KEY_ENV, "")
    if len(key) < 16:
        raise AnchorError(f"set {KEY_ENV} (at least 16 characters; keep it out of the database) to sign audit anchors")
    return key.encode()


def anchor_path() -> Path:
    given = os.environ.get(FILE_ENV)
    if given:
        return Path(given)
    from luna.settings import get_settings

    return Path(get_settings().data_dir) / "audit-anchors.jsonl"


def _sign(key: bytes, record: dict) -> str:
    body = json.dumps({k: record.get(k) for k in SIGNED}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def read_anchors(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                record = {"line": n, "malformed": True}
            record["line"] = n
            out.append(record)
    return out


def anchor(conn, key: bytes | None = None, path: Path | None = None) -> list[dict]:
    """Append every tenant's current chain head (skipping heads already anchored). Returns the new lines."""
    key = key or anchor_key()
    path = path or anchor_path()
    last: dict[str, dict] = {}
    for a in read_anchors(path):
        if not a.get("malformed"):
            last[a["tenant_id"]] = a
    heads = conn.execute("""
        select distinct on (tenant_id) tenant_id::text as tenant_id, seq, id as event_id, hash
        from audit.events where tenant_id is not null order by tenant_id, seq desc""").fetchall()
    now = datetime.now(timezone.utc).isoformat()
    new = []
    for h in heads:
        prev = last.get(h["tenant_id"])
        if prev and prev["seq"] == h["seq"] and prev["hash"] == h["hash"]:
            continue
        record = {"tenant_id": h["tenant_id"], "seq": h["seq"], "event_id": h["event_id"], "hash": h["hash"],
                  "anchored_at": now, "prev": prev["sig"] if prev else None}
        record["sig"] = _sign(key, record)
        new.append(record)
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, "".join(json.dumps(r, sort_keys=True) + "\n" for r in new).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return new


def verify(conn, tenant: str | None = None, key: bytes | None = None, path: Path | None = None) -> dict:
    """The chain's own problems (audit.verify) plus truncation, rewrites and forged anchors."""
    problems = [{"tenant_id": str(p["tenant_id"]), "seq": p["seq"], "event_id": p["event_id"], "problem": p["problem"]}
                for p in conn.execute("select * from audit.verify(%s)", (tenant,)).fetchall()]
    anchors = read_anchors(path or anchor_path())
    checked = 0
    if anchors:
        key = key or anchor_key()
        heads = {str(r["tenant_id"]): r for r in conn.execute(
            "select tenant_id, max(seq) as seq from audit.events where %s::uuid is null or tenant_id = %s "
            "group by tenant_id", (tenant, tenant)).fetchall()}
        prev_sig: dict[str, str | None] = {}
        for a in anchors:
            if a.get("malformed"):
                problems.append({"tenant_id": None, "seq": None, "event_id": None,
                                 "problem": f"anchor: line {a['line']} of the anchor file is not JSON"})
                continue
            tid = a["tenant_id"]
            if tenant and tid != str(tenant):
                continue
            checked += 1
            base = {"tenant_id": tid, "seq": a["seq"], "event_id": a["event_id"]}
            if not hmac.compare_digest(a.get("sig") or "", _sign(key, a)):
                problems.append({**base, "problem": f"anchor forged: line {a['line']} is not signed with this key"})
                continue
            if a.get("prev") != prev_sig.get(tid):
                problems.append({**base, "problem": f"anchor removed: line {a['line']} does not follow the tenant's previous anchor"})
            prev_sig[tid] = a["sig"]
            head = heads.get(tid)
            if head is None or head["seq"] < a["seq"]:
                have = head["seq"] if head else 0
                problems.append({**base, "problem": f"truncated: the chain ends at seq {have}, anchored at seq {a['seq']} "
                                                    f"on {a['anchored_at']} ({a['seq'] - have} event(s) gone)"})
                continue
            row = conn.execute("select hash from audit.events where tenant_id = %s and seq = %s", (tid, a["seq"])).fetchone()
            if row is None or row["hash"] != a["hash"]:
                problems.append({**base, "problem": f"rewritten: the event at anchored seq {a['seq']} has a different hash "
                                                    f"than anchored on {a['anchored_at']}"})
    count = conn.execute("select count(*) as n from audit.events where %s::uuid is null or tenant_id = %s",
                         (tenant, tenant)).fetchone()["n"]
    return {"events": count, "anchors_checked": checked, "ok": not problems, "problems": problems}


def register(app: typer.Typer) -> None:
    # the `audit` group luna/cli.py made (found through `app`: `python -m luna.cli` runs cli as __main__)
    audit_app = next(g.typer_instance for g in app.registered_groups if g.name == "audit")
    cli = sys.modules[audit_app.registered_commands[0].callback.__module__] if audit_app.registered_commands \
        else importlib.import_module("luna.cli")
    # `audit verify` lives here now (it checks the anchors too): replace the chain-only one of luna/cli.py.
    audit_app.registered_commands[:] = [c for c in audit_app.registered_commands
                                        if (c.name or c.callback.__name__) not in ("verify", "audit_verify", "anchor")]

    @audit_app.command("anchor")
    def anchor_cmd():
        """Append each tenant's chain head, HMAC-signed (LUNA_AUDIT_ANCHOR_KEY), to the anchor file."""
        from luna.db import connect

        cli._url()
        with connect() as conn:
            new = anchor(conn)
        print(json.dumps({"anchored": len(new), "file": str(anchor_path()),
                          "tenants": [{"tenant_id": r["tenant_id"], "seq": r["seq"]} for r in new]}, indent=2))

    @audit_app.command("verify")
    def verify_cmd(tenant: Optional[str] = typer.Option(None, "--tenant", help="tenant slug or id (default: all)")):
        """Check the audit hash chain and its anchors: altered, inserted, missing, truncated or rewritten
        events and forged anchors. Exit 1 if any."""
        from luna.db import connect
        from luna.tokens import resolve_tenant

        cli._url()
        with connect() as conn:
            tenant_id = str(resolve_tenant(conn, tenant)) if tenant else None
            result = verify(conn, tenant_id)
        print(json.dumps(result, indent=2, default=str))
        raise typer.Exit(0 if result["ok"] else 1)
