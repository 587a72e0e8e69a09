"""`emma import KIND FILE`: bulk import of customers, consents, products, orders and events."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from emma.cli.common import console, err_console
from emma.config import get_settings

app = typer.Typer(help="Bulk import from CSV or JSONL files (see the README for the columns).",
                  no_args_is_help=True)

EXIT_REJECTS = 3  # some rows were rejected (the others landed)


def _run(kind: str, file: Path, rejects: Path | None, fmt: str | None, chunk: int | None) -> None:
    from emma.db import make_engine, make_sessionmaker
    from emma.ingest import bulk, jobs

    if not file.is_file():
        err_console.print(f"[red]FILE: {file} does not exist[/red]")
        raise typer.Exit(2)
    engine = make_engine(get_settings().database_url)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=err_console, transient=False) as bar:
            task = bar.add_task(f"{kind} {file.name}", total=file.stat().st_size)
            summary = jobs.run_import(sessions=make_sessionmaker(engine), kind=kind, path=file, fmt=fmt,
                                      rejects=rejects, chunk_rows=chunk,
                                      progress=lambda done, total: bar.update(task, completed=done, total=total))
            bar.update(task, completed=file.stat().st_size)
    except bulk.ImportFileError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    table = Table(title=f"import {kind}: {file}", show_header=False, title_justify="left")
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    table.add_row("rows read", f"{summary.rows:,}")
    table.add_row("landed (new or changed)", f"{summary.landed:,}")
    table.add_row("unchanged / duplicate", f"{summary.unchanged:,}")
    table.add_row("rejected", f"[red]{summary.rejected:,}[/red]" if summary.rejected else "0")
    if summary.customers_created:
        table.add_row("customers created", f"{summary.customers_created:,}")
    for k, v in summary.details.items():
        if v:
            table.add_row(k, f"{v:,}")
    table.add_row("time", f"{summary.seconds:.1f} s ({rate:,.0f} rows/s)")
    console.print(table)
    for w in summary.all_warnings():
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if summary.rejects_path:
        console.print(f"rejected rows (line, field, reason): {summary.rejects_path}", highlight=False)
        raise typer.Exit(EXIT_REJECTS)


_REJECTS = typer.Option(None, "--rejects", help="where to write rejected rows [default: FILE.rejects.csv]")
_FORMAT = typer.Option(None, "--format", help="csv | jsonl [default: from the file name]")
_CHUNK = typer.Option(None, "--chunk", help="rows per transaction", min=1)


def _command(kind: str, doc: str) -> None:
    def command(file: Path = typer.Argument(..., help="CSV or JSONL file (.gz too)"), rejects: Path = _REJECTS,
                fmt: str = _FORMAT, chunk: int = _CHUNK) -> None:
        _run(kind, file, rejects, fmt, chunk)

    command.__doc__ = doc
    app.command(kind)(command)


_command("customers", "Profiles: customer_id, email, phone, first_name, last_name, birthday, locale, timezone, "
         "address, custom attributes.")
_command("consents", "Consent decisions: customer_id, purpose, status[, source, recorded_at, text_version].")
_command("products", "Catalog: sku, name, category, price, currency, stock, url, image_url, brand, attributes.")
_command("orders", "Order lines: order_id, customer_id, ordered_at, sku, quantity, unit_price[, currency, "
         "status].")
_command("events", "Segment messages, one JSON object per line (track, identify, page, ...).")
