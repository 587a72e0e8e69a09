"""A delivery pass over a real SMTP server: one connection for the pass, a fresh one when the server dropped
it; push taps reported back; mail queued before delivery began is discarded, not sent; the clock's time."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import select

from emma.app import create_app
from emma.automation.clock import VirtualClock
from emma.channels import jobs
from emma.channels import service as channels
from emma.channels.adapters import EmailAdapter, Envelope, configured_adapters
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.profiles.models import Customer
from tests.channels.conftest import free_port

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


class Peers:
    """Accepts every mail and notes the client connection (host, port) it came over."""

    def __init__(self) -> None:
        self.peers: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.peers.append(session.peer)
        return "250 OK"


def _customer(session: Any, ext: str, email: str) -> int:
    ingest.ingest(session=session, received_at=T0, raw_messages=[{
        "type": "identify", "userId": ext, "messageId": f"id-{ext}", "timestamp": T0.isoformat(),
        "traits": {"email": email, "first_name": "Anna"}}])
    cid = session.scalar(select(Customer.id).where(Customer.external_id == ext))
    for purpose in ("email_marketing", "push"):
        consent.record(session=session, customer_id=cid, purpose=purpose, status="granted", source="test",
                       recorded_at=T0)
    return cid


def _factory(session: Any) -> Any:
    from emma.db import make_sessionmaker

    return make_sessionmaker(session.get_bind())


def test_one_smtp_connection_per_pass_and_a_fresh_one_after_the_server_dropped_it(session, db_url):  # noqa: ANN001
    peers, port = Peers(), free_port()
    controller = Controller(peers, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = Settings(database_url=db_url, smtp_host="127.0.0.1", smtp_port=port)
        for n in range(3):
            cid = _customer(session, f"c{n}", f"anna{n}@example.org")
            channels.enqueue(session=session, idempotency_key=f"m{n}", customer_id=cid, channel="email",
                             template="welcome", purpose="email_marketing", due_at=T0, now=T0)
        session.commit()
        adapters = configured_adapters(settings)
        assert jobs.deliver_due(sessions=_factory(session), settings=settings, adapters=adapters,
                                now=T0) == {"sent": 3}
        assert len(peers.peers) == 3 and len(set(peers.peers)) == 1  # three mails over one connection
        assert adapters["email"]._smtp is None  # type: ignore[attr-defined]  # closed at the end of the pass

        # A connection kept open while the server went away: the next message reconnects and goes out.
        adapter = EmailAdapter(settings)
        env = Envelope(message_id=1, channel="email", to="anna0@example.org", subject="a", text="a")
        adapter.send(env)
        controller.stop()
        controller = Controller(peers, hostname="127.0.0.1", port=port)
        controller.start()
        adapter.send(Envelope(message_id=2, channel="email", to="anna0@example.org", subject="b", text="b"))
        adapter.close()
        assert len(peers.peers) == 5 and peers.peers[3] != peers.peers[4]
    finally:
        controller.stop()


def test_push_tap_is_logged_once_and_comes_back_as_an_event(session, db_url):  # noqa: ANN001
    cid = _customer(session, "p1", "p1@example.org")
    m = channels.enqueue(session=session, idempotency_key="push-1", customer_id=cid, channel="push",
                         template="cart_abandoned", purpose="push", due_at=T0, now=T0)
    mail = channels.enqueue(session=session, idempotency_key="mail-1", customer_id=cid, channel="email",
                            template="welcome", due_at=T0, now=T0)
    later = T0 + dt.timedelta(minutes=7)
    assert channels.record_engagement(session=session, message_id=m.id, status="opened", now=later)
    assert not channels.record_engagement(session=session, message_id=m.id, status="opened", now=later)
    assert not channels.record_engagement(session=session, message_id=mail.id, status="opened", now=later)
    assert not channels.record_engagement(session=session, message_id=10_000, status="opened", now=later)
    assert [e.status for e in channels.delivery_log(session=session, message_id=m.id)] == ["queued", "opened"]
    ev = session.scalars(select(Event).where(Event.customer_id == cid, Event.name == "Push Notification Tapped")).all()
    assert len(ev) == 1 and ev[0].timestamp == later and ev[0].properties["email_id"] == str(m.id)


def test_mail_queued_before_delivery_began_is_discarded_and_due_dates_are_reported(session):  # noqa: ANN001
    cid = _customer(session, "d1", "d1@example.org")
    old = channels.enqueue(session=session, idempotency_key="old", customer_id=cid, channel="email",
                           template="welcome", due_at=T0 - dt.timedelta(days=30), now=T0)
    new = channels.enqueue(session=session, idempotency_key="new", customer_id=cid, channel="email",
                           template="welcome", due_at=T0 + dt.timedelta(hours=2), now=T0)
    assert channels.next_due(session=session) == old.due_at
    assert channels.discard_queued(session=session, before=T0, reason="history", now=T0) == 1
    session.expire_all()
    assert session.get(OutboxMessage, old.id).status == "suppressed"
    assert session.get(OutboxMessage, new.id).status == "queued"
    assert channels.next_due(session=session) == new.due_at
    assert [e.status for e in channels.delivery_log(session=session, message_id=old.id)] == ["queued", "suppressed"]


def test_links_record_at_the_apps_clock(session, db_url):  # noqa: ANN001
    cid = _customer(session, "k1", "k1@example.org")
    m = channels.enqueue(session=session, idempotency_key="clock-1", customer_id=cid, channel="email",
                         template="welcome", due_at=T0, now=T0)
    session.commit()
    clock = VirtualClock(T0 + dt.timedelta(hours=3))
    settings = Settings(database_url=db_url, base_url="https://shop.example")
    token = channels.tracking_token(kind="open", message_id=m.id, settings=settings)
    with TestClient(create_app(settings, clock=clock)) as client:
        assert client.get(f"/t/o/{token}.gif").status_code == 200
    session.expire_all()
    opened = [e for e in channels.delivery_log(session=session, message_id=m.id) if e.status == "opened"]
    assert [e.at for e in opened] == [clock.now()]
    ev = session.scalar(select(Event).where(Event.customer_id == cid, Event.name == "Email Opened"))
    assert ev is not None and ev.timestamp == clock.now()
    assert re.fullmatch(r"\d+", ev.properties["email_id"])
