"""Bulk lead import (CSV): decode (UTF-8 with or without BOM, UTF-16, Windows-1254), parse, normalise
each row with luna.normalize (cached per distinct value), COPY the good rows into
private.lead_staging and merge them with ONE set-based call (private.ingest_staged). Bad rows are
reported by their line number in the file (the header is line 1).

Used by `luna ingest csv`, `POST /v1/leads/import` (in a thread) and `luna bench ingest`; it lives in the
core because edge and the CLI share it (edge and the worker never import each other).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from luna.normalize import _phone_plans, accepted_columns, clean_domain, header_columns, iter_text, normalize_values, pick_values, raw_keys

STAGE_COLUMNS = ("batch", "line", "unique_lead_id", "external_id", "company_name", "contact_name", "email", "phone", "website",
                 "domain_cleaned", "city", "country", "utm_source", "utm_medium", "utm_campaign", "utm_content",
                 "utm_term", "email_domain", "raw")
COPY_SQL = f"copy private.lead_staging ({', '.join(STAGE_COLUMNS)}) from stdin"
MAX_ERRORS_KEPT = 10_000


class CsvError(ValueError):
    """The file as a whole cannot be imported (nothing of it is): `code` is machine-readable
    (not_a_csv, unknown_columns), the message says what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class ImportResult:
    rows: int = 0
    inserted: int = 0
    merged: int = 0
    duplicates: int = 0   # kept as possible duplicates for review (same phone, contradicting details)
    rescored: int = 0     # scored leads a merge filled in, sent back to be scored again
    rejected: int = 0
    errors: list[dict] = field(default_factory=list)     # rejected rows: {"line", "reason"}
    warnings: list[dict] = field(default_factory=list)   # imported rows with a value left out: {"line", "reason"}
    timings: dict = field(default_factory=dict)   # seconds per phase (not part of as_dict)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "inserted": self.inserted, "merged": self.merged, "duplicates": self.duplicates,
                "rescored": self.rescored, "rejected": self.rejected, "errors": self.errors,
                "warnings": self.warnings}


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """Split decoded text into lines (keeping line ends, so quoted newlines survive csv)."""
    rest = ""
    for text in texts:
        text = rest + text
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith(("\n", "\r")):
            rest = lines.pop()
        else:
            rest = ""
        yield from lines
    if rest:
        yield rest


class _Dialect(csv.excel):
    # Strict: a quote opened and never closed is an error on its line, not the rest of the file
    # swallowed into one field.
    strict = True


def _looks_binary(sample: str) -> bool:
    """NUL bytes, or more than 1 % control characters besides tab and line ends: a spreadsheet
    (.xlsx is a zip), an image or a database file, not text."""
    if "\x00" in sample:
        return True
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\r\n")
    return controls > len(sample) / 100


def _dialect(sample: str):
    """The delimiter is the one of , ; tab | seen most in the header line (Excel in Turkish locales
    writes ';'). Quoting follows Excel (double quotes, doubled to escape)."""
    header = sample.splitlines()[0] if sample else ""
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    delimiter = max(counts, key=counts.get) if any(counts.values()) else ","
    return type("Detected", (_Dialect,), {"delimiter": delimiter})


