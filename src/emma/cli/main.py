"""The `emma` command: one typer sub-app per domain."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from emma.cli.common import cli_session, console, err_console
from emma.config import get_settings

app = typer.Typer(help="Tante Emma: AI-driven marketing automation.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
customers_app = typer.Typer(help="Customers.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(customers_app, name="customers")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the database (EMMA_DATABASE_URL) to the latest schema."""
    from emma.db import upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    console.print(f"[green]database at {revision}[/green]: {url}")


@keys_app.command("create")
def keys_create(kind: str = typer.Argument(..., help="write | admin"), name: str = typer.Option(None)) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from emma.auth import service as auth

    if kind not in auth.KINDS:
        err_console.print(f"[red]kind: must be one of {', '.join(auth.KINDS)}[/red]")
        raise typer.Exit(2)
    with cli_session() as session:
        key = auth.create_key(session=session, kind=kind, name=name)
    console.print(key, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefix, kind, created, revoked)."""
    from emma.auth import service as auth

    table = Table("prefix", "kind", "name", "created", "revoked")
    with cli_session() as session:
        for k in auth.list_keys(session=session):
            table.add_row(k.prefix, k.kind, k.name or "", str(k.created_at), str(k.revoked_at or ""))
    console.print(table)


@customers_app.command("show")
def customers_show(ref: str, as_json: bool = typer.Option(False, "--json", help="print JSON"),
                   events: int = typer.Option(10, help="how many recent events")) -> None:
    """A customer: profile, identities, consents, cart, last events, orders."""
    from emma.profiles.exceptions import CustomerNotFound
    from emma.profiles.views import customer_view

    with cli_session() as session:
        try:
            view = customer_view(session=session, ref=ref, events=events)
        except CustomerNotFound as exc:
            err_console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(view, indent=2, ensure_ascii=False, default=str))
        return
    _print_view(view)


def _print_view(view: dict) -> None:  # type: ignore[type-arg]
    p = view["profile"]
    name = " ".join(x for x in (p["first_name"], p["last_name"]) if x) or "(no name)"
    console.rule(f"[bold]{name}[/bold]  #{p['id']}  {p['external_id'] or 'anonymous'}")
    prof = Table(show_header=False, box=None)
    for k, v in p.items():
        if v not in (None, {}, ""):
            prof.add_row(k, str(v))
    console.print(prof)
    for title, rows, cols in (
        ("identities", view["identities"], ("kind", "value")),
        ("consents", view["consents"], ("purpose", "status", "source", "recorded_at")),
        ("orders", view["orders"], ("order_id", "ordered_at", "status", "revenue")),
        ("events", view["events"], ("timestamp", "type", "name")),
    ):
        if rows:
            t = Table(*cols, title=title, title_justify="left")
            for r in rows:
                t.add_row(*(str(r.get(c) or "") for c in cols))
            console.print(t)
    for cart in view["carts"]:
        t = Table("sku", "quantity", "price", title=f"cart {cart['cart_id']} ({cart['status']})", title_justify="left")
        for it in cart["items"]:
            t.add_row(it["sku"], str(it["quantity"]), str(it["price"]))
        console.print(t)
    if view["wishlist"]:
        console.print("wishlist: " + ", ".join(view["wishlist"]))
    auto = view.get("automation") or {}
    if auto.get("journal"):
        t = Table("at", "tactic", "run", "step", "why", title="tactics (journal)", title_justify="left")
        for st in auto["journal"]:
            t.add_row(str(st["at"])[:16], st["tactic_id"], str(st["run_id"]), st["node_id"] or "", st["reason"])
        console.print(t)
    _print_predictions(view.get("predictions"))


def _print_predictions(pred: dict | None) -> None:  # type: ignore[type-arg]
    if not pred:
        return
    reasons = pred.get("reasons") or {}
    t = Table("prediction", "value", "why", title=f"predictions as of {pred['as_of'][:10]}", title_justify="left")
    if not pred["personalized"]:
        t.add_row("personalized", "no", reasons.get("personalized", ""))
    for key in ("churn_probability", "clv", "p_alive", "expected_orders", "expected_revenue", "lifecycle_stage",
                "next_order_date", "propensity_30d", "best_send_hour", "preferred_channel", "incentive_uplift",
                "early_adopter", "next_best_offer"):
        v = pred.get(key)
        if v is None:
            continue
        t.add_row(key, f"{v:.3f}" if isinstance(v, float) else str(v), reasons.get(key, ""))
    if pred.get("top_affinities"):
        t.add_row("top_affinities", ", ".join(f"{a['name']} {a['score']:.2f}" for a in pred["top_affinities"]),
                  "lift over the average customer")
    if pred.get("recommendations"):
        t.add_row("recommendations", ", ".join(r["sku"] for r in pred["recommendations"][:5]),
                  reasons.get("recommendations", "popular items"))
    console.print(t)


@app.command("serve")
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers: int = typer.Option(1, min=1, help="server processes (PostgreSQL only; SQLite has one writer)")
          ) -> None:
    """Run the HTTP API with the embedded worker (EMMA_WORKER_EMBEDDED=false to run workers apart)."""
    import uvicorn

    from emma.config import get_settings

    if workers > 1 and get_settings().database_url.startswith("sqlite"):
        # Measured: two processes on one SQLite file were no faster and cost a third more CPU per event,
        # because each groups only its own requests into a transaction and they queue for the one writer.
        console.print("[red]--workers > 1 needs PostgreSQL:[/red] SQLite has a single writer, and one process "
                      "groups concurrent requests into shared transactions already.")
        raise typer.Exit(2)
    console.print(f"Tante Emma at [link]http://{host}:{port}[/link]  (docs: /docs)")
    uvicorn.run("emma.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning")


def _register_optional() -> None:
    """Sub-apps of domains that live in their own modules."""
    import importlib

    for module, name in (("emma.cli.importer", "import"), ("emma.cli.demo", "demo"),
                         ("emma.cli.channels", "channels"), ("emma.cli.templates", "templates"),
                         ("emma.cli.gdpr", "gdpr"), ("emma.cli.segments", "segments"),
                         ("emma.cli.onsite", "onsite"), ("emma.cli.stores", "stores")):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        sub = mod.app
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=name)


def _register_automation() -> None:
    from emma.cli import automation

    app.add_typer(automation.app, name="tactics")
    app.command("worker")(automation.worker)


def _register_predict() -> None:
    from emma.cli import predict

    app.command("score")(predict.score)
    app.add_typer(predict.predictions_app, name="predictions")
    app.command("recommend")(predict.recommend)
    app.command("forecast")(predict.forecast)
    app.add_typer(predict.models_app, name="models")


_register_optional()
_register_predict()
_register_automation()
