"""How a simulated customer reacts to a marketing message: the ground truth the channels will be judged by.

The automation layer calls `respond` with a message it would send; the reaction (open, click, purchase)
follows from the customer's hidden traits, how well the offer fits and whether there is an incentive,
and comes back as Segment messages that go in through ingest like any other event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from emma.config import Settings
from emma.demo.catalog import Catalog
from emma.demo.population import (
    CHANNELS,
    INCENTIVE_TYPES,
    LOST_CAUSE,
    PERSUADABLE,
    SLEEPING_DOG,
    SURE_THING,
    Population,
)

OPEN_BASE = {"email": 0.25, "push": 0.12, "sms": 0.4, "onsite": 0.6}
# Segment spec event names for the first step of each channel's funnel.
OPEN_EVENT = {"email": "Email Opened", "push": "Push Notification Tapped", "sms": "SMS Opened",
              "onsite": "Promotion Viewed"}
CLICK_EVENT = {"email": "Email Link Clicked", "push": "Push Notification Tapped", "sms": "SMS Link Clicked",
               "onsite": "Promotion Clicked"}
# P(purchase | clicked) without and with an incentive, per incentive response type.
BUY_WITHOUT = np.array([0.35, 0.02, 0.0, 0.25])
BUY_WITH = np.array([0.36, 0.40, 0.0, 0.05])
STANDARD_INCENTIVE = 10  # percent, for the uplift column of the truth


@dataclass(frozen=True)
class SimCustomer:
    """One simulated customer's hidden traits and whether they are still an active customer."""

    index: int
    user_id: str
    anonymous_id: str
    affinity: tuple[float, ...]
    cares_sustainability: bool
    price_sensitivity: float
    incentive_type: str
    preferred_channel: str
    preferred_hour: int
    timezone: str
    locale: str
    alive: bool


@dataclass(frozen=True)
class MarketingMessage:
    """What the automation would send: channel, tactic, offered products, incentive."""

    message_id: str
    channel: str
    tactic: str
    offer_skus: tuple[str, ...] = ()
    incentive_percent: int = 0
    coupon: str | None = None


@dataclass
class Reaction:
    p_open: float
    p_click: float
    p_purchase: float
    opened: bool = False
    clicked: bool = False
    purchased: bool = False
    order_id: str | None = None
    revenue: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)


def customer(population: Population, i: int, *, alive: bool = True) -> SimCustomer:
    """The response model's view of simulated customer i."""
    p = population
    return SimCustomer(index=i, user_id=p.user_id[i], anonymous_id=p.anonymous_id[i],
                       affinity=tuple(float(x) for x in p.affinity[i]),
                       cares_sustainability=bool(p.cares_sustainability[i]),
                       price_sensitivity=float(p.price_sensitivity[i]),
                       incentive_type=INCENTIVE_TYPES[int(p.incentive_type[i])],
                       preferred_channel=CHANNELS[int(p.preferred_channel[i])],
                       preferred_hour=int(p.preferred_hour[i]), timezone=p.timezone(i),
                       locale=p.locale_tag(i), alive=alive)


def customer_of(sim: Any, user_id: str, *, day: int | None = None) -> SimCustomer:
    """The simulated customer behind a user id, active or not as of the given simulated day (default: the end)."""
    i = sim.population.user_id.index(user_id)
    alive = bool(sim.alive_at(sim.day if day is None else day)[i])
    return customer(sim.population, i, alive=alive)


def probabilities(*, channel_match: Any, hour_distance: Any, alive: Any, fit: Any, incentive_type: Any,
                  incentive_percent: Any, channel: str) -> tuple[Any, Any, Any]:
    """P(open), P(click | open), P(purchase | click); works on scalars and on numpy arrays alike."""
    channel_match = np.asarray(channel_match, dtype=float)
    alive = np.asarray(alive, dtype=float)
    fit = np.asarray(fit, dtype=float)
    itype = np.asarray(incentive_type, dtype=np.int64)
    hour = 0.7 + 0.6 * np.exp(-np.asarray(hour_distance, dtype=float) ** 2 / 8.0)
    p_open = np.clip(OPEN_BASE[channel] * (0.75 + 0.65 * channel_match) * hour * (0.35 + 0.65 * alive), 0, 0.95)
    p_click = 0.08 + 0.35 * fit
    # Persuadables need a real incentive (full effect from 10 %); sleeping dogs are put off by one.
    strength = np.clip(np.asarray(incentive_percent, dtype=float) / 10.0, 0, 1)
    buy = BUY_WITHOUT[itype] + (BUY_WITH[itype] - BUY_WITHOUT[itype]) * strength
    p_buy = buy * (0.5 + 0.5 * fit) * (0.1 + 0.9 * alive)
    return p_open, p_click, p_buy


def offer_fit(c: SimCustomer, skus: tuple[str, ...], catalog: Catalog, index: dict[str, int]) -> float:
    """0..1: category affinity, sustainability match and price against the customer's sensitivity."""
    items = [index[s] for s in skus if s in index]
    if not items:
        return 0.5
    aff = np.array(c.affinity)
    scores = []
    for p in items:
        rel_aff = aff[int(catalog.category[p])] / aff.max()
        sustain = 1.0 if (not c.cares_sustainability or catalog.sustainable[p]) else 0.3
        dear = min(1.0, catalog.price_cents[p] / 20000)  # 200 EUR and up count as expensive
        scores.append(0.6 * rel_aff + 0.2 * sustain + 0.2 * (1 - c.price_sensitivity * dear))
    return float(np.mean(scores))


