"""Two `emma import` processes at once, on overlapping files: every row lands exactly once, and the tables
end up as after importing the same files one after the other (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from emma.catalog.models import PriceChange, Product, StockChange
from emma.consent.models import Consent, ConsentLog
from emma.db import make_engine, make_sessionmaker
from emma.ingest.models import Event
from emma.orders.models import Cart, CartItem, Order, OrderLine
from emma.profiles.models import Customer, Identity, IdentityConflict, TraitChange


def _orders(path: Path, numbers: range) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "customer_id", "ordered_at", "sku", "quantity", "unit_price", "status"])
        for n in numbers:  # customers recur across both files, so both processes create the same ones
            for line in range(2):
                w.writerow([f"o-{n}", f"c-{n % 90}", f"2026-03-01T{n % 24:02d}:{n % 60:02d}:00Z", f"K-{line}",
                            1 + n % 3, "4.50", "delivered" if n % 5 == 0 else "completed"])
    return path


def _customers(path: Path, numbers: range) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "email", "first_name", "city", "loyalty_tier"])
        for n in numbers:
            w.writerow([f"c-{n}", f"kunde{n}@example.com", f"Vorname{n}", "Berlin", ("gold", "silver")[n % 2]])
    return path


def _products(path: Path, numbers: range) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "name", "price", "stock"])
        for n in numbers:
            w.writerow([f"K-{n}", f"Produkt {n}", f"{5 + n % 20}.90", n % 7])
    return path


def _event(n: int) -> dict[str, Any]:
    user = f"c-{n % 70}"
    msg: dict[str, Any] = {"userId": user, "messageId": f"m-{n}",
                           "timestamp": f"2026-03-02T10:{n % 60:02d}:{n % 59:02d}Z"}
    if n % 4 == 0:  # every user's anonymous id is always sent with that user: any order links them the same way
        msg["anonymousId"] = f"a-{n % 70}"
    kind = n % 5
    if kind == 0:
        msg.update(type="identify", traits={"email": f"{user}@example.com", "firstName": f"N{n}"})
    elif kind == 1:
        msg.update(type="track", event="Product Added",
                   properties={"cart_id": f"cart-{user}", "sku": f"K-{n % 4}", "quantity": 1, "price": 4.5})
    elif kind == 2:
        msg.update(type="track", event="Order Completed",
                   properties={"order_id": f"e-{n}", "cart_id": f"cart-e-{n}", "revenue": 9.0,
                               "products": [{"sku": "K-1", "quantity": 2, "price": 4.5}]})
    else:
        msg.update(type="track", event="Product Viewed", properties={"sku": f"K-{n % 4}"})
    return msg


def _events(path: Path, numbers: range) -> Path:
    path.write_text("".join(json.dumps(_event(n)) + "\n" for n in numbers))
    return path


def _consents(path: Path, numbers: range) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "purpose", "status", "source", "recorded_at"])
        for n in numbers:  # each customer and purpose: seven decisions, not in time order, some repeating
            k = n // 60
            at = f"2025-{1 + n % 12:02d}-{1 + k * 11 % 28:02d}T08:00:00Z"
            w.writerow([f"c-{n % 60}", ("email_marketing", "sms_marketing")[n % 2], ("granted", "revoked")[k % 2],
                        f"crm-{k}", at])
    return path


def _start(url: str, kind: str, path: Path) -> subprocess.Popen:
    env = {**os.environ, "EMMA_DATABASE_URL": url, "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-c", "from emma.cli.main import app; app()", "import", kind, str(path),
                             "--chunk", "40"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _landed(output: str) -> int:
    found = re.search(r"landed \(new or changed\)\W*([\d,]+)", output)
    assert found, f"no summary in:\n{output}"
    return int(found.group(1).replace(",", ""))


def _state(url: str) -> dict[str, Any]:
    """The tables by the shop's keys, not by internal ids (which depend on who created a row first)."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        ext = dict(s.execute(select(Customer.id, Customer.external_id)).all())
        state = {
            "customers": sorted((str(e), str(seen), first, city, json.dumps(attrs, sort_keys=True))
                                for e, seen, first, city, attrs in s.execute(
                select(Customer.external_id, Customer.last_seen_at, Customer.first_name, Customer.city,
                       Customer.attributes))),
            "trait_history": sorted((str(ext[c]), t, json.dumps(v)) for c, t, v in s.execute(
                select(TraitChange.customer_id, TraitChange.trait, TraitChange.value))),
            "products": sorted((sku, str(price), stock) for sku, price, stock in s.execute(
                select(Product.sku, Product.price, Product.stock))),
            "price_history": sorted((sku, str(price)) for sku, price in s.execute(
                select(PriceChange.sku, PriceChange.price))),
            "stock_history": sorted(tuple(r) for r in s.execute(select(StockChange.sku, StockChange.stock))),
            "identities": sorted((k, v, str(ext[c])) for k, v, c in s.execute(
                select(Identity.kind, Identity.value, Identity.customer_id))),
            "conflicts": sorted((str(ext[a]), str(ext[b])) for a, b in s.execute(
                select(IdentityConflict.customer_id, IdentityConflict.other_customer_id))),
            "orders": sorted((o, ext[c], st, str(r)) for o, c, st, r in s.execute(
                select(Order.order_id, Order.customer_id, Order.status, Order.revenue))),
            "lines": sorted(tuple(r) for r in s.execute(
                select(Order.order_id, OrderLine.line_no, OrderLine.sku, OrderLine.quantity)
                .join(Order, Order.id == OrderLine.order_pk))),
            "events": sorted((m, ext[c]) for m, c in s.execute(select(Event.message_id, Event.customer_id))),
            "carts": sorted((cid, ext[c], st) for cid, c, st in s.execute(
                select(Cart.cart_id, Cart.customer_id, Cart.status))),
            "cart_items": sorted(tuple(r) for r in s.execute(
                select(Cart.cart_id, CartItem.sku, CartItem.quantity).join(Cart, Cart.id == CartItem.cart_pk))),
            "consents": sorted((ext[c], p, st, src, str(at)) for c, p, st, src, at in s.execute(
                select(Consent.customer_id, Consent.purpose, Consent.status, Consent.source, Consent.recorded_at))),
            # previous_status is what the log showed when the entry came, which depends on the order
            "consent_log": sorted((ext[c], p, st, src, str(at)) for c, p, st, src, at in s.execute(
                select(ConsentLog.customer_id, ConsentLog.purpose, ConsentLog.status, ConsentLog.source,
                       ConsentLog.recorded_at))),
        }
    engine.dispose()
    return state


