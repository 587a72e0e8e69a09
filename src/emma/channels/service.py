"""The outbox at delivery time: claim due messages, re-check consent, render, record every outcome."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import html as html_lib
import re
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from emma import signing
from emma.catalog.models import Product
from emma.channels import content
from emma.channels.adapters import DeliveryResult, Envelope
from emma.channels.exceptions import ChannelError, PermanentError, RateLimited, RenderError
from emma.channels.models import Conversion, DeliveryEvent, OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.db import among, insert_rows, utcnow
from emma.orders.models import Cart, CartItem, Order, OrderLine
from emma.profiles import service as profiles
from emma.profiles.models import Customer

CHANNELS = ("email", "sms", "push", "webhook")
RATE_WINDOW = dt.timedelta(minutes=1)
_OWN_PATHS = ("/u/", "/preferences/", "/consent/", "/t/")
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)


def log(*, session: Session, message_id: int, status: str, detail: dict[str, Any] | None = None,
        at: dt.datetime | None = None) -> None:
    """Append one entry to the message's delivery log."""
    session.add(DeliveryEvent(message_id=message_id, status=status, detail=detail or {}, at=at or utcnow()))


def enqueue(*, session: Session, idempotency_key: str, customer_id: int | None, channel: str,
            template: str | None, purpose: str | None = None, transactional: bool = False,
            locale: str | None = None, payload: dict[str, Any] | None = None, due_at: dt.datetime | None = None,
            tactic_id: str | None = None, now: dt.datetime | None = None) -> OutboxMessage:
    """Put a message into the outbox once per idempotency key (a repeat returns the existing message)."""
    existing = session.scalar(select(OutboxMessage).where(OutboxMessage.idempotency_key == idempotency_key))
    if existing is not None:
        return existing
    now = now or utcnow()
    msg = OutboxMessage(idempotency_key=idempotency_key, customer_id=customer_id, channel=channel, purpose=purpose,
                        transactional=transactional, template=template, locale=locale, payload=payload or {},
                        status="queued", attempts=0, due_at=due_at or now, created_at=now, tactic_id=tactic_id)
    try:
        with session.begin_nested():
            session.add(msg)
    except IntegrityError:  # a concurrent enqueue with the same key won
        return session.scalars(select(OutboxMessage).where(OutboxMessage.idempotency_key == idempotency_key)).one()
    log(session=session, message_id=msg.id, status="queued", at=now)
    return msg


def enqueue_many(*, session: Session, messages: list[dict[str, Any]], ids: dict[str, int] | None = None,
                 now: dt.datetime | None = None) -> int:
    """enqueue for many messages with two inserts (and a query only for keys queued before); returns how many
    were new.

    Each dict has enqueue's keyword arguments (idempotency_key, customer_id, channel, template, ...) and
    optionally run_id. ids, when given, receives the message id of every key (new or queued before).
    """
    by_key: dict[str, dict[str, Any]] = {}
    for m in messages:
        by_key.setdefault(m["idempotency_key"], m)  # the first of a key wins
    if not by_key:
        return 0
    now = now or utcnow()
    rows = [{"idempotency_key": key, "customer_id": m.get("customer_id"), "channel": m["channel"],
             "purpose": m.get("purpose"), "transactional": m.get("transactional", False),
             "template": m.get("template"), "locale": m.get("locale"), "payload": m.get("payload") or {},
             "status": "queued", "attempts": 0, "due_at": m.get("due_at") or now, "created_at": now,
             "tactic_id": m.get("tactic_id"), "run_id": m.get("run_id")} for key, m in by_key.items()]
    # a key queued before (or by a concurrent enqueue) is skipped by the insert and looked up afterwards: keys
    # are mostly new, so no query before the insert
    new = insert_rows(session, OutboxMessage, rows, on_conflict=["idempotency_key"],
                      returning=["id", "idempotency_key"])
    if new:
        insert_rows(session, DeliveryEvent, [{"message_id": i, "status": "queued", "detail": {}, "at": now}
                                             for i, _ in new])
    if ids is not None:
        ids.update({key: i for i, key in new})
        lost = [key for key in by_key if key not in ids]
        for i in range(0, len(lost), 900):  # queued before, or concurrently by another transaction
            ids.update({key: mid for mid, key in session.execute(
                select(OutboxMessage.id, OutboxMessage.idempotency_key)
                .where(among(session, OutboxMessage.idempotency_key, lost[i:i + 900])))})
    return len(new)


