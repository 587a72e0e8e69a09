"""The whole picture of one customer, as shown by `emma customers show` and the admin API."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from emma.ingest import service as ingest
from emma.orders import service as orders
from emma.orders.models import Cart
from emma.profiles import service as profiles

PROFILE_FIELDS = ("id", "external_id", "email", "phone", "first_name", "last_name", "birthday", "locale",
                  "timezone", "postal_code", "city", "country", "lat", "lon", "attributes", "is_anonymous",
                  "created_at", "last_seen_at")


def _plain(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if v.__class__.__name__ == "Decimal":
        return float(v)
    return v


def customer_view(*, session: Session, ref: str, events: int = 10) -> dict[str, Any]:
    """Profile, identities, consents, open carts, wishlist, latest events and orders, as plain JSON data."""
    from sqlalchemy import select

    c = profiles.get_customer(session=session, ref=ref)
    view: dict[str, Any] = {"profile": {f: _plain(getattr(c, f)) for f in PROFILE_FIELDS}}
    view["identities"] = [{"kind": i.kind, "value": i.value} for i in profiles.identities_of(
        session=session, customer_id=c.id)]
    view["consents"] = [{"purpose": row.purpose, "status": row.status, "source": row.source,
                         "text_version": row.text_version, "recorded_at": _plain(row.recorded_at)}
                        for row in _current_consents(session, c.id)]
    carts = session.scalars(select(Cart).where(Cart.customer_id == c.id, Cart.status != "ordered")
                            .order_by(Cart.updated_at.desc()))
    view["carts"] = [{"cart_id": cart.cart_id, "status": cart.status, "updated_at": _plain(cart.updated_at),
                      "items": [{"sku": it.sku, "quantity": it.quantity, "price": _plain(it.price)}
                                for it in orders.cart_items(session=session, cart_id=cart.cart_id)]}
                     for cart in carts]
    view["wishlist"] = [w.sku for w in orders.wishlist(session=session, customer_id=c.id)]
    view["events"] = [{"timestamp": _plain(e.timestamp), "type": e.type, "name": e.name,
                       "properties": e.properties} for e in ingest.recent_events(
        session=session, customer_id=c.id, limit=events)]
    recent = orders.orders_of(session=session, customer_id=c.id)
    lines = orders.lines_of(session=session, order_pks=[o.id for o in recent])
    view["orders"] = [{"order_id": o.order_id, "ordered_at": _plain(o.ordered_at), "status": o.status,
                       "revenue": _plain(o.revenue), "currency": o.currency,
                       "lines": [{"sku": ln.sku, "quantity": ln.quantity, "unit_price": _plain(ln.unit_price)}
                                 for ln in lines.get(o.id, [])]} for o in recent]
    from emma.automation import service as automation

    view["automation"] = automation.customer_automation(session=session, customer_id=c.id, limit=50)
    view["predictions"] = _predictions(session, c.id)
    return view


PREDICTION_FIELDS = ("p_alive", "expected_orders", "expected_revenue", "clv", "churn_probability", "next_order_date",
                     "lifecycle_stage", "propensity_30d", "best_send_hour", "preferred_channel", "incentive_uplift",
                     "early_adopter", "next_best_offer", "top_affinities", "recommendations")


def _predictions(session: Session, customer_id: int) -> dict[str, Any] | None:
    """The latest scored predictions with the reasons behind them (None before the first `emma score`)."""
    from emma.predict import service as predict

    p = predict.latest(session=session, customer_id=customer_id)
    if p is None:
        return None
    return {"as_of": _plain(p.as_of), "personalized": p.personalized,
            **{f: _plain(getattr(p, f)) for f in PREDICTION_FIELDS}, "reasons": p.reasons or {}}


def _current_consents(session: Session, customer_id: int) -> list[Any]:
    from sqlalchemy import select

    from emma.consent.models import Consent

    return list(session.scalars(select(Consent).where(Consent.customer_id == customer_id).order_by(Consent.purpose)))
