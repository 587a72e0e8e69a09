"""On-site decisions: what a placement shows to a visitor, and why.

Everything that is the same for every visitor (product cards, popularity, co-purchase neighbours,
accessories) is computed once per catalog snapshot; a request then needs one indexed lookup for the
visitor (profile, consent, stored predictions and coupon in one statement) and a few dict look-ups.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
from sqlalchemy import and_, bindparam, case, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from emma.automation.models import LIVE
from emma.catalog.models import Product
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent.models import Consent
from emma.coupons import service as coupons
from emma.coupons.models import Coupon
from emma.db import driver_datetimes, insert_columns, utcnow
from emma.ingest.models import Event
from emma.onsite.models import Decision
from emma.onsite.schemas import DecideRequest
from emma.orders.models import Cart, CartItem, Order, OrderLine
from emma.predict.estimators.recommend import CoPurchaseRecommender
from emma.predict.models import Prediction
from emma.profiles.models import Customer, Identity

NEIGHBOURS = 12
POPULAR = 24

HEADINGS = {
    "next_best_offer": {"de": "Unser Tipp für Sie", "en": "Our pick for you"},
    "recommendations": {"de": "Empfehlungen für Sie", "en": "Recommended for you"},
    "popular": {"de": "Beliebt bei unseren Kunden", "en": "Popular with our customers"},
    "co_purchase": {"de": "Andere Kunden kauften auch", "en": "Customers also bought"},
    "accessories": {"de": "Zu Ihrem Produkt passt", "en": "Goes with your product"},
    "coupon": {"de": "Bevor Sie gehen: {value} Rabatt", "en": "Before you go: {value} off"},
}
# Short, customer-facing answers to "why am I seeing this?".
WHY = {
    "next_best_offer": {"de": "Ausgewählt nach Ihren bisherigen Einkäufen und Interessen",
                        "en": "Chosen for what you bought and like"},
    "recommendations": {"de": "Passend zu Ihren bisherigen Einkäufen", "en": "Based on what you bought before"},
    "popular": {"de": "Oft gekauft in den letzten {days} Tagen", "en": "Often bought in the last {days} days"},
    "popular_all": {"de": "Oft gekauft", "en": "Often bought"},
    "co_purchase": {"de": "Wird oft zusammen mit „{name}“ gekauft", "en": "Often bought together with “{name}”"},
    "co_purchase_cart": {"de": "Wird oft zusammen mit Artikeln in Ihrem Warenkorb gekauft",
                         "en": "Often bought together with items in your cart"},
    "accessories": {"de": "Zubehör zu „{name}“", "en": "Accessory for “{name}”"},
    "accessories_cart": {"de": "Zubehör zu Artikeln in Ihrem Warenkorb", "en": "Accessories for items in your cart"},
    "coupon": {"de": "Ihr persönlicher Gutschein, gültig bis {date}", "en": "Your personal coupon, valid until {date}"},
}
COUPON_TEXT = {"de": "Mit dem Code {code} sparen Sie {value} bei Ihrer nächsten Bestellung.",
               "en": "Use the code {code} to save {value} on your next order."}


# --- the catalog snapshot -------------------------------------------------------------------------

@dataclass(frozen=True)
class Card:
    """One product as a placement shows it, in both languages."""

    sku: str
    names: dict[str, str]
    price: float | None
    currency: str
    url: str | None
    image_url: str | None
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # the response item per locale, made once

    def __post_init__(self) -> None:
        for locale in ("de", "en"):
            self.items[locale] = {"sku": self.sku, "name": self.names[locale], "price": self.price,
                                  "price_text": price_text(self.price, self.currency, locale),
                                  "currency": self.currency, "url": self.url, "image_url": self.image_url}

    def item(self, locale: str) -> dict[str, Any]:
        return self.items[locale]


@dataclass
class Snapshot:
    """Catalog-wide data for decisions: the same for every visitor, rebuilt periodically."""

    cards: dict[str, Card] = field(default_factory=dict)  # products that may be shown (active, in stock)
    popular: list[str] = field(default_factory=list)
    popular_days: int | None = None  # the window popularity was counted in; None: all order history
    neighbours: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    accessories: dict[str, list[str]] = field(default_factory=dict)
    built_at: float = 0.0  # time.monotonic()
    build_seconds: float = 0.0


def price_text(price: float | None, currency: str, locale: str) -> str | None:
    """A price as a shop shows it: 1.234,50 € in German, €1,234.50 in English."""
    if price is None:
        return None
    symbol = {"EUR": "€", "USD": "$", "GBP": "£"}.get(currency, currency)
    if locale == "de":
        text = f"{price:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")
        return f"{text} {symbol}"
    sep = "" if len(symbol) == 1 else " "
    return f"{symbol}{sep}{price:,.2f}"


def _float(v: Decimal | float | None) -> float | None:
    return None if v is None else float(v)


def build_snapshot(*, session: Session, settings: Settings, now: dt.datetime | None = None) -> Snapshot:
    """Read the catalog and order lines once: product cards, popularity, co-purchase neighbours, accessories."""
    t0 = time.perf_counter()
    now = now or utcnow()
    snap = Snapshot()
    rows = session.execute(select(Product.sku, Product.name, Product.price, Product.currency, Product.url,
                                  Product.image_url, Product.attributes, Product.stock, Product.active))
    for sku, name, price, currency, url, image_url, attrs, stock, active in rows:
        attrs = attrs or {}
        if not active or (stock is not None and stock <= 0):
            continue
        name_en = attrs.get("name_en") if isinstance(attrs.get("name_en"), str) else name
        snap.cards[sku] = Card(sku=sku, names={"de": name, "en": name_en}, price=_float(price),
                               currency=currency or "EUR", url=url, image_url=image_url)
        acc = attrs.get("accessory_skus")
        if isinstance(acc, list):
            snap.accessories[sku] = [str(a) for a in acc if str(a) != sku]
    # Drop accessories that cannot be shown now (inactive, sold out, unknown).
    snap.accessories = {k: [a for a in v if a in snap.cards] for k, v in snap.accessories.items()}
    snap.accessories = {k: v for k, v in snap.accessories.items() if v}

    since = now - dt.timedelta(days=settings.onsite_popular_days)
    counts = session.execute(select(OrderLine.sku, func.count()).join(Order, Order.id == OrderLine.order_pk)
                             .where(Order.ordered_at >= since).group_by(OrderLine.sku)).all()
    snap.popular_days = settings.onsite_popular_days
    if not counts:  # a quiet shop: all history rather than nothing
        counts = session.execute(select(OrderLine.sku, func.count()).group_by(OrderLine.sku)).all()
        snap.popular_days = None
    ranked = sorted(((n, sku) for sku, n in counts if sku in snap.cards), key=lambda x: (-x[0], x[1]))
    snap.popular = [sku for _, sku in ranked[:POPULAR]]
    if len(snap.popular) < POPULAR:  # a new shop: fill with the catalog so a placement is never empty
        snap.popular += [s for s in sorted(snap.cards) if s not in set(snap.popular)][:POPULAR - len(snap.popular)]

    lines = session.execute(select(Order.customer_id, OrderLine.sku).join(Order, Order.id == OrderLine.order_pk)
                            .where(Order.ordered_at >= now - dt.timedelta(days=settings.onsite_copurchase_days))
                            ).all()
    if lines:
        cust_index: dict[int, int] = {}
        item_index: dict[str, int] = {}
        cs = np.fromiter((cust_index.setdefault(c, len(cust_index)) for c, _ in lines), dtype=np.int64,
                         count=len(lines))
        its = np.fromiter((item_index.setdefault(s, len(item_index)) for _, s in lines), dtype=np.int64,
                          count=len(lines))
        skus = list(item_index)
        model = CoPurchaseRecommender(neighbors=NEIGHBOURS * 2).fit(cs, its, n_items=len(skus))
        sim = model.similarity_
        for i, sku in enumerate(skus):
            lo, hi = sim.indptr[i], sim.indptr[i + 1]
            if lo == hi:
                continue
            order = np.argsort(-sim.data[lo:hi], kind="stable")
            found = [(skus[int(sim.indices[lo + j])], float(sim.data[lo + j])) for j in order]
            found = [(s, w) for s, w in found if s in snap.cards][:NEIGHBOURS]
            if found:
                snap.neighbours[sku] = found
    snap.built_at = time.monotonic()
    snap.build_seconds = time.perf_counter() - t0
    return snap


# --- the visitor ------------------------------------------------------------------------------------

@dataclass
class Visitor:
    """What a decision may know about the visitor: profile, consent, stored predictions, the coupon."""

    customer_id: int
    locale: str | None
    consent: str | None
    recommendations: list[str]
    incentive_uplift: float | None
    propensity: float | None
    coupon: dict[str, Any] | None
    merged_into_id: int | None = None
    next_best_offer: str | None = None
    predicted: bool = False  # individual predictions exist (scored with personalization consent)
    scored_at: dt.datetime | None = None


_c, _i, _cs, _p, _cp = (Customer.__table__, Identity.__table__, Consent.__table__, Prediction.__table__,
                        Coupon.__table__)
_VISITOR_COLUMNS = (_c.c.id, _c.c.locale, _c.c.merged_into_id, _cs.c.status, _p.c.recommendations,
                    _p.c.incentive_uplift, _p.c.propensity_30d, _cp.c.id, _cp.c.code, _cp.c.value,
                    _cp.c.expires_at, _cp.c.redeemed_at, _p.c.next_best_offer, _p.c.personalized, _p.c.as_of)
_VISITOR_FROM = (_c.outerjoin(_cs, and_(_cs.c.customer_id == _c.c.id, _cs.c.purpose == "personalization"))
                 .outerjoin(_p, _p.c.customer_id == _c.c.id)
                 .outerjoin(_cp, and_(_cp.c.customer_id == _c.c.id, _cp.c.campaign == bindparam("campaign"))))
# One statement, all on unique indexes: identity (kind, value), consent (customer, purpose),
# predictions (customer), coupons (customer, campaign).
_BY_IDENTITY = (select(_i.c.kind, *_VISITOR_COLUMNS).select_from(_i.join(_VISITOR_FROM, _c.c.id == _i.c.customer_id))
                .where(or_(and_(_i.c.kind == "user_id", _i.c.value == bindparam("user_id")),
                           and_(_i.c.kind == "anonymous_id", _i.c.value == bindparam("anonymous_id")))))
_BY_ID = select(*_VISITOR_COLUMNS).select_from(_VISITOR_FROM).where(_c.c.id == bindparam("customer_id"))


def _visitor(row: Any) -> Visitor:
    (cid, locale, merged, consent, recs, uplift, propensity, coupon_id, code, value, expires, redeemed, nbo,
     predicted, scored_at) = row
    skus = []
    for r in recs or []:
        sku = r.get("sku") if isinstance(r, dict) else r
        if isinstance(sku, str):
            skus.append(sku)
    coupon = None
    if coupon_id is not None:
        coupon = {"id": coupon_id, "code": code, "value": value, "expires_at": expires, "redeemed_at": redeemed}
    return Visitor(customer_id=cid, locale=locale, consent=consent, recommendations=skus,
                   incentive_uplift=uplift, propensity=propensity, coupon=coupon, merged_into_id=merged,
                   next_best_offer=nbo, predicted=bool(predicted), scored_at=scored_at)


def find_visitor(*, session: Session | Connection, user_id: str | None, anonymous_id: str | None,
                 campaign: str) -> Visitor | None:
    """The known profile behind the ids (userId first), or None for a visitor never seen before."""
    rows = session.execute(_BY_IDENTITY, {"user_id": user_id, "anonymous_id": anonymous_id,
                                          "campaign": campaign}).all()
    if not rows:
        return None
    row = next((r for r in rows if r[0] == "user_id"), rows[0])
    v = _visitor(row[1:])
    if v.merged_into_id is not None:  # an identity left behind on a merged profile: follow it
        found = session.execute(_BY_ID, {"customer_id": v.merged_into_id, "campaign": campaign}).first()
        if found is not None:
            v = _visitor(found)
    return v


def stored_cart(*, session: Session | Connection, customer_id: int) -> list[str]:
    """The skus in the customer's latest open cart (used when the page did not say)."""
    cart = session.scalar(select(Cart.id).where(Cart.customer_id == customer_id, Cart.status != "ordered")
                          .order_by(Cart.updated_at.desc()).limit(1))
    if cart is None:
        return []
    return list(session.scalars(select(CartItem.sku).where(CartItem.cart_pk == cart).order_by(CartItem.id)))


