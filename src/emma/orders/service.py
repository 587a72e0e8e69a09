"""Orders (from events or imports), carts keyed by cart id, and wishlists."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from emma.db import allocate_ids, among, insert_columns, insert_rows, read_datetime, rows_among, update_rows
from emma.orders.models import Cart, CartItem, Order, OrderLine, WishlistItem

ORDER_STATUSES = ("completed", "processing", "produced", "shipped", "delivered", "cancelled", "returned",
                  "refunded")
# How far along its life an order is. An import moves an order only forward: an export taken before the
# order shipped must not undo the delivery that events recorded since.
STAGE = {"completed": 0, "processing": 1, "produced": 2, "shipped": 3, "delivered": 4, "cancelled": 5,
         "returned": 5, "refunded": 6}


def create_orders(*, session: Session, orders: Sequence[dict[str, Any]], source: str) -> tuple[int, int]:
    """Insert orders with their lines; orders that already exist are left as they are (idempotent).

    Each order dict: order_id, customer_id, ordered_at, status, currency, revenue, discount, coupon,
    cart_id, lines=[{sku, quantity, unit_price}]. Returns (created, already present).
    """
    if not orders:
        return 0, 0
    present = {oid for (oid,) in rows_among(session, Order, ["order_id"], "order_id", [o["order_id"] for o in orders])}
    fresh = [o for o in orders if o["order_id"] not in present]
    if not fresh:
        return 0, len(orders)
    order_rows = []
    for o in fresh:
        revenue = o.get("revenue")
        if revenue is None:
            revenue = sum(Decimal(str(ln["unit_price"])) * int(ln["quantity"]) for ln in o["lines"])
        order_rows.append({
            "order_id": o["order_id"], "customer_id": o["customer_id"], "status": o.get("status") or "completed",
            "ordered_at": o["ordered_at"], "currency": o.get("currency") or "EUR", "revenue": revenue,
            "discount": o.get("discount"), "coupon": o.get("coupon"), "cart_id": o.get("cart_id"),
            "source": source, "updated_at": o["ordered_at"],
            "delivered_at": o["ordered_at"] if o.get("status") == "delivered" else None,
        })
    # On the driver's fast path (db.insert_rows); an order a concurrent writer stored meanwhile fails the
    # insert on its unique order_id, and the transaction is retried.
    pks = _insert_returning_ids(session, Order, order_rows, "order_id")
    line_rows = [{"order_pk": pks[o["order_id"]], "line_no": n, "sku": ln["sku"], "quantity": int(ln["quantity"]),
                  "unit_price": ln["unit_price"]}
                 for o in fresh for n, ln in enumerate(o["lines"], start=1)]
    insert_rows(session, OrderLine, line_rows)
    return len(fresh), len(orders) - len(fresh)


def _insert_returning_ids(session: Session, table: Any, rows: list[dict[str, Any]], key: str) -> dict[Any, int]:
    """Insert rows; their ids by the unique key. SQLite: ids chosen beforehand (db.allocate_ids) and one cached
    executemany statement, instead of a multi-row INSERT ... RETURNING that it parses anew for every number of
    rows; PostgreSQL: one INSERT ... RETURNING."""
    if session.get_bind().dialect.name != "sqlite":
        return dict(insert_rows(session, table, rows, returning=[key, "id"]))  # type: ignore[arg-type]
    for row, pk in zip(rows, allocate_ids(session, table, len(rows)), strict=True):
        row["id"] = pk
    insert_rows(session, table, rows)
    return {row[key]: row["id"] for row in rows}


def update_order_status(*, session: Session, order_id: str, status: str, at: dt.datetime) -> bool:
    """Move an order to a new status (shipped, delivered, ...); False when the order is unknown."""
    values: dict[str, Any] = {"status": status, "updated_at": at}
    if status == "shipped":
        values["shipped_at"] = at
    if status == "delivered":
        values["delivered_at"] = at
    result = session.execute(update(Order).where(Order.order_id == order_id).values(**values))
    return bool(result.rowcount)


def _cart(session: Session, *, cart_id: str, customer_id: int, at: dt.datetime) -> Cart:
    cart = session.scalar(select(Cart).where(Cart.cart_id == cart_id))
    if cart is None:
        cart = Cart(cart_id=cart_id, customer_id=customer_id, status="open", created_at=at, updated_at=at)
        session.add(cart)
        session.flush()
    return cart


def default_cart_id(customer_id: int) -> str:
    """The cart id used when the shop sends none: one open cart per customer."""
    return f"customer-{customer_id}"


def open_cart_id(*, session: Session, customer_id: int) -> str:
    """The customer's most recently updated open cart (the older cart on a tie), or the default id."""
    found = session.scalar(select(Cart.cart_id).where(Cart.customer_id == customer_id, Cart.status != "ordered")
                           .order_by(Cart.updated_at.desc(), Cart.id).limit(1))
    return found or default_cart_id(customer_id)


