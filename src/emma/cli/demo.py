"""`emma demo`: build the demo shop, show what is in it, serve it; `emma demo truth` exports the ground truth."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emma.cli.common import console, err_console

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from emma.demo.live import LiveRun
    from emma.demo.simulate import Simulation

app = typer.Typer(help="The demo shop: a simulated year of a German shop, and its ground truth.",
                  invoke_without_command=True)

DATABASE_HELP = "database URL; a SQLite file is recreated on every run"


@app.callback()
def demo(ctx: typer.Context,
         database: str = typer.Option("sqlite:///./emma-demo.db", "--database", help=DATABASE_HELP),
         customers: int = typer.Option(5_000, min=1, max=1_000_000, help="simulated customers"),
         seed: int = typer.Option(42, help="random seed; the same seed gives the same shop"),
         days: int = typer.Option(365, min=7, max=3650, help="days of history, ending today 00:00 UTC"),
         cutoff_days: int = typer.Option(90, min=1, help="the last N days are the 'future' of the truth export"),
         live_days: int = typer.Option(21, min=0, help="the last N days run live: tactics on the virtual clock, "
                                       "messages through the channels, the customers react (0: none; at most "
                                       "the cut-off days)"),
         tactic: list[str] = typer.Option([], "--tactic", help="also enable this tactic for the live days "
                                          "(repeatable); the tactics enabled by default always run"),
         rescore_days: int = typer.Option(7, "--rescore-days", min=0, help="during the live days, score afresh "
                                          "when they begin and every N days (0: use the cut-off's predictions)"),
         serve: bool = typer.Option(True, "--serve/--no-serve", help="start the server afterwards"),
         score: bool = typer.Option(True, "--score/--no-score", help="score as of the cut-off and compare with "
                                    "the ground truth"),
         host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000)) -> None:
    """Create a fresh database, simulate the shop's year into it (its last days live), print a summary, serve it."""
    if ctx.invoked_subcommand is not None:
        return
    from emma.db import make_engine, make_sessionmaker, session_scope
    from emma.demo import service
    from emma.demo.simulate import DemoConfig
    from emma.demo.truth import write_truth

    config = DemoConfig(customers=customers, seed=seed, days=days, cutoff_days=min(cutoff_days, days - 1))
    live_days = min(live_days, config.cutoff_days)  # scoring as of the cut-off needs the days before it imported
    console.print(f"Tante Emma demo shop: {customers:,} customers, {days} days up to {config.end}, seed {seed}"
                  + (f"; the last {live_days} days live" if live_days else ""))
    started = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[events]:,} events"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("simulating days", total=days - live_days, events=0)

        def progress(done: int, total: int, events: int) -> None:
            bar.update(task, completed=done, events=events)

        sim, run = service.run_demo(database=database, config=config, progress=progress,
                                    until_day=days - live_days)
    truth_path = service.sidecar(database, "-truth.csv")
    engine = make_engine(database)
    truth_rows, live = None, None
    try:
        rescore = rescore_days if score and rescore_days else None
        if score and not (live_days and rescore):
            _score(make_sessionmaker(engine), config)
        if live_days:
            # The live days score afresh when they begin and every rescore_days days, as a nightly job would.
            live = _live(database, sim, live_days, tactic, rescore)
        write_truth(sim, truth_path)
        if score:
            from emma.predict import report

            if live is not None and live.rescored and live.rescored[-1] != config.day_start(config.cutoff_day):
                _score(make_sessionmaker(engine), config)  # the truth is compared with predictions at the cut-off

            with session_scope(make_sessionmaker(engine)) as session:
                truth_rows = report.against_truth(session=session, path=truth_path)
        with session_scope(make_sessionmaker(engine)) as session:
            figures = service.summary(session=session)
            if live is not None:
                _print_campaigns(session, live)
    finally:
        engine.dispose()
    _print_summary(figures, run, time.perf_counter() - started, truth_path)
    if truth_rows:
        t = Table("figure", "value", "bar", title="Vorhersagen gegen die Wahrheit / predictions against the truth",
                  title_justify="left")
        for row in truth_rows:
            t.add_row(*row)
        console.print(t)
    if run.rejected:
        err_console.print(f"[red]{len(run.rejected)} simulated events were rejected[/red]; first: {run.rejected[0]}")
    if live is not None and live.rejected:
        err_console.print(f"[red]{len(live.rejected)} live events were rejected[/red]; first: {live.rejected[0]}")
    if serve:
        _serve(database, host, port)


def _live(database: str, sim: Simulation, live_days: int, tactic: list[str], rescore_days: int | None) -> LiveRun:
    """The live days with a progress bar."""
    from emma.demo import service

    with Progress(TextColumn("[bold]live days (tactics, channels)"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[messages]:,} sent, {task.fields[opens]:,} opened, "
                             "{task.fields[orders]:,} orders from messages"), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("live", total=live_days, messages=0, opens=0, orders=0)

        def progress(done: int, total: int, counts: dict[str, int]) -> None:
            bar.update(task, completed=done, **counts)

        return service.run_live(database=database, sim=sim, enable=tactic, progress=progress,
                                rescore_days=rescore_days)


