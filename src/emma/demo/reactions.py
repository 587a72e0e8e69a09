"""The simulated customers as recipients: they read what reached the local SMTP server and the provider
endpoint, and react the way their hidden traits say (the response model in emma.demo.response).

Everything they do goes through the product's public paths: the open pixel and the click redirect found in
the delivered HTML, the RFC 8058 one-click unsubscribe from the List-Unsubscribe header, the double opt-in
link of the confirmation mail, the short link in an SMS, the tap link of a push notification, and the shop's
tracking (product views, orders with the coupon from the mail) through ingest. Reactions happen later on the
virtual clock: the caller runs them with `act_until`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from emma.config import Settings
from emma.db import session_scope
from emma.demo.population import CHANNELS, INCENTIVE_TYPES
from emma.demo.response import SimCustomer, customer, offer_fit, probabilities
from emma.demo.simulate import Simulation
from emma.demo.sinks import Delivery, Mail
from emma.ingest import service as ingest

# Of opened marketing messages, the share that unsubscribes: more when the offer does not fit.
UNSUBSCRIBE_BASE = 0.01
UNSUBSCRIBE_MISFIT = 0.04
CODE_RE = re.compile(r"\b([A-Z0-9]{2,12}-[A-Z0-9]{4}-[A-Z0-9]{4})\b(?:\s*\((\d+(?:[.,]\d+)?)\s*%\))?")
PERCENT_RE = re.compile(r"(\d+(?:[.,]\d+)?)\s*%")
PRODUCT_URL = "https://shop.example.com/p/"


class _Html(HTMLParser):
    """Links (href, text, the product name shown just before) and bold texts of a mail's HTML part."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, str | None]] = []
        self.images: list[str] = []
        self.strong: list[str] = []
        self._href: str | None = None
        self._text: list[str] = []
        self._in_strong = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self._href, self._text = a["href"], []
        elif tag == "img" and a.get("src"):
            self.images.append(a["src"] or "")
        elif tag in ("strong", "b"):
            self._in_strong, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            text = " ".join("".join(self._text).split())
            self.links.append((self._href, text, self.strong[-1] if self.strong else None))
            self._href = None
        elif tag in ("strong", "b") and self._in_strong:
            self.strong.append(" ".join("".join(self._text).split()))
            self._in_strong = False

    def handle_data(self, data: str) -> None:
        if self._href is not None or self._in_strong:
            self._text.append(data)


# (customer, offer fit, incentive percent, channel, delivered at) -> P(open), P(click | open), P(buy | click)
Behaviour = Callable[[SimCustomer, float, float, str, dt.datetime], tuple[float, float, float]]


@dataclass(order=True)
class _Action:
    at: dt.datetime
    seq: int
    run: Callable[[dt.datetime], None] = field(compare=False)


@dataclass
class Counts:
    """What the simulated customers did (for the demo's summary; the report reads the database)."""

    received: Counter[str] = field(default_factory=Counter)  # by channel
    opened: Counter[str] = field(default_factory=Counter)
    clicked: Counter[str] = field(default_factory=Counter)
    ordered: Counter[str] = field(default_factory=Counter)
    unsubscribed: int = 0
    confirmed: int = 0
    decisions: int = 0  # on-site decisions asked for (home page views of known customers)
    revenue: float = 0.0


