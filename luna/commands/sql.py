"""`luna sql [--as USER [--tenant T]] [psql arguments]`: psql on the database in use, optionally as a user.

With `--as`, the session runs the way PostgREST runs a request of that user: role `authenticated` and the
user's access-token claims (from the same custom access token hook Supabase Auth calls) in
`request.jwt.claims`, so `auth.uid()`, `private.tenant_id()`, every RLS policy and every RPC's checks apply.
The settings travel as libpq startup options (PGOPTIONS), so they hold for an interactive session and for
`-c`, `-f` alike. Everything after the options goes to psql unchanged (`-c "select ..."`, `-At`, `-f file`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

import typer


def sql(ctx: typer.Context,
        as_user: Optional[str] = typer.Option(None, "--as", metavar="USER",
                                              help="e-mail or id of the user to act as (role authenticated, "
                                                   "that user's JWT claims), as PostgREST would"),
        tenant: Optional[str] = typer.Option(None, "--tenant", help="with --as: the active tenant (slug or id; "
                                                                    "default: the user's own)")):
    """Open psql on the database in use; with --as USER, as that user under RLS. Other arguments go to psql,
    e.g. luna sql --as agent@demo.luna.local -c "select public.crm_board(...)"."""
    from luna import tokens
    from luna.db import connect, database_url

    psql = shutil.which("psql")
    if psql is None:
        raise LookupError("psql is not installed (Debian/Ubuntu: apt-get install postgresql-client; "
                          "macOS: brew install libpq)")
    if tenant and not as_user:
        raise ValueError("--tenant chooses the active tenant of the user given with --as")
    url = database_url()
    env = dict(os.environ, PGAPPNAME=f"luna sql{' as ' + as_user if as_user else ''}")
    if as_user:
        with connect(url) as conn:
            user_claims = tokens.claims(conn, as_user, tenant)
        if not user_claims.get("tenant_id"):
            raise LookupError(f"{as_user} is an active member of no tenant")
        env["PGOPTIONS"] = " ".join(filter(None, [os.environ.get("PGOPTIONS", ""), tokens.pg_options(user_claims)]))
    # psql stays a child: an embedded server this process started lives as long as the session.
    proc = subprocess.run([psql, f"--dbname={url}", "--set=ON_ERROR_STOP=1", "--set=SHOW_CONTEXT=never", *ctx.args], env=env)
    raise typer.Exit(proc.returncode)


def register(app: typer.Typer) -> None:
    app.command("sql", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(sql)
