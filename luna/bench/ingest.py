"""`luna bench ingest`: a generated CSV (100,000 rows; --quick 5,000; --rows N) through the bulk path:
decode, normalise (cached per distinct value), COPY into staging, one set-based upsert.

Baseline, measured in the same run on the same file: Postgres's own `COPY ... (format csv)` of the
raw rows into an unlogged table of text columns (no cleaning, no dedupe). peak_rss_mb is the
importing process's high-water mark; peak_rss_workers_mb the largest normalising pool process."""

from __future__ import annotations

import os
import random
import resource
import tempfile
import time

from . import bench, scratch_database

CITIES = ["İstanbul", "Ankara", "İzmir", "Bursa", "Antalya", "Konya", "Adana", "Gaziantep", "Kayseri", "Eskişehir"]
SECTORS = ["Diş Kliniği", "Estetik", "Otel", "Mobilya", "Yazılım", "E-Ticaret", "Lojistik", "İnşaat", "Gıda", "Tekstil"]
FREE = ["gmail.com", "hotmail.com", "yandex.com"]


def write_csv(path: str, n: int, seed: int = 7, dup_rate: float = 0.02, bad_rate: float = 0.01) -> None:
    """A realistic export: Turkish headers and names, mixed phone formats, some duplicates and bad rows."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("Firma Adı,Ad Soyad,E-posta,Telefon,Web Sitesi,Şehir,utm_source,utm_campaign\n")
        for i in range(n):
            j = rng.randrange(i) if i and rng.random() < dup_rate else i
            company = f"{rng.choice(SECTORS)} {j} Ltd. Şti."
            domain = f"firma{j}.com.tr"
            phone = rng.choice([f"0532 {j % 1000:03d} {j // 1000 % 100:02d} {j % 97:02d}",
                                f"+90 (212) {j % 1000:03d} {j // 1000 % 100:02d} {j % 89:02d}",
                                f"0544{j % 10_000_000:07d}"])
            email = f"info@{domain}" if rng.random() < 0.7 else f"kisi{j}@{rng.choice(FREE)}"
            website = f"https://www.{domain}/" if rng.random() < 0.8 else ""
            if rng.random() < bad_rate:
                email = "bozuk-adres@"
            fh.write(f'"{company}",Kişi {j},{email},{phone},{website},{rng.choice(CITIES)},google,"kampanya, kasım"\n')


@bench("ingest")
def run(quick: bool = False, rows: int | None = None) -> dict:
    """Bulk CSV ingest (normalise + upsert): leads_per_s for 100,000 rows (--rows N), peak memory."""
    import psycopg
    from psycopg.rows import dict_row

    from luna.lead_import import file_chunks, import_csv

    n = rows or (5_000 if quick else 100_000)
    tmp = tempfile.mkdtemp(prefix="luna-bench-ingest-")
    path = os.path.join(tmp, "leads.csv")
    write_csv(path, n)
    size = os.path.getsize(path)
    with scratch_database("ingest") as url:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            tenant = str(conn.execute("select id from tenants where slug = 'demo-2'").fetchone()["id"])
            started = time.perf_counter()
            first = import_csv(conn, tenant, file_chunks(path))
            elapsed = time.perf_counter() - started
            started2 = time.perf_counter()
            second = import_csv(conn, tenant, file_chunks(path))
            elapsed2 = time.perf_counter() - started2
            total = conn.execute("select count(*) as n from leads where tenant_id = %s and source = 'csv'",
                                 (tenant,)).fetchone()["n"]
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            peak_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            baseline = _bare_copy(conn, path)
    os.remove(path)
    return {"bench": "ingest",
            "figures": {"leads_per_s": round(n / elapsed, 1), "elapsed_s": round(elapsed, 2),
                        "reupload_leads_per_s": round(n / elapsed2, 1), **first.timings,
                        "copy_rows_per_s": round(n / baseline, 1),
                        "ratio": round((n / elapsed) / (n / baseline), 4),
                        "peak_rss_mb": round(peak, 1), "peak_rss_workers_mb": round(peak_workers, 1)},
            "conditions": {"rows": n, "file_mb": round(size / 1e6, 1), "inserted": first.inserted,
                           "merged": first.merged, "duplicates": first.duplicates, "rejected": first.rejected,
                           "warnings": len(first.warnings),
                           "reupload_inserted": second.inserted, "leads_in_db": total,
                           "path": "decode + csv parse (main process), normalise on a process pool (one per core) producing COPY text -> COPY into private.lead_staging -> one set-based upsert (private.ingest_staged)",
                           "machine": f"{os.cpu_count()} cores shared with other engineers' runs",
                           "database": "embedded PostgreSQL (same host)" }}


def _bare_copy(conn, path: str) -> float:
    """Seconds for the bare operation underneath: COPY of the raw CSV into an unlogged text table."""
    conn.execute("drop table if exists bench_bare_copy")
    conn.execute("create unlogged table bench_bare_copy (a text, b text, c text, d text, e text, f text, g text, h text)")
    started = time.perf_counter()
    with conn.cursor() as cur:
        with cur.copy("copy bench_bare_copy from stdin (format csv, header true)") as copy:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    copy.write(chunk)
    elapsed = time.perf_counter() - started
    conn.execute("drop table bench_bare_copy")
    return elapsed