# --- deciding ---------------------------------------------------------------------------------------

def locale_of(*, customer_locale: str | None, page_locale: str | None, default: str) -> str:
    """de or en: the profile's language, else the browser's, else the shop default; other languages get en."""
    for loc in (customer_locale, page_locale):
        if loc:
            return "de" if loc.lower().startswith("de") else "en"
    return "de" if default.lower().startswith("de") else "en"


def coupon_pays(*, uplift: float | None, baseline: float | None, discount: float,
                margin: float) -> tuple[bool, str]:
    """Whether a coupon earns more than it costs for this customer, and the arithmetic that says so.

    uplift is the predicted rise in the probability of an order that the incentive causes, baseline the
    probability without it. Every buyer redeems the coupon, so it costs discount x baseline on orders
    that would have come anyway and earns (margin - discount) x uplift on the ones it brings.
    """
    if uplift is None:
        return False, "no incentive-uplift prediction for the customer: no coupon (rule: no evidence, no discount)"
    base = baseline or 0.0
    gain, cost = uplift * (margin - discount), base * discount
    verdict = "pays" if uplift > 0 and gain > cost else "does not pay"
    return verdict == "pays", (f"incentive uplift {uplift:+.3f} x (margin {margin:.2f} - discount {discount:.2f}) = "
                               f"{gain:.4f} vs. baseline {base:.3f} x discount {discount:.2f} = {cost:.4f}: "
                               f"coupon {verdict}")


