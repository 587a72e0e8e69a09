"""`emma segments`: define segments, count them, list their members."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from emma.cli.common import cli_session, console, err_console

app = typer.Typer(help="Segments: rules over profiles, consent, events, orders, carts and predictions.",
                  no_args_is_help=True)


def _now(at: str | None) -> dt.datetime:
    if at is None:
        from emma.db import utcnow

        return utcnow()
    value = dt.datetime.fromisoformat(at)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _load(path: Path) -> Any:
    """The rule file's data; a file that is not valid YAML / JSON ends the command with the place and the reason."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        reason = f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        reason = f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"
    except UnicodeDecodeError as exc:
        reason = f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    err_console.print(f"[red]{reason}[/red]", highlight=False)
    raise typer.Exit(1)


def _fail(exc: Exception) -> typer.Exit:
    from emma.segments.exceptions import InvalidRule

    if isinstance(exc, InvalidRule):
        for path, reason in exc.errors:
            err_console.print(f"[red]{path}: {reason}[/red]", highlight=False)
    else:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
    return typer.Exit(1)


@app.command("create")
def create(key: str, file: Path = typer.Option(..., "--file", "-f", exists=True, dir_okay=False,
                                               help="the rule as YAML or JSON"),
           name: str = typer.Option(None, help="display name"),
           description: str = typer.Option(None, help="what the segment is for"),
           replace: bool = typer.Option(False, "--replace", help="update the segment if the key exists")) -> None:
    """Create a segment from a rule file (YAML or JSON)."""
    from emma.segments import service
    from emma.segments.exceptions import InvalidRule, SegmentExists

    rule = _load(file)
    if isinstance(rule, dict) and "rule" in rule and set(rule) <= {"rule", "name", "description"}:
        name, description, rule = name or rule.get("name"), description or rule.get("description"), rule["rule"]
    try:
        with cli_session() as session:
            try:
                seg = service.create(session=session, key=key, rule=rule, name=name, description=description)
                verb = "created"
            except SegmentExists:
                if not replace:
                    raise
                seg = service.update_segment(session=session, key=key, rule=rule, name=name, description=description)
                verb = "updated"
    except (InvalidRule, SegmentExists) as exc:
        raise _fail(exc) from exc
    console.print(f"segment [bold]{seg.key}[/bold] {verb} (version {seg.version})")


@app.command("list")
def list_() -> None:
    """All segments with their stored member counts."""
    from emma.segments import service

    table = Table("key", "name", "version", "active", "members (stored)", "updated")
    with cli_session() as session:
        for s in service.list_segments(session=session):
            stored = service.member_count(session=session, segment=s)
            table.add_row(s.key, s.name, str(s.version), "yes" if s.active else "no", str(stored),
                          s.updated_at.isoformat(timespec="seconds"))
    console.print(table)


@app.command("show")
def show(key: str, as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """A segment's definition."""
    from emma.segments import service
    from emma.segments.exceptions import SegmentNotFound

    with cli_session() as session:
        try:
            s = service.get(session=session, key=key)
        except SegmentNotFound as exc:
            raise _fail(exc) from exc
        data = {"key": s.key, "name": s.name, "description": s.description, "version": s.version,
                "active": s.active, "created_at": s.created_at.isoformat(), "updated_at": s.updated_at.isoformat(),
                "stored_members": service.member_count(session=session, segment=s), "rule": s.rule}
    if as_json:
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    import yaml

    typer.echo(yaml.safe_dump(data, allow_unicode=True, sort_keys=False).rstrip())


@app.command("count")
def count(key: str, at: str = typer.Option(None, help="evaluate at this time (ISO), default now")) -> None:
    """How many customers match the segment now (live, by SQL)."""
    from emma.segments import service
    from emma.segments.exceptions import SegmentNotFound

    with cli_session() as session:
        try:
            n = service.count(session=session, segment=key, now=_now(at))
        except SegmentNotFound as exc:
            raise _fail(exc) from exc
    typer.echo(n)


@app.command("members")
def members(key: str, limit: int = typer.Option(100, help="at most this many (0: all)"),
            at: str = typer.Option(None, help="evaluate at this time (ISO), default now")) -> None:
    """Ids and external ids of matching customers, one per line."""
    from sqlalchemy import select

    from emma.profiles.models import Customer
    from emma.segments import service
    from emma.segments.exceptions import SegmentNotFound

    with cli_session() as session:
        try:
            ids = service.members(session=session, segment=key, now=_now(at), limit=limit or None)
        except SegmentNotFound as exc:
            raise _fail(exc) from exc
        external: dict[int, str | None] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            external.update(session.execute(
                select(Customer.id, Customer.external_id).where(Customer.id.in_(chunk))).all())
    for cid in ids:
        typer.echo(f"{cid}\t{external.get(cid) or ''}")


@app.command("refresh")
def refresh(at: str = typer.Option(None, help="evaluate at this time (ISO), default now")) -> None:
    """Bring stored memberships up to date for every active segment; records enter and exit events."""
    from collections import Counter

    from emma.segments import service

    with cli_session() as session:
        transitions = service.refresh_all(session=session, now=_now(at))
    counts = Counter((t.segment, t.kind) for t in transitions)
    for (key, kind), n in sorted(counts.items()):
        console.print(f"{key}: {n} {'entered' if kind == 'enter' else 'left'}")
    console.print(f"{len(transitions)} transition(s)")
