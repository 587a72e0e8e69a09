"""`emma score`, `emma predictions export`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from emma.cli.common import cli_session, console

predictions_app = typer.Typer(help="Predictions.", no_args_is_help=True)


def _as_of(value: str | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    try:
        return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), tzinfo=dt.UTC)
    except ValueError as exc:
        raise typer.BadParameter("--as-of: expected YYYY-MM-DD") from exc


def score(as_of: str = typer.Option(None, "--as-of", help="score from data strictly before this date"),
          horizon_days: int = typer.Option(365, "--horizon-days", min=1)) -> None:
    """Compute every prediction for every customer and store it with the model versions used."""
    from emma.predict import service as predict

    when = _as_of(as_of)
    with cli_session() as session, Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                                            TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("score", total=None)
        run = predict.score(session=session, as_of=when, horizon_days=horizon_days,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"[green]scored {run.customers_done} customers[/green] as of {when.date()} "
                  f"(horizon {horizon_days} days, run {run.id})")


@predictions_app.command("export")
def export(path: Path) -> None:
    """Write the latest predictions of every customer to a CSV file."""
    from emma.predict.export import export_csv

    with cli_session() as session:
        n = export_csv(session=session, path=path)
    console.print(f"wrote {n} rows to {path}")