def test_two_imports_at_once_land_every_row_once(db_url, other_db_url, tmp_path):
    pairs = [  # each kind: two files that share a third of their rows, run at the same time
        ("products", _products(tmp_path / "p1.csv", range(0, 60)), _products(tmp_path / "p2.csv", range(40, 100)), 100),
        ("orders", _orders(tmp_path / "o1.csv", range(0, 300)), _orders(tmp_path / "o2.csv", range(200, 500)), 1000),
        ("events", _events(tmp_path / "e1.jsonl", range(0, 450)), _events(tmp_path / "e2.jsonl", range(300, 750)), 750),
        ("consents", _consents(tmp_path / "k1.csv", range(0, 280)), _consents(tmp_path / "k2.csv", range(140, 420)),
         420),
        # after orders and events, which race to create the same customers: now they gain their traits
        ("customers", _customers(tmp_path / "c1.csv", range(0, 300)), _customers(tmp_path / "c2.csv", range(200, 500)),
         500),
    ]
    for kind, first, second, distinct in pairs:
        procs = [_start(db_url, kind, first), _start(db_url, kind, second)]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
        for p, out in zip(procs, outputs, strict=True):
            assert p.returncode == 0, out
        # each distinct row landed in exactly one of the two processes
        assert sum(_landed(out) for out in outputs) == distinct, outputs
        for path in (first, second):  # the same files one after the other, for comparison
            p = _start(other_db_url, kind, path)
            out = p.communicate(timeout=240)[0]
            assert p.returncode == 0, out
    together, one_by_one = _state(db_url), _state(other_db_url)
    assert len(together["orders"]) == 500 + 750 // 5 and len(together["events"]) == 750
    assert len(together["products"]) == 100 and len(together["price_history"]) == 100
    assert len(together["consent_log"]) == 420
    for table in together:
        assert together[table] == one_by_one[table], table
