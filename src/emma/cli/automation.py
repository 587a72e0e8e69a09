"""`emma tactics list|show|enable|disable|copy|test` and `emma worker`."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from emma.cli.common import cli_session, console, err_console
from emma.config import get_settings

app = typer.Typer(help="The tactic library: ready-made automation programs.", no_args_is_help=True)


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]{exc}[/red]")
    return typer.Exit(code)


@app.command("list")
def tactics_list(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Every tactic with its state, entry trigger and the models it still lacks."""
    from emma.automation import service

    with cli_session() as session:
        rows = service.list_tactics(session=session)
    if as_json:
        typer.echo(json.dumps([r.model_dump() for r in rows], indent=2, ensure_ascii=False))
        return
    table = Table("id", "name", "enabled", "source", "entry", "channels", "prio", "holdout", "missing models")
    for r in rows:
        table.add_row(r.id, r.name, "[green]on[/green]" if r.enabled else "off", r.source, r.entry,
                      ",".join(r.channels), str(r.priority), f"{r.holdout:.0%}", ", ".join(r.missing))
    console.print(table)


@app.command("show")
def tactics_show(tactic_id: str) -> None:
    """The tactic's definition as YAML (copy it and edit the copy)."""
    from emma.automation import service
    from emma.automation.exceptions import TacticNotFound

    with cli_session() as session:
        try:
            t, on, source = service.get_tactic(session=session, tactic_id=tactic_id)
        except TacticNotFound as exc:
            raise _fail(exc) from exc
    console.print(f"# {t.names.de} / {t.names.en} — {'enabled' if on else 'disabled'} ({source})", highlight=False)
    typer.echo(service.to_yaml(t))


@app.command("enable")
def tactics_enable(tactic_id: str,
                   force: bool = typer.Option(False, help="enable although models are missing")) -> None:
    """Switch a tactic on."""
    from emma.automation import service
    from emma.automation.exceptions import TacticNotFound

    with cli_session() as session:
        try:
            missing = service.set_enabled(session=session, tactic_id=tactic_id, enabled=True, force=force)
        except TacticNotFound as exc:
            raise _fail(exc) from exc
    if missing and not force:
        raise _fail(RuntimeError(f"{tactic_id} needs predictions that no scoring run produced yet: "
                                 f"{', '.join(missing)} (run `emma score`, or --force)"))
    console.print(f"[green]{tactic_id} enabled[/green]")


@app.command("disable")
def tactics_disable(tactic_id: str) -> None:
    """Switch a tactic off (its live runs end at their next step)."""
    from emma.automation import service
    from emma.automation.exceptions import TacticNotFound

    with cli_session() as session:
        try:
            service.set_enabled(session=session, tactic_id=tactic_id, enabled=False)
        except TacticNotFound as exc:
            raise _fail(exc) from exc
    console.print(f"{tactic_id} disabled")


@app.command("copy")
def tactics_copy(source_id: str, new_id: str,
                 from_file: Path = typer.Option(None, "--from", help="edited YAML to store as the copy")) -> None:
    """Copy a tactic under a new id (disabled); the original stays in the library."""
    from emma.automation import library, service
    from emma.automation.exceptions import AutomationError

    settings = get_settings()
    with cli_session() as session:
        try:
            changes = None
            if from_file is not None:
                edited = library.load_text(from_file.read_text(encoding="utf-8"), source=str(from_file))
                changes = edited.model_dump(mode="json", by_alias=True, exclude_none=True)
            copy = service.copy_tactic(session=session, source_id=source_id, new_id=new_id, changes=changes,
                                       settings=settings)
        except AutomationError as exc:
            raise _fail(exc) from exc
    console.print(f"[green]{copy.id}[/green] copied from {source_id} (disabled; `emma tactics enable {copy.id}`)")


@app.command("test")
def tactics_test(tactic_id: str, file: Path = typer.Option(None, "--file", help="test a YAML file instead")) -> None:
    """Play the tactic's scenario on a virtual clock and print the timeline; exit 0 only if expectations hold."""
    from emma.automation import library, scenario, service
    from emma.automation.exceptions import AutomationError

    try:
        if file is not None:
            t = library.load_text(file.read_text(encoding="utf-8"), source=str(file))
        elif tactic_id in library.library():  # the shipped library needs no database
            t = library.library()[tactic_id]
        else:
            with cli_session() as session:
                t, _, _ = service.get_tactic(session=session, tactic_id=tactic_id)
        result = scenario.play(tactic=t, settings=get_settings())
    except (AutomationError, ValueError) as exc:  # ValueError: an input of the scenario was rejected
        raise _fail(exc, 2) from exc
    sc = t.scenario
    console.rule(f"[bold]{t.names.en}[/bold] ({t.id} v{t.version}) — test customer {sc.customer.external_id}, "
                 f"{sc.customer.timezone}, start {sc.start:%Y-%m-%d %H:%M} UTC")
    table = Table("when", "", "what and why", box=None, show_header=False)
    style = {"input": "cyan", "step": "white", "suppressed": "yellow", "message": "bold green"}
    icon = {"input": "→", "step": "·", "suppressed": "✗", "message": "✉"}
    for ln in result.lines:
        table.add_row(scenario.fmt_offset(ln.offset), icon[ln.kind], f"[{style[ln.kind]}]{escape(ln.text)}[/]")
    console.print(table)
    sent = [m for m in result.messages if m["status"] != "suppressed"]
    console.print(f"{len(sent)} message(s); run(s): " + ", ".join(f"{r['status']}" for r in result.runs)
                  + f"; {scenario.fmt_offset(result.elapsed_virtual)} of virtual time")
    if result.failures:
        for f in result.failures:
            err_console.print(f"[red]✗ {f}[/red]")
        raise typer.Exit(1)
    console.print("[green]✓ all expectations hold[/green]")


def worker(deliver: bool = typer.Option(True, help="also run the delivery loop (send the outbox)"),
           once: bool = typer.Option(False, help="one pass, then exit")) -> None:
    """Process new events and due runs (and deliver the outbox) until stopped."""
    from emma.automation import jobs
    from emma.automation.clock import SystemClock
    from emma.db import make_engine, make_sessionmaker

    settings = get_settings()
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    if once:
        counts = jobs.tick(sessions=sessions, settings=settings, now=SystemClock().now())
        console.print(dict(counts))
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threads = []
    if deliver:
        from emma.channels import jobs as delivery

        threads.append(threading.Thread(target=delivery.run, kwargs={"sessions": sessions, "settings": settings,
                                                                     "stop": stop}, daemon=True))
        threads[-1].start()
    console.print("worker running (Ctrl-C stops)")
    jobs.run(sessions=sessions, settings=settings, stop=stop)
    for t in threads:
        t.join(timeout=10)
    engine.dispose()