class Recipients:
    """The population's mail clients, phones and shop visits after a message."""

    def __init__(self, *, sim: Simulation, sessions: sessionmaker[Session], settings: Settings, http: httpx.Client,
                 set_clock: Callable[[dt.datetime], Any], behaviour: Behaviour | None = None,
                 write_key: str | None = None) -> None:
        self.sim, self.sessions, self.settings, self.http = sim, sessions, settings, http
        self.set_clock = set_clock
        self.behaviour = behaviour or true_behaviour
        self.write_key = write_key
        pop, cat = sim.population, sim.catalog
        self.by_email = {pop.email(i).lower(): i for i in range(len(pop))}
        self.by_user = {u: i for i, u in enumerate(pop.user_id)}
        self.by_phone = {pop.phone(i): i for i in range(len(pop)) if pop.phone(i)}
        self.sku_index = {s: i for i, s in enumerate(cat.sku)}
        self.name_index = {n: i for i, n in enumerate(cat.name)}
        self.carts: dict[int, dict[str, list[int]]] = {}  # customer -> open carts (id -> products), oldest first
        self.confirm_at: dict[int, dt.datetime] = {}  # customers who will click their opt-in link
        self.counts = Counts()
        self._queue: list[_Action] = []
        self._seq = itertools.count()
        self._alive: np.ndarray = sim.alive_at(sim.day)
        self._base = settings.base_url.rstrip("/")

    # -- what the shop's own tracking saw today ---------------------------------------------------

    def observe(self, messages: list[dict[str, Any]], confirmations: list[tuple[str, str, dt.datetime]]) -> None:
        """Remember open carts and who will confirm their double opt-in (from the simulated day)."""
        self._alive = self.sim.alive_at(self.sim.day)
        for m in messages:
            uid = m.get("userId")
            if uid is None or m.get("type") != "track":
                continue
            i = self.by_user.get(uid)
            if i is None:
                continue
            props = m.get("properties") or {}
            name = m.get("event")
            if name in ("Product Added", "Product Removed") and props.get("cart_id"):
                p = self.sku_index.get(props.get("sku"))
                carts = self.carts.setdefault(i, {})
                items = carts.pop(props["cart_id"], [])  # re-inserted: the most recent cart comes last
                if p is not None:
                    items = [x for x in items if x != p] + ([p] if name == "Product Added" else [])
                carts[props["cart_id"]] = items
            elif name == "Order Completed" and props.get("cart_id"):
                self.carts.get(i, {}).pop(props["cart_id"], None)
        for uid, _purpose, at in confirmations:
            i = self.by_user.get(uid)
            if i is not None:
                self.confirm_at[i] = at

    def visit(self, messages: list[dict[str, Any]], now: dt.datetime) -> None:
        """Known customers on the home page: the snippet asks /v1/decide, the customer may click an item."""
        if not self.write_key:
            return
        for m in messages:
            uid = m.get("userId")
            if m.get("type") != "page" or m.get("name") != "Startseite" or uid is None:
                continue
            i = self.by_user.get(uid)
            if i is None:
                continue
            r = self.http.post(f"{self._base}/v1/decide", auth=(self.write_key, ""),
                               json={"placement": "home", "userId": uid, "context": {"url": "https://shop.example.com/"}})
            if r.status_code != 200:
                continue
            self.counts.decisions += 1
            decision = r.json()
            shown = [(b["kind"], n, item) for b in decision["blocks"] for n, item in enumerate(b["items"])]
            shown = [(kind, n, item) for kind, n, item in shown if item["sku"] in self.sku_index]
            if not shown:
                continue
            c = customer(self.sim.population, i, alive=bool(self._alive[i]))
            fits = [offer_fit(c, (item["sku"],), self.sim.catalog, self.sku_index) for _, _, item in shown]
            best = int(np.argmax(fits))
            p_seen, p_click, p_buy = self.behaviour(c, fits[best], 0, "onsite", now)
            u = _uniforms(decision["decision_id"], uid)
            if u[0] >= p_seen or u[1] >= p_click:
                continue
            kind, n, item = shown[best]
            at = now + dt.timedelta(seconds=20 + 60 * u[2])
            self.counts.clicked["onsite"] += 1
            self._track(at, [{"userId": uid, "type": "track", "event": "Product Clicked", "messageId":
                              f"{decision['decision_id']}-click", "properties": {
                                  "sku": item["sku"], "product_id": item["sku"], "name": item["name"],
                                  "price": item["price"], "position": n + 1, "list_id": "home", "block": kind,
                                  "decision_id": decision["decision_id"]}}])
            if u[3] < p_buy:
                self._buy(i, [self.sku_index[item["sku"]]], None, 0, at + dt.timedelta(minutes=3), "onsite",
                          f"onsite-{decision['decision_id']}")

    # -- receiving --------------------------------------------------------------------------------

    def receive_mail(self, mails: list[Mail], at: dt.datetime) -> None:
        """Read newly delivered mails and plan the reactions."""
        for mail in mails:
            i = self.by_email.get((mail.rcpt_tos[0] if mail.rcpt_tos else "").lower())
            if i is None:
                continue
            self.counts.received["email"] += 1
            self._read(i, mail.message, at)

    def receive_provider(self, deliveries: list[Delivery], at: dt.datetime) -> None:
        """What the SMS and push providers (and the webhook) received reaches the customers' phones."""
        for d in deliveries:
            if d.path.startswith("/push"):
                self._push(d, at)
            elif d.path.startswith("/sms"):
                self._sms(d, at)
            else:
                self.counts.received[d.path.strip("/") or "webhook"] += 1

    def _push(self, d: Delivery, at: dt.datetime) -> None:
        """A push notification on the phone of the customer with that external id; a tap opens its tap link."""
        i = self.by_user.get(str(d.body.get("external_user_id")))
        tap_url = d.body.get("url")
        if i is None or not tap_url:
            return
        self.counts.received["push"] += 1
        data = d.body.get("data") or {}
        skus = tuple(s for s in _skus_in(data) if s in self.sku_index)
        c = customer(self.sim.population, i, alive=bool(self._alive[i]))
        u = _uniforms(f"push-{d.body.get('message_id')}", c.user_id)
        fit = offer_fit(c, skus, self.sim.catalog, self.sku_index)
        p_open, p_click, p_buy = self.behaviour(c, fit, 0, "push", at)
        if u[0] >= p_open:
            return
        mid = int(d.body.get("message_id") or 0)
        tap = at + dt.timedelta(minutes=1 + 30 * u[1])
        buys = bool(skus) and u[2] < p_click * p_buy
        self._plan(tap, lambda now, url=tap_url, i=i, skus=skus, mid=mid, buys=buys: self._tap(
            url, now, i=i, skus=skus if buys else (), key=f"push-{mid}"))

    def _sms(self, d: Delivery, at: dt.datetime) -> None:
        """An SMS to the customer with that number: read (most are), its short link clicked as the traits say."""
        i = self.by_phone.get(str(d.body.get("to")))
        if i is None:
            return
        self.counts.received["sms"] += 1
        text = str(d.body.get("text") or "")
        links = [m for m in re.findall(r"https?://\S+", text) if m.startswith(f"{self._base}/t/s/")]
        c = customer(self.sim.population, i, alive=bool(self._alive[i]))
        u = _uniforms(f"sms-{d.body.get('message_id')}", c.user_id)
        p_read, p_click, p_buy = self.behaviour(c, 0.5, 0, "sms", at)
        if not links or u[0] >= p_read or u[1] >= p_click:
            return
        when = at + dt.timedelta(minutes=2 + 60 * u[2])
        buys, key = bool(u[3] < p_buy), f"sms-{d.body.get('message_id')}"
        self._plan(when, lambda now, url=links[0]: self._sms_click(i, url, now, buys=buys, key=key))

    def _sms_click(self, i: int, url: str, now: dt.datetime, *, buys: bool, key: str) -> None:
        """The short link leads to a product page (a purchase may follow) or elsewhere (a survey, preferences)."""
        target = self._follow(url, "sms", now).headers.get("location", "")
        p = self.sku_index.get(target[len(PRODUCT_URL):].upper()) if target.startswith(PRODUCT_URL) else None
        if buys and p is not None:
            self._buy(i, [p], None, 0, now + dt.timedelta(minutes=4), "sms", key)

    def _read(self, i: int, msg: EmailMessage, at: dt.datetime) -> None:
        html_part = msg.get_body(preferencelist=("html",))
        text_part = msg.get_body(preferencelist=("plain",))
        html = html_part.get_content() if html_part is not None else ""
        text = text_part.get_content() if text_part is not None else ""
        page = _Html()
        page.feed(html)
        confirm = next((href for href, _, _ in page.links if "/consent/confirm/" in href), None)
        # The outbox id makes the reaction reproducible (the Message-ID header has a random part).
        key = f"mail-{msg.get('X-Emma-Message')}" if msg.get("X-Emma-Message") else str(msg.get("Message-ID"))
        c = customer(self.sim.population, i, alive=bool(self._alive[i]))
        u = _uniforms(key, c.user_id)
        pixel = next((src for src in page.images if "/t/o/" in src), None)
        if confirm is not None:
            when = self.confirm_at.pop(i, None)
            if when is not None:  # the customer opens the confirmation mail and clicks its link
                when = max(when, at + dt.timedelta(minutes=1))
                if pixel is not None:
                    self._plan(when - dt.timedelta(seconds=30), lambda now, url=pixel: self._open(url, now))
                self._plan(when, lambda now, url=confirm: self._confirm(url, now))
            return
        marketing = msg.get("List-Unsubscribe") is not None
        offered = [self.name_index[n] for n in dict.fromkeys(page.strong + [t for _, t, _ in page.links])
                   if n in self.name_index]
        skus = tuple(self.sim.catalog.sku[p] for p in offered)
        fit = offer_fit(c, skus, self.sim.catalog, self.sku_index)
        if any(set(items) & set(offered) for items in self.carts.get(i, {}).values()):
            fit = 1.0  # the mail shows what the customer put into a cart: it fits by their own choice
        code, percent = _coupon(text)
        p_open, p_click, p_buy = self.behaviour(c, fit, percent, "email", at)
        if u[0] >= p_open:
            return
        opened = at + dt.timedelta(minutes=5 + 120 * u[1])
        if pixel is not None:
            self._plan(opened, lambda now, url=pixel: self._open(url, now))
        if not marketing:
            return
        if u[2] < UNSUBSCRIBE_BASE + UNSUBSCRIBE_MISFIT * (1 - fit):
            unsub = str(msg.get("List-Unsubscribe")).strip().strip("<>")
            self._plan(opened + dt.timedelta(minutes=1), lambda now, url=unsub: self._unsubscribe(url, now))
            return
        tracked = [(href, text, shown) for href, text, shown in page.links if href.startswith(f"{self._base}/t/c/")]
        if not tracked or u[3] >= p_click:
            return
        # The link of the product that fits the customer best (the product shown next to it, or the link's text).
        def score(link: tuple[str, str, str | None]) -> float:
            p = self.name_index.get(link[1], self.name_index.get(link[2] or ""))
            return float(c.affinity[int(self.sim.catalog.category[p])]) if p is not None else -1.0

        href = max(tracked, key=score)[0]
        clicked = opened + dt.timedelta(minutes=1 + 3 * u[4])
        buys = u[5] < p_buy
        self._plan(clicked, lambda now, href=href, i=i, buys=buys, code=code, percent=percent, key=key:
                   self._click(i, href, now, buys=buys, code=code, percent=percent, key=key, offered=offered))

    # -- acting -----------------------------------------------------------------------------------

    def _plan(self, at: dt.datetime, run: Callable[[dt.datetime], None]) -> None:
        heapq.heappush(self._queue, _Action(at, next(self._seq), run))

    def next_at(self) -> dt.datetime | None:
        return self._queue[0].at if self._queue else None

    def act_until(self, until: dt.datetime) -> int:
        """Carry out every planned reaction due before until, in time order, with the clock set to each."""
        n = 0
        while self._queue and self._queue[0].at < until:
            action = heapq.heappop(self._queue)
            self.set_clock(action.at)
            action.run(action.at)
            n += 1
        return n

    def _get(self, url: str) -> httpx.Response:
        return self.http.get(url, follow_redirects=False)

    def _open(self, url: str, now: dt.datetime) -> None:
        if self._get(url).status_code == 200:
            self.counts.opened["email"] += 1

    def _confirm(self, url: str, now: dt.datetime) -> None:
        if self._get(url).status_code == 200:
            self.counts.confirmed += 1

    def _unsubscribe(self, url: str, now: dt.datetime) -> None:
        r = self.http.post(url, content=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        if r.status_code == 200:
            self.counts.unsubscribed += 1

    def _click(self, i: int, href: str, now: dt.datetime, *, buys: bool, code: str | None, percent: float,
               key: str, offered: list[int]) -> None:
        r = self._get(href)
        if r.status_code not in (301, 302, 303, 307):
            return
        self.counts.clicked["email"] += 1
        target = r.headers.get("location", "")
        uid = self.sim.population.user_id[i]
        p = None
        if target.startswith(PRODUCT_URL):
            p = self.sku_index.get(target[len(PRODUCT_URL):].upper())
        if p is not None:
            self._track(now, [{"userId": uid, "type": "track", "event": "Product Viewed",
                               "properties": _product(self.sim, p), "messageId": f"{key}-view"}])
        if buys:
            # A mail showing products of a cart the customer left brings that cart back; else the clicked product.
            carts = [(len(set(items) & set(offered)), n, cid, items)
                     for n, (cid, items) in enumerate(self.carts.get(i, {}).items()) if items]
            best = max(carts, default=None)
            if best is not None and best[0] > 0:
                self._buy(i, best[3], best[2], percent if code else 0, now + dt.timedelta(minutes=4), "email", key,
                          code)
            elif p is not None:
                self._buy(i, [p], None, percent if code else 0, now + dt.timedelta(minutes=4), "email", key, code)

    def _follow(self, url: str, channel: str, now: dt.datetime) -> httpx.Response:
        r = self._get(url)
        if r.status_code in (204, 301, 302, 303, 307):
            self.counts.clicked[channel] += 1
        return r

    def _tap(self, url: str, now: dt.datetime, *, i: int, skus: tuple[str, ...], key: str) -> None:
        """The app opens the tap link (recorded by the product, redirected to the deep link); maybe a purchase."""
        r = self._follow(url, "push", now)
        if skus and r.status_code in (204, 302):
            self._buy(i, [self.sku_index[skus[0]]], None, 0, now + dt.timedelta(minutes=3), "push", key)

    def _buy(self, i: int, items: list[int], cart_id: str | None, percent: float, at: dt.datetime, channel: str,
             source: str, code: str | None = None) -> None:
        """Plan the order a few minutes on (planned, not placed at once: the virtual clock never goes back, so
        placing it now would stamp the reactions of others due before it with its later time)."""
        self._plan(at, lambda now: self._order(i, items, cart_id, percent, now, channel, source, code))

    def _order(self, i: int, items: list[int], cart_id: str | None, percent: float, now: dt.datetime, channel: str,
               source: str, code: str | None = None) -> None:
        sim, uid = self.sim, self.sim.population.user_id[i]
        cart_id = cart_id or f"{_short(source)}-wk"
        lines = [{**_product(sim, p), "quantity": 1} for p in items[:4]]
        subtotal = sum(line["price"] for line in lines)
        discount = round(subtotal * percent / 100, 2) if code and percent else 0.0
        revenue = round(subtotal - discount, 2)
        order_id = f"M-{_short(source)}"
        props: dict[str, Any] = {"order_id": order_id, "cart_id": cart_id, "currency": "EUR", "revenue": revenue,
                                 "total": revenue, "products": lines}
        if code and discount:
            props.update(coupon=code, discount=discount)
        msgs: list[dict[str, Any]] = []
        if cart_id not in self.carts.get(i, {}):
            msgs += [{"type": "track", "event": "Product Added", "properties": {**line, "cart_id": cart_id}}
                     for line in lines]
        msgs += [{"type": "track", "event": "Checkout Started", "properties": {"cart_id": cart_id, "currency": "EUR"}},
                 {"type": "track", "event": "Order Completed", "properties": props}]
        for n, m in enumerate(msgs):
            m.update(userId=uid, messageId=f"{order_id}-{n}")
        if self._track(now, msgs):
            self.counts.ordered[channel] += 1
            self.counts.revenue += revenue
            self.carts.get(i, {}).pop(cart_id, None)

    def _track(self, now: dt.datetime, messages: list[dict[str, Any]]) -> bool:
        self.set_clock(now)
        for m in messages:
            m["timestamp"] = now.isoformat()
            m.setdefault("context", {"library": {"name": "tante-emma-demo-shop"}})
        with session_scope(self.sessions) as s:
            res = ingest.ingest(session=s, raw_messages=messages, received_at=now, settings=self.settings)
        return res.accepted == len(messages)


def true_behaviour(c: SimCustomer, fit: float, percent: float, channel: str,
                   at: dt.datetime) -> tuple[float, float, float]:
    """P(open), P(click | open), P(purchase | click) from the customer's hidden traits (the simulator's truth)."""
    local = at.astimezone(ZoneInfo(c.timezone)).hour
    d = abs(local - c.preferred_hour)
    p_open, p_click, p_buy = probabilities(
        channel_match=c.preferred_channel == channel, hour_distance=min(d, 24 - d), alive=c.alive, fit=fit,
        incentive_type=INCENTIVE_TYPES.index(c.incentive_type), incentive_percent=percent, channel=channel)
    return float(p_open), float(p_click), float(p_buy)


def _uniforms(key: str, user_id: str) -> np.ndarray:
    # The same message to the same customer always gets the same reaction (reproducible demos).
    h = hashlib.sha256(f"react|{key}|{user_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big")).random(8)


def _short(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _coupon(text: str) -> tuple[str | None, float]:
    """The coupon code in a mail's text and its percentage (0 when the mail carries none)."""
    m = CODE_RE.search(text)
    if m is None:
        return None, 0.0
    if m.group(2):
        return m.group(1), float(m.group(2).replace(",", "."))
    near = PERCENT_RE.search(text[max(0, m.start() - 80): m.end() + 80])
    return m.group(1), float(near.group(1).replace(",", ".")) if near else 0.0


def _skus_in(data: Any) -> list[str]:
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if k == "sku" and isinstance(v, str):
                out.append(v)
            else:
                out += _skus_in(v)
    elif isinstance(data, list):
        for v in data:
            out += _skus_in(v)
    return out


def _product(sim: Simulation, p: int) -> dict[str, Any]:
    cat = sim.catalog
    return {"sku": cat.sku[p], "name": cat.name[p], "category": cat.path[p], "price": int(cat.price_cents[p]) / 100}


__all__ = ["CHANNELS", "Behaviour", "Counts", "Recipients", "true_behaviour"]