@dataclass
class Outcome:
    """A decision before it is sent: the response, the impression row, and whether a coupon must be issued."""

    response: dict[str, Any]
    impression: dict[str, Any]
    issue_coupon: bool = False
    # A tactic's on-site message served by this decision: its coupon spec and the outbox row to mark shown.
    coupon_spec: dict[str, Any] | None = None
    served: list[int] = field(default_factory=list)


# --- content tactics queued for the visitor (outbox channel "onsite") --------------------------------

DEFAULT_VALID_FOR = dt.timedelta(hours=24)


def _valid_for(payload: dict[str, Any]) -> dt.timedelta:
    from emma.automation.schemas import parse_duration

    try:
        return parse_duration(payload.get("valid_for") or "24h")
    except ValueError:
        return DEFAULT_VALID_FOR


def tactic_content(*, session: Session | Connection, customer_id: int, placement: str, sku: str | None,
                   now: dt.datetime) -> list[dict[str, Any]]:
    """On-site messages a live tactic run queued for the customer and placement, newest first.

    The run must still be live (a cart that was bought ends its exit-intent offer), the message inside its
    valid_for span (24 h by default), and for the product page it must name the product shown (or none).
    """
    conn = session.connection() if isinstance(session, Session) else session
    # Plain SQL on the driver: it runs for most decisions of known visitors, and building the statement per
    # call cost more than the query.
    pg = conn.dialect.name == "postgresql"
    stamp = driver_datetimes(conn.dialect.name, [now])[0]
    rows = conn.exec_driver_sql(_content_sql(pg), (customer_id, stamp)).cursor.fetchall()
    out = []
    for mid, template, payload, due, tactic_id, run_id, status in rows:
        if not pg:  # SQLite hands back the stored text
            payload = json.loads(payload) if payload else None
            due = dt.datetime.fromisoformat(due)
        payload = payload or {}
        due = due.replace(tzinfo=dt.UTC)
        if payload.get("placement", "exit_intent") != placement:
            continue
        if due + _valid_for(payload) <= now:
            continue
        if placement == "product_page" and payload.get("sku") and sku and str(payload["sku"]) != sku:
            continue
        out.append({"id": mid, "template": template, "payload": payload, "tactic_id": tactic_id,
                    "run_id": run_id, "status": status})
    return out


