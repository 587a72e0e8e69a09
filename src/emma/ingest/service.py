"""Ingestion: validate Segment messages, resolve identities, store events once, update derived state."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError
from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from emma.catalog import service as catalog
from emma.config import Settings, get_settings
from emma.consent import service as consent
from emma.consent.models import PURPOSES, Consent
from emma.db import insert_columns, json_text, lock_keys, rows_among, stored_datetime, utcnow
from emma.ingest.models import Event
from emma.ingest.schemas import (
    ORDER_STATUS_EVENTS,
    FieldError,
    IngestResult,
    Message,
    Rejected,
    derived_message_id,
    ecommerce_errors,
    trait_errors,
    validation_errors,
)
from emma.orders import service as orders
from emma.orders.models import Cart, CartItem, Order, WishlistItem
from emma.profiles import service as profiles
from emma.profiles.models import Customer

# Messages per set of statements: preloads and inserts amortise better with more (5,000 took 9 % less
# CPU per event than 2,000 in the bulk import of bench/ingest.py, 10,000 about 5 % less than 5,000; more
# customers recur within a chunk, so fewer are looked up).
_CHUNK = 10000


def _sku(p: dict[str, Any]) -> str:
    return str(p.get("sku") or p.get("product_id"))


def _money(v: Any) -> Decimal | None:
    if v is None:
        return None
    try:
        return Decimal(str(v)).quantize(Decimal("0.01"))
    except InvalidOperation:
        return None


def parse(raw: Any, *, index: int | None = None, settings: Settings | None = None,
          received_at: dt.datetime | None = None) -> Message | list[FieldError]:
    """Validate one raw message; the list of field errors when it is not acceptable."""
    settings = settings or get_settings()
    received_at = received_at or utcnow()
    if not isinstance(raw, dict):
        return [FieldError(field="", reason="message must be a JSON object")]
    try:
        msg = Message.model_validate(raw)
    except ValidationError as exc:
        return validation_errors(exc)
    errs = ecommerce_errors(msg) or trait_errors(msg)
    if errs:
        return errs
    if msg.timestamp is None:
        # Segment's clock-skew correction: the device clock may be wrong, the gap it measured is not.
        if msg.originalTimestamp is not None and msg.sentAt is not None:
            msg.timestamp = received_at - (msg.sentAt - msg.originalTimestamp)
        else:
            msg.timestamp = msg.originalTimestamp or received_at
    if (msg.timestamp - received_at).total_seconds() > settings.max_future_skew_seconds:
        return [FieldError(field="timestamp", reason="is too far in the future "
                           f"(more than {settings.max_future_skew_seconds // 3600} h ahead of the server clock)")]
    if msg.messageId is None:
        msg.messageId = derived_message_id(raw)
    return msg


def ingest(*, session: Session, raw_messages: Sequence[Any], received_at: dt.datetime | None = None,
           settings: Settings | None = None, index_offset: int = 0) -> IngestResult:
    """Store a batch: valid messages land, invalid ones are reported by index, resends are no-ops."""
    return ingest_many(session=session, requests=[raw_messages], received_at=received_at, settings=settings,
                       index_offset=index_offset)[0]


def ingest_many(*, session: Session, requests: Sequence[Sequence[Any]], received_at: dt.datetime | None = None,
                settings: Settings | None = None, index_offset: int = 0) -> list[IngestResult]:
    """Store the messages of several requests with one set of statements; each request gets its own result.

    The outcome is the one of ingesting the requests one after another in this order: a messageId sent by
    two of them lands once, for the first, and is a duplicate for the second.
    """
    settings = settings or get_settings()
    received_at = received_at or utcnow()
    results = [IngestResult() for _ in requests]
    valid: list[Message] = []
    owner: dict[str, int] = {}  # messageId -> the request that sent it
    for r, raw_messages in enumerate(requests):
        result = results[r]
        for i, raw in enumerate(raw_messages):
            parsed = parse(raw, settings=settings, received_at=received_at)
            if isinstance(parsed, list):
                result.rejected.append(Rejected(index=i + index_offset, errors=parsed))
                continue
            if parsed.messageId in owner:
                result.duplicates += 1
                continue
            owner[parsed.messageId] = r  # type: ignore[index]
            valid.append(parsed)
    _store_valid(session, valid, owner, results, received_at, settings)
    return results


def ingest_prepared(*, session: Session, messages: Sequence[Prepared], received_at: dt.datetime,
                    settings: Settings | None = None) -> IngestResult:
    """Store messages validated beforehand (bulk import's reader process): resends are no-ops."""
    settings = settings or get_settings()
    result = IngestResult()
    valid: list[Any] = []
    owner: dict[str, int] = {}
    for m in messages:
        if m.messageId in owner:
            result.duplicates += 1
            continue
        owner[m.messageId] = 0
        valid.append(m)
    _store_valid(session, valid, owner, [result], received_at, settings)
    return result


def _store_valid(session: Session, valid: list[Any], owner: dict[str, int], results: list[IngestResult],
                 received_at: dt.datetime, settings: Settings) -> None:
    for start in range(0, len(valid), _CHUNK):
        chunk = valid[start:start + _CHUNK]
        stored = _store(session, chunk, received_at, settings)
        unknown: dict[int, set[str]] = {}
        conflicts: dict[int, int] = {}
        # counted here, then added to the results: a pydantic model's attribute costs a validation per write
        accepted, duplicates = [0] * len(results), [0] * len(results)
        inserted = stored.inserted
        for m in chunk:
            r = owner[m.messageId]
            if m.messageId in inserted:
                accepted[r] += 1
                if stored.unknown_skus and (named := stored.skus.get(m.messageId)):
                    unknown.setdefault(r, set()).update(named & stored.unknown_skus)
            else:
                duplicates[r] += 1
        for r, result in enumerate(results):
            result.accepted += accepted[r]
            result.duplicates += duplicates[r]
        for mid in stored.conflicts:
            r = owner.get(mid, 0) if mid is not None else 0
            conflicts[r] = conflicts.get(r, 0) + 1
        for r, result in enumerate(results):
            result.unknown_skus |= unknown.get(r, set())
            result.conflicts += conflicts.get(r, 0)
            if unknown.get(r):
                shown = sorted(unknown[r])
                result.warnings.append("unknown skus kept (add them to the catalog): "
                                       + ", ".join(shown[:10]) + (" ..." if len(shown) > 10 else ""))
            if conflicts.get(r):
                result.warnings.append(f"{conflicts[r]} identity conflict(s) recorded; profiles kept apart")
    for result in results:
        result.success = not result.rejected


class Prepared:
    """A message validated by parse in another process, as the bulk import hands it over: a tuple of texts
    (see compact) instead of a pickled Message, which would cost about as much as validating it again.

    It reads like a Message for _store. properties / traits / context are decoded from their JSON text only
    when something asks for them (most events are stored as they are, with that text).
    """

    __slots__ = ("messageId", "type", "event", "name", "userId", "anonymousId", "previousId", "timestamp",
                 "stored_timestamp", "payload_json", "context_json", "viewed_sku", "_payload", "_context")

    def __init__(self, compact: tuple[Any, ...]) -> None:
        (self.messageId, self.type, self.event, self.name, self.userId, self.anonymousId, self.previousId,
         timestamp, self.stored_timestamp, self.payload_json, self.context_json, self.viewed_sku) = compact
        self.timestamp = dt.datetime.fromisoformat(timestamp)
        self._payload: dict[str, Any] | None = None
        self._context: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._payload is None:
            self._payload = json.loads(self.payload_json)
        return self._payload

    @property
    def properties(self) -> dict[str, Any]:
        return {} if self.type == "identify" else self._decoded()

    @property
    def traits(self) -> dict[str, Any]:
        return self._decoded() if self.type == "identify" else {}

    @property
    def context(self) -> dict[str, Any]:
        if self._context is None:
            self._context = json.loads(self.context_json)
        return self._context


def compact(msg: Message) -> tuple[Any, ...]:
    """A parsed message as a tuple of plain values that pickles fast; Prepared reads it back."""
    payload = msg.traits if msg.type == "identify" else msg.properties
    assert msg.timestamp is not None
    # Names repeat from message to message: interned, pickle sends each once per chunk and refers to it after.
    event, name = msg.event, msg.name
    # The sku of a product view, which is all the importing process needs of its properties.
    viewed = _sku(payload) if event == "Product Viewed" and msg.type == "track" else None
    return (msg.messageId, sys.intern(msg.type), event and sys.intern(event), name and sys.intern(name),
            msg.userId, msg.anonymousId, msg.previousId,
            msg.timestamp.isoformat(), stored_datetime(msg.timestamp), json_text(payload), json_text(msg.context),
            viewed)


@dataclass
class _Stored:
    """What _store did with a chunk: the messageIds it stored, the skus each named, the unknown ones, and the
    messageIds that caused identity conflicts."""

    inserted: set[str] = field(default_factory=set)
    skus: dict[str, set[str]] = field(default_factory=dict)
    unknown_skus: set[str] = field(default_factory=set)
    conflicts: list[str | None] = field(default_factory=list)


# Track events that change carts, orders or wishlists; a chunk without them loads none of that state.
_SHOP_EVENTS = frozenset({"Product Added", "Product Removed", "Checkout Started", "Order Completed",
                          "Product Added to Wishlist", "Product Removed from Wishlist", *ORDER_STATUS_EVENTS})


def _store(session: Session, msgs: list[Message], received_at: dt.datetime, settings: Settings) -> _Stored:
    out = _Stored()
    existing = {mid for (mid,) in rows_among(session, Event, ["message_id"], "message_id",
                                             [m.messageId for m in msgs])}
    fresh = [m for m in msgs if m.messageId not in existing]
    if not fresh:
        return out
    session.flush()
    # Concurrent writers of the same customers, carts or orders take turns (PostgreSQL) instead of racing
    # to create the same identities and retrying.
    if session.get_bind().dialect.name == "postgresql":  # SQLite has one writer at a time anyway
        lock_keys(session, _keys(fresh))
    resolver = profiles.Resolver(session, now=received_at)
    resolver.preload([("user_id", m.userId) for m in fresh if m.userId] +
                     [("anonymous_id", m.anonymousId) for m in fresh if m.anonymousId] +
                     [("anonymous_id", m.previousId) for m in fresh if m.previousId])
    customer_of: dict[str, int] = {}
    resolve = resolver.resolve
    ids: list[int] = []  # the event rows are built column by column: no dict per row
    for m in fresh:
        anonymous_id = m.previousId if m.type == "alias" else m.anonymousId
        cid = resolve(user_id=m.userId, anonymous_id=anonymous_id, at=m.timestamp, message_id=m.messageId)
        customer_of[m.messageId] = cid  # type: ignore[index]
        ids.append(cid)
    resolver.flush()
    if any(cid < 0 for cid in ids):
        real = resolver.real_id
        ids = [cid if cid >= 0 else real(cid) for cid in ids]
        customer_of = {m.messageId: cid for m, cid in zip(fresh, ids, strict=True)}  # type: ignore[misc]
    session.flush()
    out.inserted = inserted = _insert_events(session, fresh, ids, received_at)
    stored = [m for m in fresh if m.messageId in inserted]
    if not stored:
        return out
    # Derived state: load what the chunk touches, apply the messages in order in memory, write once.
    identifies = [m for m in stored if m.type == "identify"]
    resolver.preload([("email", e.strip().lower()) for m in identifies
                      if isinstance(e := m.traits.get("email"), str) and e.strip()])
    traits = profiles.TraitBatch(session)
    if identifies:
        names = {"locale", "timezone"}.union(*(profiles.trait_names(m.traits) for m in identifies))
        traits.preload(customer_ids={customer_of[m.messageId] for m in identifies}, traits=names)  # type: ignore[index]
    shopping = [m for m in stored if m.type == "track" and m.event in _SHOP_EVENTS]
    shop = orders.Batch(session)
    if shopping:
        cart_ids: set[str] = set()
        order_ids: set[str] = set()
        for m in shopping:
            if m.properties.get("cart_id"):
                cart_ids.add(str(m.properties["cart_id"]))
            if m.properties.get("order_id"):
                order_ids.add(str(m.properties["order_id"]))
        shop.preload(customer_ids={customer_of[m.messageId] for m in shopping},  # type: ignore[index]
                     cart_ids=cart_ids, order_ids=order_ids)
    consenting = {customer_of[m.messageId] for m in stored if _consent_prefs(m)}  # type: ignore[index]
    consents = consent.Batch(session, settings=settings)
    if consenting:
        consents.preload(customer_ids=consenting)
    skus: set[str] = set()
    last_seen: dict[int, dt.datetime] = {}
    for m in stored:
        cid = customer_of[m.messageId]  # type: ignore[index]
        ts = m.timestamp
        assert ts is not None
        if cid not in last_seen or last_seen[cid] < ts:
            last_seen[cid] = ts
        if m.type == "identify":
            _identify(resolver, traits, cid, m)
        elif m.type == "track":
            named = _track(shop, cid, m)
            if named:
                out.skus[m.messageId] = named  # type: ignore[index]
                skus |= named
        if consenting:
            _consent_from_context(consents, cid, m)
    if identifies:
        traits.flush()
    if shopping:
        shop.flush()
    if consenting:
        consents.flush()
    session.flush()
    if skus:
        out.unknown_skus = skus - catalog.known_skus(session=session, skus=skus)
    profiles.mark_seen(session=session, seen=resolver.unseen(last_seen))
    resolver.apply_merges()
    _expire_stale(session)
    out.conflicts = [c.message_id for c in resolver.conflicts]
    return out


def _keys(msgs: list[Message]) -> list[str]:
    keys = []
    for m in msgs:
        keys += [f"{kind}:{v}" for kind, v in (("user_id", m.userId), ("anonymous_id", m.anonymousId),
                                                ("anonymous_id", m.previousId)) if v]
        if m.type == "track":
            keys += [f"{k}:{m.properties[k]}" for k in ("cart_id", "order_id") if m.properties.get(k)]
        elif m.type == "identify" and isinstance(email := m.traits.get("email"), str):
            keys.append(f"email:{email.strip().lower()}")
    return keys


def _expire_stale(session: Session) -> None:
    # Derived state was written with plain statements: objects a caller loaded earlier must reload.
    for obj in list(session.identity_map.values()):
        if not isinstance(obj, Customer | Consent | Cart | CartItem | Order | WishlistItem):
            continue
        session.expire(obj)


def _insert_events(session: Session, msgs: list[Message], customer_ids: list[int],
                   received_at: dt.datetime) -> set[str]:
    """Insert the events of msgs (none of them stored yet); the messageIds that went in."""
    columns = {
        "message_id": [m.messageId for m in msgs], "type": [m.type for m in msgs],
        "name": [m.event if m.type == "track" else m.name for m in msgs], "customer_id": customer_ids,
        "user_id": [m.userId for m in msgs], "anonymous_id": [m.anonymousId for m in msgs],
        "timestamp": [m.timestamp for m in msgs], "received_at": [received_at] * len(msgs)}
    encoded: tuple[str, ...] = ()
    if all(type(m) is Prepared for m in msgs):  # the JSON texts are at hand
        columns["properties"] = [m.payload_json for m in msgs]
        columns["context"] = [m.context_json for m in msgs]
        columns["timestamp"] = [m.stored_timestamp for m in msgs]
        encoded = ("properties", "context", "timestamp")
    else:
        columns["properties"] = [m.traits if m.type == "identify" else m.properties for m in msgs]
        columns["context"] = [m.context for m in msgs]
    ids = columns["message_id"]
    if session.get_bind().dialect.name == "sqlite":
        # A plain executemany without RETURNING; ON CONFLICT DO NOTHING skips a resend that another writer
        # stored after the look-up in _store, and the connection's change count tells whether that happened.
        raw = session.connection().connection.dbapi_connection
        before = raw.total_changes  # type: ignore[union-attr]
        insert_columns(session, Event, columns, on_conflict=["message_id"], encoded=encoded)
        added = raw.total_changes - before  # type: ignore[union-attr]
        if added == len(ids):
            inserted = set(ids)
        else:
            # This transaction holds SQLite's write lock now, and new rows get ids above every stored one:
            # the rows this insert added are the last `added` of these messageIds by id.
            inserted = {mid for (mid,) in session.connection().exec_driver_sql(
                "SELECT message_id FROM events WHERE message_id IN (SELECT value FROM json_each(?)) "
                "ORDER BY id DESC LIMIT ?", (json.dumps(ids), added))}
    else:
        # ON CONFLICT DO NOTHING makes a concurrent resend of the same messageId a no-op, not an error.
        inserted = {mid for (mid,) in insert_columns(session, Event, columns, on_conflict=["message_id"],
                                                     returning=["message_id"], encoded=encoded)}
    if inserted:
        session.info[_NEW_EVENTS] = True
    return inserted


# Workers wait for new events instead of polling: a commit that stored events wakes the ones in this process
# (the worker embedded in `emma serve`) and, on PostgreSQL, sends a NOTIFY that workers elsewhere LISTEN for.
EVENTS_CHANNEL = "emma_events"
_NEW_EVENTS = "emma.ingest.new_events"
_COMMITTING = "emma.ingest.committing"
_listeners: list[Callable[[], None]] = []


def on_new_events(callback: Callable[[], None]) -> None:
    """Call callback in this process after every commit that stored new events."""
    _listeners.append(callback)


@sa_event.listens_for(Session, "before_commit")
def _notify_before_commit(session: Session) -> None:
    if session.in_nested_transaction() or not session.info.get(_NEW_EVENTS):
        return  # after_commit fires for savepoints too: only the outermost commit wakes anyone
    session.info[_COMMITTING] = True
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": EVENTS_CHANNEL})


@sa_event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    if session.info.pop(_COMMITTING, False):
        for callback in list(_listeners):
            callback()


@sa_event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_NEW_EVENTS, None)
        session.info.pop(_COMMITTING, None)


