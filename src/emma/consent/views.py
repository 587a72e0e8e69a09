"""Server-rendered pages of the consent flows, in German and English."""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from emma.channels.content import normalize_locale

# Purposes grouped by the channel the customer recognises them by.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("email", ("email_marketing",)), ("sms", ("sms_marketing",)), ("push", ("push",)),
    ("web", ("personalization", "ads", "analytics")),
)

TEXT: dict[str, dict[str, str]] = {
    "de": {
        "switch": "English", "ch_email": "E-Mail", "ch_sms": "SMS", "ch_push": "Push-Nachrichten",
        "ch_web": "Website und Werbung",
        "email_marketing": "Newsletter und persönliche Angebote per E-Mail",
        "sms_marketing": "Angebote per SMS", "push": "Push-Nachrichten in der App",
        "personalization": "Persönliche Empfehlungen auf der Website",
        "ads": "Personalisierte Werbung auf anderen Seiten", "analytics": "Analyse zur Verbesserung des Shops",
        "pending": "Bestätigung per E-Mail ausstehend",
        "unsub_title": "Abmelden", "unsub_ask": "Möchten Sie keine Nachrichten mehr für „{what}“ erhalten?",
        "unsub_button": "Abmelden", "unsub_done_title": "Sie sind abgemeldet",
        "unsub_done": "Sie erhalten keine Nachrichten mehr für „{what}“. Die Änderung gilt sofort.",
        "prefs_title": "Ihre Einstellungen", "prefs_intro": "Wählen Sie, worüber und auf welchem Weg wir Sie "
        "informieren dürfen. Änderungen gelten sofort.", "prefs_button": "Speichern", "prefs_saved": "Gespeichert.",
        "prefs_link": "Alle Einstellungen", "doi_title": "Anmeldung bestätigt",
        "doi_done": "Vielen Dank! Ihre Anmeldung für „{what}“ ist bestätigt.",
        "doi_noop": "Dieser Link wurde bereits verwendet oder die Anmeldung wurde zurückgezogen.",
        "invalid_title": "Link ungültig", "invalid": "Dieser Link ist ungültig. Bitte verwenden Sie den Link aus "
        "Ihrer E-Mail vollständig.", "expired": "Dieser Link ist abgelaufen. Bitte melden Sie sich erneut an.",
    },
    "en": {
        "switch": "Deutsch", "ch_email": "Email", "ch_sms": "SMS", "ch_push": "Push notifications",
        "ch_web": "Website and ads",
        "email_marketing": "Newsletter and personal offers by email",
        "sms_marketing": "Offers by SMS", "push": "Push notifications in the app",
        "personalization": "Personal recommendations on the website",
        "ads": "Personalised ads on other sites", "analytics": "Analytics to improve the shop",
        "pending": "waiting for email confirmation",
        "unsub_title": "Unsubscribe", "unsub_ask": "Do you want to stop receiving messages for “{what}”?",
        "unsub_button": "Unsubscribe", "unsub_done_title": "You are unsubscribed",
        "unsub_done": "You will no longer receive messages for “{what}”. This takes effect immediately.",
        "prefs_title": "Your preferences", "prefs_intro": "Choose what we may tell you about and how. Changes take "
        "effect immediately.", "prefs_button": "Save", "prefs_saved": "Saved.", "prefs_link": "All preferences",
        "doi_title": "Subscription confirmed", "doi_done": "Thank you! Your subscription to “{what}” is confirmed.",
        "doi_noop": "This link was already used, or the subscription was withdrawn.",
        "invalid_title": "Invalid link", "invalid": "This link is not valid. Please use the complete link from "
        "your email.", "expired": "This link has expired. Please sign up again.",
    },
}


@functools.cache
def _env() -> Environment:
    return Environment(loader=PackageLoader("emma.consent", "templates"), autoescape=select_autoescape(["html"]))


def lang_of(*, requested: str | None, customer_locale: str | None, default: str) -> str:
    """The page language: ?lang=, else the customer's, else the default."""
    return normalize_locale(requested or customer_locale, normalize_locale(default))


def page(*, lang: str, title: str, paragraphs: list[str], switch_url: str | None = None, **extra: Any) -> str:
    """One page in the shop's simple layout."""
    t = TEXT[lang]
    return _env().get_template("page.html").render(
        lang=lang, title=title, paragraphs=paragraphs, switch_url=switch_url, switch_label=t["switch"],
        pending_label=t["pending"], **extra)


def preference_groups(*, lang: str, status: dict[str, str]) -> list[dict[str, Any]]:
    """Checkbox groups per channel with the current state of each purpose."""
    t = TEXT[lang]
    return [{"channel": t[f"ch_{channel}"],
             "items": [{"purpose": p, "label": t[p], "checked": status.get(p) == "granted",
                        "pending": status.get(p) == "pending"} for p in purposes]}
            for channel, purposes in GROUPS]