def cart_add(*, session: Session, customer_id: int, cart_id: str, sku: str, quantity: int,
             price: Decimal | None, at: dt.datetime) -> None:
    """Add quantity of a sku to a cart (re-opening an ordered cart id starts it afresh)."""
    cart = _cart(session, cart_id=cart_id, customer_id=customer_id, at=at)
    if cart.status == "ordered":
        session.execute(delete(CartItem).where(CartItem.cart_pk == cart.id))
        cart.order_id = None
    cart.status, cart.updated_at, cart.customer_id = "open", at, customer_id
    item = session.scalar(select(CartItem).where(CartItem.cart_pk == cart.id, CartItem.sku == sku))
    if item is None:
        session.add(CartItem(cart_pk=cart.id, sku=sku, quantity=quantity, price=price, added_at=at))
    else:
        item.quantity += quantity
        if price is not None:
            item.price = price


def cart_remove(*, session: Session, customer_id: int, cart_id: str, sku: str, quantity: int | None,
                at: dt.datetime) -> None:
    """Remove a sku (or some of its quantity) from a cart."""
    cart = _cart(session, cart_id=cart_id, customer_id=customer_id, at=at)
    item = session.scalar(select(CartItem).where(CartItem.cart_pk == cart.id, CartItem.sku == sku))
    if item is not None:
        if quantity is None or quantity >= item.quantity:
            session.delete(item)
        else:
            item.quantity -= quantity
    cart.updated_at = at


def cart_checkout(*, session: Session, customer_id: int, cart_id: str, at: dt.datetime) -> None:
    """Checkout started for a cart."""
    cart = _cart(session, cart_id=cart_id, customer_id=customer_id, at=at)
    if cart.status == "open":
        cart.status, cart.updated_at = "checkout", at


def cart_ordered(*, session: Session, cart_id: str, order_id: str, at: dt.datetime) -> None:
    """Close the cart an order came from."""
    session.execute(update(Cart).where(Cart.cart_id == cart_id)
                    .values(status="ordered", order_id=order_id, updated_at=at))


def cart_items(*, session: Session, cart_id: str) -> list[CartItem]:
    """Items in a cart."""
    return list(session.scalars(select(CartItem).join(Cart, Cart.id == CartItem.cart_pk)
                                .where(Cart.cart_id == cart_id).order_by(CartItem.id)))


def wishlist_add(*, session: Session, customer_id: int, sku: str, at: dt.datetime) -> None:
    """Put a sku on the customer's wishlist (again)."""
    item = session.scalar(select(WishlistItem).where(WishlistItem.customer_id == customer_id,
                                                     WishlistItem.sku == sku))
    if item is None:
        session.add(WishlistItem(customer_id=customer_id, sku=sku, added_at=at))
    else:
        item.added_at, item.removed_at = at, None


def wishlist_remove(*, session: Session, customer_id: int, sku: str, at: dt.datetime) -> None:
    """Take a sku off the wishlist (kept, marked removed)."""
    session.execute(update(WishlistItem).where(WishlistItem.customer_id == customer_id, WishlistItem.sku == sku)
                    .values(removed_at=at))


def wishlist(*, session: Session, customer_id: int) -> list[WishlistItem]:
    """The customer's current wishlist."""
    return list(session.scalars(select(WishlistItem).where(WishlistItem.customer_id == customer_id,
                                                           WishlistItem.removed_at.is_(None))))