def _print_campaigns(session: Session, live: LiveRun) -> None:
    """The tactics against their holdout groups, and each channel's funnel, read from the database."""
    from rich.console import Console

    from emma.reports import service as reports

    # Piped into a file or a log there is no terminal width; 80 columns would wrap every row of these tables.
    out = console if console.is_terminal else Console(width=150)
    r = live.reactions
    out.print(f"live: {live.days} days from {live.start:%Y-%m-%d} on the virtual clock, {live.ticks:,} worker "
                  f"ticks, {live.events:,} shop events; {live.smtp_received:,} mails reached the SMTP sink and "
                  f"{live.hooks_received:,} requests the webhook/SMS/push sink (127.0.0.1); the customers opened "
                  f"{sum(r.opened.values()):,}, clicked {sum(r.clicked.values()):,}, ordered "
                  f"{sum(r.ordered.values()):,} times ({r.revenue:,.2f} EUR), confirmed {r.confirmed:,} opt-ins, "
                  f"saw {r.decisions:,} on-site decisions, "
                  f"unsubscribed {r.unsubscribed:,} times; {live.seconds:.1f} s"
                  + (f" (of which {live.score_seconds:.1f} s scoring as of "
                     f"{', '.join(f'{t:%Y-%m-%d}' for t in live.rescored)})" if live.rescored else "") + ". "
                  f"Tactics: {', '.join(live.tactics) or 'none'}")
    t = Table("tactic", "runs", "sent", "treated", "holdout", "uplift [95 % CI]", "reachable: treated", "holdout",
              "uplift [95 % CI]",
              title="Taktiken gegen Kontrollgruppe / tactics against their holdout group: customers who reached the "
                    "tactic's goal, of all customers with a run and of those reachable (consent for the tactic's "
                    "email/SMS/push) when it began", title_justify="left")
    reach = reports.reachable_results(session=session)
    unclear = []

    def effect(row: dict) -> str:  # type: ignore[type-arg]
        if row["uplift_ci"] is None:
            return "no holdout"
        low, high = row["uplift_ci"]
        verdict = "significant" if row["significant"] else "not significant"
        return f"{row['uplift'] * 100:+.1f}pp [{low * 100:+.1f}, {high * 100:+.1f}] {verdict}"

    def share(n: int, d: int) -> str:
        return f"{n:,}/{d:,} {n / d:.1%}" if d else "–"

    for row in reports.tactic_results(session=session):
        tid = row["tactic_id"]
        r = reach.get(tid)
        reached = ("–", "–", "–") if r is None else (
            share(r["treated_converted"], r["treated"]), share(r["holdout_converted"], r["holdout"]), effect(r))
        if row["significant"] is False and (r is None or not r["significant"]):
            unclear.append(tid)
        t.add_row(tid, f"{row['entered']:,}", f"{row['sent']:,}",
                  share(row["customers_treated_converted"], row["customers_treated"]),
                  share(row["customers_holdout_converted"], row["customers_holdout"]), effect(row), *reached)
    out.print(t)
    if unclear:
        out.print(f"Nicht signifikant / not significant: {', '.join(unclear)}: the 95 % interval of the difference "
                  "includes 0, so these live days cannot tell the tactic's effect from chance (more days, more "
                  "customers or a larger holdout would).")
    tested = sum(x["uplift_ci"] is not None for x in [*reports.tactic_results(session=session), *reach.values()])
    if tested:
        out.print(f"{tested} comparisons at 95 %: about {tested / 20:.1f} of them look significant by chance alone, "
                  "so a single significant result among many is weak evidence.")
    from emma.config import Settings

    cfg = Settings()
    c = Table("tactic", "channel", "delivered", "opened", "clicked", "converted", "revenue", "unsub.",
              title="Kanäle / channels: delivered -> opened -> clicked -> converted (messages; an order counts for "
                    f"its coupon's message, else the last click within {cfg.attribution_click_days:g} days, else "
                    f"the last open or delivery within {cfg.attribution_view_hours:g} hours)", title_justify="left")
    for row in reports.channel_results(session=session):
        d = row["delivered"]
        c.add_row(row["tactic_id"], row["channel"], f"{d:,}", _conv(row["opened"], d), _conv(row["clicked"], d),
                  _conv(row["converted"], d), f"{row['revenue']:,.2f}", f"{row['unsubscribed']:,}")
    out.print(c)
    from emma.onsite import service as onsite

    o = Table("placement", "decisions", "personalised", "clicked", "coupons shown", "coupons redeemed",
              title="On-site (/v1/decide, home page views of known customers)", title_justify="left")
    for row in onsite.report(session=session, since=live.start):
        n = row["impressions"]
        o.add_row(row["placement"], f"{n:,}", _conv(row["personalized"], n), _conv(row["clicked"], n),
                  f"{row['coupons_shown']:,}", f"{row['coupons_redeemed']:,}")
    out.print(o)


