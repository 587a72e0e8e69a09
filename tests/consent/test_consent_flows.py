"""Consent in practice over HTTP: double opt-in, RFC 8058 one-click unsubscribe, preference center."""

from __future__ import annotations

import datetime as dt
import re
import socket
from collections.abc import Iterator
from email import message_from_bytes, policy
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import select

from emma.app import create_app
from emma.auth import service as auth
from emma.channels import jobs
from emma.channels import service as channels
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.consent.models import Consent
from emma.db import make_sessionmaker
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.profiles.models import Customer
from emma.signing import ExpiredToken, InvalidToken

BASE = "https://emma.shop.example"


class _Inbox:
    def __init__(self) -> None:
        self.mails: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.mails.append(message_from_bytes(envelope.original_content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def inbox() -> Iterator[tuple[_Inbox, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = _Inbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def env(db_url, session, inbox):  # type: ignore[no-untyped-def]
    box, port = inbox
    settings = Settings(database_url=db_url, base_url=BASE, secret_key="flows-secret", smtp_port=port,
                        smtp_host="127.0.0.1", default_locale="de")
    key = auth.create_key(session=session, kind="write")
    session.commit()
    client = TestClient(create_app(settings))
    return settings, client, key, box, make_sessionmaker(session.get_bind())


def _path(url: str) -> str:
    assert url.startswith(BASE), url
    return url[len(BASE):]


def _customer(session, ext: str = "c1", locale: str = "de-DE", grant: bool = True) -> int:  # type: ignore[no-untyped-def]
    t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    ingest.ingest(session=session, received_at=t, raw_messages=[{
        "type": "identify", "userId": ext, "messageId": f"i-{ext}", "timestamp": t.isoformat(),
        "traits": {"email": f"{ext}@example.org", "first_name": "Eva", "locale": locale}}])
    cid = session.scalar(select(Customer.id).where(Customer.external_id == ext))
    if grant:
        consent.record(session=session, customer_id=cid, purpose="email_marketing", status="granted",
                       source="import", recorded_at=t)
    session.commit()
    return cid


def _status(session, cid: int, purpose: str = "email_marketing") -> str | None:  # type: ignore[no-untyped-def]
    session.expire_all()
    return session.scalar(select(Consent.status).where(Consent.customer_id == cid, Consent.purpose == purpose))


def test_double_opt_in_only_a_confirmed_address_gets_marketing(env, session):
    settings, client, key, box, sessions = env
    r = client.post("/v1/consent/subscribe", auth=(key, ""), json={
        "userId": "new-1", "email": "neu@example.org", "locale": "de-DE", "text_version": "nl-2026-01"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"
    cid = r.json()["customer_id"]
    again = client.post("/v1/consent/subscribe", auth=(key, ""), json={"userId": "new-1", "email": "neu@example.org"})
    assert again.json()["confirmation_message_id"] == r.json()["confirmation_message_id"]  # no second mail
    early = channels.enqueue(session=session, idempotency_key="early", customer_id=cid, channel="email",
                             template="winback_coupon", purpose="email_marketing")
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings) == {"sent": 1, "suppressed": 1}
    [mail] = box.mails
    assert mail["To"] == "neu@example.org" and mail["Subject"] == "Bitte bestätigen Sie Ihre Anmeldung"
    assert mail["List-Unsubscribe"] is None
    text = mail.get_body(("plain",)).get_content()
    link = re.search(rf"{re.escape(BASE)}/consent/confirm/\S+", text).group(0)
    html = mail.get_body(("html",)).get_content()
    assert f'href="{link}"' in html  # our own link is not routed through the click redirect
    assert _status(session, cid) == "pending"

    page = client.get(_path(link))
    assert page.status_code == 200 and "Anmeldung bestätigt" in page.text
    assert _status(session, cid) == "granted"
    log = consent.history(session=session, customer_id=cid)
    assert [(x.status, x.source, x.text_version) for x in log] == [
        ("pending", "signup", "nl-2026-01"), ("granted", "double_opt_in", None)]
    assert "bereits verwendet" in client.get(_path(link)).text  # a second click changes nothing
    later = channels.enqueue(session=session, idempotency_key="later", customer_id=cid, channel="email",
                             template="winback_coupon", purpose="email_marketing")
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings) == {"sent": 1}
    session.expire_all()
    assert session.get(OutboxMessage, early.id).status == "suppressed"
    assert session.get(OutboxMessage, later.id).status == "sent"


def test_expired_and_forged_confirmation_links_are_rejected(env, session):
    settings, client, _, _, _ = env
    cid = _customer(session, grant=False)
    consent.request_opt_in(session=session, customer_id=cid, settings=settings)
    session.commit()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=settings.doi_link_ttl_hours + 1)
    expired = consent.confirmation_token(customer_id=cid, purpose="email_marketing", settings=settings, now=old)
    r = client.get(f"/consent/confirm/{expired}")
    assert r.status_code == 410 and "abgelaufen" in r.text
    with pytest.raises(ExpiredToken):
        consent.confirm_opt_in(session=session, token=expired, settings=settings)
    good = consent.confirmation_token(customer_id=cid, purpose="email_marketing", settings=settings)
    body, _, sig = good.partition(".")
    forged_other = consent.confirmation_token(customer_id=cid + 1, purpose="email_marketing", settings=settings)
    for bad in (f"{forged_other.partition('.')[0]}.{sig}", good[:-2], "x", f"{body}."):
        assert client.get(f"/consent/confirm/{bad}").status_code == 400
    other_key = Settings(secret_key="another-secret", doi_link_ttl_hours=72)
    assert client.get("/consent/confirm/" + consent.confirmation_token(
        customer_id=cid, purpose="email_marketing", settings=other_key)).status_code == 400
    assert _status(session, cid) == "pending"


def test_one_click_unsubscribe_from_the_list_unsubscribe_header(env, session):
    settings, client, _, box, sessions = env
    cid = _customer(session)
    m = channels.enqueue(session=session, idempotency_key="nl", customer_id=cid, channel="email",
                         template="winback_coupon", purpose="email_marketing")
    session.commit()
    jobs.deliver_due(sessions=sessions, settings=settings)
    [mail] = box.mails
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.fullmatch(r"<(https://[^>]+)>", str(mail["List-Unsubscribe"])).group(1)

    # A GET (link scanner, or a human) shows a page and changes nothing.
    page = client.get(_path(url))
    assert page.status_code == 200 and "<form method=\"post\"" in page.text and "Abmelden" in page.text
    assert _status(session, cid) == "granted"
    assert "Unsubscribe" in client.get(_path(url) + "?lang=en").text

    # What a mail client sends for RFC 8058.
    r = client.post(_path(url), content=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 200 and "set-cookie" not in r.headers
    assert _status(session, cid) == "revoked"
    assert consent.history(session=session, customer_id=cid)[-1].source == "unsubscribe:one-click"
    assert channels.delivery_log(session=session, message_id=m.id)[-1].status == "unsubscribed"
    assert session.scalar(select(Event.name).where(Event.customer_id == cid, Event.name == "Email Unsubscribed"))
    # A message still in the outbox is not delivered.
    channels.enqueue(session=session, idempotency_key="after", customer_id=cid, channel="email",
                     template="winback_coupon", purpose="email_marketing")
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings) == {"suppressed": 1}


def test_one_click_post_as_multipart_form_data(env, session):
    settings, client, _, _, _ = env
    cid = _customer(session)
    url = consent.unsubscribe_url(customer_id=cid, purpose="email_marketing", message_id=None, settings=settings)
    r = client.post(_path(url), files={"List-Unsubscribe": (None, "One-Click")})
    assert r.status_code == 200 and r.text == "unsubscribed"
    assert _status(session, cid) == "revoked"
    assert consent.history(session=session, customer_id=cid)[-1].source == "unsubscribe:one-click"


def test_forged_unsubscribe_tokens_change_nothing(env, session):
    settings, client, _, _, _ = env
    cid = _customer(session)
    victim = _customer(session, ext="c2")
    mine = consent.unsubscribe_token(customer_id=cid, purpose="email_marketing", message_id=None, settings=settings)
    body, _, sig = mine.partition(".")
    theirs = consent.unsubscribe_token(customer_id=victim, purpose="email_marketing", message_id=None,
                                       settings=settings).partition(".")[0]
    pixel = channels.tracking_token(kind="open", message_id=1, settings=settings)  # right key, wrong purpose
    for bad in (f"{theirs}.{sig}", pixel, f"{body}.{sig[:-3]}"):
        r = client.post(f"/u/{bad}", content=b"List-Unsubscribe=One-Click",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400
        assert client.get(f"/u/{bad}").status_code == 400
    with pytest.raises(InvalidToken):
        consent.unsubscribe(session=session, token=pixel, settings=settings)
    assert _status(session, cid) == "granted" and _status(session, victim) == "granted"


def test_preference_center_updates_consent_and_audit_log_immediately(env, session):
    settings, client, _, _, _ = env
    cid = _customer(session, locale="en-GB")
    url = consent.preferences_url(customer_id=cid, settings=settings)
    page = client.get(_path(url))
    assert page.status_code == 200 and 'lang="en"' in page.text and "Your preferences" in page.text
    assert re.search(r'name="email_marketing" value="1" checked', page.text)
    assert not re.search(r'name="sms_marketing" value="1" checked', page.text)
    german = client.get(_path(url) + "?lang=de")
    assert "Ihre Einstellungen" in german.text and "Angebote per SMS" in german.text

    form = "shown=email_marketing,sms_marketing,push,personalization,ads,analytics&sms_marketing=1&personalization=1"
    r = client.post(_path(url), content=form.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and "Saved." in r.text
    assert re.search(r'name="sms_marketing" value="1" checked', r.text)
    assert consent.status_of(session=session, customer_id=cid) == {
        "email_marketing": "revoked", "sms_marketing": "granted", "personalization": "granted"}
    log = consent.history(session=session, customer_id=cid)
    assert {(x.purpose, x.previous_status, x.status, x.source) for x in log[1:]} == {
        ("email_marketing", "granted", "revoked", "preference_center"),
        ("sms_marketing", None, "granted", "preference_center"),
        ("personalization", None, "granted", "preference_center")}
    # Saving the same choices again adds nothing to the audit log.
    client.post(_path(url), content=form.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert len(consent.history(session=session, customer_id=cid)) == len(log)
    forged = _path(url)[:-4] + "AAAA"
    assert client.get(forged).status_code == 400
    assert client.post(forged, content=b"shown=sms_marketing").status_code == 400
    assert _status(session, cid, "sms_marketing") == "granted"


def test_subscribe_api_needs_a_key_and_names_bad_fields(env):
    _, client, key, _, _ = env
    assert client.post("/v1/consent/subscribe", json={"userId": "a", "email": "a@example.org"}).status_code == 401
    r = client.post("/v1/consent/subscribe", auth=(key, ""), json={"email": "a@example.org"})
    assert r.status_code == 400 and "userId" in r.text
    r = client.post("/v1/consent/subscribe", auth=(key, ""), json={"userId": "a", "email": "nope"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "email"
