"""The demo's live days end to end: tactics on the virtual clock, mail through a real SMTP server, the simulated
customers' opens, clicks, orders and unsubscribes back through the product's own HTTP links, and the report."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from emma.automation.models import Run
from emma.channels.models import DeliveryEvent, OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.consent.models import ConsentLog
from emma.db import make_engine, make_sessionmaker, session_scope
from emma.demo import live, service
from emma.demo.response import SimCustomer
from emma.demo.simulate import DemoConfig
from emma.ingest.models import Event
from emma.onsite import service as onsite
from emma.onsite.models import Decision
from emma.orders.models import Order
from emma.profiles.models import Customer
from emma.reports import service as reports

END = dt.date(2025, 6, 1)
LIVE_DAYS = 6


def _count(session, stmt) -> int:  # noqa: ANN001
    return session.scalar(stmt) or 0


def eager(c: SimCustomer, fit: float, percent: float, channel: str, at: dt.datetime) -> tuple[float, float, float]:
    """An audience that opens, clicks and buys whatever it gets (so that every path is taken in a small shop)."""
    return 1.0, 1.0, 1.0


def test_live_days_deliver_through_real_channels_and_the_customers_react(db_url: str) -> None:
    config = DemoConfig(customers=400, seed=11, days=45, end=END, cutoff_days=10)
    engine = make_engine(db_url)
    try:
        factory = make_sessionmaker(engine)
        settings = Settings(database_url=db_url)
        sim, _ = service.populate(session_factory=factory, config=config, settings=settings,
                                  until_day=config.days - LIVE_DAYS)
        with session_scope(factory) as s:
            # More marketing permission than the shop collected itself (as an imported consent file would).
            at = config.day_start(sim.day)
            known = s.scalars(select(Customer.id).where(Customer.email.is_not(None))).all()
            consent.record_many(session=s, now=at, decisions=[
                {"customer_id": c, "purpose": "email_marketing", "status": "granted", "source": "import",
                 "recorded_at": at} for c in known])
        run = live.run_live(sessions=factory, settings=settings, sim=sim, behaviour=eager)
        assert run.days == LIVE_DAYS and sim.day == config.days and run.rejected == []
        assert {"abandoned_cart", "delivery_confirmation"} <= set(run.tactics)
        with session_scope(factory) as s:
            sent = dict(s.execute(select(OutboxMessage.channel, func.count()).where(OutboxMessage.status == "sent")
                                  .group_by(OutboxMessage.channel)).all())
            # Every email the outbox calls sent arrived at the SMTP server, and the customers read them.
            assert sent.get("email", 0) == run.smtp_received == run.reactions.received["email"] > 20
            # Nothing from the imported history went out.
            assert _count(s, select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.status == "sent", OutboxMessage.due_at < run.start)) == 0

            def logged(status: str) -> int:
                return _count(s, select(func.count(DeliveryEvent.message_id.distinct()))
                              .where(DeliveryEvent.status == status))

            def events(name: str) -> int:  # the product's mail, not the shop's own weekly newsletter tool
                return _count(s, select(func.count()).select_from(Event).where(Event.name == name, own_mail))

            own_mail = func.coalesce(Event.properties["campaign_id"].as_string(), "").not_like("newsletter-%")

            # Opens (pixel) and clicks (redirect) came back as delivery log entries and as events; this audience
            # opens every mail and clicks a link in every marketing mail it does not unsubscribe from.
            marketing = _count(s, select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.status == "sent", OutboxMessage.transactional.is_(False)))
            assert events("Email Opened") == logged("opened") == run.reactions.opened["email"] >= marketing > 5
            assert events("Email Link Clicked") == run.reactions.clicked["email"] == logged("clicked")
            # (a marketing mail without a product link, e.g. a consent refresh, has nothing to click)
            assert 0 < logged("clicked") <= marketing - run.reactions.unsubscribed
            # They happened on the virtual clock: within the live days, after the mail was sent.
            first, last = s.execute(select(func.min(Event.timestamp), func.max(Event.timestamp)).where(
                Event.name.in_(("Email Opened", "Email Link Clicked")), own_mail)).one()
            assert run.start <= first <= last <= run.end
            # ... and buys: the orders arrived through ingest, coupons from the mails were redeemed.
            assert _count(s, select(func.count()).select_from(Order).where(Order.order_id.like("M-%"))) == \
                sum(run.reactions.ordered.values()) > 0
            # Known customers on the home page got on-site decisions (logged as impressions at the virtual time)
            # and clicked an item through the snippet's event.
            home = s.execute(select(func.count(), func.min(Decision.created_at), func.max(Decision.created_at))
                             .where(Decision.placement == "home")).one()
            assert home[0] == run.reactions.decisions > 0 and run.start <= home[1] <= home[2] <= run.end
            [onsite_row] = onsite.report(session=s, since=run.start)
            assert onsite_row["clicked"] == run.reactions.clicked["onsite"] == events("Product Clicked") > 0
            # Opt-in confirmations clicked in the delivered confirmation mail granted consent.
            assert run.reactions.confirmed == _count(s, select(func.count()).select_from(ConsentLog).where(
                ConsentLog.source == "double_opt_in", ConsentLog.recorded_at >= run.start)) > 0
            assert run.reactions.unsubscribed == _count(s, select(func.count()).select_from(ConsentLog).where(
                ConsentLog.source == "unsubscribe:one-click"))

            # The report's figures are the database's.
            tactics = {r["tactic_id"]: r for r in reports.tactic_results(session=s)}
            for tid, holdout, n, converted in s.execute(
                    select(Run.tactic_id, Run.holdout, func.count(), func.sum((Run.status == "converted").cast(
                        Run.steps.type))).group_by(Run.tactic_id, Run.holdout)):
                group = "holdout" if holdout else "treated"
                assert tactics[tid][group] == n and tactics[tid][f"{group}_converted"] == converted, tid
            for tid, n in s.execute(select(OutboxMessage.tactic_id, func.count()).where(
                    OutboxMessage.tactic_id.is_not(None)).group_by(OutboxMessage.tactic_id)):
                assert tactics[tid]["messages"] == n
            channels = reports.channel_results(session=s)
            assert sum(r["delivered"] for r in channels) == sum(sent.values())
            assert sum(r["opened"] for r in channels) == logged("opened")
            assert sum(r["clicked"] for r in channels) == logged("clicked")
            assert sum(r["unsubscribed"] for r in channels) == logged("unsubscribed")

            # The holdout split: a tenth of the abandoned carts get nothing, the rest are messaged.
            cart = tactics["abandoned_cart"]
            assert cart["holdout"] > 0 and cart["treated"] > 4 * cart["holdout"]
            # Customers who bought the cart from the mail reached the tactic's goal; the control group got no mail.
            assert cart["treated_converted"] > 0
            assert sum(r["converted"] for r in channels if r["tactic_id"] == "abandoned_cart") > 0
            held = select(Run.id).where(Run.holdout.is_(True))
            assert _count(s, select(func.count()).select_from(OutboxMessage).where(OutboxMessage.run_id.in_(held))) == 0
    finally:
        engine.dispose()
