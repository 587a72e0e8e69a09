"""`emma onsite`: what the on-site placements showed and what visitors did with it."""

from __future__ import annotations

import datetime as dt

import typer
from rich.table import Table

from emma.cli.common import cli_session, console

app = typer.Typer(help="On-site decisions (impressions, clicks, coupons).", no_args_is_help=True)


@app.command("report")
def report(days: int = typer.Option(30, "--days", help="look back this many days")) -> None:
    """Impressions, clicks and coupons per placement."""
    from emma.onsite import service

    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    with cli_session() as session:
        rows = service.report(session=session, since=since)
    t = Table("placement", "impressions", "personalised", "clicked", "click rate", "clicks", "coupons shown",
              "coupons redeemed", title=f"on-site, last {days} days", title_justify="left")
    for r in rows:
        t.add_row(r["placement"], f"{r['impressions']:,}", f"{r['personalized']:,}", f"{r['clicked']:,}",
                  f"{r['click_rate']:.1%}", f"{r['clicks']:,}", f"{r['coupons_shown']:,}",
                  f"{r['coupons_redeemed']:,}")
    console.print(t)