def orders_of(*, session: Session, customer_id: int, limit: int = 20) -> list[Order]:
    """The customer's latest orders."""
    return list(session.scalars(select(Order).where(Order.customer_id == customer_id)
                                .order_by(Order.ordered_at.desc()).limit(limit)))


def lines_of(*, session: Session, order_pks: Sequence[int]) -> dict[int, list[OrderLine]]:
    """Order lines grouped by order."""
    out: dict[int, list[OrderLine]] = {}
    if order_pks:
        for line in session.scalars(select(OrderLine).where(OrderLine.order_pk.in_(list(order_pks)))
                                    .order_by(OrderLine.order_pk, OrderLine.line_no)):
            out.setdefault(line.order_pk, []).append(line)
    return out


def _in_chunks(values: Sequence[Any], size: int = 900) -> Iterator[list[Any]]:
    vals = list(values)
    for i in range(0, len(vals), size):
        yield vals[i:i + size]


@dataclass(eq=False)
class _Item:
    pk: int | None
    quantity: int
    price: Decimal | None
    added_at: dt.datetime
    dirty: bool = False


@dataclass(eq=False)
class _Cart:
    pk: int | None
    cart_id: str
    customer_id: int
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    order_id: str | None
    items: dict[str, _Item] = field(default_factory=dict)
    dirty: bool = False
    age: int = 0  # creation order: the primary key, or after all stored carts for new ones


_PRICE = CartItem.__table__.c.price.type


@dataclass(eq=False)
class _Wish:
    pk: int | None
    added_at: dt.datetime
    removed_at: dt.datetime | None
    dirty: bool = False


