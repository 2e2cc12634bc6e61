"""Benchmarks (`luna bench <name>`). Each module registers functions with @bench("name"); a bench
returns {"bench": name, "figures": {...}, "conditions": {...}}. They are never timing tests."""

from __future__ import annotations

import importlib
import pkgutil
import statistics
from contextlib import contextmanager
from typing import Callable

BENCHES: dict[str, Callable[..., dict]] = {}


def bench(name: str):
    def register(fn):
        BENCHES[name] = fn
        return fn

    return register


def discover() -> None:
    import luna.bench as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"luna.bench.{info.name}")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def scratch_database(name: str):
    """A fresh, migrated database for one benchmark run, dropped afterwards (same server)."""
    import psycopg

    from luna import migrate
    from luna.db import database_url
    from luna.embedded import with_database

    base = database_url()
    db = f"luna_bench_{name}"
    admin = with_database(base, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {db} with (force)")
        conn.execute(f"create database {db}")
    url = with_database(base, db)
    try:
        migrate.migrate(url)
        migrate.seed(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"drop database if exists {db} with (force)")