def _conv(n: int, d: int) -> str:
    return f"{n:,} ({n / d:.1%})" if d else f"{n:,}"


def _score(factory: object, config: object) -> None:
    """`emma score` as of the truth's cut-off (the days after it are compared with the truth later)."""
    from emma.db import session_scope
    from emma.predict import service as predict

    as_of = config.day_start(config.cutoff_day)  # type: ignore[attr-defined]
    with Progress(TextColumn("[bold]scoring as of {task.fields[day]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("score", total=None, day=as_of.date())
        with session_scope(factory) as session:  # type: ignore[arg-type]
            predict.score(session=session, as_of=as_of, horizon_days=365,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))


def _print_summary(f: dict, run: object, seconds: float, truth_path: Path) -> None:  # type: ignore[type-arg]
    c = f["customers"]
    head = Table(title="Demo-Shop / demo shop", show_header=False, title_justify="left")
    head.add_row("Kunden (bekannt) / known customers", f"{c['known']:,}")
    head.add_row("anonyme Besucher / anonymous visitors", f"{c['anonymous']:,}")
    head.add_row("zusammengeführte Profile / merged profiles", f"{c['merged']:,}")
    head.add_row("Käufer / buyers", f"{c['buyers']:,}")
    head.add_row("Bestellungen / orders", f"{f['orders']:,}")
    head.add_row("Umsatz / revenue", f"{f['revenue']:,.2f} EUR")
    ab = f["abandoned_carts"] / f["carts"] if f["carts"] else 0.0
    head.add_row("Warenkörbe, abgebrochen / carts, abandoned", f"{f['carts']:,}, {ab:.0%}")
    head.add_row("Ereignisse / events", f"{sum(f['events'].values()):,}; history imported at "
                 f"{getattr(run, 'events_per_second', 0.0):,.0f}/s; the whole demo took {seconds:.1f} s")
    console.print(head)
    ev = Table("event", "count", title="Ereignisse nach Typ / events by type", title_justify="left")
    for name, n in f["events"].items():
        ev.add_row(str(name), f"{n:,}")
    console.print(ev)
    cons = Table("purpose", "granted", "pending", "revoked", "coverage", title="Einwilligungen / consent",
                 title_justify="left")
    for purpose, v in f["consent"].items():
        cons.add_row(purpose, f"{v['granted']:,}", f"{v['pending']:,}", f"{v['revoked']:,}", f"{v['coverage']:.0%}")
    console.print(cons)
    # Hook points: these figures appear once scoring, tactics, channels and experiments have run.
    later = Table("figure", "value", title="Modelle und Kampagnen / models and campaigns", title_justify="left")
    for key, label in (("predictions", "predictions"), ("tactics_fired", "tactic runs"),
                       ("messages_by_channel", "messages sent by channel")):
        value = f.get(key)
        if key == "predictions" and value:
            stages = ", ".join(f"{k} {v:,}" for k, v in sorted(value["stages"].items(), key=lambda kv: -kv[1]))
            value = (f"{value['customers']:,} customers as of {value['as_of']} ({value['personalized']:,} "
                     f"personalised): {stages}; mean churn {value['mean_churn'] or 0:.2f}, "
                     f"CLV total {value['total_clv']:,.0f} EUR")
        later.add_row(label, "noch keine / none yet" if value is None else str(value))
    console.print(later)
    console.print(f"ground truth: {truth_path}  (export again: emma demo truth --out FILE.csv)")


def _serve(database: str, host: str, port: int) -> None:
    import uvicorn

    from emma.app import create_app
    from emma.config import Settings

    console.print(f"Tante Emma at [link]http://{host}:{port}[/link]  (docs: /docs)  database: {database}")
    uvicorn.run(create_app(Settings(database_url=database)), host=host, port=port, log_level="warning")


@app.command("truth")
def truth(out: Path = typer.Option(..., "--out", help="CSV file to write"),
          database: str = typer.Option("sqlite:///./emma-demo.db", "--database", help="the demo database"),
          cutoff_days: int = typer.Option(None, help="override the cut-off (days before the end)")) -> None:
    """Export per customer the hidden traits and the realised future after the cut-off (recomputed from the seed)."""
    from dataclasses import replace

    from emma.demo import service
    from emma.demo.simulate import simulate
    from emma.demo.truth import write_truth

    try:
        config = service.read_meta(database)
    except FileNotFoundError as exc:
        err_console.print(f"[red]no demo parameters next to {database}; run `emma demo` first[/red]")
        raise typer.Exit(1) from exc
    if cutoff_days is not None:
        config = replace(config, cutoff_days=min(cutoff_days, config.days - 1))
    started = dt.datetime.now()
    n = write_truth(simulate(config), out)
    secs = (dt.datetime.now() - started).total_seconds()
    console.print(f"{n:,} customers written to {out} (seed {config.seed}, cut-off {config.cutoff_days} days "
                  f"before {config.end}; {secs:.1f} s)")