class Batch:
    """Carts, orders and wishlists of many events, kept in memory and written with a few statements.

    Each method has the semantics of the single-event function of the same name; `flush` writes the result.
    Everything a method may touch must be preloaded first.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._carts: dict[str, _Cart] = {}
        self._by_customer: dict[int, set[str]] = {}
        self._deleted_items: list[int] = []
        self._orders_known: set[str] = set()
        self._new_orders: dict[str, dict[str, Any]] = {}
        self._status: dict[str, dict[str, Any]] = {}
        self._wish: dict[tuple[int, str], _Wish] = {}

    def preload(self, *, customer_ids: Iterable[int], cart_ids: Iterable[str], order_ids: Iterable[str]) -> None:
        """Load the named carts, the customers' unordered carts and wishlists, and which orders exist."""
        cids = sorted(set(customer_ids))
        names = sorted(set(cart_ids) | {default_cart_id(c) for c in cids})
        s = self.session
        # Plain driver SQL (db.rows_among): building and compiling a statement per part cost more than the
        # look-ups; datetimes and prices are converted here.
        cols = ["id", "cart_id", "customer_id", "status", "created_at", "updated_at", "order_id"]
        rows = rows_among(s, Cart, cols, "cart_id", names, for_update=True)
        rows += rows_among(s, Cart, cols, "customer_id", cids, where="status != {p}", params=["ordered"],
                           for_update=True)
        for pk, cart_id, cid, status, created, updated, order_id in sorted(rows):
            if cart_id not in self._carts:
                self._remember(_Cart(pk, cart_id, cid, status, read_datetime(created), read_datetime(updated),
                                     order_id, age=pk))
        by_pk = {c.pk: c for c in self._carts.values()}
        price = _PRICE.result_processor(s.get_bind().dialect, None)
        for pk, cart_pk, sku, quantity, value, added in rows_among(
                s, CartItem, ["id", "cart_pk", "sku", "quantity", "price", "added_at"], "cart_pk", sorted(by_pk)):
            by_pk[cart_pk].items[sku] = _Item(pk, quantity, price(value) if price and value is not None else value,
                                              read_datetime(added))
        self._orders_known.update(oid for (oid,) in rows_among(s, Order, ["order_id"], "order_id",
                                                                sorted(set(order_ids))))
        for pk, cid, sku, added, removed in sorted(rows_among(
                s, WishlistItem, ["id", "customer_id", "sku", "added_at", "removed_at"], "customer_id", cids,
                for_update=True)):
            self._wish[(cid, sku)] = _Wish(pk, read_datetime(added), read_datetime(removed))  # type: ignore[arg-type]

    def _remember(self, cart: _Cart) -> None:
        self._carts[cart.cart_id] = cart
        self._by_customer.setdefault(cart.customer_id, set()).add(cart.cart_id)

    def _cart(self, cart_id: str, customer_id: int, at: dt.datetime) -> _Cart:
        cart = self._carts.get(cart_id)
        if cart is None:
            cart = _Cart(None, cart_id, customer_id, "open", at, at, None, dirty=True, age=2**62 + len(self._carts))
            self._remember(cart)
        return cart

    def open_cart_id(self, *, customer_id: int) -> str:
        """As open_cart_id: the customer's most recently updated unordered cart, or the default id."""
        best: tuple[dt.datetime, int, str] | None = None
        for cart_id in self._by_customer.get(customer_id, ()):
            cart = self._carts[cart_id]
            if cart.customer_id != customer_id or cart.status == "ordered":
                continue
            # the latest update wins; on a tie the older cart, as in open_cart_id (new carts are the newest)
            key = (cart.updated_at, -cart.age, cart_id)
            if best is None or key[:2] > best[:2]:
                best = key
        return best[2] if best else default_cart_id(customer_id)

    def cart_add(self, *, customer_id: int, cart_id: str, sku: str, quantity: int, price: Decimal | None,
                 at: dt.datetime) -> None:
        """As cart_add."""
        cart = self._cart(cart_id, customer_id, at)
        if cart.status == "ordered":
            self._deleted_items += [i.pk for i in cart.items.values() if i.pk is not None]
            cart.items.clear()
            cart.order_id = None
        if cart.customer_id != customer_id:
            self._by_customer.setdefault(customer_id, set()).add(cart_id)
        cart.status, cart.updated_at, cart.customer_id, cart.dirty = "open", at, customer_id, True
        item = cart.items.get(sku)
        if item is None:
            cart.items[sku] = _Item(None, quantity, price, at, dirty=True)
        else:
            item.quantity += quantity
            if price is not None:
                item.price = price
            item.dirty = True

    def cart_remove(self, *, customer_id: int, cart_id: str, sku: str, quantity: int | None,
                    at: dt.datetime) -> None:
        """As cart_remove."""
        cart = self._cart(cart_id, customer_id, at)
        item = cart.items.get(sku)
        if item is not None:
            if quantity is None or quantity >= item.quantity:
                del cart.items[sku]
                if item.pk is not None:
                    self._deleted_items.append(item.pk)
            else:
                item.quantity -= quantity
                item.dirty = True
        cart.updated_at, cart.dirty = at, True

    def cart_checkout(self, *, customer_id: int, cart_id: str, at: dt.datetime) -> None:
        """As cart_checkout."""
        cart = self._cart(cart_id, customer_id, at)
        if cart.status == "open":
            cart.status, cart.updated_at, cart.dirty = "checkout", at, True

    def cart_ordered(self, *, cart_id: str, order_id: str, at: dt.datetime) -> None:
        """As cart_ordered (an unknown cart id changes nothing)."""
        cart = self._carts.get(cart_id)
        if cart is not None:
            cart.status, cart.order_id, cart.updated_at, cart.dirty = "ordered", order_id, at, True

    def create_order(self, order: dict[str, Any]) -> None:
        """As create_orders for one order: an order id that exists already is left as it is."""
        oid = order["order_id"]
        if oid not in self._orders_known:
            self._orders_known.add(oid)
            self._new_orders[oid] = order

    def update_order_status(self, *, order_id: str, status: str, at: dt.datetime) -> bool:
        """As update_order_status."""
        if order_id not in self._orders_known:
            return False
        values = self._status.setdefault(order_id, {})
        values.update(status=status, updated_at=at)
        if status == "shipped":
            values["shipped_at"] = at
        if status == "delivered":
            values["delivered_at"] = at
        return True

    def wishlist_add(self, *, customer_id: int, sku: str, at: dt.datetime) -> None:
        """As wishlist_add."""
        item = self._wish.get((customer_id, sku))
        if item is None:
            self._wish[(customer_id, sku)] = _Wish(None, at, None, dirty=True)
        else:
            item.added_at, item.removed_at, item.dirty = at, None, True

    def wishlist_remove(self, *, customer_id: int, sku: str, at: dt.datetime) -> None:
        """As wishlist_remove."""
        item = self._wish.get((customer_id, sku))
        if item is not None:
            item.removed_at, item.dirty = at, True

    def flush(self) -> None:
        """Write everything the batch changed."""
        s = self.session
        items = CartItem.__table__
        fresh = [c for c in self._carts.values() if c.pk is None]
        changed = [{"id": c.pk, "customer_id": c.customer_id, "status": c.status, "updated_at": c.updated_at,
                    "order_id": c.order_id} for c in self._carts.values() if c.dirty and c.pk is not None]
        if fresh:
            rows = [{"cart_id": c.cart_id, "customer_id": c.customer_id, "status": c.status,
                     "created_at": c.created_at, "updated_at": c.updated_at, "order_id": c.order_id} for c in fresh]
            pks = _insert_returning_ids(s, Cart, rows, "cart_id")
            for c in fresh:
                c.pk = pks[c.cart_id]
        update_rows(s, Cart, changed)
        for part in _in_chunks(self._deleted_items):
            s.execute(delete(items).where(among(s, items.c.id, part)))
        new_items, changed_items = [], []
        for c in self._carts.values():
            for sku, i in c.items.items():
                if i.pk is None:
                    new_items.append({"cart_pk": c.pk, "sku": sku, "quantity": i.quantity, "price": i.price,
                                      "added_at": i.added_at})
                elif i.dirty:
                    changed_items.append({"id": i.pk, "quantity": i.quantity, "price": i.price})
        insert_rows(s, CartItem, new_items)
        update_rows(s, CartItem, changed_items)
        if self._new_orders:
            create_orders(session=s, orders=list(self._new_orders.values()), source="event")
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for oid, values in self._status.items():
            by_columns.setdefault(tuple(sorted(values)), []).append({"order_id": oid, **values})
        for rows in by_columns.values():
            update_rows(s, Order, rows, key="order_id")
        insert_rows(s, WishlistItem, [{"customer_id": cid, "sku": sku, "added_at": w.added_at,
                                        "removed_at": w.removed_at}
                                       for (cid, sku), w in self._wish.items() if w.pk is None])
        update_rows(s, WishlistItem, [{"id": w.pk, "added_at": w.added_at, "removed_at": w.removed_at}
                                      for w in self._wish.values() if w.pk is not None and w.dirty])


