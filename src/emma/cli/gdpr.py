"""`emma gdpr`: export and erase a customer's data."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from emma.cli.common import cli_session, console, err_console

app = typer.Typer(help="Data-protection requests (export, erasure).", no_args_is_help=True)


@app.command("export")
def export(ref: str, out: Path = typer.Option(None, "--out", help="write the JSON to this file")) -> None:
    """Everything held about the customer (id, external id, email or anonymous id) as JSON."""
    from emma.gdpr import service
    from emma.profiles.exceptions import CustomerNotFound

    with cli_session() as session:
        try:
            data = service.export(session=session, ref=ref)
        except CustomerNotFound as exc:
            err_console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if out:
        out.write_text(text, encoding="utf-8")
        console.print(f"written to {out}")
    else:
        typer.echo(text)


@app.command("erase")
def erase(ref: str, yes: bool = typer.Option(False, "--yes", help="do not ask")) -> None:
    """Delete or anonymise everything about the customer. Cannot be undone."""
    from emma.gdpr import service
    from emma.profiles.exceptions import CustomerNotFound

    if not yes:
        typer.confirm(f"Erase all personal data of customer {ref}? This cannot be undone.", abort=True)
    with cli_session() as session:
        try:
            summary = service.erase(session=session, ref=ref)
        except CustomerNotFound as exc:
            err_console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    for table, counts in sorted(summary.items()):
        console.print(f"{table}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
