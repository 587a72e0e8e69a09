"""Templates: the sandbox stops attacks, shipped templates render in German and English, preview CLI."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from emma.channels import content
from emma.channels.exceptions import RenderError
from emma.cli.main import app
from emma.config import Settings, get_settings
from emma.ingest import service as ingest
from emma.profiles.models import Customer

ATTACKS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ customer.__class__.__base__.__subclasses__() }}",
    "{{ '{0.__class__.__mro__}'.format(customer) }}",
    "{{ customer.get.__self__.__class__ }}",
    "{% set _ = customer.update({'email': 'evil@example.org'}) %}{{ customer.email }}",
    "{{ range(10**9)|list|length }}",
    "{% include '/etc/passwd' %}",
    "{% include '../../../../../../etc/passwd' %}",
    "{{ config }}{{ request }}",
]


def _ctx() -> dict:  # type: ignore[type-arg]
    return {"customer": {"first_name": "Anna", "email": "anna@example.org"}, "links": {}, "transactional": False}


@pytest.mark.parametrize("source", ATTACKS)
def test_sandbox_stops_template_attacks(source, tmp_path):
    settings = Settings(template_dir=str(tmp_path))
    with pytest.raises(RenderError):
        content.render_string(source, _ctx(), settings=settings)
    # the same source as a marketer's template file: the message would be held
    (tmp_path / "email").mkdir(exist_ok=True)
    (tmp_path / "email" / "evil.de.subject.txt").write_text("Hallo")
    (tmp_path / "email" / "evil.de.txt").write_text(source)
    with pytest.raises(RenderError):
        content.render(channel="email", template="evil", locale="de", context=_ctx(), settings=settings)


FULL = {
    "customer": {"first_name": "Anna", "last_name": "Muster", "email": "anna@example.org"},
    "links": {"unsubscribe": "https://e.example/u/x", "preferences": "https://e.example/preferences/y",
              "cart": "https://shop.example/cart"},
    "transactional": False,
    "cart": {"items": [{"sku": "POT", "name": "Schmortopf", "quantity": 2, "price": Decimal("49.90"),
                        "currency": "EUR", "url": "https://shop.example/p/pot"}], "currency": "EUR"},
    "recommendations": [{"sku": "LID", "name": "Deckel", "price": Decimal("12.5"), "currency": "EUR",
                         "url": "https://shop.example/p/lid", "image_url": "https://shop.example/i/lid.jpg"}],
    "coupon": {"code": "EMMA-7QK2-XR", "value": "10 %", "expires_at": dt.datetime(2026, 4, 30, tzinfo=dt.UTC)},
    "offer": {"product": {"name": "Bräter", "price": "89.00", "currency": "EUR", "url": "https://shop.example/p/b"},
              "text": "Passt zu Ihrem Topf.", "reason": "Kauf vor drei Wochen"},
    "confirm_url": "https://e.example/consent/confirm/z", "ttl_hours": 72,
}


@pytest.mark.parametrize(("channel", "name"), sorted(content.available(settings=Settings())))
@pytest.mark.parametrize("locale", ["de", "en"])
def test_every_shipped_template_renders_in_both_languages(channel, name, locale):
    out = content.render(channel=channel, template=name, locale=locale, context=FULL, settings=Settings())
    assert out.text and "{{" not in out.text and "{%" not in out.text
    if channel in ("email", "push"):
        assert out.subject
    if channel == "email":
        assert out.html and out.html.lstrip().startswith("<!DOCTYPE html>")
        assert f'lang="{locale}"' in out.html
        if name != "double_opt_in":
            assert ("Abmelden" if locale == "de" else "Unsubscribe") in out.html
            assert "https://e.example/u/x" in out.text


def test_blocks_show_cart_recommendations_coupon_in_the_customers_language():
    de = content.render(channel="email", template="cart_abandoned", locale="de-AT", context=FULL, settings=Settings())
    en = content.render(channel="email", template="cart_abandoned", locale="en", context=FULL, settings=Settings())
    assert "2 x Schmortopf (49,90 €)" in de.text and "Das könnte Ihnen gefallen" in de.text
    assert "EMMA-7QK2-XR" in de.text and "gültig bis 30.04.2026" in de.text
    assert "2 x Schmortopf (€49.90)" in en.text and "You might also like" in en.text
    assert "valid until April 30, 2026" in en.text
    assert 'src="https://shop.example/i/lid.jpg"' in de.html and "12,50 €" in de.html
    nbo = content.render(channel="email", template="next_best_offer", locale="de", context=FULL, settings=Settings())
    assert nbo.subject == "Ausgewählt für Sie: Bräter"
    assert "Warum Sie diese Nachricht erhalten: Kauf vor drei Wochen" in nbo.html


def test_unknown_locale_falls_back_and_template_dir_overrides(tmp_path):
    out = content.render(channel="email", template="winback_coupon", locale="fr", context=FULL, settings=Settings())
    assert out.subject.startswith("Wir vermissen Sie")
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "winback_coupon.de.subject.txt").write_text("Eigener Betreff für {{ customer.first_name }}")
    own = content.render(channel="email", template="winback_coupon", locale="de", context=FULL,
                         settings=Settings(template_dir=str(tmp_path)))
    assert own.subject == "Eigener Betreff für Anna"
    assert "EMMA-7QK2-XR" in own.text  # parts not overridden still come from the package


def test_preview_cli_renders_for_a_customer(db_url, session, monkeypatch):
    t = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    ingest.ingest(session=session, received_at=t, raw_messages=[{
        "type": "identify", "userId": "u9", "messageId": "i9", "timestamp": t.isoformat(),
        "traits": {"email": "jo@example.org", "first_name": "Jo", "locale": "en-US"}}])
    session.commit()
    cid = session.scalar(select(Customer.id).where(Customer.external_id == "u9"))
    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        r = runner.invoke(app, ["templates", "preview", "winback_coupon", "--customer", str(cid),
                                "--data", '{"coupon": {"code": "ABC-123"}}'])
        assert r.exit_code == 0, r.output
        assert "Subject: We miss you" in r.output and "Hello Jo," in r.output and "ABC-123" in r.output
        de = runner.invoke(app, ["templates", "preview", "winback_coupon", "--customer", "u9", "--locale", "de"])
        assert de.exit_code == 0 and "Hallo Jo," in de.output
        missing = runner.invoke(app, ["templates", "preview", "nope", "--customer", "u9"])
        assert missing.exit_code == 1
    finally:
        get_settings.cache_clear()