def in_flight(*, session: Session, channel: str, now: dt.datetime) -> int:
    """Messages of channel sent in the last rate window or being sent now (counts every worker)."""
    return session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.channel == channel,
        or_(OutboxMessage.sent_at >= now - RATE_WINDOW, OutboxMessage.status == "sending"))) or 0


def claim(*, session: Session, channel: str, now: dt.datetime, limit: int, lease: dt.timedelta) -> list[int]:
    """Claim up to limit due messages of channel for this worker (a lease; expired leases are claimed again)."""
    if limit <= 0:
        return []
    stmt = (select(OutboxMessage.id)
            .where(OutboxMessage.channel == channel, OutboxMessage.status.in_(("queued", "sending")),
                   OutboxMessage.due_at <= now)
            .order_by(OutboxMessage.due_at, OutboxMessage.id).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)  # concurrent workers each get different rows
    ids = list(session.scalars(stmt))
    if ids:
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids))
                        .values(status="sending", due_at=now + lease))
    return ids


def missing_consent(*, session: Session, message: OutboxMessage, statuses: dict[str, str] | None = None) -> str | None:
    """Why the message may not go out now (None when it may): consent is checked at send time. statuses
    (purpose -> status of the customer's consent, loaded beforehand) saves the queries."""
    if message.transactional:
        return None
    if message.customer_id is None:
        return "marketing message without a customer"
    needed = {p for p in (message.purpose, consent.CHANNEL_PURPOSE.get(message.channel)) if p}
    if not needed:
        return f"marketing message on {message.channel} without a consent purpose"
    if statuses is not None:
        missing = [p for p in sorted(needed) if statuses.get(p) != "granted"]
    else:
        missing = [p for p in sorted(needed) if not consent.allows(session=session, customer_id=message.customer_id,
                                                                      purpose=p)]
    return f"no consent for {', '.join(missing)}" if missing else None


def address_of(*, customer: Customer | None, channel: str, settings: Settings) -> str | None:
    """The recipient address on channel, taken from the profile at send time."""
    if channel == "webhook":
        return settings.webhook_url
    if customer is None:
        return None
    # On-site content is served to the profile itself (by /v1/decide), so its address is the profile id.
    return {"email": customer.email, "sms": customer.phone, "push": customer.external_id,
            "onsite": str(customer.id)}.get(channel)


def _product(p: Product) -> dict[str, Any]:
    return {"sku": p.sku, "name": p.name, "price": p.price, "currency": p.currency, "url": p.url,
            "image_url": p.image_url, "brand": p.brand, "category": p.category}


def products_by_sku(*, session: Session, skus: list[str]) -> dict[str, dict[str, Any]]:
    """Catalog entries for skus, as template data."""
    if not skus:
        return {}
    return {p.sku: _product(p) for p in session.scalars(select(Product).where(Product.sku.in_(skus)))}