def import_lines(*, session: Session, lines: Sequence[dict[str, Any]], at: dt.datetime,
                 source: str = "import") -> dict[str, Any]:
    """Land imported order lines set-based: new orders and missing lines are inserted, nothing is duplicated.

    Each line dict: order_id, line_no, customer_id (internal), ordered_at, sku, quantity, unit_price, and
    optionally currency, status (the order's fields come from its first line). Lines an order already has
    (same line_no) are left as they are; an existing order moves to the line's status when that is further
    along (STAGE), and keeps its own otherwise.
    Returns counts: orders_created, lines_created, lines_present, orders_updated, orders_kept (a status
    from the file that is not further along than the stored one); under "conflicting" the
    indexes of lines not landed because their order belongs to another customer; under "seen" the latest
    new order per customer id.
    """
    counts: dict[str, Any] = {"orders_created": 0, "lines_created": 0, "lines_present": 0, "orders_updated": 0,
                              "orders_kept": 0, "conflicting": [], "seen": {}}
    if not lines:
        return counts
    heads: dict[str, dict[str, Any]] = {}
    for ln in lines:
        if ln["order_id"] not in heads:
            heads[ln["order_id"]] = ln
    existing: dict[str, tuple[int, str]] = {}
    owner = {oid: h["customer_id"] for oid, h in heads.items()}
    for oid, pk, status, cid in rows_among(session, Order, ["order_id", "id", "status", "customer_id"], "order_id",
                                           list(heads)):
        existing[oid] = (pk, status)
        owner[oid] = cid
    pks: dict[str, int] = {oid: pk for oid, (pk, _) in existing.items()}
    fresh = [h for oid, h in heads.items() if oid not in existing]
    if fresh:
        totals: dict[str, Decimal] = {}
        for ln in lines:
            oid = ln["order_id"]
            if oid not in existing and ln["customer_id"] == owner[oid]:
                totals[oid] = totals.get(oid, 0) + ln["unit_price"] * ln["quantity"]
        columns = {
            "order_id": [h["order_id"] for h in fresh], "customer_id": [h["customer_id"] for h in fresh],
            "status": [h["status"] or "completed" for h in fresh], "ordered_at": [h["ordered_at"] for h in fresh],
            "currency": [h["currency"] or "EUR" for h in fresh], "revenue": [totals[h["order_id"]] for h in fresh],
            "source": [source] * len(fresh), "updated_at": [h["ordered_at"] for h in fresh],
            "delivered_at": [h["ordered_at"] if h["status"] == "delivered" else None for h in fresh],
        }
        if session.get_bind().dialect.name == "sqlite":
            # One writer at a time: an order (or id) another writer stored since the lookup above makes this
            # insert fail on its unique key, and the transaction is retried. So the ids are chosen here and the
            # rows go in with a plain executemany, without RETURNING.
            columns["id"] = allocate_ids(session, Order, len(fresh))
            insert_columns(session, Order, columns)
            created = dict(zip(columns["order_id"], columns["id"], strict=True))
        else:
            created = dict(insert_columns(session, Order, columns, on_conflict=["order_id"],
                                          returning=["order_id", "id"]))
        counts["orders_created"] = len(created)
        pks.update(created)
        seen: dict[int, dt.datetime] = counts["seen"]
        for h in fresh:
            if h["order_id"] in created and seen.get(h["customer_id"], h["ordered_at"]) <= h["ordered_at"]:
                seen[h["customer_id"]] = h["ordered_at"]
        raced = [h["order_id"] for h in fresh if h["order_id"] not in created]
        if raced:  # written by a concurrent writer since the lookup: treat as existing
            for oid, pk, status, cid in session.execute(
                    select(Order.order_id, Order.id, Order.status, Order.customer_id)
                    .where(among(session, Order.order_id, raced))):
                existing[oid] = (pk, status)
                pks[oid] = pk
                owner[oid] = cid
    present: set[tuple[int, int]] = set(rows_among(session, OrderLine, ["order_pk", "line_no"], "order_pk",
                                                   [pk for pk, _ in existing.values()]))
    new = [ln for ln in lines if ln["order_id"] not in existing]  # the common case: lines of new orders
    if existing:
        new, added = [], {}
        for i, ln in enumerate(lines):
            oid = ln["order_id"]
            if ln["customer_id"] != owner[oid]:
                counts["conflicting"].append(i)
                continue
            key = (pks[oid], ln["line_no"])
            if key in present:
                counts["lines_present"] += 1
                continue
            present.add(key)
            new.append(ln)
            if oid in existing:  # an order whose lines came in several chunks or runs
                added[key[0]] = added.get(key[0], 0) + ln["unit_price"] * ln["quantity"]
        if added:
            table = Order.__table__
            session.connection().execute(update(table).where(table.c.id == bindparam("pk"))
                                         .values(revenue=table.c.revenue + bindparam("add")),
                                         [{"pk": pk, "add": amount} for pk, amount in added.items()])
    else:
        mine = [ln["customer_id"] == owner[ln["order_id"]] for ln in lines]
        if not all(mine):
            counts["conflicting"] = [i for i, ok in enumerate(mine) if not ok]
            new = [ln for ln, ok in zip(lines, mine, strict=True) if ok]
    if new:
        insert_columns(session, OrderLine, {
            "order_pk": [pks[ln["order_id"]] for ln in new], "line_no": [ln["line_no"] for ln in new],
            "sku": [ln["sku"] for ln in new], "quantity": [ln["quantity"] for ln in new],
            "unit_price": [ln["unit_price"] for ln in new]}, on_conflict=["order_pk", "line_no"])
        counts["lines_created"] = len(new)
    for oid, (_pk, status) in existing.items():
        wanted = heads[oid].get("status")
        if not wanted or wanted == status:
            continue
        if STAGE[wanted] > STAGE.get(status, -1):
            update_order_status(session=session, order_id=oid, status=wanted, at=at)
            counts["orders_updated"] += 1
        else:
            counts["orders_kept"] += 1
    return counts