@functools.cache
def _content_sql(pg: bool) -> str:
    mark = "%s" if pg else "?"
    live = ", ".join(f"'{s}'" for s in LIVE)
    return ("SELECT o.id, o.template, o.payload, o.due_at, o.tactic_id, o.run_id, o.status "
            "FROM outbox AS o JOIN automation_runs AS r ON r.id = o.run_id "
            f"WHERE o.customer_id = {mark} AND o.channel = 'onsite' AND o.status IN ('queued', 'sent') "
            f"AND o.due_at <= {mark} AND r.status IN ({live}) ORDER BY o.due_at DESC, o.id DESC")


# Events of a page view that has just happened: only these are waited for (an older backlog is the worker's).
PENDING_WINDOW = dt.timedelta(seconds=60)


def tactic_work_pending(*, session: Session | Connection, user_id: str | None, anonymous_id: str | None,
                        events: list[str], tactic_ids: list[str], now: dt.datetime) -> bool:
    """Whether the automation worker still has to handle something that may queue on-site content for this visitor:
    one of their recent entry events past the worker's event cursor, or a run of an on-site tactic due to step.

    One statement on indexed columns: identity (kind, value), events (customer_id, timestamp), runs (customer_id).
    """
    from emma.automation.jobs import EVENT_CURSOR

    if not (user_id or anonymous_id) or not (events or tactic_ids):
        return False
    conn = session.connection() if isinstance(session, Session) else session
    # Plain SQL on the driver: it runs before most product page and cart decisions, and building and
    # compiling the statement per call cost more than the query (0.6 ms against well under 0.1 ms).
    pg = conn.dialect.name == "postgresql"
    events, tactic_ids = events or [""], tactic_ids or [""]
    sql = _pending_sql(pg, len(events), len(tactic_ids))
    since = now - PENDING_WINDOW
    stamps = driver_datetimes(conn.dialect.name, [since, now])
    args = (user_id, anonymous_id, stamps[0], *events, EVENT_CURSOR, user_id, anonymous_id, *tactic_ids, stamps[1])
    return bool(conn.exec_driver_sql(sql, args).scalar())


