"""CDC writes on the server path (issue 18 item 3): the two things the worker sends a server.

A modern server is the tests' HTTP front over chDB in a process of its own
(``bench/http_front.py``), as the issue says; the Debian server (18.16) keeps the text path and
is not measured here. Both sides of each figure run in the same process against the same front,
alternating, so that the machine's load falls on both alike.

* Inserts: ``HttpBackend.insert_arrow`` of the same replica rows of ``deals`` as ``ArrowStream``
  (A: what a 23.8+ server gets now) and as ``TabSeparated`` (B: what every server got before,
  the same backend made with ``text_inserts``), in batches of 100 rows (what the worker writes
  at about 700 transactions/s, a batch every 50 ms) and of 20 000 (a backlog). Rows/s, and the
  CPU per row of the client (this process: encoding and HTTP) and of the front (parsing and the
  engine's insert).
* The unchanged-TOAST lookup: ``stored_rows`` (A: one ``IN`` set on the sort key) against the
  ``OR`` chain of ``(tenant = .. AND id = ..)`` terms the worker sent before (B, rebuilt here as
  it was), for 100 and 3 000 keys of a table of 200 000 rows in several parts; both answers are
  checked to be the same before anything is timed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.dataset import generate_base
from bench.http_front import FrontProcess
from bench.report import Figure, median, milliseconds, rate
from cdc_worker.events import RowChange
from cdc_worker.worker import _stored_value, stored_rows
from service.backends.http import HttpBackend
from service.catalog import Catalog, Model, load_catalog
from service.demo.generator import DEMO_TENANTS
from service.query.values import encode_text_parameter
from service.schema import all_ddl
from service.settings import DEFAULT_CATALOG

TABLE = "crm_deals"
#: (rows per insert, inserts per timed run)
INSERT_SHAPES = ((100, 40), (20_000, 1))
LOOKUP_KEYS = (100, 3_000)
TABLE_ROWS = 200_000
TOASTED = frozenset({"title"})


@dataclasses.dataclass
class _Side:
    seconds: list[float] = dataclasses.field(default_factory=list)
    client_cpu: list[float] = dataclasses.field(default_factory=list)
    server_cpu: list[float] = dataclasses.field(default_factory=list)


async def measure(work: Path, rounds: int) -> list[Figure]:
    """Run both comparisons against a front of their own; the figures."""
    shipped = load_catalog(DEFAULT_CATALOG)
    catalog = Catalog(f"bench_server_{uuid.uuid4().hex[:8]}", shipped.models)
    model = next(m for m in catalog.models.values() if m.table == TABLE)
    rows = await asyncio.to_thread(generate_base, TABLE_ROWS, DEMO_TENANTS)
    front = await FrontProcess.start(work / "front")
    arrow = HttpBackend(front.url, pool_size=2)
    text = HttpBackend(front.url, pool_size=2, text_inserts=True)
    figures: list[Figure] = []
    try:
        for statement in all_ddl(catalog, dialect=await arrow.dialect()):
            await arrow.command(statement)
        for batch, count in INSERT_SHAPES:
            figures += await _inserts(
                arrow, text, front, catalog, rows, batch=batch, count=count, rounds=rounds
            )
        # The table the lookups read: every generated row, in the parts the inserts made.
        for offset in range(0, rows.num_rows, 50_000):
            await arrow.insert_arrow(catalog.database, TABLE, rows.slice(offset, 50_000))
        for keys in LOOKUP_KEYS:
            figures.append(await _lookups(arrow, catalog, model, rows, keys=keys, rounds=rounds))
    finally:
        await arrow.command(f"DROP DATABASE IF EXISTS `{catalog.database}`")
        await arrow.close()
        await text.close()
        await front.stop()
    return figures


async def _inserts(
    arrow: HttpBackend,
    text: HttpBackend,
    front: FrontProcess,
    catalog: Catalog,
    rows: pa.Table,
    *,
    batch: int,
    count: int,
    rounds: int,
) -> list[Figure]:
    sides = {"arrow": _Side(), "text": _Side()}
    batches = [rows.slice(i * batch, batch) for i in range(count)]
    # One untimed insert each: connections, the table's column types.
    for backend in (arrow, text):
        await backend.insert_arrow(catalog.database, TABLE, batches[0])
    for round_number in range(rounds):
        order = ("arrow", "text") if round_number % 2 == 0 else ("text", "arrow")
        for name in order:
            backend = arrow if name == "arrow" else text
            side = sides[name]
            cpu, server, started = time.process_time(), front.cpu_seconds(), time.perf_counter()
            for part in batches:
                await backend.insert_arrow(catalog.database, TABLE, part)
            side.seconds.append(time.perf_counter() - started)
            side.client_cpu.append(time.process_time() - cpu)
            side.server_cpu.append(front.cpu_seconds() - server)
    total = batch * count
    a, b = sides["arrow"], sides["text"]
    a_rate, b_rate = total / median(a.seconds), total / median(b.seconds)
    note = f"{count} inserts of {batch:,} rows, median of {rounds} runs each"
    return [
        Figure(
            metric=f"HTTP insert rows/s, ArrowStream vs TabSeparated, batches of {batch:,}",
            a=rate(a_rate, "rows"),
            b=rate(b_rate, "rows") + " (text)",
            ratio=b_rate / a_rate,
            target="",
            passed=None,
            note=note,
        ),
        Figure(
            metric=f"HTTP insert CPU per row, client / server, batches of {batch:,}",
            a=_per_row(a, total),
            b=_per_row(b, total) + " (text)",
            ratio=median(a.client_cpu) / median(b.client_cpu),
            target="",
            passed=None,
            note="ratio: client CPU",
        ),
    ]


def _per_row(side: _Side, rows: int) -> str:
    client = median(side.client_cpu) / rows * 1e6
    server = median(side.server_cpu) / rows * 1e6
    return f"{client:.2f} / {server:.2f} us"


async def _lookups(
    backend: HttpBackend,
    catalog: Catalog,
    model: Model,
    rows: pa.Table,
    *,
    keys: int,
    rounds: int,
) -> Figure:
    changes = _toast_changes(model, rows, keys)
    new = await stored_rows(backend, catalog.database, model, changes)
    old = await or_chain_lookup(backend, catalog.database, model, changes)
    if new != old or not new:
        raise AssertionError(f"the lookups disagree: {len(new)} against {len(old)} rows")
    runs: dict[str, list[float]] = {"in": [], "or": []}
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "in": lambda: stored_rows(backend, catalog.database, model, changes),
        "or": lambda: or_chain_lookup(backend, catalog.database, model, changes),
    }
    for round_number in range(rounds):
        for name in ("in", "or") if round_number % 2 == 0 else ("or", "in"):
            started = time.perf_counter()
            await calls[name]()
            runs[name].append(time.perf_counter() - started)
    a, b = median(runs["in"]), median(runs["or"])
    return Figure(
        metric=f"Unchanged-TOAST lookup, {keys:,} keys: IN set on the sort key vs OR chain",
        a=milliseconds(a),
        b=milliseconds(b) + " (OR chain)",
        ratio=b / a,
        target="",
        passed=None,
        note=f"{len(new):,} stored rows found in {rows.num_rows:,}, median of {rounds} runs",
    )


def _toast_changes(model: Model, rows: pa.Table, keys: int) -> list[RowChange]:
    """Updates of ``keys`` distinct stored keys that left the title out (unchanged TOAST)."""
    pairs = sorted(
        set(zip(rows.column("tenant_id").to_pylist(), rows.column("id").to_pylist(), strict=True))
    )
    chosen = random.Random(keys).sample(pairs, keys)
    return [
        RowChange(
            model=model,
            op="u",
            tenant=tenant,
            key=(key,),
            row={"id": key, "title": None},
            unavailable=TOASTED,
            version=2**62,
            is_deleted=False,
            source_ts_ms=0,
            snapshot=False,
            lsn=0,
        )
        for tenant, key in chosen
    ]


async def or_chain_lookup(
    backend: HttpBackend, database: str, model: Model, changes: Sequence[RowChange]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The lookup as the worker sent it before issue 18: one ``OR``-ed term per key."""
    columns = sorted({name for c in changes for name in c.unavailable})
    keys = [model.tenant_column, *model.primary_key]
    parameters: dict[str, str] = {}
    conditions = []
    for index, change in enumerate(changes):
        parts = []
        for position, (column, value) in enumerate(
            zip(keys, (change.tenant, *change.key), strict=True)
        ):
            name = f"k{index}_{position}"
            parameters[name] = encode_text_parameter(str(value))
            spec = model.fields.get(column)
            kind = spec.parameter_type if spec else "String"
            parts.append(f"`{column}` = {{{name}:{kind}}}")
        conditions.append("(" + " AND ".join(parts) + ")")
    selected = ", ".join(f"`{c}`" for c in [*keys, *columns])
    sql = (
        f"SELECT {selected} FROM `{database}`.`{model.table}` FINAL "  # noqa: S608
        f"WHERE _is_deleted = 0 AND ({' OR '.join(conditions)})"
    )
    rows = await backend.query_rows(sql, parameters)
    return {
        tuple(row[k] for k in keys): {c: _stored_value(model, c, row[c]) for c in columns}
        for row in rows
    }