def popular_products(*, session: Session, limit: int = 4, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """Active products ranked by how many order lines name them (the fallback recommendation)."""
    exclude = exclude or set()
    rows = session.execute(
        select(Product, func.count(OrderLine.id).label("n")).join(OrderLine, OrderLine.sku == Product.sku)
        .where(Product.active.is_(True)).group_by(Product.id).order_by(func.count(OrderLine.id).desc(), Product.sku)
        .limit(limit + len(exclude))).all()
    return [_product(p) for p, _ in rows if p.sku not in exclude][:limit]


def cart_of(*, session: Session, customer_id: int) -> dict[str, Any] | None:
    """The customer's latest open cart with catalog details, or None."""
    cart = session.scalar(select(Cart).where(Cart.customer_id == customer_id, Cart.status != "ordered")
                          .order_by(Cart.updated_at.desc()).limit(1))
    if cart is None:
        return None
    items = list(session.scalars(select(CartItem).where(CartItem.cart_pk == cart.id).order_by(CartItem.id)))
    if not items:
        return None
    known = products_by_sku(session=session, skus=[i.sku for i in items])
    lines = []
    for it in items:
        p = known.get(it.sku, {"sku": it.sku, "name": it.sku, "price": it.price, "currency": "EUR", "url": None,
                               "image_url": None})
        lines.append({**p, "quantity": it.quantity, "price": it.price if it.price is not None else p["price"]})
    total = sum((line["price"] or 0) * line["quantity"] for line in lines)
    return {"cart_id": cart.cart_id, "items": lines, "total": total,
            "currency": lines[0].get("currency") or "EUR"}


def recommendations_for(*, session: Session, customer_id: int, limit: int = 4,
                        exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """Stored recommendations for the customer when scoring made some, else popular products."""
    exclude = exclude or set()
    try:
        from emma.predict.models import Prediction
    except ImportError:  # pragma: no cover - predict is part of the package; kept optional on purpose
        Prediction = None  # type: ignore[assignment]  # noqa: N806
    skus: list[str] = []
    if Prediction is not None:
        recs = session.scalar(select(Prediction.recommendations).where(Prediction.customer_id == customer_id))
        for r in recs or []:
            sku = r.get("sku") if isinstance(r, dict) else r
            if isinstance(sku, str) and sku not in exclude:
                skus.append(sku)
    if skus:
        found = products_by_sku(session=session, skus=skus)
        out = [found[s] for s in skus if s in found][:limit]
        if out:
            return out
    return popular_products(session=session, limit=limit, exclude=exclude)


def _customer_data(c: Customer | None) -> dict[str, Any]:
    if c is None:
        return {"id": None, "first_name": None, "last_name": None, "email": None, "external_id": None}
    return {"id": c.id, "first_name": c.first_name, "last_name": c.last_name, "email": c.email,
            "external_id": c.external_id, "city": c.city, "country": c.country}


def context_for(*, session: Session, message: OutboxMessage, customer: Customer | None,
                settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    """Template data: the payload's keys, the customer, cart, recommendations, coupon, links."""
    payload = dict(message.payload or {})
    ctx: dict[str, Any] = {**payload, "payload": payload, "customer": _customer_data(customer),
                           "message_id": message.id, "tactic_id": message.tactic_id,
                           "transactional": message.transactional, "base_url": settings.base_url}
    links: dict[str, str | None] = {"unsubscribe": None, "preferences": None}
    if customer is not None:
        purpose = message.purpose or consent.CHANNEL_PURPOSE.get(message.channel) or "email_marketing"
        if not message.transactional:
            links["unsubscribe"] = consent.unsubscribe_url(customer_id=customer.id, purpose=purpose,
                                                           message_id=message.id, settings=settings)
        links["preferences"] = consent.preferences_url(customer_id=customer.id, settings=settings)
        if "cart" not in payload:
            ctx["cart"] = cart_of(session=session, customer_id=customer.id)
        if "recommendations" not in payload:
            items = (ctx.get("cart") or {}).get("items") or []
            exclude = {i.get("sku") for i in items if isinstance(i, dict) and i.get("sku")}
            ctx["recommendations"] = recommendations_for(session=session, customer_id=customer.id, exclude=exclude)
    else:
        ctx.setdefault("cart", None)
        ctx.setdefault("recommendations", [])
    links.update(payload.get("links") or {})
    ctx["links"] = links
    ctx["coupon"] = _coupon(session, message, customer, payload.get("coupon"), now or utcnow())
    ctx.setdefault("offer", None)
    return ctx


def _coupon(session: Session, message: OutboxMessage, customer: Customer | None, spec: Any,
            now: dt.datetime) -> Any:
    """A payload {"campaign": ..., "valid_days": 14, "value": "10 %"} becomes the customer's own code."""
    if not isinstance(spec, dict) or "campaign" not in spec or "code" in spec or customer is None:
        return spec
    from emma.coupons import service as coupons

    days = int(spec.get("valid_days", 14))
    c = coupons.issue(session=session, customer_id=customer.id, campaign=str(spec["campaign"]),
                      value=spec.get("value"), message_id=message.id or None,
                      expires_at=now + dt.timedelta(days=days), now=now)
    return {"code": c.code, "value": c.value, "expires_at": c.expires_at, "campaign": c.campaign}


def tracking_token(*, kind: str, message_id: int, settings: Settings, url: str | None = None) -> str:
    """A signed token for the open pixel ('open') or a click redirect ('click')."""
    data: dict[str, Any] = {"m": message_id}
    if url is not None:
        data["u"] = url
    return signing.sign(purpose=kind, data=data, secret=settings.secret_key)


# Short signed links for SMS (every character counts) and push taps: /t/s/<message>-<link>-<mac>, the message
# id in base 36, the link's number in the message, 11 characters (66 bits) of HMAC-SHA256. The targets are kept
# with the message (payload "_links"), so the link itself carries no URL.
SHORT_KINDS = {"sms": "s", "push": "p"}
_URL = re.compile(r"""https?://[^\s<>"']+[^\s<>"'.,;:!?)\]]""")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if not n:
            return out


def _short_mac(kind: str, message_id: int, index: int, settings: Settings) -> str:
    mac = hmac.new(settings.secret_key.encode(), f"short-{kind}.{message_id}.{index}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode()[:11]


def short_link(*, kind: str, message_id: int, index: int, settings: Settings) -> str:
    """The short signed link to link number index of an SMS ('sms') or to a push message's tap ('push')."""
    code = f"{_b36(message_id)}-{_b36(index)}-{_short_mac(kind, message_id, index, settings)}"
    return f"{settings.base_url.rstrip('/')}/t/{SHORT_KINDS[kind]}/{code}"


def read_short_code(*, kind: str, code: str, settings: Settings) -> tuple[int, int]:
    """(message id, link number) of a genuine short link code; InvalidToken when forged or malformed."""
    parts = code.split("-", 2)  # the MAC's base64url may itself contain "-"
    try:
        mid, index = int(parts[0], 36), int(parts[1], 36)
    except (ValueError, IndexError) as exc:
        raise signing.InvalidToken("malformed link") from exc
    if len(parts) != 3 or not hmac.compare_digest(parts[2], _short_mac(kind, mid, index, settings)):
        raise signing.InvalidToken("invalid signature")
    return mid, index


def _shorten(text: str, *, message_id: int, settings: Settings) -> tuple[str, list[str]]:
    """Every URL in an SMS text replaced by its short link; returns the text and the targets in order."""
    targets: list[str] = []

    def swap(m: re.Match[str]) -> str:
        targets.append(m.group(0))
        return short_link(kind="sms", message_id=message_id, index=len(targets) - 1, settings=settings)

    return _URL.sub(swap, text), targets


def _deep_link(payload: dict[str, Any]) -> str | None:
    """Where a tapped push message leads: the payload's url, else its product's page."""
    for value in (payload.get("url"), (payload.get("product") or {}).get("url")
                  if isinstance(payload.get("product"), dict) else None):
        if isinstance(value, str) and value.startswith(("https://", "http://")):
            return value
    return None


def _instrument(html: str, *, message_id: int, settings: Settings) -> str:
    """Route external links through the click redirect and add the open pixel."""
    base = settings.base_url.rstrip("/")

    def rewrite(m: re.Match[str]) -> str:
        url = html_lib.unescape(m.group(3))
        if url.startswith(tuple(f"{base}{p}" for p in _OWN_PATHS)):  # unsubscribe, preferences stay direct
            return m.group(0)
        token = tracking_token(kind="click", message_id=message_id, url=url, settings=settings)
        return f"{m.group(1)}{m.group(2)}{base}/t/c/{token}{m.group(2)}"

    html = _HREF.sub(rewrite, html)
    pixel = (f'<img src="{base}/t/o/{tracking_token(kind="open", message_id=message_id, settings=settings)}.gif" '
             'width="1" height="1" alt="" style="display:none">')
    idx = html.lower().rfind("</body>")
    return html[:idx] + pixel + html[idx:] if idx >= 0 else html + pixel


def prepare(*, session: Session, message_id: int, settings: Settings,
            now: dt.datetime | None = None) -> Envelope | None:
    """The envelope to send, or None when the message was suppressed, held or failed here (and logged)."""
    now = now or utcnow()
    m = session.get(OutboxMessage, message_id)
    if m is None or m.status != "sending":
        return None
    reason = missing_consent(session=session, message=m)
    if reason:
        _finish(session, m, "suppressed", {"reason": reason}, now)
        return None
    customer = session.get(Customer, m.customer_id) if m.customer_id else None
    to = address_of(customer=customer, channel=m.channel, settings=settings)
    if not to:
        _finish(session, m, "failed", {"reason": f"no {m.channel} address for the customer", "permanent": True}, now)
        return None
    env = Envelope(message_id=m.id, channel=m.channel, to=to,
                   data={**(m.payload or {}), "customer": {"id": m.customer_id,
                                                           "external_id": customer.external_id if customer else None},
                         "tactic_id": m.tactic_id, "template": m.template})
    if m.template is None and m.channel != "webhook":
        _finish(session, m, "held", {"reason": "no template"}, now)
        return None
    if m.template is not None:
        locale = m.locale or (customer.locale if customer else None) or settings.default_locale
        try:
            ctx = context_for(session=session, message=m, customer=customer, settings=settings, now=now)
            rendered = content.render(channel=m.channel, template=m.template, locale=locale, context=ctx,
                                      settings=settings)
        except RenderError as exc:
            _finish(session, m, "held", {"reason": str(exc)}, now)
            return None
        env.subject, env.text, env.html = rendered.subject, rendered.text, rendered.html
        if m.channel == "email":
            if env.html:
                env.html = _instrument(env.html, message_id=m.id, settings=settings)
            if not m.transactional and ctx["links"].get("unsubscribe"):
                # RFC 8058: an HTTPS URI that unsubscribes on a POST of "List-Unsubscribe=One-Click".
                env.headers["List-Unsubscribe"] = f"<{ctx['links']['unsubscribe']}>"
                env.headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            env.headers["X-Emma-Message"] = str(m.id)
        elif m.channel == "sms" and env.text:
            env.text, targets = _shorten(env.text, message_id=m.id, settings=settings)
            _keep_links(m, targets)
        elif m.channel == "push":
            _keep_links(m, [t for t in [_deep_link(m.payload or {})] if t])
            env.data["tap_url"] = short_link(kind="push", message_id=m.id, index=0, settings=settings)
    return env


def _keep_links(m: OutboxMessage, targets: list[str]) -> None:
    if targets and (m.payload or {}).get("_links") != targets:
        m.payload = {**(m.payload or {}), "_links": targets}


def _finish(session: Session, m: OutboxMessage, status: str, detail: dict[str, Any], now: dt.datetime) -> None:
    m.status = status
    m.last_error = detail.get("reason") if status != "sent" else None
    if status == "sent":
        m.sent_at = now
    log(session=session, message_id=m.id, status=status, detail=detail, at=now)


def backoff(*, attempts: int, settings: Settings) -> dt.timedelta:
    """Exponential backoff after the given number of failed attempts, capped."""
    seconds = settings.delivery_backoff_seconds * 2 ** max(attempts - 1, 0)
    return dt.timedelta(seconds=min(seconds, settings.delivery_backoff_max_seconds))


def record(*, session: Session, message_id: int, outcome: DeliveryResult | ChannelError, settings: Settings,
           now: dt.datetime | None = None) -> str:
    """Store the outcome of one send attempt; returns the message's new status."""
    now = now or utcnow()
    m = session.get(OutboxMessage, message_id)
    assert m is not None
    if isinstance(outcome, DeliveryResult):
        m.attempts += 1
        _finish(session, m, "sent", {"provider_id": outcome.provider_id, **outcome.detail}, now)
        return m.status
    reason = str(outcome)
    if isinstance(outcome, PermanentError):
        m.attempts += 1
        status = "bounced" if outcome.bounced else "failed"
        _finish(session, m, status, {"reason": reason, "permanent": True, "attempt": m.attempts}, now)
        return status
    if isinstance(outcome, RateLimited):
        # Not the message's fault: wait as asked, without using up an attempt.
        delay = dt.timedelta(seconds=outcome.retry_after) if outcome.retry_after else backoff(attempts=1,
                                                                                              settings=settings)
        m.status, m.due_at, m.last_error = "queued", now + delay, reason
        log(session=session, message_id=m.id, status="deferred",
            detail={"reason": reason, "rate_limited": True, "retry_at": m.due_at.isoformat()}, at=now)
        return m.status
    m.attempts += 1
    if m.attempts >= settings.delivery_max_attempts:
        _finish(session, m, "failed", {"reason": reason, "attempts": m.attempts, "gave_up": True}, now)
        return "failed"
    m.status, m.due_at, m.last_error = "queued", now + backoff(attempts=m.attempts, settings=settings), reason
    log(session=session, message_id=m.id, status="deferred",
        detail={"reason": reason, "attempt": m.attempts, "retry_at": m.due_at.isoformat()}, at=now)
    return m.status


def requeue(*, session: Session, statuses: tuple[str, ...] = ("failed",), channel: str | None = None,
            now: dt.datetime | None = None) -> int:
    """Put failed (or held) messages back into the queue, e.g. after fixing SMTP settings or a template."""
    now = now or utcnow()
    stmt = select(OutboxMessage).where(OutboxMessage.status.in_(statuses))
    if channel:
        stmt = stmt.where(OutboxMessage.channel == channel)
    n = 0
    for m in session.scalars(stmt):
        m.status, m.attempts, m.due_at = "queued", 0, now
        log(session=session, message_id=m.id, status="queued", detail={"requeued_from": m.last_error}, at=now)
        n += 1
    return n


def delivery_log(*, session: Session, message_id: int) -> list[DeliveryEvent]:
    """The life of one message, oldest first."""
    return list(session.scalars(select(DeliveryEvent).where(DeliveryEvent.message_id == message_id)
                                .order_by(DeliveryEvent.at, DeliveryEvent.id)))


def feed_back(*, session: Session, message: OutboxMessage, event: str, message_key: str, props: dict[str, Any],
              now: dt.datetime) -> None:
    """Opens, clicks and unsubscribes come back as events through ingestion (deduplicated by messageId)."""
    from emma.ingest import service as ingest

    m = message
    who = profiles.event_identity(session=session, customer_id=m.customer_id)
    if who is None:
        return
    ingest.ingest(session=session, received_at=now, raw_messages=[{
        "type": "track", "event": event, **who, "messageId": message_key, "timestamp": now.isoformat(),
        "properties": {"email_id": str(m.id), "campaign_id": m.tactic_id, "template": m.template, **props},
        "context": {"library": {"name": "emma-channels"}}}])


def track_open(*, session: Session, token: str, settings: Settings, now: dt.datetime | None = None) -> int:
    """Record an open from the pixel (first open only); returns the message id. InvalidToken when forged."""
    now = now or utcnow()
    mid = int(signing.unsign(token, purpose="open", secret=settings.secret_key)["m"])
    m = session.get(OutboxMessage, mid)
    if m is None:
        return mid
    seen = session.scalar(select(DeliveryEvent.id).where(DeliveryEvent.message_id == mid,
                                                         DeliveryEvent.status == "opened").limit(1))
    if seen is None:
        log(session=session, message_id=mid, status="opened", at=now)
        feed_back(session=session, message=m, event="Email Opened", message_key=f"emma-open-{mid}", props={},
                  now=now)
    return mid


def track_click(*, session: Session, token: str, settings: Settings, now: dt.datetime | None = None) -> str:
    """Record a click and return the link's target. InvalidToken when forged (no open redirect)."""
    now = now or utcnow()
    data = signing.unsign(token, purpose="click", secret=settings.secret_key)
    mid, url = int(data["m"]), str(data["u"])
    m = session.get(OutboxMessage, mid)
    if m is not None:
        log(session=session, message_id=mid, status="clicked", detail={"url": url}, at=now)
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        feed_back(session=session, message=m, event="Email Link Clicked", message_key=f"emma-click-{mid}-{key}",
                  props={"link_url": url}, now=now)
    return url


def track_short(*, session: Session, kind: str, code: str, settings: Settings,
                now: dt.datetime | None = None) -> str | None:
    """Record the click on an SMS link or the tap of a push message ('clicked', fed back as SMS Link Clicked /
    Push Notification Tapped); returns where the link leads (None: nowhere). InvalidToken when forged."""
    now = now or utcnow()
    mid, index = read_short_code(kind=kind, code=code, settings=settings)
    m = session.get(OutboxMessage, mid)
    if m is None or m.channel != kind:
        return None
    links = (m.payload or {}).get("_links") or []
    url = links[index] if index < len(links) and isinstance(links[index], str) else None
    base = settings.base_url.rstrip("/")
    if url is not None and url.startswith(tuple(f"{base}{p}" for p in _OWN_PATHS)):
        return url  # unsubscribe, preferences: not a reaction to the content
    log(session=session, message_id=mid, status="clicked", detail={"url": url} if url else {}, at=now)
    event = "SMS Link Clicked" if kind == "sms" else "Push Notification Tapped"
    props: dict[str, Any] = {"channel": kind}
    if url:
        props["link_url"] = url
    feed_back(session=session, message=m, event=event, message_key=f"emma-{kind}-click-{mid}-{index}", props=props,
              now=now)
    return url


ENGAGEMENT_EVENTS = {("push", "opened"): "Push Notification Tapped", ("sms", "clicked"): "SMS Link Clicked",
                     ("push", "clicked"): "Push Notification Tapped", ("sms", "opened"): "SMS Opened"}


def record_engagement(*, session: Session, message_id: int, status: str, now: dt.datetime | None = None) -> bool:
    """A provider's or app's report that a push or SMS was opened or clicked; logged once per status and fed
    back as an event. False when the message is unknown or the status was recorded already."""
    now = now or utcnow()
    m = session.get(OutboxMessage, message_id)
    event = ENGAGEMENT_EVENTS.get((m.channel, status)) if m is not None else None
    if m is None or event is None:
        return False
    seen = session.scalar(select(DeliveryEvent.id).where(DeliveryEvent.message_id == message_id,
                                                         DeliveryEvent.status == status).limit(1))
    if seen is not None:
        return False
    log(session=session, message_id=message_id, status=status, at=now)
    feed_back(session=session, message=m, event=event, message_key=f"emma-{m.channel}-{status}-{message_id}",
              props={"channel": m.channel}, now=now)
    return True


def discard_queued(*, session: Session, before: dt.datetime, reason: str, now: dt.datetime | None = None) -> int:
    """Suppress messages still queued from before a moment (e.g. history imported before delivery was set up)."""
    now = now or utcnow()
    ids = list(session.scalars(select(OutboxMessage.id).where(OutboxMessage.status == "queued",
                                                              OutboxMessage.due_at < before)))
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(chunk))
                        .values(status="suppressed", last_error=reason))
        session.execute(DeliveryEvent.__table__.insert(),
                        [{"message_id": m, "status": "suppressed", "detail": {"reason": reason}, "at": now}
                         for m in chunk])
    return len(ids)


def next_due(*, session: Session) -> dt.datetime | None:
    """When the next queued message falls due (None: the outbox is empty), e.g. for a virtual clock's jumps."""
    return session.scalar(select(func.min(OutboxMessage.due_at)).where(OutboxMessage.status.in_(("queued",
                                                                                                 "sending"))))


# What a message did before an order, strongest first: a click, an open, a delivery (push and SMS have no
# open, and an email opened with images off shows none).
TOUCHES = {"clicked": (3, "click"), "opened": (2, "open"), "sent": (1, "delivery")}
ATTRIBUTED_CHANNELS = ("email", "sms", "push")


def convert(*, session: Session, order: Order, message_id: int, touch: str, touched_at: dt.datetime,
            now: dt.datetime, detail: dict[str, Any] | None = None) -> bool:
    """Attribute the order to the message and log 'converted' on it, unless the order was attributed before
    (to any message): False then."""
    new = insert_rows(session, Conversion, [{
        "order_pk": order.id, "message_id": message_id, "touch": touch, "touched_at": touched_at,
        "revenue": order.revenue, "currency": order.currency, "at": now}], on_conflict=["order_pk"],
        returning=["id"])
    if new:
        log(session=session, message_id=message_id, status="converted", at=now, detail={
            "order_id": order.order_id, "revenue": str(order.revenue), "currency": order.currency, "touch": touch,
            "touched_at": touched_at.isoformat(), **(detail or {})})
    return bool(new)


def attribute_orders(*, session: Session, settings: Settings, now: dt.datetime | None = None) -> int:
    """Attribute recent orders to the marketing message that led to them; returns how many were attributed.

    A redeemed coupon names its message outright (coupons.attribute_redemptions, first). Otherwise the last
    touch before the order counts: a click within settings.attribution_click_days, else an open, else a
    delivery within settings.attribution_view_hours; among touches of the same kind the latest wins. Each
    order is attributed once (the conversions table's unique order), however often its event is sent again.
    """
    from emma.coupons import service as coupons

    now = now or utcnow()
    n = coupons.attribute_redemptions(session=session, now=now)
    click = dt.timedelta(days=settings.attribution_click_days)
    view = dt.timedelta(hours=settings.attribution_view_hours)
    orders = list(session.scalars(select(Order).where(
        Order.ordered_at >= now - max(click, view), Order.ordered_at <= now,
        ~exists().where(Conversion.order_pk == Order.id))))
    if not orders:
        return n
    customers = sorted({o.customer_id for o in orders})
    earliest = min(o.ordered_at for o in orders) - max(click, view)
    touches: dict[int, list[tuple[int, str, dt.datetime]]] = {}
    for i in range(0, len(customers), 900):
        for cid, mid, status, at in session.execute(
                select(OutboxMessage.customer_id, DeliveryEvent.message_id, DeliveryEvent.status, DeliveryEvent.at)
                .join(DeliveryEvent, DeliveryEvent.message_id == OutboxMessage.id)
                .where(among(session, OutboxMessage.customer_id, customers[i:i + 900]),
                       OutboxMessage.transactional.is_(False), OutboxMessage.channel.in_(ATTRIBUTED_CHANNELS),
                       DeliveryEvent.status.in_(TOUCHES), DeliveryEvent.at >= earliest, DeliveryEvent.at <= now)):
            touches.setdefault(cid, []).append((mid, status, at))
    for order in sorted(orders, key=lambda o: (o.ordered_at, o.id)):
        best = None
        for mid, status, at in touches.get(order.customer_id, ()):
            window = click if status == "clicked" else view
            if order.ordered_at - window <= at <= order.ordered_at:
                key = (TOUCHES[status][0], at, mid)
                if best is None or key > best[0]:
                    best = (key, mid, status, at)
        if best is not None:
            _, mid, status, at = best
            n += convert(session=session, order=order, message_id=mid, touch=TOUCHES[status][1], touched_at=at,
                         now=now, detail={"attribution": "last_touch"})
    return n
