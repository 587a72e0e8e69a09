"""The marketing response model: who reacts to what, and the events a reaction produces."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import numpy as np
import pytest

from emma.demo.catalog import Catalog, generate_catalog
from emma.demo.population import INCENTIVE_TYPES, PERSUADABLE, generate_population
from emma.demo.response import MarketingMessage, SimCustomer, customer, respond, true_uplift
from emma.ingest.schemas import Message, ecommerce_errors

AT = dt.datetime(2025, 5, 6, 17, 0, tzinfo=dt.UTC)  # 19:00 in Berlin


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return generate_catalog(np.random.default_rng(0), days=365)


def _customer(incentive: str, *, alive: bool = True) -> SimCustomer:
    return SimCustomer(index=0, user_id="kunde-test", anonymous_id="a-1", affinity=(0.7, 0.1, 0.05, 0.05, 0.05,
                       0.03, 0.02), cares_sustainability=False, price_sensitivity=0.5, incentive_type=incentive,
                       preferred_channel="email", preferred_hour=19, timezone="Europe/Berlin", locale="de-DE",
                       alive=alive)


def _offer(catalog: Catalog) -> tuple[str, ...]:
    kitchen = [catalog.sku[i] for i in np.flatnonzero(catalog.category == 0)]
    return tuple(kitchen[:2])


def _buy_rate(c: SimCustomer, catalog: Catalog, incentive: int, n: int = 4000) -> float:
    rng = np.random.default_rng(1)
    offer = _offer(catalog)
    bought = 0
    for k in range(n):
        msg = MarketingMessage(message_id=f"m{k}", channel="email", tactic="win_back", offer_skus=offer,
                               incentive_percent=incentive, coupon="DANKE10" if incentive else None)
        bought += respond(customer=c, message=msg, at=AT, catalog=catalog, rng=rng).purchased
    return bought / n


def test_coupon_only_customers_need_the_incentive(catalog: Catalog) -> None:
    c = _customer("persuadable")
    without, with_ = _buy_rate(c, catalog, 0), _buy_rate(c, catalog, 10)
    assert with_ > 5 * max(without, 0.002)
    assert with_ > 0.02


def test_never_buyers_never_buy(catalog: Catalog) -> None:
    c = _customer("lost_cause")
    assert _buy_rate(c, catalog, 0) == 0
    assert _buy_rate(c, catalog, 20) == 0


def test_sure_things_buy_regardless(catalog: Catalog) -> None:
    c = _customer("sure_thing")
    without, with_ = _buy_rate(c, catalog, 0), _buy_rate(c, catalog, 10)
    assert without > 0.02
    assert abs(with_ - without) < 0.3 * without


def test_sleeping_dogs_are_put_off_by_incentives(catalog: Catalog) -> None:
    c = _customer("sleeping_dog")
    assert _buy_rate(c, catalog, 10) < 0.5 * _buy_rate(c, catalog, 0)


def test_channel_hour_fit_and_activity_drive_opens_and_clicks(catalog: Catalog) -> None:
    c = _customer("sure_thing")
    msg = MarketingMessage(message_id="m", channel="email", tactic="t", offer_skus=_offer(catalog))
    base = respond(customer=c, message=msg, at=AT, catalog=catalog)
    assert respond(customer=c, message=replace(msg, channel="push"), at=AT, catalog=catalog).p_open < base.p_open
    assert respond(customer=c, message=msg, at=AT.replace(hour=2), catalog=catalog).p_open < base.p_open
    assert respond(customer=replace(c, alive=False), message=msg, at=AT, catalog=catalog).p_purchase < \
        0.2 * base.p_purchase
    garden = tuple(catalog.sku[i] for i in np.flatnonzero(catalog.category == 1)[:2])
    assert respond(customer=c, message=replace(msg, offer_skus=garden), at=AT, catalog=catalog).p_click < \
        base.p_click


def test_reactions_are_valid_segment_events_and_reproducible(catalog: Catalog) -> None:
    c = _customer("persuadable")
    offer = _offer(catalog)
    for k in range(3000):
        msg = MarketingMessage(message_id=f"r{k}", channel="email", tactic="abandoned_cart", offer_skus=offer,
                               incentive_percent=10, coupon="WK10")
        r = respond(customer=c, message=msg, at=AT, catalog=catalog)
        if r.purchased:
            break
    else:
        pytest.fail("no purchase in 3000 messages")
    assert r == respond(customer=c, message=msg, at=AT, catalog=catalog)  # same message, same reaction
    names = [e["event"] for e in r.events]
    assert names[:2] == ["Email Opened", "Email Link Clicked"] and names[-1] == "Order Completed"
    order = r.events[-1]["properties"]
    assert order["coupon"] == "WK10" and order["discount"] > 0 and order["revenue"] == r.revenue
    stamps = [e["timestamp"] for e in r.events]
    assert stamps == sorted(stamps) and stamps[0] > AT.isoformat()
    for e in r.events:
        assert not ecommerce_errors(Message.model_validate(e))


def test_true_uplift_follows_the_incentive_type(catalog: Catalog) -> None:
    pop = generate_population(np.random.default_rng(4), n=2000, days=365, seed=4, end=dt.date(2025, 6, 1))
    up = true_uplift(pop, np.ones(len(pop), bool), catalog)
    kind = pop.incentive_type
    assert up[kind == PERSUADABLE].min() > 0
    assert np.all(up[kind == INCENTIVE_TYPES.index("lost_cause")] == 0)
    assert up[kind == INCENTIVE_TYPES.index("sleeping_dog")].max() < 0
    assert np.abs(up[kind == INCENTIVE_TYPES.index("sure_thing")]).max() < up[kind == PERSUADABLE].min()
    c = customer(pop, int(np.flatnonzero(kind == PERSUADABLE)[0]))
    assert c.incentive_type == "persuadable" and c.user_id.startswith("kunde-")


def test_a_reaction_enters_through_ingestion(session) -> None:  # noqa: ANN001
    from sqlalchemy import select

    from emma.catalog import service as catalog_service
    from emma.demo.response import emit
    from emma.orders.models import Order

    cat = generate_catalog(np.random.default_rng(0), days=365)
    catalog_service.upsert_products(session=session, products=[cat.row(i, day=0) for i in range(len(cat))],
                                    at=AT - dt.timedelta(days=30))
    c = _customer("persuadable")
    for k in range(3000):
        msg = MarketingMessage(message_id=f"e{k}", channel="email", tactic="win_back", offer_skus=_offer(cat),
                               incentive_percent=10, coupon="KOMM10")
        r = respond(customer=c, message=msg, at=AT, catalog=cat)
        if r.purchased:
            break
    result = emit(session=session, reaction=r)
    assert result.rejected == [] and result.accepted == len(r.events)
    order = session.scalar(select(Order).where(Order.order_id == r.order_id))
    assert order is not None and order.coupon == "KOMM10" and float(order.revenue) == r.revenue
    assert emit(session=session, reaction=r).duplicates == len(r.events)  # a resend changes nothing