@functools.cache
def _pending_sql(pg: bool, n_events: int, n_tactics: int) -> str:
    mark = "%s" if pg else "?"
    who = (f"SELECT customer_id FROM identities WHERE (kind = 'user_id' AND value = {mark}) "
           f"OR (kind = 'anonymous_id' AND value = {mark})")
    unread = (f"SELECT 1 FROM events WHERE customer_id IN ({who}) AND timestamp >= {mark} "
              f"AND name IN ({', '.join([mark] * n_events)}) "
              f"AND id > COALESCE((SELECT position FROM automation_cursors WHERE name = {mark}), 0)")
    due = (f"SELECT 1 FROM automation_runs WHERE customer_id IN ({who}) "
           f"AND tactic_id IN ({', '.join([mark] * n_tactics)}) AND status = 'active' AND due_at <= {mark}")
    return f"SELECT EXISTS ({unread}) OR EXISTS ({due})"


def _skus(items: Any) -> list[str]:
    return [str(i.get("sku") if isinstance(i, dict) else i) for i in (items or []) if i]


def _tactic_text(template: str | None, locale: str, context: dict[str, Any], settings: Settings) -> str | None:
    """The on-site template's text (a marketer edits it like an email); None when it cannot be rendered."""
    if not template:
        return None
    from emma.channels import content
    from emma.channels.exceptions import RenderError

    try:
        out = content.render(channel="onsite", template=template, locale=locale,
                             context={"customer": {}, "links": {}, "transactional": False, **context},
                             settings=settings)
    except RenderError:
        return None
    return out.text


def mark_served(*, session: Session, message_ids: list[int], now: dt.datetime) -> None:
    """A tactic's on-site message was shown: sent (once), with the time it was first shown."""
    if message_ids:
        session.execute(OutboxMessage.__table__.update()
                        .where(OutboxMessage.id.in_(message_ids), OutboxMessage.status == "queued")
                        .values(status="sent", sent_at=now))


def _block(kind: str, why: str, skus: list[str], snap: Snapshot, locale: str, **fmt: Any) -> dict[str, Any]:
    return {"kind": kind, "heading": HEADINGS[kind][locale], "reason": WHY[why][locale].format(**fmt),
            "items": [snap.cards[s].item(locale) for s in skus]}


def _popular(snap: Snapshot, locale: str, exclude: set[str], limit: int) -> dict[str, Any]:
    skus = [s for s in snap.popular if s not in exclude][:limit]
    if snap.popular_days:
        return _block("popular", "popular", skus, snap, locale, days=snap.popular_days)
    return _block("popular", "popular_all", skus, snap, locale)


def _ranked(candidates: list[tuple[str, float]], exclude: set[str], prefer: list[str], limit: int) -> list[str]:
    """Candidates by score without exclusions; items the customer's own recommendations name come first."""
    ordered = [s for s, _ in candidates if s not in exclude]
    if prefer:
        liked = set(prefer)
        ordered = [s for s in ordered if s in liked] + [s for s in ordered if s not in liked]
    return ordered[:limit]


