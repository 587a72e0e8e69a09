"""`emma score`, `emma predictions export`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emma.cli.common import cli_session, console, err_console

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


def recommend(customer: str = typer.Argument(..., help="customer id, external id or email"),
              k: int = typer.Option(10, "--k", min=1, max=100),
              context: str = typer.Option(None, "--context", help="cart | product:SKU"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Products for a customer now: next purchase, in-session relations, popular fallback, under the rules."""
    import json

    from emma.predict import service as predict
    from emma.predict.exceptions import InvalidContext
    from emma.profiles import service as profiles
    from emma.profiles.exceptions import CustomerNotFound

    with cli_session() as session:
        try:
            cid = profiles.get_customer(session=session, ref=customer).id
            recs = predict.recommend(session=session, customer_id=cid, k=k, context=context)
        except CustomerNotFound as exc:
            err_console.print(f"[red]customer: not found: {exc}[/red]")
            raise typer.Exit(1) from exc
        except InvalidContext as exc:
            raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps([r.model_dump() for r in recs], indent=2, ensure_ascii=False))
        return
    t = Table("#", "sku", "score", "reason", title=f"recommendations for {customer}", title_justify="left")
    for i, r in enumerate(recs, 1):
        t.add_row(str(i), r.sku, f"{r.score:.4f}", r.reason)
    console.print(t)


models_app = typer.Typer(help="Models: versions, training windows, backtests.", no_args_is_help=True)


@models_app.command("report")
def models_report(as_json: bool = typer.Option(False, "--json"),
                  truth: Path = typer.Option(None, "--truth", help="demo ground truth CSV (emma demo truth) to "
                                                                   "measure the predictions against"),
                  cdnow: bool = typer.Option(False, "--cdnow", help="also the CDNOW reference fits and holdout "
                                             "(needs the lifetimes package, which ships the data)")) -> None:
    """For each model of the latest scoring run: version, training window, backtest metrics and baseline."""
    import json

    from emma.predict import report
    from emma.predict import service as predict

    with cli_session() as session:
        rows = predict.models_report(session=session)
        against = report.against_truth(session=session, path=truth) if truth else None
    reference = None
    if cdnow:
        try:
            reference = report.cdnow_figures()
        except ImportError as exc:
            err_console.print(f"[red]--cdnow: the CDNOW sample ships with the lifetimes package: {exc}[/red]")
            raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps({"models": rows, "truth": against, "cdnow": reference}, indent=2, default=str))
        return
    if reference:
        console.print("CDNOW (Fader, Hardie & Lee 2005): BG/NBD " + ", ".join(
            f"{k}={v:.3f}" for k, v in reference["bgnbd"].items()) + "; Gamma-Gamma " + ", ".join(
            f"{k}={v:.3f}" for k, v in reference["gammagamma"].items()))
        console.print(f"CDNOW holdout weeks 40-78, RMSE per customer: BG/NBD {reference['rmse_bgnbd']:.4f}, "
                      f"hybrid {reference['rmse_hybrid']:.4f}, chosen by the backtest ({reference['chosen']}) "
                      f"{reference['rmse_chosen']:.4f}")
    if not rows:
        err_console.print("[yellow]no scoring run yet: run `emma score`[/yellow]")
        raise typer.Exit(1)
    t = Table("model", "version", "chosen", "training window", "backtest", "baseline", title="models",
              title_justify="left", show_lines=True)
    for r in rows:
        t.add_row(r["name"], r["version"], r["chosen"] or "", f"{r['train_from']} .. {r['train_to']}",
                  _fmt_metrics(r["metrics"]), _fmt_metrics(r["baseline"]))
    console.print(t)
    if against:
        g = Table("figure", "value", "bar", title="against the demo ground truth", title_justify="left")
        for name, value, bar in against:
            g.add_row(name, value, bar)
        console.print(g)


def _fmt_metrics(m: dict) -> str:  # type: ignore[type-arg]
    out = []
    for k, v in (m or {}).items():
        if isinstance(v, dict):
            out.append(f"{k}: " + ", ".join(f"{a}={b:.3f}" for a, b in v.items() if isinstance(b, int | float)))
        elif isinstance(v, float):
            out.append(f"{k}={v:.3f}")
        elif v is not None:
            out.append(f"{k}={v}")
    return "\n".join(out)


def forecast(customers: list[str] = typer.Argument(None, help="customer ids, external ids or emails"),
             file: Path = typer.Option(None, "--file", help="one customer reference per line"),
             incentive: bool = typer.Option(False, "--incentive/--no-incentive", help="with a coupon")) -> None:
    """Campaign forecast: expected responders (an order within 30 days) and revenue for a list of customers."""
    from emma.predict import service as predict
    from emma.profiles import service as profiles
    from emma.profiles.exceptions import CustomerNotFound

    refs = list(customers or [])
    if file:
        refs += [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not refs:
        raise typer.BadParameter("customers: give at least one customer or --file")
    with cli_session() as session:
        ids, missing = [], []
        for ref in refs:
            try:
                ids.append(profiles.get_customer(session=session, ref=ref).id)
            except CustomerNotFound:
                missing.append(ref)
        f = predict.forecast_campaign(session=session, customer_ids=ids, incentive=incentive)
    console.print(f"{f.customers:,} customers ({f.scored:,} scored): expected responders "
                  f"{f.expected_responders:,.1f}, expected revenue {f.expected_revenue:,.2f} "
                  f"within {f.window_days} days"
                  + (f", incremental responders {f.expected_incremental_responders:,.1f}" if incentive else ""))
    if missing:
        err_console.print(f"[yellow]{len(missing)} not found, e.g. {missing[0]}[/yellow]")
