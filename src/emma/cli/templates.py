"""`emma templates`: list the templates and preview one for a real customer."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from emma.cli.common import cli_session, console, err_console
from emma.config import get_settings

app = typer.Typer(help="Message templates (German and English).", no_args_is_help=True)


@app.command("list")
def list_templates() -> None:
    """Every template with its channel and locales (packaged defaults and the template directory)."""
    from emma.channels import content

    table = Table("channel", "template", "locales")
    for (channel, name), locales in sorted(content.available(settings=get_settings()).items()):
        table.add_row(channel, name, ", ".join(sorted(locales)))
    console.print(table)


@app.command("preview")
def preview(template: str, customer: str = typer.Option(..., "--customer", help="id, external id or email"),
            locale: str = typer.Option(None, help="de | en (default: the customer's)"),
            channel: str = typer.Option("email", help="email | sms | push"),
            data: str = typer.Option(None, help="template data as JSON (as the outbox payload)"),
            html: bool = typer.Option(False, "--html", help="print the HTML part too")) -> None:
    """Render TEMPLATE for a customer exactly as the delivery loop would, without sending anything."""
    from emma.channels import content
    from emma.channels import service as channels
    from emma.channels.exceptions import RenderError
    from emma.channels.models import OutboxMessage
    from emma.profiles import service as profiles
    from emma.profiles.exceptions import CustomerNotFound

    settings = get_settings()
    try:
        payload = json.loads(data) if data else {}
    except ValueError as exc:
        err_console.print(f"[red]--data: not JSON: {exc}[/red]")
        raise typer.Exit(2) from exc
    with cli_session() as session:
        try:
            c = profiles.get_customer(session=session, ref=customer)
        except CustomerNotFound as exc:
            err_console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
        msg = OutboxMessage(id=0, customer_id=c.id, channel=channel, template=template, payload=payload,
                            purpose=None, transactional=False, tactic_id="preview")
        try:
            ctx = channels.context_for(session=session, message=msg, customer=c, settings=settings)
            out = content.render(channel=channel, template=template, settings=settings, context=ctx,
                                 locale=locale or c.locale or settings.default_locale)
        except RenderError as exc:
            err_console.print(f"[red]would be held: {exc}[/red]")
            raise typer.Exit(1) from exc
        session.rollback()  # a preview changes nothing
    if out.subject:
        typer.echo(f"Subject: {out.subject}\n")
    if out.text:
        typer.echo(out.text)
    if html and out.html:
        typer.echo("\n--- HTML ---\n" + out.html)