def decide(*, session: Session | Connection, request: DecideRequest, snapshot: Snapshot, settings: Settings,
           now: dt.datetime | None = None) -> Outcome:
    """The content for one placement and visitor, with reasons; the impression row to log with it."""
    now = now or utcnow()
    snap = snapshot
    limit = request.limit or settings.onsite_items
    ctx = request.context
    campaign = settings.onsite_coupon_campaign
    visitor = find_visitor(session=session, user_id=request.userId, anonymous_id=request.anonymousId,
                           campaign=campaign)
    locale = locale_of(customer_locale=visitor.locale if visitor else None, page_locale=ctx.locale,
                       default=settings.default_locale)
    personal = visitor is not None and visitor.consent == "granted"
    reasons: dict[str, str] = {}
    if visitor is None:
        reasons["audience"] = "unknown visitor: generic content (popular items, product relations)"
    elif not personal:
        reasons["audience"] = "no personalization consent: generic content, nothing from the profile"
    else:
        reasons["audience"] = "personalization consent granted: the profile and stored predictions are used"
    prefer = visitor.recommendations if personal and visitor else []
    cart = list(dict.fromkeys(s for s in ctx.cart_skus if s))
    if not cart and personal and visitor and request.placement == "cart":
        cart = stored_cart(session=session, customer_id=visitor.customer_id)
        if cart:
            reasons["cart"] = "cart taken from the customer's latest open cart"
    blocks: list[dict[str, Any]] = []
    coupon_offer: dict[str, Any] | None = None
    issue = False
    served: list[int] = []
    spec: dict[str, Any] | None = None

    if request.placement == "home":
        # The predictive layer's stored results (next best offer, recommendations), read in the visitor's one
        # statement and checked against the snapshot's in-stock cards; no model runs per request.
        predicted = personal and visitor is not None and visitor.predicted
        nbo = visitor.next_best_offer if predicted and visitor else None
        if nbo is not None and (nbo not in snap.cards or nbo in cart):
            reasons["next_best_offer"] = f"next best offer {nbo} is not available now (inactive or sold out)"
            nbo = None
        recs = [s for s in prefer if s in snap.cards and s not in cart and s != nbo][:limit - (nbo is not None)]
        if not predicted:
            recs = []
        scored = f" (scored as of {visitor.scored_at:%Y-%m-%d})" if predicted and visitor and visitor.scored_at \
            else ""
        if nbo is not None:
            blocks.append(_block("next_best_offer", "next_best_offer", [nbo], snap, locale))
            reasons["next_best_offer"] = f"the customer's next best offer {nbo}: P(buy) x margin{scored}"
        if recs:
            blocks.append(_block("recommendations", "recommendations", recs, snap, locale))
            reasons["recommendations"] = f"the customer's stored recommendations{scored}"
        if not blocks:
            blocks.append(_popular(snap, locale, set(cart), limit))
            reasons["popular"] = ("popular items: " + ("no stored recommendations for the customer" if predicted
                                                       else "no individual predictions for the customer (not "
                                                       "scored with personalization consent)") if personal
                                  else "popular items")
    elif request.placement in ("product_page", "cart"):
        anchors = [ctx.sku] if request.placement == "product_page" else cart
        anchors = [a for a in anchors if a]
        exclude = set(anchors) | set(cart)
        if personal and visitor is not None:
            for msg in tactic_content(session=session, customer_id=visitor.customer_id,
                                      placement=request.placement, sku=ctx.sku, now=now)[:1]:
                shown = _tactic_blocks(msg, snap, locale, exclude, limit, ctx.sku)
                if shown:
                    blocks.extend(shown)
                    for b in shown:
                        exclude |= {i["sku"] for i in b["items"]}
                    reasons["tactic"] = (f"{msg['tactic_id']} (run {msg['run_id']}) queued this content: "
                                         + "; ".join(b["kind"] for b in shown))
                    if msg["status"] == "queued":
                        served.append(msg["id"])
        acc = list(dict.fromkeys(a for anchor in anchors for a in snap.accessories.get(anchor, [])
                                 if a not in exclude))[:limit]
        scores: dict[str, float] = {}
        for anchor in anchors:
            for s, w in snap.neighbours.get(anchor, []):
                scores[s] = scores.get(s, 0.0) + w
        co = _ranked(sorted(scores.items(), key=lambda x: -x[1]), exclude | set(acc), prefer, limit)
        single = request.placement == "product_page"
        name = snap.cards[ctx.sku].names[locale] if single and ctx.sku in snap.cards else (ctx.sku or "")
        if co and not any(b["kind"] == "co_purchase" for b in blocks):
            blocks.append(_block("co_purchase", "co_purchase" if single else "co_purchase_cart", co, snap, locale,
                                 name=name))
            reasons["co_purchase"] = ("bought together with the " + ("product" if single else "cart items") +
                                      " by other customers (cosine co-purchase)" +
                                      ("; the customer's own recommendations ranked first" if prefer else ""))
        if acc and not any(b["kind"] == "accessories" for b in blocks):
            blocks.append(_block("accessories", "accessories" if single else "accessories_cart", acc, snap,
                                 locale, name=name))
            reasons["accessories"] = "accessory_skus in the catalog"
        if not blocks:
            blocks.append(_popular(snap, locale, exclude, limit))
            reasons["popular"] = ("no co-purchase data or accessories for " +
                                  (f"sku {ctx.sku}" if single else "the cart" if cart else "an empty cart") +
                                  ": popular items")
    else:  # exit_intent: a coupon where it pays, otherwise nothing (not every visitor needs a discount)
        queued = (tactic_content(session=session, customer_id=visitor.customer_id, placement="exit_intent",
                                 sku=None, now=now) if personal and visitor is not None else [])
        offer = next((m for m in queued if isinstance(m["payload"].get("coupon"), dict)
                      and m["payload"]["coupon"].get("campaign")), None)
        if offer is not None:
            # A tactic decided the incentive is needed (e.g. abandoned_cart on the predicted uplift).
            spec = {**offer["payload"]["coupon"], "template": offer["template"], "payload": offer["payload"]}
            issue = True
            if offer["status"] == "queued":
                served.append(offer["id"])
            reasons["coupon"] = (f"{offer['tactic_id']} (run {offer['run_id']}) queued an exit-intent coupon "
                                 f"of campaign {spec['campaign']}: {offer['payload'].get('reason', '')}".rstrip(": "))
        elif visitor is None:
            reasons["coupon"] = "unknown visitor: no coupon (no prediction to say it pays)"
        elif not personal:
            reasons["coupon"] = "no personalization consent: no coupon (choosing by predicted uplift needs it)"
        elif visitor.coupon is not None:
            c = visitor.coupon
            if c["redeemed_at"] is not None:
                reasons["coupon"] = f"coupon of campaign {campaign} already redeemed: one per customer and campaign"
            elif c["expires_at"] <= now:
                reasons["coupon"] = f"coupon of campaign {campaign} expired: one per customer and campaign"
            else:
                coupon_offer = coupon_view(coupon=c, locale=locale)
                reasons["coupon"] = f"coupon of campaign {campaign} issued before and still valid: shown again"
        else:
            pays, why = coupon_pays(uplift=visitor.incentive_uplift, baseline=visitor.propensity,
                                    discount=settings.onsite_coupon_discount, margin=settings.onsite_coupon_margin)
            reasons["coupon"] = why
            issue = pays

    decision_id = uuid.uuid4().hex
    items = {b["kind"]: [i["sku"] for i in b["items"]] for b in blocks}
    impression = {"decision_id": decision_id, "customer_id": visitor.customer_id if visitor else None,
                  "anonymous_id": request.anonymousId if visitor is None else None,
                  "placement": request.placement, "locale": locale, "personalized": personal, "items": items,
                  "coupon_id": coupon_offer["id"] if coupon_offer else None, "reasons": reasons,
                  "context": {k: v for k, v in (("sku", ctx.sku), ("cart_skus", cart), ("url", ctx.url)) if v},
                  "created_at": now}
    response = {"decision_id": decision_id, "placement": request.placement, "locale": locale,
                "personalized": personal, "blocks": blocks, "coupon": _public(coupon_offer), "reasons": reasons}
    return Outcome(response=response, impression=impression, issue_coupon=issue, coupon_spec=spec, served=served)