def _identify(resolver: profiles.Resolver, traits_batch: profiles.TraitBatch, cid: int, m: Message) -> None:
    traits = dict(m.traits)
    for key in ("locale", "timezone"):
        if key in m.context and key not in traits:
            traits[key] = m.context[key]
    email = traits.get("email")
    if isinstance(email, str) and email.strip():
        resolver.claim(customer_id=cid, kind="email", value=email.strip().lower(), message_id=m.messageId)
    if traits:
        traits_batch.apply(customer_id=cid, traits=traits, source="identify", at=m.timestamp)  # type: ignore[arg-type]


def _consent_prefs(m: Message | Prepared) -> dict[str, Any] | None:
    if type(m) is Prepared and '"consent"' not in m.context_json:
        return None  # not decoded for nothing
    given = m.context.get("consent")
    prefs = given.get("categoryPreferences") if isinstance(given, dict) else None
    return prefs if isinstance(prefs, dict) and prefs else None


def _consent_from_context(consents: consent.Batch, cid: int, m: Message) -> None:
    prefs = _consent_prefs(m)
    if prefs is None:
        return
    for purpose, granted in prefs.items():
        if purpose == "email_marketing" and granted is True:
            # A new email permission is pending until the customer confirms it (double opt-in).
            consents.request_opt_in(customer_id=cid, source=f"{m.type}:context.consent", now=m.timestamp)
        elif purpose in PURPOSES and isinstance(granted, bool):
            consents.record(customer_id=cid, purpose=purpose, status="granted" if granted else "revoked",
                            source=f"{m.type}:context.consent", recorded_at=m.timestamp)


