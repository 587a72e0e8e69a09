"""`emma stores`: import stores, their stock and scheduled events; list them; count who lives nearby."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from emma.cli.common import cli_session, console, err_console

app = typer.Typer(help="Stores (location, opening date, stock) and scheduled events, for the local tactics.",
                  no_args_is_help=True)
EXIT_REJECTS = 3  # some rows were rejected (the others landed)
CHUNK = 1000
_FILE = typer.Argument(..., exists=True, dir_okay=False, help="CSV, JSONL or JSON (a list) file; .gz too")


def _rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header line; empty cells are absent), JSONL or JSON-list file."""
    name = path.name.lower().removesuffix(".gz")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        if name.endswith(".csv"):
            return [{k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip() != ""}
                    for row in csv.DictReader(fh)]
        text = fh.read()
    if name.endswith(".json"):
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("a JSON file holds a list of rows")
        return data
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {n}: not JSON ({exc.msg})") from None
    return out


def _chunks(rows: list[dict[str, Any]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    for i in range(0, len(rows), CHUNK):
        yield i, rows[i:i + CHUNK]


def _import(kind: str, file: Path) -> None:
    from emma.db import utcnow
    from emma.stores import service

    fn = {"stores": service.upsert_stores, "stock": service.set_stock, "events": service.upsert_events}[kind]
    try:
        rows = _rows(file)
    except (ValueError, UnicodeDecodeError) as exc:
        err_console.print(f"[red]{file}: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    totals = {"created": 0, "updated": 0, "unchanged": 0}
    rejected: list[tuple[int, str, str]] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task(f"{kind} {file.name}", total=len(rows))
        for start, chunk in _chunks(rows):
            with cli_session() as session:  # one transaction per chunk: a failure keeps the chunks before it
                res = fn(session=session, rows=chunk, at=utcnow())
            for k in totals:
                totals[k] += getattr(res, k)
            rejected.extend((start + e.index, e.field, e.reason) for e in res.rejected)
            bar.update(task, advance=len(chunk))
    table = Table(title=f"import {kind}: {file}", show_header=False, title_justify="left")
    table.add_row("rows read", f"{len(rows):,}")
    for k, v in totals.items():
        table.add_row(k, f"{v:,}")
    table.add_row("rejected", f"[red]{len(rejected):,}[/red]" if rejected else "0")
    console.print(table)
    for row, field, reason in rejected[:50]:
        err_console.print(f"[red]row {row + 1}: {field}: {reason}[/red]", highlight=False)
    if rejected:
        raise typer.Exit(EXIT_REJECTS)


@app.command("import")
def import_stores(file: Path = _FILE) -> None:
    """Stores: store_id, name, street, postal_code, city, country, lat, lon, opens_on, active[, stock]."""
    _import("stores", file)


@app.command("stock")
def import_stock(file: Path = _FILE) -> None:
    """Stock per store: store_id, sku, quantity (replaces the listed quantities)."""
    _import("stock", file)


@app.command("events")
def import_events(file: Path = _FILE) -> None:
    """Scheduled events: event_id, name, starts_at[, ends_at, store_id | location, postal_code, city, lat, lon]."""
    _import("events", file)


@app.command("list")
def list_stores() -> None:
    """Every store, and the upcoming events."""
    from emma.db import utcnow
    from emma.stores import service

    with cli_session() as session:
        table = Table(title="stores", title_justify="left")
        for col in ("store_id", "name", "address", "lat, lon", "opens on", "skus in stock"):
            table.add_column(col)
        for s in service.list_stores(session=session):
            stock = service.stock_of(session=session, store_id=s.store_id)
            table.add_row(s.store_id, s.name, ", ".join(x for x in (s.street, s.postal_code, s.city) if x),
                          f"{s.lat:.4f}, {s.lon:.4f}" if s.lat is not None else "-",
                          s.opens_on.isoformat() if s.opens_on else "-",
                          str(sum(1 for q in stock.values() if q > 0)))
        console.print(table)
        events = service.list_events(session=session, since=utcnow())
        if events:
            table = Table(title="upcoming events", title_justify="left")
            for col in ("event_id", "name", "starts (UTC)", "where"):
                table.add_column(col)
            for e, store_id in events:
                table.add_row(e.event_id, e.name, f"{e.starts_at:%Y-%m-%d %H:%M}", store_id or e.location or e.city
                              or "-")
            console.print(table)


@app.command("nearby")
def nearby(store_id: str, radius_km: float = typer.Option(None, "--radius-km", min=0.1,
                                                          help="default: EMMA_STORE_RADIUS_KM")) -> None:
    """How many customers live near a store (whom a store-opening tactic would invite)."""
    from emma.config import get_settings
    from emma.stores import service
    from emma.stores.exceptions import StoreNotFound

    settings = get_settings()
    radius = radius_km or settings.store_radius_km
    with cli_session() as session:
        try:
            store = service.get_store(session=session, store_id=store_id)
        except StoreNotFound as exc:
            err_console.print(f"[red]{exc}[/red]", highlight=False)
            raise typer.Exit(1) from exc
        near = service.customers_near(session=session, lat=store.lat, lon=store.lon, postal_code=store.postal_code,
                                      country=store.country, radius_km=radius,
                                      postal_prefix=settings.store_postal_prefix)
    by_coords = sum(1 for d in near.values() if d is not None)
    console.print(f"{store.name}: {len(near):,} customers within {radius:g} km "
                  f"({by_coords:,} by address coordinates, {len(near) - by_coords:,} by postal code)")