def _tactic_blocks(msg: dict[str, Any], snap: Snapshot, locale: str, exclude: set[str], limit: int,
                   sku: str | None) -> list[dict[str, Any]]:
    """The blocks a tactic's upsell message names (accessories, also bought), as far as they can be shown now."""
    out = []
    name = snap.cards[sku].names[locale] if sku and sku in snap.cards else (sku or "")
    single = msg["payload"].get("placement") == "product_page"
    for kind, key in (("accessories", "accessories"), ("co_purchase", "also_bought")):
        skus = [s for s in _skus(msg["payload"].get(key)) if s in snap.cards and s not in exclude][:limit]
        if skus:
            why = kind if single else ("accessories_cart" if kind == "accessories" else "co_purchase_cart")
            out.append(_block(kind, why, skus, snap, locale, name=name))
            exclude = exclude | set(skus)
    return out


def coupon_view(*, coupon: dict[str, Any], locale: str) -> dict[str, Any]:
    """The coupon as the overlay shows it (id kept for the impression, dropped from the response)."""
    value = coupon["value"] or ""
    expires: dt.datetime = coupon["expires_at"]
    date = expires.strftime("%d.%m.%Y") if locale == "de" else expires.strftime("%Y-%m-%d")
    return {"id": coupon["id"], "code": coupon["code"], "value": coupon["value"],
            "expires_at": expires.isoformat(), "heading": HEADINGS["coupon"][locale].format(value=value),
            "text": COUPON_TEXT[locale].format(code=coupon["code"], value=value),
            "reason": WHY["coupon"][locale].format(date=date)}


