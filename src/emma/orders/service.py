"""Orders (from events or imports), carts keyed by cart id, and wishlists."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from emma.orders.models import Cart, CartItem, Order, OrderLine, WishlistItem

ORDER_STATUSES = ("completed", "processing", "produced", "shipped", "delivered", "cancelled", "returned",
                  "refunded")


def create_orders(*, session: Session, orders: Sequence[dict[str, Any]], source: str) -> tuple[int, int]:
    """Insert orders with their lines; orders that already exist are left as they are (idempotent).

    Each order dict: order_id, customer_id, ordered_at, status, currency, revenue, discount, coupon,
    cart_id, lines=[{sku, quantity, unit_price}]. Returns (created, already present).
    """
    if not orders:
        return 0, 0
    ids = [o["order_id"] for o in orders]
    present: set[str] = set()
    for i in range(0, len(ids), 900):
        present.update(session.scalars(select(Order.order_id).where(Order.order_id.in_(ids[i:i + 900]))))
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
    pks = dict(session.execute(insert(Order).returning(Order.order_id, Order.id), order_rows).all())
    line_rows = [{"order_pk": pks[o["order_id"]], "line_no": n, "sku": ln["sku"], "quantity": int(ln["quantity"]),
                  "unit_price": ln["unit_price"]}
                 for o in fresh for n, ln in enumerate(o["lines"], start=1)]
    if line_rows:
        session.execute(insert(OrderLine), line_rows)
    return len(fresh), len(orders) - len(fresh)


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
    """The customer's most recently updated open cart, or the default id."""
    found = session.scalar(select(Cart.cart_id).where(Cart.customer_id == customer_id, Cart.status != "ordered")
                           .order_by(Cart.updated_at.desc()).limit(1))
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
