"""`emma channels`: run the delivery loop, requeue failed messages, show a message's delivery log."""

from __future__ import annotations

import contextlib

import typer
from rich.table import Table

from emma.cli.common import cli_session, console
from emma.config import get_settings

app = typer.Typer(help="Outbox delivery: email, SMS, push, webhook.", no_args_is_help=True)


@app.command("deliver")
def deliver(loop: bool = typer.Option(False, "--loop", help="keep delivering until interrupted"),
            interval: float = typer.Option(2.0, help="seconds to wait when nothing is due")) -> None:
    """Send what is due now (once, or as a loop with --loop)."""
    from emma.channels import jobs
    from emma.db import make_engine, make_sessionmaker

    settings = get_settings()
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    try:
        if loop:
            console.print("delivering; Ctrl+C stops")
            with contextlib.suppress(KeyboardInterrupt):
                jobs.run(sessions=sessions, settings=settings, interval=interval)
            return
        counts = jobs.deliver_due(sessions=sessions, settings=settings)
        console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing due")
    finally:
        engine.dispose()


@app.command("retry")
def retry(held: bool = typer.Option(False, "--held", help="requeue held messages (after fixing a template)"),
          channel: str = typer.Option(None, help="only this channel")) -> None:
    """Requeue failed (or held) messages, e.g. after fixing the SMTP settings."""
    from emma.channels import service

    with cli_session() as session:
        n = service.requeue(session=session, statuses=("held",) if held else ("failed",), channel=channel)
    console.print(f"{n} message(s) queued again")


@app.command("log")
def show_log(message_id: int) -> None:
    """The delivery log of one message."""
    from emma.channels import service

    table = Table("at", "status", "detail")
    with cli_session() as session:
        for e in service.delivery_log(session=session, message_id=message_id):
            table.add_row(str(e.at), e.status, str(e.detail or ""))
    console.print(table)
