"""Day-by-day shop behaviour: sessions, carts, orders, deliveries, returns, reviews, catalog changes.

Every random draw of a day is made up front with numpy, from generators seeded by (seed, day), so the
same seed gives the same shop whether or not the Segment messages are built (the truth export replays
the simulation without them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from emma.demo.catalog import CATEGORIES, Catalog, Store, generate_catalog, stores
from emma.demo.population import (
    CITIES,
    LOST_CAUSE,
    PERSUADABLE,
    SLEEPING_DOG,
    TIMEZONES,
    Population,
    generate_population,
)

MAX_VIEWS = 6
MAX_LINES = 4
SYSTEM_ID = "tante-emma-filialnetz"  # anonymous id of the shop itself, for store events
RETURN_SHARE = np.array([0.04, 0.04, 0.05, 0.07, 0.04, 0.22, 0.02])  # per category; fashion comes back
ABANDONED_CART_P = 0.75  # chance that a browsing session leaves a cart behind
VIEWS_MEAN = 2.0  # product views per session
DOI_CONFIRM_P = 0.85  # share of email sign-ups that click the confirmation link
ABANDONED_CHECKOUT_P = 0.3  # of abandoned carts, those that got as far as the checkout
FIRST_VISIT_BUY_P = 0.1
# The shop's newsletter: weekly to everyone with email permission until the cut-off; in each send a random half
# gets a 10 % coupon.
# The randomised split is what lets the history show who buys only with a coupon (incentive uplift).
NEWSLETTER_EVERY_DAYS = 7
NEWSLETTER_COUPON_SHARE = 0.5
NEWSLETTER_PERCENT = 10
NEWSLETTER_UTC_SECONDS = 8 * 3600


@dataclass(frozen=True)
class DemoConfig:
    customers: int = 10_000
    seed: int = 42
    days: int = 365
    end: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())  # history ends today 00:00 UTC
    cutoff_days: int = 90

    @property
    def start(self) -> dt.date:
        return self.end - dt.timedelta(days=self.days)

    @property
    def cutoff_day(self) -> int:
        """Simulated day index of the cut-off: days before it are history, the rest is the future to score."""
        return max(0, self.days - self.cutoff_days)

    def day_start(self, day: int) -> dt.datetime:
        return dt.datetime.combine(self.start + dt.timedelta(days=day), dt.time(), tzinfo=dt.UTC)


@dataclass(frozen=True)
class Promotion:
    code: str
    percent: int
    name: str


@dataclass
class NewsletterSend:
    """One newsletter: who got it, who got the coupon variant, who opened, clicked and bought through it."""

    day: int
    campaign_id: str
    recipients: np.ndarray
    coupon: np.ndarray  # bool per recipient: the randomised treatment
    opened: np.ndarray
    clicked: np.ndarray
    bought: np.ndarray


@dataclass
class OrderRecord:
    """One simulated order, as the truth export and the tests see it."""

    order_id: str
    customer: int
    day: int
    revenue_cents: int
    coupon: str | None
    skus: tuple[int, ...]
    returned: bool = False


@dataclass
class DayOutput:
    day: int
    catalog_at: dt.datetime
    catalog_rows: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    orders: list[OrderRecord]
    confirmations: list[tuple[str, str, dt.datetime]]  # (user id, purpose, when): double opt-in link clicks
    counts: dict[str, int]


def promotion_on(date: dt.date) -> Promotion | None:
    """Site-wide coupon campaigns of the simulated year (they make incentive response visible in history)."""
    md = (date.month, date.day)
    if (3, 20) <= md <= (3, 26):
        return Promotion("FRUEHLING15", 15, "Frühlingsaktion")
    if (7, 1) <= md <= (7, 7):
        return Promotion("SOMMER10", 10, "Sommerschlussverkauf")
    nov1 = dt.date(date.year, 11, 1)
    thanksgiving = nov1 + dt.timedelta(days=(3 - nov1.weekday()) % 7 + 21)
    if thanksgiving + dt.timedelta(days=1) <= date <= thanksgiving + dt.timedelta(days=4):
        return Promotion("BLACKWEEK20", 20, "Black Week")
    return None


def season_factor(date: dt.date) -> float:
    """Overall shopping intensity: weekday pattern, Christmas peak, quiet January and summer."""
    weekday = (1.1, 1.0, 1.0, 1.0, 0.9, 0.85, 1.2)[date.weekday()]
    md = (date.month, date.day)
    if (11, 15) <= md <= (12, 22):
        doy = (date - dt.date(date.year, 11, 15)).days
        season = 1.3 + 1.2 * doy / 37
    elif (12, 24) <= md <= (12, 26):
        season = 0.4
    elif md <= (1, 15):
        season = 0.75
    elif date.month in (7, 8):
        season = 0.9
    else:
        season = 1.0
    return weekday * season


def category_season(date: dt.date) -> np.ndarray:
    """Per-category demand: gardens in spring and summer, toys before Christmas."""
    w = np.ones(len(CATEGORIES))
    if date.month in (4, 5, 6, 7):
        w[CATEGORIES.index("Garten")] = 2.0
    elif date.month in (11, 12, 1, 2):
        w[CATEGORIES.index("Garten")] = 0.4
    if date.month in (11, 12):
        w[CATEGORIES.index("Spielzeug")] = 2.2
        w[CATEGORIES.index("Elektronik")] = 1.5
    return w


def _offsets(config: DemoConfig) -> np.ndarray:
    """UTC offset in seconds per (time zone, day), daylight saving included."""
    out = np.zeros((len(TIMEZONES), config.days), dtype=np.int64)
    for z, name in enumerate(TIMEZONES):
        tz = ZoneInfo(name)
        for d in range(config.days):
            noon = config.day_start(d) + dt.timedelta(hours=12)
            off = noon.astimezone(tz).utcoffset()
            out[z, d] = int(off.total_seconds()) if off else 0
    return out


_SLUG = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", " ": "-", ">": "", "&": "und"})


def _slug(s: str) -> str:
    return "-".join(x for x in s.lower().translate(_SLUG).split("-") if x)


class Simulation:
    """The shop over config.days days; iterate it to get one DayOutput per simulated day."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        root = np.random.SeedSequence(config.seed)
        cat_seq, pop_seq = root.spawn(2)
        self.catalog: Catalog = generate_catalog(np.random.default_rng(cat_seq), days=config.days)
        self.population: Population = generate_population(np.random.default_rng(pop_seq), n=config.customers,
                                                           days=config.days, seed=config.seed, end=config.end)
        self.stores: list[Store] = stores(config.days)
        n, p = config.customers, len(self.catalog)
        self.alive = np.ones(n, dtype=bool)
        self.dropout_day = np.full(n, -1, dtype=np.int64)
        self.registered_day = np.full(n, -1, dtype=np.int64)
        self.second_linked = np.zeros(n, dtype=bool)
        self.second_anonymous = np.zeros(n, dtype=bool)  # browsed anonymously on the second device
        self.merged = np.zeros(n, dtype=bool)  # that anonymous profile was merged into the customer
        self.consumable = np.full(n, -1, dtype=np.int64)
        self.consumable_due = np.full(n, 1 << 30, dtype=np.int64)
        self.cart_seq = np.zeros(n, dtype=np.int64)
        self.restock_day = np.full(p, -1, dtype=np.int64)
        self.orders: list[OrderRecord] = []
        self.newsletters: list[NewsletterSend] = []
        self.visits: list[np.ndarray] = []  # per day, the customers with a session (what tracking sees as activity)
        self._email_orders: dict[int, tuple[str, Promotion | None]] = {}  # today's orders through the newsletter
        self.scheduled: dict[int, list[tuple[int, str, dict[str, Any], int]]] = {}  # day -> (sec, kind, data, cust)
        self._tz = np.searchsorted(np.array(TIMEZONES), np.array([c[6] for c in CITIES]))[self.population.city]
        self._offsets = _offsets(config)
        cat = self.catalog
        self._cat_products = [np.flatnonzero(cat.category == c) for c in range(len(CATEGORIES))]
        self._cat_median = np.array([np.median(cat.base_price_cents[idx]) for idx in self._cat_products])
        self._dirty: set[int] = set()
        self.day = 0

    # -- helpers ---------------------------------------------------------------------------------

    def _rng(self, day: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, stream, day])

    def _schedule(self, day: int, sec: int, kind: str, data: dict[str, Any], cust: int) -> None:
        if day < self.config.days:
            self.scheduled.setdefault(day, []).append((sec, kind, data, cust))

    def _catalog_changes(self, d: int, rng: np.random.Generator) -> list[int]:
        cat = self.catalog
        live = cat.launch_day <= d
        changed = set(np.flatnonzero(cat.launch_day == d).tolist()) | self._dirty
        self._dirty = set()
        for i in np.flatnonzero((cat.launch_day == d) & (cat.successor_of >= 0)).tolist():
            # A successor arrives: the old model points at it and is marked down to clear the shelf.
            old = int(cat.successor_of[i])
            cat.price_cents[old] = int(cat.price_cents[old] * 0.8 // 100 * 100 + 99)
            changed.add(old)
        u = rng.random((3, len(cat)))
        reprice = np.flatnonzero(live & (d > 0) & (u[0] < 0.006))
        factors = np.array([0.75, 0.85, 0.9, 1.0, 1.0, 1.05, 1.1])[rng.integers(0, 7, size=len(reprice))]
        for i, f in zip(reprice.tolist(), factors.tolist(), strict=True):
            new = int(cat.base_price_cents[i] * f // 100 * 100 + (49 if cat.base_price_cents[i] < 1000 else 99))
            if new != cat.price_cents[i]:
                cat.price_cents[i] = new
                changed.add(i)
        # Supplier trouble: a few products go out of stock regardless of sales.
        for i in np.flatnonzero(live & (d > 0) & (cat.stock > 0) & (u[1] < 0.0015)).tolist():
            cat.stock[i] = 0
            self.restock_day[i] = d + 3 + int(u[2, i] * 25)
            changed.add(i)
        restock_sizes = rng.integers(40, 300, size=len(cat))
        for i in np.flatnonzero(self.restock_day == d).tolist():
            cat.stock[i] = int(restock_sizes[i])
            self.restock_day[i] = -1
            changed.add(i)
        return sorted(changed)

    def _weights(self, sess_cust: np.ndarray, cat_idx: int, *, buy: bool, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Per session, the cumulative choice distribution over the live products of one category."""
        pop, cat = self.population, self.catalog
        prods = self._cat_products[cat_idx]
        prods = prods[cat.launch_day[prods] <= d]
        base = cat.popularity[prods] * (cat.stock[prods] > 0 if buy else 1.0)
        sustain = 1.0 + 2.5 * np.outer(pop.cares_sustainability[sess_cust], cat.sustainable[prods])
        # Price-sensitive customers prefer the cheaper variants, indifferent ones lean towards premium.
        # Current prices, so a markdown draws the price-sensitive in (what the price_drop tactic relies on).
        rel = np.log(cat.price_cents[prods] / self._cat_median[cat_idx])
        price = np.exp(-np.outer(2.5 * pop.price_sensitivity[sess_cust] - 0.6, rel))
        w = base[None, :] * sustain * price
        cdf = np.cumsum(w, axis=1)
        total = cdf[:, -1:]
        # A category with nothing to offer gives zeros, so every pick falls off the end (-1).
        return prods, np.where(total > 0, cdf / np.where(total > 0, total, 1), 0.0)

    # -- one day ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[DayOutput]:
        while self.day < self.config.days:
            yield self.step(emit=True)

    def run(self, *, emit: bool = False) -> None:
        """Simulate the remaining days (without building messages unless emit)."""
        while self.day < self.config.days:
            self.step(emit=emit)

    def step(self, *, emit: bool = True) -> DayOutput:
        """Simulate the next day."""
        d = self.day
        cfg, pop, cat = self.config, self.population, self.catalog
        date = cfg.start + dt.timedelta(days=d)
        day0 = cfg.day_start(d)
        rng = self._rng(d, 1)
        catalog_ids = self._catalog_changes(d, rng)
        catalog_at = day0 + dt.timedelta(seconds=30)  # before the first session of the day
        catalog_rows = [cat.row(i, day=d) for i in catalog_ids]
        promo = promotion_on(date)
        season = season_factor(date)
        cseason = category_season(date)

        # Who comes today, and who buys.
        active = np.flatnonzero((pop.join_day <= d) & self.alive)
        first = pop.join_day[active] == d
        mult = np.ones(len(active))
        if promo is not None:
            itype = pop.incentive_type[active]
            mult = np.select([itype == PERSUADABLE, itype == SLEEPING_DOG, itype == LOST_CAUSE],
                             [4.0, 0.8, 1.0], 1.1)
        p_buy = 1 - np.exp(-pop.purchase_rate[active] * season * mult)
        p_buy = np.where(first, np.maximum(p_buy, FIRST_VISIT_BUY_P), p_buy)
        u = rng.random((2, len(active)))
        buy = u[0] < p_buy
        news = self._newsletter(d)
        email_buy = np.isin(active, news.recipients[news.bought]) if news is not None else np.zeros(len(active), bool)
        buy |= email_buy
        browse = (u[1] < 1 - np.exp(-pop.browse_rate[active] * season)) | (first & ~buy)
        s_cust = np.concatenate([active[browse], active[buy]])
        s_buy = np.concatenate([np.zeros(int(browse.sum()), bool), np.ones(int(buy.sum()), bool)])
        s = len(s_cust)
        self.visits.append(np.unique(s_cust))

        # Session times: around the customer's preferred local hour, converted to UTC.
        local = (pop.preferred_hour[s_cust] * 3600 + rng.normal(0, 1.5 * 3600, size=s)).astype(np.int64)
        both = np.isin(s_cust, active[browse & buy])
        local = np.where(both & s_buy, np.maximum(local, 4 * 3600), local)
        order = np.lexsort((s_buy, s_cust))
        s_cust, s_buy, local, both = s_cust[order], s_buy[order], local[order], both[order]
        if s:
            # A customer who browses and buys on one day browses two hours before buying.
            nxt = np.r_[local[1:], 0]
            local = np.where(both & ~s_buy, nxt - 2 * 3600, local)
        utc = np.clip(local - self._offsets[self._tz[s_cust], d], 60, 86400 - 3600)
        if news is not None and s:
            # Buying through the newsletter: the order follows the click, within two hours of the send.
            via_email = s_buy & np.isin(s_cust, news.recipients[news.bought])
            utc = np.where(via_email, NEWSLETTER_UTC_SECONDS + 1200 + (s_cust * 7919) % 5400, utc)

        # Categories and products.
        aff = pop.affinity[s_cust] * cseason[None, :]
        cdf = np.cumsum(aff, axis=1)
        s_cat = (rng.random(s)[:, None] * cdf[:, -1:] > cdf).sum(axis=1)
        s_cat = np.minimum(s_cat, len(CATEGORIES) - 1)
        u_view = rng.random((s, MAX_VIEWS))
        u_line = rng.random((s, MAX_LINES))
        views = np.full((s, MAX_VIEWS), -1, dtype=np.int64)
        lines = np.full((s, MAX_LINES), -1, dtype=np.int64)
        for c in range(len(CATEGORIES)):
            sel = np.flatnonzero(s_cat == c)
            if not len(sel):
                continue
            prods, vcdf = self._weights(s_cust[sel], c, buy=False, d=d)
            pick = (u_view[sel][:, :, None] > vcdf[:, None, :]).sum(axis=2)
            views[sel] = np.where(pick < len(prods), prods[np.minimum(pick, len(prods) - 1)], -1)
            prods, bcdf = self._weights(s_cust[sel], c, buy=True, d=d)
            pick = (u_line[sel][:, :, None] > bcdf[:, None, :]).sum(axis=2)
            lines[sel] = np.where(pick < len(prods), prods[np.minimum(pick, len(prods) - 1)], -1)
        n_views = np.minimum(1 + rng.poisson(VIEWS_MEAN - 1, size=s), MAX_VIEWS)
        n_lines = np.minimum(rng.geometric(0.65, size=s), MAX_LINES)
        n_cart_abandoned = np.minimum(rng.geometric(0.75, size=s), 3)
        qty = 1 + rng.poisson(0.8, size=(s, MAX_LINES))
        ur = rng.random((s, 13))
        acc_pick = rng.integers(0, 4, size=s)
        o_delay = rng.integers(0, 1 << 20, size=(s, 6))

        day_orders: list[OrderRecord] = []
        counts = {"sessions": s, "orders": 0, "carts": 0, "abandoned_carts": 0}
        b = _Builder(self, d, day0, emit)
        if news is not None:
            self._newsletter_events(b, news)
        for k in range(s):
            i = int(s_cust[k])
            b.who = i
            r = ur[k]
            t = int(utc[k])
            registered = self.registered_day[i] >= 0
            device2 = registered and 0 <= pop.second_device_day[i] <= d and r[0] < 0.35
            anon = pop.second_device_id[i] if device2 else pop.anonymous_id[i]
            logged_in = registered and (not device2 or self.second_linked[i])
            if device2 and not self.second_linked[i] and (s_buy[k] or r[1] < 0.4):
                # Logging in on the second device: its anonymous history joins the customer.
                t = b.identify(t, i, anon, consent=False)
                self.second_linked[i] = True
                self.merged[i] = self.second_anonymous[i]
                logged_in = True
            elif device2 and not self.second_linked[i]:
                self.second_anonymous[i] = True
            uid = pop.user_id[i] if logged_in else None
            if r[2] < 0.25:
                t = b.page(t, uid, anon, "Startseite", "/", int(r[2] * 400))
            cname = CATEGORIES[int(s_cat[k])]
            t = b.page(t, uid, anon, "Kategorie", f"/kategorie/{_slug(cname)}", int(r[3] * 100), category=cname)
            seen = [int(x) for x in views[k, : n_views[k]] if x >= 0]
            if seen and r[4] < 0.3:
                t = b.track(t, uid, anon, "Products Searched", {"query": _query(cat.name[seen[0]])})
            for p in seen:
                t = b.track(t, uid, anon, "Product Viewed", b.product(p))
            if s_buy[k]:
                items = list(dict.fromkeys(int(x) for x in lines[k, : n_lines[k]] if x >= 0))
                con = int(self.consumable[i])
                if con >= 0 and self.consumable_due[i] <= d + 3 and r[5] < 0.7 and cat.stock[con] > 0:
                    items.append(con)  # replenishment of what ran out
                acc = cat.accessories[items[0]] if items else []
                if acc and r[6] < 0.3:
                    a = acc[int(acc_pick[k]) % len(acc)]
                    if cat.stock[a] > 0:
                        items.append(a)
                items = list(dict.fromkeys(items))
                if not items:
                    continue
                quantities = [int(min(qty[k, j], 3)) if cat.runout_days[p] else 1 for j, p in enumerate(items[:4])]
                items = items[:4]
                cart_id = self._cart_id(i)
                counts["carts"] += 1
                for p, q in zip(items, quantities, strict=True):
                    t = b.track(t, uid, anon, "Product Added", {**b.product(p), "quantity": q, "cart_id": cart_id})
                if not registered:
                    # Checkout needs an account: the anonymous visitor registers (same profile, now known).
                    t = b.identify(t, i, anon, consent=True)
                    self.registered_day[i] = d
                    self._after_registration(i, d)
                    uid = pop.user_id[i]
                t = b.track(t, uid, anon, "Checkout Started", {"cart_id": cart_id, "currency": "EUR"})
                t = self._order(b, t, i, uid, anon, cart_id, items, quantities, promo, r, o_delay[k], day_orders)
                counts["orders"] += 1
            else:
                if seen and r[7] < ABANDONED_CART_P:
                    cart_id = self._cart_id(i)
                    counts["carts"] += 1
                    counts["abandoned_carts"] += 1
                    added = list(dict.fromkeys(seen))[: int(n_cart_abandoned[k])]
                    for p in added:
                        t = b.track(t, uid, anon, "Product Added", {**b.product(p), "quantity": 1, "cart_id": cart_id})
                    if len(added) > 1 and r[8] < 0.25:
                        t = b.track(t, uid, anon, "Product Removed", {**b.product(added[-1]), "quantity": 1,
                                                                      "cart_id": cart_id})
                    if r[9] < ABANDONED_CHECKOUT_P:
                        t = b.track(t, uid, anon, "Checkout Started", {"cart_id": cart_id, "currency": "EUR"})
                if registered and seen and r[10] < 0.06:
                    t = b.track(t, uid, anon, "Product Added to Wishlist", b.product(seen[-1]))
                if not registered and r[11] < pop.lead_signup_p[i]:
                    # Newsletter sign-up without a purchase: a known lead.
                    t = b.identify(t, i, anon, consent=True)
                    self.registered_day[i] = d
                    self._after_registration(i, d)
        self._scheduled_messages(b, d)
        for st in self.stores:
            if st.opened_day == d:
                b.who = -1
                b.store_opened(10 * 3600, st)
        self.orders.extend(day_orders)
        self._email_orders = {}
        messages = b.finish()
        self.day += 1
        return DayOutput(day=d, catalog_at=catalog_at, catalog_rows=catalog_rows, messages=messages,
                         orders=day_orders, confirmations=b.confirmations, counts=counts)

    def _cart_id(self, i: int) -> str:
        self.cart_seq[i] += 1
        return f"wk-{i + 1}-{int(self.cart_seq[i])}"

    def _after_registration(self, i: int, d: int) -> None:
        revoke = int(self.population.revoke_after_days[i])
        if revoke >= 0:
            self._schedule(d + revoke, 9 * 3600 + i % 3600, "revoke", {}, i)

    def _order(self, b: _Builder, t: int, i: int, uid: str, anon: str, cart_id: str, items: list[int],
               quantities: list[int], promo: Promotion | None, r: np.ndarray, delays: np.ndarray,
               day_orders: list[OrderRecord]) -> int:
        pop, cat = self.population, self.catalog
        d = self.day
        subtotal = sum(int(cat.price_cents[p]) * q for p, q in zip(items, quantities, strict=True))
        itype = int(pop.incentive_type[i])
        use_coupon = promo is not None and (delays[0] % 100) < (90, 100, 30, 20)[itype]
        via_email = self._email_orders.pop(i, None)
        if via_email is not None and via_email[1] is not None:  # the newsletter's coupon variant
            promo, use_coupon = via_email[1], True
        discount = subtotal * promo.percent // 100 if use_coupon and promo else 0
        revenue = subtotal - discount
        shipping = 0 if subtotal >= 5000 else 495
        order_id = f"B{d:03d}-{len(day_orders) + 1:06d}"
        props: dict[str, Any] = {
            "order_id": order_id, "cart_id": cart_id, "currency": "EUR", "revenue": revenue / 100,
            "total": (revenue + shipping) / 100, "shipping": shipping / 100, "tax": round(revenue * 19 / 11900, 2),
            "products": [{**b.product(p), "quantity": q} for p, q in zip(items, quantities, strict=True)]}
        if use_coupon and promo:
            props["coupon"] = promo.code
            props["discount"] = discount / 100
        if via_email is not None:
            props["campaign_id"] = via_email[0]
        t = b.track(t, uid, anon, "Order Completed", props)
        for p, q in zip(items, quantities, strict=True):
            cat.stock[p] = max(0, int(cat.stock[p]) - q)
            self._dirty.add(p)
            if cat.stock[p] == 0 and self.restock_day[p] < 0:
                self.restock_day[p] = d + 4 + int(delays[1] % 20)
            if cat.runout_days[p]:
                self.consumable[i] = p
                self.consumable_due[i] = d + int(cat.runout_days[p] * q * (0.8 + 0.4 * ((delays[2] % 100) / 100)))
        rec = OrderRecord(order_id=order_id, customer=i, day=d, revenue_cents=revenue,
                          coupon=promo.code if use_coupon and promo else None, skus=tuple(items))
        day_orders.append(rec)
        if r[12] < pop.dropout_p[i]:
            # BG/NBD: after each purchase the customer may leave for good (the hidden churn truth).
            self.alive[i] = False
            self.dropout_day[i] = d
        # What happens to the order later: shipped, delivered, perhaps returned, perhaps reviewed.
        ship = d + 1
        deliver = ship + 1 + int(delays[3] % 4)
        work = 8 * 3600 + int(delays[4] % (9 * 3600))
        self._schedule(ship, work, "Order Shipped", {"order_id": order_id}, i)
        self._schedule(deliver, work + 3600, "Order Delivered", {"order_id": order_id}, i)
        top = int(np.bincount(cat.category[items], minlength=len(CATEGORIES)).argmax())
        u_ret = (delays[5] % 10_000) / 10_000
        if u_ret < RETURN_SHARE[top]:
            rec.returned = True
            back = deliver + 3 + int(delays[0] % 11)
            self._schedule(back, work, "Order Returned", {"order_id": order_id}, i)
            self._schedule(back + 2, work, "Order Refunded", {"order_id": order_id, "total": revenue / 100,
                                                             "currency": "EUR"}, i)
        elif u_ret > 0.85:
            p = items[int(delays[1] % len(items))]
            fit = pop.affinity[i, cat.category[p]] / pop.affinity[i].max()
            rating = int(np.clip(round(2.5 + 2.5 * fit + ((delays[2] >> 8) % 3) - 1), 1, 5))
            self._schedule(deliver + 5 + int(delays[3] % 9), 19 * 3600 + int(delays[4] % 7200), "Product Reviewed",
                           {"p": p, "rating": rating}, i)
        return t

    def _scheduled_messages(self, b: _Builder, d: int) -> None:
        pop = self.population
        for sec, kind, data, i in self.scheduled.pop(d, []):
            uid = pop.user_id[i]
            b.who = i
            if kind == "revoke":
                b.consent_change(sec, i, {"email_marketing": False})
            elif kind == "Product Reviewed":
                p = data["p"]
                b.track(sec, uid, None, kind, {**b.product(p), "rating": data["rating"],
                                               "review_body": _review(data["rating"], int(pop.locale[i]))})
            else:
                b.track(sec, uid, None, kind, data)

    # -- the newsletter ------------------------------------------------------------------------------

    def _newsletter(self, d: int) -> NewsletterSend | None:
        """Today's newsletter, if one goes out: recipients, the random coupon half, and their reactions."""
        from emma.demo.response import probabilities

        if d % NEWSLETTER_EVERY_DAYS != NEWSLETTER_EVERY_DAYS // 2 or d >= self.config.cutoff_day:
            return None  # after the cut-off (the truth's future, the live days) the product sends the mail
        pop = self.population
        reg, revoke = self.registered_day, pop.revoke_after_days
        confirmed = (np.arange(len(pop)) * 2654435761 % 1000) < DOI_CONFIRM_P * 1000
        ok = (reg >= 0) & (reg < d) & pop.consent[:, 0] & confirmed & ((revoke < 0) | (d < reg + revoke))
        rec = np.flatnonzero(ok)
        if not len(rec):
            return None
        rng = self._rng(d, 7)  # a stream of its own: the rest of the day draws the same numbers as before
        u = rng.random((4, len(rec)))
        coupon = u[0] < NEWSLETTER_COUPON_SHARE
        local_hour = (NEWSLETTER_UTC_SECONDS + self._offsets[self._tz[rec], d]) // 3600
        dist = np.abs(local_hour - pop.preferred_hour[rec])
        # a personal newsletter: the customer's favourite category at a typical price (as in the truth's uplift)
        fit = 0.8 + 0.2 * (1 - pop.price_sensitivity[rec] * 0.25)
        p_open, p_click, p_buy = probabilities(
            channel_match=pop.preferred_channel[rec] == 0, hour_distance=np.minimum(dist, 24 - dist),
            alive=self.alive[rec], fit=fit, incentive_type=pop.incentive_type[rec],
            incentive_percent=np.where(coupon, NEWSLETTER_PERCENT, 0), channel="email")
        opened = u[1] < p_open
        clicked = opened & (u[2] < p_click)
        bought = clicked & (u[3] < p_buy) & self.alive[rec]  # those who left the shop do not come back
        news = NewsletterSend(day=d, campaign_id=f"newsletter-{self.config.start + dt.timedelta(days=d)}",
                              recipients=rec, coupon=coupon, opened=opened, clicked=clicked, bought=bought)
        self.newsletters.append(news)
        code = Promotion(f"NEWS{NEWSLETTER_PERCENT}", NEWSLETTER_PERCENT, "Newsletter-Gutschein")
        self._email_orders = {int(i): (news.campaign_id, code if c else None)
                              for i, c in zip(rec[bought].tolist(), coupon[bought].tolist(), strict=True)}
        return news

    def _newsletter_events(self, b: _Builder, news: NewsletterSend) -> None:
        """What the shop's email service reports: every delivery (with its variant), opens and clicks."""
        pop = self.population
        date = self.config.start + dt.timedelta(days=news.day)
        base = {"campaign_id": news.campaign_id, "campaign_name": "Newsletter", "email_subject":
                f"Neu bei Tante Emma / New at Tante Emma ({date:%d.%m.})"}
        for k, i in enumerate(news.recipients.tolist()):
            b.who = i
            uid = pop.user_id[i]
            sec = NEWSLETTER_UTC_SECONDS + i % 600
            props = {**base, "email_id": f"{news.campaign_id}-{i + 1}"}
            if news.coupon[k]:
                props.update(variant="coupon", coupon=f"NEWS{NEWSLETTER_PERCENT}", discount_percent=NEWSLETTER_PERCENT)
            else:
                props["variant"] = "standard"
            b.track(sec, uid, None, "Email Delivered", props)
            if news.opened[k]:
                sec += 300 + (i * 37) % 3600
                b.track(sec, uid, None, "Email Opened", props)
                if news.clicked[k]:
                    b.track(sec + 60, uid, None, "Email Link Clicked", props)

    # -- hidden state for the response model and the truth -----------------------------------------

    def alive_at(self, day: int) -> np.ndarray:
        """Whether each customer had joined and not yet dropped out by the start of the given day."""
        pop = self.population
        return (pop.join_day < day) & ((self.dropout_day < 0) | (self.dropout_day >= day))


def _query(name: str) -> str:
    words = [w for w in name.split() if len(w) > 3]
    return " ".join(words[1:3]).lower() if len(words) > 1 else name.lower()


_REVIEWS = {
    0: ("Leider enttäuschend.", "Geht so, hatte mehr erwartet.", "In Ordnung.", "Gutes Produkt, gerne wieder.",
        "Hervorragend, klare Empfehlung!"),
    1: ("Disappointing, unfortunately.", "So-so, expected more.", "Okay.", "Good product, would buy again.",
        "Excellent, highly recommended!"),
}


def _review(rating: int, locale: int) -> str:
    return _REVIEWS[locale][rating - 1]


class _Builder:
    """Builds the day's Segment messages (or, without emit, only advances the session clock)."""

    def __init__(self, sim: Simulation, day: int, day0: dt.datetime, emit: bool) -> None:
        self.sim, self.day, self.day0, self.emit = sim, day, day0, emit
        self.out: list[tuple[int, int, int, dict[str, Any]]] = []
        self.who = -1  # the customer whose events are being built
        self.n = 0
        self.prefix = f"demo-{sim.config.seed}-{day:03d}-"
        self.confirmations: list[tuple[str, str, dt.datetime]] = []
        self._products: dict[int, dict[str, Any]] = {}

    def _ts(self, sec: int) -> str:
        return (self.day0 + dt.timedelta(seconds=sec)).isoformat()

    def _add(self, sec: int, msg: dict[str, Any]) -> int:
        self.n += 1
        if self.emit:
            msg["messageId"] = f"{self.prefix}{self.n:07d}"
            msg["timestamp"] = self._ts(sec)
            self.out.append((self.who, sec, self.n, msg))
        # The next event of the session comes 20-110 s later (deterministic, no random draw needed).
        return sec + 20 + (self.n * 37) % 90

    def product(self, p: int) -> dict[str, Any]:
        found = self._products.get(p)
        if found is None:
            cat = self.sim.catalog
            found = {"sku": cat.sku[p], "name": cat.name[p], "category": cat.path[p], "brand": cat.brand[p],
                     "price": int(cat.price_cents[p]) / 100}
            self._products[p] = found
        return found

    def track(self, sec: int, uid: str | None, anon: str | None, event: str, props: dict[str, Any]) -> int:
        if not self.emit:
            return self._add(sec, {})
        msg: dict[str, Any] = {"type": "track", "event": event, "properties": props}
        if uid:
            msg["userId"] = uid
        if anon:
            msg["anonymousId"] = anon
        return self._add(sec, msg)

    def page(self, sec: int, uid: str | None, anon: str, name: str, path: str, scroll: int,
             category: str | None = None) -> int:
        if not self.emit:
            return self._add(sec, {})
        props: dict[str, Any] = {"path": path, "url": f"https://shop.example.com{path}",
                                 "title": category or name, "scroll_depth": scroll}
        if category:
            props["category"] = category
        msg: dict[str, Any] = {"type": "page", "name": name, "properties": props, "anonymousId": anon}
        if uid:
            msg["userId"] = uid
        return self._add(sec, msg)

    def identify(self, sec: int, i: int, anon: str, *, consent: bool) -> int:
        if not self.emit:
            return self._add(sec, {})
        pop = self.sim.population
        msg: dict[str, Any] = {"type": "identify", "userId": pop.user_id[i], "anonymousId": anon,
                               "traits": pop.traits(i),
                               "context": {"locale": pop.locale_tag(i), "timezone": pop.timezone(i)}}
        if consent:
            prefs = pop.consent_preferences(i)
            msg["context"]["consent"] = {"categoryPreferences": prefs}
            # Email permission is pending until the link in the double opt-in mail is clicked (or never).
            delay = 120 + (i * 7919 + self.day * 31) % 7200
            if prefs["email_marketing"] and (i * 2654435761 % 1000) < DOI_CONFIRM_P * 1000:
                at = self.day0 + dt.timedelta(seconds=min(sec + delay, 86399))
                self.confirmations.append((pop.user_id[i], "email_marketing", at))
        return self._add(sec, msg)

    def consent_change(self, sec: int, i: int, prefs: dict[str, bool]) -> int:
        if not self.emit:
            return self._add(sec, {})
        msg = {"type": "identify", "userId": self.sim.population.user_id[i], "traits": {},
               "context": {"consent": {"categoryPreferences": prefs}}}
        return self._add(sec, msg)

    def store_opened(self, sec: int, store: Store) -> int:
        if not self.emit:
            return self._add(sec, {})
        return self._add(sec, {"type": "track", "event": "Store Opened", "anonymousId": SYSTEM_ID,
                               "properties": store.as_dict()})

    def finish(self) -> list[dict[str, Any]]:
        # Grouped by customer, in time order per customer: ingest then touches each profile once per chunk,
        # which is several times faster than a strictly time-ordered stream of interleaved customers.
        self.out.sort(key=lambda x: (x[0], x[1], x[2]))
        return [m for _, _, _, m in self.out]


def simulate(config: DemoConfig) -> Simulation:
    """The whole history without messages: for the truth export and for tests of the hidden process."""
    sim = Simulation(config)
    sim.run(emit=False)
    return sim
