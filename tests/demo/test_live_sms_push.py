"""The demo's SMS and push: customers with (fiction) phone numbers get SMS through the webhook sink as the SMS
provider, push notifications with a tap link; they click the short link, tap, buy; the orders are attributed to
the messages and the report shows delivered / clicked / converted per channel. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from emma.channels import service as channels
from emma.channels.adapters import valid_phone
from emma.channels.models import Conversion, DeliveryEvent, OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.db import make_engine, make_sessionmaker, session_scope
from emma.demo import live, service
from emma.demo.population import DRAMA_NUMBERS
from emma.demo.reactions import PRODUCT_URL
from emma.demo.response import SimCustomer
from emma.demo.simulate import DemoConfig
from emma.ingest.models import Event
from emma.profiles.models import Customer
from emma.reports import service as reports

END = dt.date(2025, 6, 1)
LIVE_DAYS = 1


def eager(c: SimCustomer, fit: float, percent: float, channel: str, at: dt.datetime) -> tuple[float, float, float]:
    return 1.0, 1.0, 1.0


def test_sms_and_push_reach_the_customers_who_click_tap_and_buy(db_url: str) -> None:
    config = DemoConfig(customers=300, seed=5, days=30, end=END, cutoff_days=5)
    engine = make_engine(db_url)
    try:
        factory = make_sessionmaker(engine)
        settings = Settings(database_url=db_url)
        sim, _ = service.populate(session_factory=factory, config=config, settings=settings,
                                  until_day=config.days - LIVE_DAYS)
        start = config.day_start(sim.day)
        cat = sim.catalog
        with session_scope(factory) as s:
            phones = s.execute(select(Customer.id, Customer.phone, Customer.external_id)
                               .where(Customer.phone.is_not(None))).all()
            # The simulated registrations carried numbers from the reserved fiction blocks, valid E.164.
            assert len(phones) > 20 and all(valid_phone(p) and p.startswith(DRAMA_NUMBERS) for _, p, _ in phones)
            assert len({p for _, p, _ in phones}) == len(phones)
            consent.record_many(session=s, now=start, decisions=[
                {"customer_id": c, "purpose": purpose, "status": "granted", "source": "import", "recorded_at": start}
                for c, _, _ in phones for purpose in ("sms_marketing", "push")])
            # A campaign planned for the first live hour: an SMS with a product link to ten customers, a push
            # about a product to ten others.
            sms, push = [], []
            for n, (cid, _, _) in enumerate(phones[:10]):
                sku = cat.sku[n]
                sms.append(channels.enqueue(
                    session=s, idempotency_key=f"t-sms-{cid}", customer_id=cid, channel="sms",
                    template="cart_abandoned", purpose="sms_marketing", tactic_id="test_campaign", now=start,
                    due_at=start + dt.timedelta(minutes=30), payload={"links": {"cart": f"{PRODUCT_URL}{sku}"}}).id)
            for n, (cid, _, _) in enumerate(phones[10:20]):
                sku = cat.sku[n]
                push.append(channels.enqueue(
                    session=s, idempotency_key=f"t-push-{cid}", customer_id=cid, channel="push",
                    template="back_in_stock", purpose="push", tactic_id="test_campaign", now=start,
                    due_at=start + dt.timedelta(minutes=30),
                    payload={"product": {"sku": sku, "name": cat.name[n], "url": f"{PRODUCT_URL}{sku.lower()}"}}).id)
        run = live.run_live(sessions=factory, settings=settings, sim=sim, behaviour=eager)
        assert run.rejected == []
        with session_scope(factory) as s:
            def statuses(ids: list[int], status: str) -> int:
                return s.scalar(select(func.count(DeliveryEvent.message_id.distinct())).where(
                    DeliveryEvent.message_id.in_(ids), DeliveryEvent.status == status)) or 0

            # Delivered through the sink (the SMS provider), read on the phones, clicked over HTTP.
            assert statuses(sms, "sent") == 10 and statuses(push, "sent") == 10
            assert run.reactions.received["sms"] >= 10 and run.reactions.received["push"] >= 10
            assert statuses(sms, "clicked") == 10 and statuses(push, "clicked") == 10
            assert run.reactions.clicked["push"] >= 10 and run.reactions.clicked["sms"] >= 10
            # The clicks came back as events for the channel models, on the virtual clock.
            taps = s.execute(select(func.count(), func.min(Event.timestamp)).where(
                Event.name == "Push Notification Tapped")).one()
            assert taps[0] >= 10 and run.start <= taps[1] <= run.end
            assert s.scalar(select(func.count()).select_from(Event).where(Event.name == "SMS Link Clicked")) >= 10
            # Each tap and click led to a purchase, attributed to the message by its click.
            conv = dict(s.execute(select(OutboxMessage.channel, func.count(OutboxMessage.id.distinct())).join(
                Conversion, Conversion.message_id == OutboxMessage.id).where(
                OutboxMessage.id.in_(sms + push), Conversion.touch == "click").group_by(OutboxMessage.channel)).all())
            assert conv == {"sms": 10, "push": 10}
            rows = {r["channel"]: r for r in reports.channel_results(session=s) if r["tactic_id"] == "test_campaign"}
            for channel in ("sms", "push"):
                row = rows[channel]
                assert (row["delivered"], row["clicked"], row["converted"]) == (10, 10, 10)
                assert rows[channel]["revenue"] > 0
    finally:
        engine.dispose()
