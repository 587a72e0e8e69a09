"""On-site content queued by tactics: abandoned_cart's exit-intent coupon and in_session_upsell's blocks are served by
/v1/decide while their run is live, to visitors with personalization consent."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from emma.automation import jobs, library
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.coupons.models import Coupon
from emma.ingest import service as ingest
from emma.onsite import service as onsite


def _track(shop, user, event, at, **props):
    with shop.session_factory() as s:
        res = ingest.ingest(session=s, received_at=at, settings=Settings(), raw_messages=[{
            "type": "track", "userId": user, "event": event, "properties": props, "timestamp": at.isoformat(),
            "messageId": f"{user}-{event}-{at.timestamp()}"}])
        assert not res.rejected
        s.commit()


def _tick(shop, tactic_id, at):
    t = library.library()[tactic_id].model_copy(update={"holdout": 0.0})
    settings = Settings(quiet_hours="", frequency_caps={})
    jobs.tick(sessions=shop.session_factory, settings=settings, now=at, tactics={tactic_id: t})


def _onsite(shop, user_id):
    with shop.session_factory() as s:
        return list(s.scalars(select(OutboxMessage).where(OutboxMessage.customer_id == shop.ids[user_id],
                                                          OutboxMessage.channel == "onsite")))


def test_abandoned_cart_exit_intent_coupon_is_served_while_the_cart_is_open(shop):
    now = dt.datetime.now(dt.UTC)
    _track(shop, "c-consent", "Product Added", now, sku="PAN-1", cart_id="k-7", price=39.9)
    _track(shop, "c-lowuplift", "Product Added", now, sku="PAN-1", cart_id="k-8", price=39.9)
    _tick(shop, "abandoned_cart", now)
    [queued] = _onsite(shop, "c-consent")
    assert queued.template == "cart_exit_coupon" and queued.payload["placement"] == "exit_intent"
    assert _onsite(shop, "c-lowuplift") == []  # uplift 0.01: the tactic sees no need for an incentive

    got = shop.decide(placement="exit_intent", userId="c-consent").json()
    offer = got["coupon"]
    assert offer is not None and offer["value"] == "10 %"
    assert "abandoned_cart" in got["reasons"]["coupon"] and "queued an exit-intent coupon" in got["reasons"]["coupon"]
    assert offer["code"] in offer["text"] and offer["text"].startswith("Your cart is still waiting")  # en-GB
    with shop.session_factory() as s:
        [c] = s.scalars(select(Coupon).where(Coupon.customer_id == shop.ids["c-consent"]))
        assert c.campaign == "abandoned_cart"
        assert s.get(OutboxMessage, queued.id).status == "sent"
    again = shop.decide(placement="exit_intent", userId="c-consent").json()
    assert again["coupon"]["code"] == offer["code"]  # the same customer's coupon, not a second one
    with shop.session_factory() as s:  # served within its valid_for span, on its own placement only
        def served(placement, at):
            return [m["id"] for m in onsite.tactic_content(session=s, customer_id=shop.ids["c-consent"],
                                                           placement=placement, sku=None, now=at)]
        assert served("exit_intent", now + dt.timedelta(minutes=1)) == [queued.id]
        assert served("cart", now + dt.timedelta(minutes=1)) == []
        assert served("exit_intent", now + dt.timedelta(days=8)) == []  # valid_for: 7d

    # The cart is bought: the run ends, and with it the offer (the placement's own rule decides again).
    _track(shop, "c-consent", "Order Completed", now + dt.timedelta(minutes=5), order_id="o-k7", cart_id="k-7",
           revenue=39.9, products=[{"sku": "PAN-1", "quantity": 1, "price": 39.9}])
    _tick(shop, "abandoned_cart", now + dt.timedelta(minutes=5))
    after = shop.decide(placement="exit_intent", userId="c-consent").json()
    assert "abandoned_cart" not in after["reasons"]["coupon"]


def test_in_session_upsell_puts_the_accessories_first_on_the_product_page(shop):
    now = dt.datetime.now(dt.UTC)
    _track(shop, "c-consent", "Product Viewed", now, sku="PAN-1")
    _track(shop, "c-noconsent", "Product Viewed", now, sku="PAN-1")
    _tick(shop, "in_session_upsell", now)
    [msg] = _onsite(shop, "c-consent")
    assert msg.payload["accessories"] == ["LID-2", "OIL-3"]  # OLD-9 is inactive
    assert _onsite(shop, "c-noconsent") == []  # no personalization consent: suppressed at creation

    got = shop.decide(placement="product_page", userId="c-consent", context={"sku": "PAN-1"}).json()
    first = got["blocks"][0]
    assert first["kind"] == "accessories" and [i["sku"] for i in first["items"]] == ["LID-2", "OIL-3"]
    assert "in_session_upsell" in got["reasons"]["tactic"]
    assert sum(b["kind"] == "accessories" for b in got["blocks"]) == 1
    other = shop.decide(placement="product_page", userId="c-consent", context={"sku": "TEA-5"}).json()
    assert "tactic" not in other["reasons"]  # the content belongs to the product it was made for
    with shop.session_factory() as s:
        assert s.get(OutboxMessage, msg.id).status == "sent"


def test_a_product_page_decision_waits_for_the_worker_to_handle_the_product_view(shop):
    """The decision that follows the product view in the same page view already carries the upsell content."""
    now = dt.datetime.now(dt.UTC)
    watch = (["Product Viewed"], ["in_session_upsell"])
    with shop.session_factory() as s:
        pending = lambda at: onsite.tactic_work_pending(  # noqa: E731
            session=s, user_id="c-consent", anonymous_id=None, events=watch[0], tactic_ids=watch[1], now=at)
        assert not pending(now)
    _track(shop, "c-consent", "Product Viewed", now, sku="PAN-1")
    with shop.session_factory() as s:
        assert onsite.tactic_work_pending(session=s, user_id="c-consent", anonymous_id=None, events=watch[0],
                                          tactic_ids=watch[1], now=now)
        # A backlog the worker has not reached (a view minutes ago) is not waited for.
        assert not onsite.tactic_work_pending(session=s, user_id="c-consent", anonymous_id=None, events=watch[0],
                                              tactic_ids=watch[1], now=now + dt.timedelta(minutes=5))
        assert not onsite.tactic_work_pending(session=s, user_id="c-noconsent", anonymous_id=None, events=watch[0],
                                              tactic_ids=watch[1], now=now)
    _tick(shop, "in_session_upsell", now)
    with shop.session_factory() as s:
        assert not onsite.tactic_work_pending(session=s, user_id="c-consent", anonymous_id=None, events=watch[0],
                                              tactic_ids=watch[1], now=now)


def test_the_upsell_shows_in_the_decision_right_after_the_view(db_url, session_factory):
    """A real server with its worker, as `emma serve` runs it: track the view, then decide at once."""
    from fastapi.testclient import TestClient

    from emma.app import create_app
    from emma.auth import service as auth
    from tests.onsite.conftest import seed

    with session_factory() as s:
        seed(s)
        key = auth.create_key(session=s, kind="write")
        s.commit()
    app = create_app(Settings(database_url=db_url, worker_embedded=True, onsite_tactic_wait_ms=20_000,
                              quiet_hours="", onsite_flush_seconds=60))
    with TestClient(app) as client:
        assert app.state.onsite.tactic_watch[1] == ["abandoned_cart", "in_session_upsell"]
        r = client.post("/v1/batch", auth=(key, ""), json={"batch": [
            {"type": "track", "userId": "c-consent", "event": "Product Viewed", "properties": {"sku": "PAN-1"},
             "messageId": "view-pan-1"}]})
        assert r.status_code == 200
        got = client.post("/v1/decide", auth=(key, ""), json={
            "placement": "product_page", "userId": "c-consent", "context": {"sku": "PAN-1"}}).json()
    assert "in_session_upsell" in got["reasons"]["tactic"]
    assert got["blocks"][0]["kind"] == "accessories"
    assert [i["sku"] for i in got["blocks"][0]["items"]] == ["LID-2", "OIL-3"]