def _hour_distance(c: SimCustomer, at: dt.datetime) -> float:
    local = at.astimezone(ZoneInfo(c.timezone)).hour
    d = abs(local - c.preferred_hour)
    return float(min(d, 24 - d))


def _uniforms(message_id: str, user_id: str) -> np.ndarray:
    # The same message to the same customer always gets the same reaction (reproducible demos).
    h = hashlib.sha256(f"{message_id}|{user_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big")).random(4)


def respond(*, customer: SimCustomer, message: MarketingMessage, at: dt.datetime, catalog: Catalog,
            rng: np.random.Generator | None = None) -> Reaction:
    """The customer's reaction to a message sent at `at`, with the Segment messages it produces."""
    index = {s: i for i, s in enumerate(catalog.sku)}
    fit = offer_fit(customer, message.offer_skus, catalog, index)
    itype = INCENTIVE_TYPES.index(customer.incentive_type)
    p_open, p_click, p_buy = (float(x) for x in probabilities(
        channel_match=customer.preferred_channel == message.channel, hour_distance=_hour_distance(customer, at),
        alive=customer.alive, fit=fit, incentive_type=itype, incentive_percent=message.incentive_percent,
        channel=message.channel))
    u = rng.random(4) if rng is not None else _uniforms(message.message_id, customer.user_id)
    reaction = Reaction(p_open=p_open, p_click=p_open * p_click, p_purchase=p_open * p_click * p_buy)
    reaction.opened = bool(u[0] < p_open)
    reaction.clicked = reaction.opened and bool(u[1] < p_click)
    reaction.purchased = reaction.clicked and bool(u[2] < p_buy)
    events = reaction.events
    base = {"userId": customer.user_id, "context": {"campaign": {"name": message.tactic, "source": "tante-emma",
                                                                 "medium": message.channel}}}
    ts = at

    def add(kind: str, minutes: float, **body: Any) -> None:
        nonlocal ts
        ts = ts + dt.timedelta(minutes=minutes)
        events.append({**base, "type": kind, "messageId": f"{message.message_id}-{len(events) + 1}",
                       "timestamp": ts.isoformat(), **body})

    props = {"campaign_id": message.message_id, "tactic": message.tactic, "channel": message.channel}
    if reaction.opened:
        add("track", 5 + 120 * u[3], event=OPEN_EVENT[message.channel], properties=props)
    if reaction.clicked:
        add("track", 1, event=CLICK_EVENT[message.channel], properties=props)
        for s in message.offer_skus[:3]:
            if s in index:
                add("track", 1, event="Product Viewed", properties=_product(catalog, index[s]))
    if reaction.purchased and message.offer_skus:
        items = [index[s] for s in message.offer_skus[:1] if s in index]
        if items:
            cart_id = f"{message.message_id}-wk"
            subtotal = sum(int(catalog.price_cents[p]) for p in items)
            discount = subtotal * message.incentive_percent // 100
            reaction.order_id = f"{message.message_id}-B"
            reaction.revenue = (subtotal - discount) / 100
            for p in items:
                add("track", 1, event="Product Added", properties={**_product(catalog, p), "quantity": 1,
                                                                   "cart_id": cart_id})
            add("track", 1, event="Checkout Started", properties={"cart_id": cart_id, "currency": "EUR"})
            order: dict[str, Any] = {"order_id": reaction.order_id, "cart_id": cart_id, "currency": "EUR",
                                     "revenue": reaction.revenue, "total": reaction.revenue,
                                     "products": [{**_product(catalog, p), "quantity": 1} for p in items],
                                     "campaign_id": message.message_id}
            if message.coupon and discount:
                order["coupon"] = message.coupon
                order["discount"] = discount / 100
            add("track", 2, event="Order Completed", properties=order)
        else:
            reaction.purchased = False
    elif reaction.purchased:
        reaction.purchased = False  # nothing offered, nothing to buy: the click was the conversion
    return reaction


def emit(*, session: Any, reaction: Reaction, settings: Settings | None = None) -> Any:
    """Send the reaction's events in through ingest, like the shop's tracking would (caller commits)."""
    from emma.ingest import service as ingest

    return ingest.ingest(session=session, raw_messages=reaction.events, settings=settings)


def _product(catalog: Catalog, p: int) -> dict[str, Any]:
    return {"sku": catalog.sku[p], "name": catalog.name[p], "category": catalog.path[p],
            "price": int(catalog.price_cents[p]) / 100}


def true_uplift(population: Population, alive: np.ndarray, catalog: Catalog) -> np.ndarray:
    """Per customer: P(purchase) with a 10 % coupon minus without, for an email with their best-fitting offer."""
    n = len(population)
    fit = 0.6 + 0.2 * 1.0 + 0.2 * (1 - population.price_sensitivity * 0.25)  # top category, typical price
    channel_email = np.array(CHANNELS)[population.preferred_channel] == "email"
    args = {"channel_match": channel_email, "hour_distance": np.zeros(n), "alive": alive, "fit": fit,
            "incentive_type": population.incentive_type, "channel": "email"}
    o1, c1, b1 = probabilities(incentive_percent=STANDARD_INCENTIVE, **args)
    o0, c0, b0 = probabilities(incentive_percent=0, **args)
    return o1 * c1 * b1 - o0 * c0 * b0


__all__ = ["LOST_CAUSE", "PERSUADABLE", "SLEEPING_DOG", "SURE_THING", "MarketingMessage", "Reaction",
           "SimCustomer", "customer", "customer_of", "emit", "probabilities", "respond", "true_uplift"]
