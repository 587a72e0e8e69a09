"""Personalised content: marketers' Jinja templates rendered in a sandbox, in German and English.

A template is a set of files per channel, name and locale: ``email/cart_abandoned.de.subject.txt``,
``email/cart_abandoned.de.txt`` and ``email/cart_abandoned.de.html`` (HTML is autoescaped). Files in
settings.template_dir override the packaged defaults of the same path.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined, TemplateError, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from emma.channels.exceptions import RenderError
from emma.config import Settings

LOCALES = ("de", "en")

# Customer-facing strings used by the shared macros and pages.
STRINGS: dict[str, dict[str, str]] = {
    "de": {
        "hello": "Hallo", "hello_anonymous": "Guten Tag", "your_cart": "Ihr Warenkorb",
        "quantity": "Menge", "price": "Preis", "to_cart": "Zum Warenkorb", "recommended": "Das könnte Ihnen gefallen",
        "offer": "Unser Angebot für Sie", "coupon": "Ihr persönlicher Gutschein", "coupon_valid_until": "gültig bis",
        "view_product": "Ansehen", "unsubscribe": "Abmelden", "preferences": "Einstellungen",
        "footer": "Sie erhalten diese E-Mail, weil Sie unseren Newsletter abonniert haben.",
        "footer_transactional": "Diese E-Mail wurde automatisch versandt.",
        "why": "Warum Sie diese Nachricht erhalten",
    },
    "en": {
        "hello": "Hello", "hello_anonymous": "Hello", "your_cart": "Your cart", "quantity": "Quantity",
        "price": "Price", "to_cart": "Go to your cart", "recommended": "You might also like",
        "offer": "Our offer for you", "coupon": "Your personal coupon", "coupon_valid_until": "valid until",
        "view_product": "View", "unsubscribe": "Unsubscribe", "preferences": "Preferences",
        "footer": "You receive this email because you subscribed to our newsletter.",
        "footer_transactional": "This email was sent automatically.",
        "why": "Why you receive this message",
    },
}


@dataclass
class Rendered:
    subject: str | None
    text: str | None
    html: str | None


def normalize_locale(value: str | None, default: str = "de") -> str:
    """'de-DE', 'de_AT', 'EN' -> 'de' / 'en'; anything unsupported -> default."""
    lang = (value or "").replace("_", "-").split("-")[0].lower()
    return lang if lang in LOCALES else default


def _money(value: Any, currency: str = "EUR", locale: str = "de") -> str:
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError):
        return str(value)
    symbol = {"EUR": "€", "USD": "$", "GBP": "£", "CHF": "CHF"}.get(currency, currency)
    if locale == "de":
        whole, _, cents = f"{amount:,.2f}".partition(".")
        return f"{whole.replace(',', '.')},{cents} {symbol}"
    return f"{symbol}{amount:,.2f}"


def _date(value: Any, locale: str = "de") -> str:
    if isinstance(value, str):  # ISO dates from payloads (JSON has no date type)
        try:
            value = dt.date.fromisoformat(value[:10])
        except ValueError:
            return value
    if not hasattr(value, "strftime"):
        return str(value)
    return value.strftime("%d.%m.%Y" if locale == "de" else "%B %-d, %Y")


class _Undefined(StrictUndefined):
    """Printing, iterating or computing with a missing value fails (the message is held); testing it is falsy,
    so optional data reads naturally: {% if offer.text %}...{% endif %}."""

    def __bool__(self) -> bool:
        return False


@functools.lru_cache(maxsize=8)
def _environment(template_dir: str | None) -> ImmutableSandboxedEnvironment:
    loaders = [FileSystemLoader(template_dir)] if template_dir else []
    loaders.append(PackageLoader("emma.channels", "templates"))
    # Immutable sandbox: no attribute access to internals, no calls to unsafe callables, no mutation of data;
    # _Undefined: a missing variable is an error (the message is held), never an empty hole.
    env = ImmutableSandboxedEnvironment(loader=ChoiceLoader(loaders), undefined=_Undefined,
                                        autoescape=select_autoescape(enabled_extensions=("html",),
                                                                     default_for_string=False),
                                        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    env.filters["money"] = _money
    env.filters["date"] = _date
    return env


def environment(settings: Settings) -> ImmutableSandboxedEnvironment:
    """The sandboxed environment for the settings' template directory."""
    return _environment(settings.template_dir)


