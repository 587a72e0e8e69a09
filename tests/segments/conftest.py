"""Helpers for segment tests: a small shop written straight into the tables, and both evaluations of a rule."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.orm import Session

from emma.catalog.models import Product
from emma.consent.models import Consent
from emma.ingest.models import Event
from emma.orders.models import Cart, CartItem, Order, OrderLine, WishlistItem
from emma.predict.models import Prediction, ScoreRun
from emma.profiles.models import Customer
from emma.segments import rules, service

NOW = dt.datetime(2026, 5, 17, 10, 0, tzinfo=dt.UTC)


class Shop:
    """Writes customers and their facts; ids are the database's."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.n = 0
        self.run: ScoreRun | None = None

    def customer(self, **kw: Any) -> int:
        self.n += 1
        kw.setdefault("external_id", f"c-{self.n}")
        kw.setdefault("created_at", NOW - dt.timedelta(days=100))
        kw.setdefault("attributes", {})
        c = Customer(**kw)
        self.s.add(c)
        self.s.flush()
        return c.id

    def product(self, sku: str, category: str | None, price: str = "10.00") -> None:
        self.s.add(Product(sku=sku, name=sku, category=category, price=Decimal(price)))
        self.s.flush()

    def consent(self, cid: int, purpose: str, status: str, days_ago: float = 0) -> None:
        self.s.add(Consent(customer_id=cid, purpose=purpose, status=status, source="test",
                           recorded_at=NOW - dt.timedelta(days=days_ago)))

    def event(self, cid: int, name: str, days_ago: float, **props: Any) -> None:
        self.n += 1
        ts = NOW - dt.timedelta(days=days_ago)
        self.s.add(Event(message_id=f"m-{self.n}", type="track", name=name, customer_id=cid, properties=props,
                         context={}, timestamp=ts, received_at=ts))

    def order(self, cid: int, days_ago: float, revenue: str, skus: tuple[str, ...] = (),
              status: str = "completed") -> None:
        self.n += 1
        o = Order(order_id=f"o-{self.n}", customer_id=cid, status=status, revenue=Decimal(revenue),
                  ordered_at=NOW - dt.timedelta(days=days_ago))
        self.s.add(o)
        self.s.flush()
        for i, sku in enumerate(skus):
            self.s.add(OrderLine(order_pk=o.id, line_no=i, sku=sku, quantity=1, unit_price=Decimal("1")))

    def cart(self, cid: int, idle_minutes: float, items: list[tuple[str, int, str | None]],
             status: str = "open") -> None:
        self.n += 1
        at = NOW - dt.timedelta(minutes=idle_minutes)
        c = Cart(cart_id=f"cart-{self.n}", customer_id=cid, status=status, created_at=at, updated_at=at)
        self.s.add(c)
        self.s.flush()
        for sku, q, price in items:
            self.s.add(CartItem(cart_pk=c.id, sku=sku, quantity=q, price=None if price is None else Decimal(price),
                                added_at=at))

    def wish(self, cid: int, sku: str, removed: bool = False) -> None:
        self.s.add(WishlistItem(customer_id=cid, sku=sku, added_at=NOW - dt.timedelta(days=3),
                                removed_at=NOW if removed else None))

    def prediction(self, cid: int, **kw: Any) -> None:
        if self.run is None:
            self.run = ScoreRun(as_of=NOW, horizon_days=365)
            self.s.add(self.run)
            self.s.flush()
        kw.setdefault("top_affinities", [])
        kw.setdefault("recommendations", [])
        kw.setdefault("reasons", {})
        self.s.add(Prediction(customer_id=cid, run_id=self.run.id, as_of=NOW, **kw))


@pytest.fixture
def shop(session: Session) -> Shop:
    return Shop(session)


def evaluate_both(session: Session, rule: Any, now: dt.datetime = NOW) -> tuple[set[int], set[int]]:
    """Members by SQL and by the in-memory predicate over every customer."""
    session.flush()
    node = rules.parse(rule)
    by_sql = set(session.scalars(service.members_query(segment=node, now=now)))
    everyone = [c for c in session.scalars(Customer.__table__.select().with_only_columns(Customer.id))]
    by_predicate = service.matching(session=session, rule=node, customer_ids=everyone, now=now)
    return by_sql, by_predicate


@pytest.fixture
def members(session: Session) -> Callable[..., set[int]]:
    """The members of a rule, after checking that SQL and predicate agree."""

    def run(rule: Any, now: dt.datetime = NOW) -> set[int]:
        by_sql, by_predicate = evaluate_both(session, rule, now)
        assert by_sql == by_predicate, f"SQL {sorted(by_sql)} != predicate {sorted(by_predicate)} for {rule}"
        return by_sql

    return run


@pytest.fixture
def both(session: Session) -> Callable[..., tuple[set[int], set[int]]]:
    """(members by SQL, members by predicate) of a rule, without asserting."""
    return lambda rule, now=NOW: evaluate_both(session, rule, now)