def parse(chunks: Iterable[bytes], region: str = "TR", result: ImportResult | None = None,
          progress: Callable[[int], None] | None = None, workers: int | None = None,
          chunk_rows: int = 5000, copy_batch: uuid.UUID | None = None) -> Iterator:
    """Yield staging tuples (without the batch id) for every good row; bad rows go to result.errors.

    The CSV is parsed here; normalisation runs in chunks, on a process pool of `workers` (default:
    the cores, when the file has more than one chunk). With `copy_batch`, yields blocks of COPY text
    (made in the pool, so the main process only forwards them) instead of tuples."""
    result = result if result is not None else ImportResult()
    lines = _lines(iter_text(chunks))
    head: list[str] = []
    for line in lines:
        head.append(line)
        if len(head) >= 5:
            break
    if not head:
        return
    if _looks_binary("".join(head)):
        raise CsvError("not_a_csv", "this is not a CSV text file (it looks binary: a spreadsheet, an archive or an "
                                    "image?). Save it as CSV (UTF-8 or Windows-1254, comma or semicolon separated).")
    dialect = _dialect("".join(head))

    def all_lines():
        yield from head
        yield from lines

    reader = csv.reader(all_lines(), dialect)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    columns = header_columns(header)
    if not any(columns):
        raise CsvError("unknown_columns", f"no column of the header ({', '.join(h for h in header if h) or 'empty'}) "
                                          f"is one LUNA reads. Accepted columns and their aliases: {accepted_columns()}.")
    spec = (region, columns, header, str(copy_batch) if copy_batch else None)

    def raw_chunks():
        items = []
        last = reader.line_num  # a record's line is the first physical line it spans
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                start, last = last + 1, reader.line_num
                if "end of data" in str(exc):
                    _reject(result, start, f"a quoted field opened on line {start} is never closed: lines {start}-"
                                           f"{last} were not imported (close the quote, or remove it)")
                else:
                    _reject(result, start, f"malformed quoting ({exc}): a field that starts with a quote must end "
                                           f"with one, with quotes inside it doubled")
                result.rows += 1
                continue
            start, last = last + 1, reader.line_num
            if not values or not any(v.strip() for v in values):
                continue
            items.append((start, values))
            if len(items) >= chunk_rows:
                yield items
                items = []
        if items:
            yield items

    _phone_plans()  # load the numbering plans once, before the pool forks
    source = raw_chunks()
    first = next(source, None)
    if first is None:
        return
    second = next(source, None)
    jobs = itertools.chain([first], [second] if second else [], source)
    pool = None
    if second is not None and (workers or os.cpu_count() or 1) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import threading

        # fork is cheap but unsafe from a thread of a threaded server (edge runs this in a thread).
        method = "fork" if threading.current_thread() is threading.main_thread() else "forkserver"
        size = workers or os.cpu_count() or 1
        pool = ProcessPoolExecutor(size, mp_context=multiprocessing.get_context(method))
        outputs = _bounded_map(pool, _normalize_chunk, ((spec, items) for items in jobs), window=2 * size)
    else:
        outputs = (_normalize_chunk((spec, items)) for items in jobs)
    try:
        for rows, errors, warnings, count in outputs:
            result.rows += count
            for line, reason in errors:
                _reject(result, line, reason)
            for line, reason in warnings:
                if len(result.warnings) < MAX_ERRORS_KEPT:
                    result.warnings.append({"line": line, "reason": reason})
            if isinstance(rows, str):
                if rows:
                    yield rows
            else:
                yield from rows
            if progress:
                progress(result.rows)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _bounded_map(pool, fn, items, window: int):
    """pool.map in input order, but with at most `window` chunks in flight: Executor.map reads its
    whole input at once, which held the entire file in memory (issue 9, item 8)."""
    import collections

    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _normalize_chunk(args) -> tuple[list[tuple] | str, list[tuple[int, str]], list[tuple[int, str]], int]:
    (region, columns, header, batch), items = args
    width = len(header)
    keys = raw_keys(header)
    dumps = json.dumps
    rows, errors, warnings = [], [], []
    for line, values in items:
        if len(values) > width and any(v.strip() for v in values[width:]):
            errors.append((line, f"{len(values)} fields where the header has {width} (unquoted comma?)"))
            continue
        lead, issues = normalize_values(pick_values(columns, values), region)
        if lead is None:
            errors.append((line, "; ".join(issues)))
            continue
        if issues:
            warnings.append((line, "; ".join(issues) + " (left out; kept in raw)"))
        raw = {keys[i]: v for i, v in enumerate(values[:width]) if v}
        rows.append((line, lead.get("unique_lead_id"), lead.get("external_id"), lead.get("company_name"), lead.get("contact_name"),
                     lead.get("email"), lead.get("phone"), lead.get("website"), lead.get("domain_cleaned"),
                     lead.get("city"), lead.get("country"), lead.get("utm_source"), lead.get("utm_medium"),
                     lead.get("utm_campaign"), lead.get("utm_content"), lead.get("utm_term"),
                     # the e-mail's domain only matters when the website names none
                     clean_domain(lead["email"].rsplit("@", 1)[1]) if lead.get("email") and not lead["domain_cleaned"] else None,
                     dumps(raw, ensure_ascii=False)))
    if batch is not None:
        return "".join(_copy_line(batch, row) for row in rows), errors, warnings, len(items)
    return rows, errors, warnings, len(items)


_COPY_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_line(batch: str, row: tuple) -> str:
    """One row in COPY's text format (\\N for null, backslash escapes)."""
    fields = [batch, str(row[0])]
    for value in row[1:]:
        if value is None:
            fields.append("\\N")
        else:
            value = str(value)
            fields.append(value if value.isprintable() and "\\" not in value else value.translate(_COPY_ESCAPE))
    return "\t".join(fields) + "\n"


def _reject(result: ImportResult, line: int, reason: str) -> None:
    result.rejected += 1
    if len(result.errors) < MAX_ERRORS_KEPT:
        result.errors.append({"line": line, "reason": reason})


def tenant_region(conn, tenant: str) -> str:
    row = conn.execute("select default_region from public.tenants where id = %s", (tenant,)).fetchone()
    if row is None:
        raise LookupError(f"no tenant {tenant}")
    return row["default_region"] if isinstance(row, dict) else row[0]


def import_csv(conn, tenant: str, chunks: Iterable[bytes], source: str = "csv",
               progress: Callable[[int], None] | None = None) -> ImportResult:
    """Synchronous import over a psycopg connection (CLI, bench)."""
    result = ImportResult()
    region = tenant_region(conn, tenant)
    batch = uuid.uuid4()
    started = time.perf_counter()
    with conn.transaction():
        with conn.cursor() as cur:
            with cur.copy(COPY_SQL) as copy:
                for block in parse(chunks, region, result, progress, copy_batch=batch):
                    copy.write(block)
            staged = time.perf_counter()
            counts = cur.execute("select * from private.ingest_staged(%s, %s, %s)", (batch, tenant, source)).fetchone()
    result.timings = {"parse_normalise_copy_s": round(staged - started, 2),
                      "upsert_s": round(time.perf_counter() - staged, 2)}
    _count(result, counts)
    return result


def _count(result: ImportResult, counts) -> None:
    """Take private.ingest_staged's counts (a dict row or a tuple in its column order)."""
    names = ("inserted", "merged", "duplicates", "rescored", "rejected")
    values = [counts[n] for n in names] if isinstance(counts, dict) else list(counts)
    result.inserted, result.merged, result.duplicates, result.rescored = values[:4]
    result.rejected += values[4]


def file_chunks(path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk


def bytes_chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    buf = io.BytesIO(data)
    while chunk := buf.read(size):
        yield chunk