def available(*, settings: Settings) -> dict[tuple[str, str], set[str]]:
    """(channel, template) -> the locales it exists in."""
    out: dict[tuple[str, str], set[str]] = {}
    for name in environment(settings).list_templates():
        channel, _, rest = name.partition("/")
        parts = rest.split(".")
        if not rest or len(parts) < 3 or parts[1] not in LOCALES:
            continue
        out.setdefault((channel, parts[0]), set()).add(parts[1])
    return out


def _candidates(locale: str, settings: Settings) -> list[str]:
    return list(dict.fromkeys([locale, normalize_locale(settings.default_locale), *LOCALES]))


def resolve_locale(*, channel: str, template: str, locale: str, settings: Settings) -> str:
    """The locale the template exists in: the wanted one, else the default, else any shipped one."""
    env = environment(settings)
    names = env.list_templates() if hasattr(env.loader, "list_templates") else []
    for loc in _candidates(locale, settings):
        prefix = f"{channel}/{template}.{loc}."
        if any(n.startswith(prefix) for n in names):
            return loc
    raise RenderError(f"template {channel}/{template} does not exist (in any of {', '.join(LOCALES)})")


def render(*, channel: str, template: str, locale: str, context: dict[str, Any], settings: Settings) -> Rendered:
    """Render subject, text and HTML parts; RenderError when any part fails or a required one is missing."""
    env = environment(settings)
    loc = resolve_locale(channel=channel, template=template, locale=normalize_locale(locale), settings=settings)
    ctx = {**context, "locale": loc, "t": STRINGS[loc]}
    ctx["money"] = functools.partial(_money, locale=loc)
    ctx["date"] = functools.partial(_date, locale=loc)
    parts: dict[str, str | None] = {}
    for part, suffix in (("subject", "subject.txt"), ("text", "txt"), ("html", "html")):
        name = f"{channel}/{template}.{loc}.{suffix}"
        try:
            tmpl = env.get_template(name)
        except TemplateError as exc:
            if exc.__class__.__name__ == "TemplateNotFound" and getattr(exc, "name", None) == name:
                parts[part] = None
                continue
            raise RenderError(f"{name}: {exc.__class__.__name__}: {exc}") from exc
        try:
            parts[part] = tmpl.render(ctx).strip() if part != "html" else tmpl.render(ctx)
        except Exception as exc:  # noqa: BLE001 - any failure in a marketer's template holds the message
            raise RenderError(f"{name}: {exc.__class__.__name__}: {exc}") from exc
    if not parts["text"] and not parts["html"]:
        raise RenderError(f"{channel}/{template}.{loc}: neither a .txt nor an .html part")
    if channel in ("email", "push") and not parts["subject"]:
        raise RenderError(f"{channel}/{template}.{loc}: the subject part is missing or empty")
    if parts["text"]:
        parts["text"] = re.sub(r"\n[ \t]*(\n[ \t]*){2,}", "\n\n", parts["text"])  # blocks leave blank runs
    if parts["subject"]:
        parts["subject"] = " ".join(parts["subject"].split())  # one header line
    return Rendered(subject=parts["subject"], text=parts["text"], html=parts["html"])


def render_string(source: str, context: dict[str, Any], *, settings: Settings, html: bool = False) -> str:
    """Render template source given inline (tests, previews of drafts), with the same sandbox."""
    env = environment(settings)
    try:
        tmpl = env.from_string(source)
        if html:
            tmpl = env.from_string("{% autoescape true %}" + source + "{% endautoescape %}")
        return tmpl.render(context)
    except Exception as exc:  # noqa: BLE001
        raise RenderError(f"{exc.__class__.__name__}: {exc}") from exc
