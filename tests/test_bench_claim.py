"""`luna bench claim --peers`: a peer that cannot be installed or run is reported with the reason, and the
others are still measured (the bench never crashes on a peer)."""

from __future__ import annotations

from luna.bench import claim


def test_a_peer_that_cannot_run_says_why_and_the_others_still_count(db_url, monkeypatch):
    databases = []

    async def missing(url, total, workers, batch):
        raise ImportError("No module named 'pgqueuer'", name="pgqueuer")

    async def fine(url, total, workers, batch):
        databases.append(url)
        return 2.0, total, {"workers": f"{workers} workers"}

    monkeypatch.setattr(claim, "_pgqueuer", missing)
    monkeypatch.setattr(claim, "_procrastinate", fine)
    figures, conditions = claim._peers(100, 4, 10, luna_jobs_per_s=1000.0)
    assert figures["pgqueuer"] == {"error": "not installed (pgqueuer): pip install -e '.[bench]'"}
    assert figures["procrastinate"] == {"jobs_per_s": 50, "seconds": 2.0, "succeeded": 100, "luna_ratio": 20.0}
    assert conditions == {"procrastinate": {"workers": "4 workers"}}
    assert databases and databases[0].split("?")[0].endswith("/luna_bench_peer_procrastinate")

    async def broken(url, total, workers, batch):
        raise RuntimeError("worker crashed")

    monkeypatch.setattr(claim, "_procrastinate", broken)
    figures, _ = claim._peers(100, 4, 10, luna_jobs_per_s=1000.0)
    assert figures["procrastinate"] == {"error": "RuntimeError: worker crashed"}