def _track(shop: orders.Batch, cid: int, m: Message) -> set[str]:
    """Apply an ecommerce event to carts, orders and wishlists; returns the skus it named."""
    name = m.event
    if name == "Product Viewed":
        return {m.viewed_sku if type(m) is Prepared else _sku(m.properties)}  # type: ignore[union-attr]
    if name not in _SHOP_EVENTS:
        return set()  # properties not decoded for nothing
    p, at = m.properties, m.timestamp
    assert at is not None
    if name in ("Product Added", "Product Removed"):
        cart_id = str(p.get("cart_id") or shop.open_cart_id(customer_id=cid))
        if name == "Product Added":
            shop.cart_add(customer_id=cid, cart_id=cart_id, sku=_sku(p), quantity=int(p.get("quantity", 1)),
                          price=_money(p.get("price")), at=at)
        else:
            q = p.get("quantity")
            shop.cart_remove(customer_id=cid, cart_id=cart_id, sku=_sku(p),
                             quantity=int(q) if q is not None else None, at=at)
        return {_sku(p)}
    if name == "Checkout Started":
        cart_id = str(p.get("cart_id") or shop.open_cart_id(customer_id=cid))
        shop.cart_checkout(customer_id=cid, cart_id=cart_id, at=at)
        return set()
    if name == "Order Completed":
        products = p.get("products") or []
        lines = [{"sku": _sku(x), "quantity": int(x.get("quantity", 1)), "unit_price": _money(x.get("price"))}
                 for x in products]
        revenue = p.get("revenue", p.get("total"))
        cart_id = str(p.get("cart_id") or shop.open_cart_id(customer_id=cid))
        shop.create_order({
            "order_id": str(p["order_id"]), "customer_id": cid, "ordered_at": at, "status": "completed",
            "currency": p.get("currency") or "EUR", "revenue": _money(revenue), "discount": _money(p.get("discount")),
            "coupon": p.get("coupon"), "cart_id": cart_id, "lines": lines})
        shop.cart_ordered(cart_id=cart_id, order_id=str(p["order_id"]), at=at)
        return {line["sku"] for line in lines}
    if name in ORDER_STATUS_EVENTS:
        status = ORDER_STATUS_EVENTS[name] or str(p["status"])
        shop.update_order_status(order_id=str(p["order_id"]), status=status, at=at)
        return set()
    if name == "Product Added to Wishlist":
        shop.wishlist_add(customer_id=cid, sku=_sku(p), at=at)
        return {_sku(p)}
    if name == "Product Removed from Wishlist":
        shop.wishlist_remove(customer_id=cid, sku=_sku(p), at=at)
        return {_sku(p)}
    return set()


def recent_events(*, session: Session, customer_id: int, limit: int = 20) -> list[Event]:
    """The customer's latest events."""
    return list(session.scalars(select(Event).where(Event.customer_id == customer_id)
                                .order_by(Event.timestamp.desc(), Event.id.desc()).limit(limit)))