def _public(offer: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if offer is None else {k: v for k, v in offer.items() if k != "id"}


def issue_coupon(*, session: Session, customer_id: int, settings: Settings,
                 now: dt.datetime | None = None, spec: dict[str, Any] | None = None,
                 served: list[int] | None = None) -> dict[str, Any]:
    """The customer's exit-intent coupon, issued once per campaign (a repeat returns the same code).

    spec is a tactic's coupon (campaign, value, valid_days); served are its on-site messages, marked shown.
    """
    now = now or utcnow()
    spec = spec or {}
    days = int(spec.get("valid_days") or settings.onsite_coupon_valid_days)
    c = coupons.issue(session=session, customer_id=customer_id,
                      campaign=str(spec.get("campaign") or settings.onsite_coupon_campaign),
                      value=spec.get("value") or settings.onsite_coupon_value,
                      expires_at=now + dt.timedelta(days=days), message_id=(served or [None])[0], now=now)
    mark_served(session=session, message_ids=served or [], now=now)
    session.flush()
    return {"id": c.id, "code": c.code, "value": c.value, "expires_at": c.expires_at, "redeemed_at": c.redeemed_at}


def attach_coupon(*, outcome: Outcome, coupon: dict[str, Any], settings: Settings | None = None) -> None:
    """Put a freshly issued coupon into the decision and its impression (a tactic's template gives its text)."""
    offer = coupon_view(coupon=coupon, locale=outcome.response["locale"])
    spec = outcome.coupon_spec
    if spec and settings is not None:
        text = _tactic_text(spec.get("template"), outcome.response["locale"],
                            {**(spec.get("payload") or {}), "coupon": coupon}, settings)
        if text:
            offer["text"] = text
    outcome.response["coupon"] = _public(offer)
    outcome.impression["coupon_id"] = coupon["id"]
    outcome.impression["reasons"]["coupon_issued"] = f"coupon {coupon['code']} issued"


_JSON_COLUMNS = ("items", "reasons", "context")


def impression_row(impression: dict[str, Any]) -> dict[str, Any]:
    """An impression ready for log_impressions: its JSON columns encoded (done per request, in the event loop)."""
    return {**impression, **{k: json.dumps(impression[k], separators=(",", ":")) for k in _JSON_COLUMNS}}


def log_impressions(*, session: Session, rows: list[dict[str, Any]]) -> int:
    """Store impressions (as impression_row gives them) in one multi-row insert (no reads)."""
    if rows:
        # Column-wise with the JSON already encoded: this runs in a thread of the serving process, and
        # every millisecond it holds the GIL is a millisecond the event loop's /v1/decide requests wait.
        insert_columns(session, Decision, {name: [r[name] for r in rows] for name in rows[0]},
                       encoded=_JSON_COLUMNS)
    return len(rows)


def impressions(*, session: Session, customer_id: int | None = None, limit: int = 100) -> list[Decision]:
    """The latest logged decisions, optionally of one customer."""
    stmt = select(Decision).order_by(Decision.id.desc()).limit(limit)
    if customer_id is not None:
        stmt = stmt.where(Decision.customer_id == customer_id)
    return list(session.scalars(stmt))


CLICK_EVENTS = ("Product Clicked", "Promotion Clicked")


def report(*, session: Session, since: dt.datetime) -> list[dict[str, Any]]:
    """Per placement since a time: impressions, personalised share, decisions clicked, coupons shown and redeemed."""
    out: dict[str, dict[str, Any]] = {}
    for placement, n, personal, coupons_shown in session.execute(
            select(Decision.placement, func.count(), func.sum(case((Decision.personalized.is_(True), 1), else_=0)),
                   func.count(Decision.coupon_id))
            .where(Decision.created_at >= since).group_by(Decision.placement)):
        out[placement] = {"placement": placement, "impressions": n, "personalized": int(personal or 0),
                          "clicked": 0, "clicks": 0, "coupons_shown": coupons_shown, "coupons_redeemed": 0}
    # The snippet sends the decision's id with every click; clicks cannot precede their decision.
    decision_of = Event.properties["decision_id"].as_string()
    for placement, clicked, clicks in session.execute(
            select(Decision.placement, func.count(func.distinct(Decision.id)), func.count(Event.id))
            .join(Event, decision_of == Decision.decision_id)
            .where(Event.type == "track", Event.name.in_(CLICK_EVENTS), Event.timestamp >= since,
                   Decision.created_at >= since)
            .group_by(Decision.placement)):
        if placement in out:
            out[placement].update(clicked=clicked, clicks=clicks)
    for placement, redeemed in session.execute(
            select(Decision.placement, func.count(func.distinct(Coupon.id)))
            .join(Coupon, Coupon.id == Decision.coupon_id)
            .where(Decision.created_at >= since, Coupon.redeemed_at.is_not(None)).group_by(Decision.placement)):
        if placement in out:
            out[placement]["coupons_redeemed"] = redeemed
    for row in out.values():
        row["click_rate"] = row["clicked"] / row["impressions"] if row["impressions"] else 0.0
    return sorted(out.values(), key=lambda r: r["placement"])
