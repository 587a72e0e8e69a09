"""The JS snippet in real headless Chromium (Debian's chromium, driven by Playwright): a shop page on one
local origin, Tante Emma (uvicorn) on another; events arrive in the database, placements are filled,
the exit-intent overlay shows the coupon, clicks come back as events."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select

from emma.app import create_app
from emma.auth import service as auth
from emma.catalog import service as catalog
from emma.config import Settings
from emma.coupons.models import Coupon
from emma.db import make_engine, make_sessionmaker
from emma.ingest.models import Event
from emma.onsite.models import Decision

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("EMMA_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need(ok: bool, reason: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"{reason}, and CI=true: the browser tests must run")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _need(Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


PAGE = """<!doctype html>
<html lang="de"><head><meta charset="utf-8"><title>{title}</title>
<script>window.emmaSettings = {settings};
window.emma = window.emma || []; emma.push(["track", "Teaser Viewed", {{teaser: "sommer"}}]);</script>
<script src="{api}/static/emma.js" data-write-key="{key}" async></script></head>
<body><main data-emma-product="{sku}" data-emma-name="{name}" data-emma-price="39.90">
<h1>{name}</h1><button id="add">In den Warenkorb</button>
<div id="recs" data-emma-placement="product_page" data-emma-sku="{sku}">Empfehlungen werden geladen</div>
<div style="height: 5000px"></div><footer>Ende</footer></main>
<script>document.getElementById("add").onclick = function () {{
  emma.track("Product Added", {{sku: "{sku}", price: 39.9, quantity: 1, cart_id: "cart-browser"}});
}};</script></body></html>"""


class Shop:
    """The shop's own web server (a second origin) and Tante Emma's API server."""

    def __init__(self, tmp: Path, template: Path, seed: Callable[[Any], dict[str, int]],
                 products: list[dict[str, Any]]) -> None:
        self.products = products
        db = tmp / "emma.db"
        shutil.copy(template, db)
        self.db_url = f"sqlite:///{db}"
        self.engine = make_engine(self.db_url)
        self.sessions = make_sessionmaker(self.engine)
        self.shop_port, self.api_port = _free_port(), _free_port()
        self.origin = f"http://127.0.0.1:{self.shop_port}"
        self.api = f"http://127.0.0.1:{self.api_port}"
        with self.sessions() as s:
            self.ids = seed(s)
            # Product pages live on the shop server, so a click on a recommendation really navigates.
            catalog.upsert_products(session=s, products=[{"sku": p["sku"], "url": f"{self.origin}/p/{p['sku']}"}
                                                         for p in products])
            self.key = auth.create_key(session=s, kind="write")
            s.commit()
        self.settings: dict[str, Any] = {}

    def start(self) -> None:
        # With the worker, as `emma serve` runs it: a decision waits for it to handle the page's product view
        # (generously here: a busy test machine).
        app = create_app(Settings(database_url=self.db_url, cors_origins=[self.origin], onsite_flush_seconds=0.1,
                                  worker_embedded=True, onsite_tactic_wait_ms=10_000))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.api_port, log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                sku = self.path.rsplit("/", 1)[-1] if self.path.startswith("/p/") else "PAN-1"
                name = next((p["name"] for p in shop.products if p["sku"] == sku), sku)
                body = PAGE.format(title=f"{name} - Testshop", api=shop.api, key=shop.key, sku=sku, name=name,
                                   settings=json.dumps(shop.settings)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", self.shop_port), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        deadline = time.time() + 60
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.http.shutdown()
        self.engine.dispose()

    def events(self, **where: Any) -> list[Event]:
        with self.sessions() as s:
            stmt = select(Event).order_by(Event.id)
            for k, v in where.items():
                stmt = stmt.where(getattr(Event, k) == v)
            return list(s.scalars(stmt))

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; events: "
                             f"{[(e.type, e.name, e.properties) for e in self.events()]}")


@pytest.fixture
def shop(tmp_path: Path, sqlite_template: Path, seed_shop: Any) -> Iterator[Shop]:
    s = Shop(tmp_path, sqlite_template, *seed_shop)
    s.start()
    yield s
    s.stop()


def _tracked(shop: Shop, name: str, customer_id: int) -> list[Event]:
    return [e for e in shop.events(type="track", name=name) if e.customer_id == customer_id]


def test_known_customer_events_widget_exit_overlay_and_clicks(browser, shop):
    shop.settings = {"userId": "c-consent", "flushInterval": 100}
    cid = shop.ids["c-consent"]
    context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="de-DE")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{shop.origin}/p/PAN-1")

    # The product_page placement is filled: English, as the customer's profile says (en-GB). The snippet sent the
    # product view before asking, so in_session_upsell's content (the pan's accessories first) is already in this
    # first decision of the page, not only on the next page.
    page.wait_for_selector("#recs .emma-widget .emma-item", timeout=20_000)
    headings = page.locator("#recs .emma-heading").all_inner_texts()
    assert headings == ["Goes with your product", "Customers also bought"]
    assert page.locator("#recs [data-emma-kind=accessories] .emma-name").all_inner_texts() == ["Glass lid", "Olive oil"]
    decision_id = page.get_attribute("#recs .emma-widget", "data-emma-decision")

    page.click("#add")
    for _ in range(12):  # real wheel input, down to the end of the page
        page.mouse.wheel(0, 600)
        page.wait_for_timeout(40)
    # Exit intent: the pointer leaves the viewport through the top edge.
    page.mouse.move(600, 300)
    page.mouse.move(600, 5)
    page.mouse.move(600, -30)
    overlay = page.wait_for_selector(".emma-overlay .emma-code", timeout=10_000)
    with shop.sessions() as s:
        coupon = s.scalar(select(Coupon).where(Coupon.customer_id == cid))
    assert coupon is not None and overlay.inner_text() == coupon.code
    assert page.locator(".emma-overlay .emma-heading").inner_text() == "Before you go: 10 % off"
    if os.environ.get("EMMA_SCREENSHOTS"):  # to look at what a customer sees
        page.screenshot(path=str(Path(os.environ["EMMA_SCREENSHOTS"]) / "emma-exit-overlay.png"))
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(os.environ["EMMA_SCREENSHOTS"]) / "emma-widget.png"))
    page.click(".emma-overlay .emma-copy")
    page.click(".emma-overlay .emma-close")
    assert page.locator(".emma-overlay").count() == 0

    first = page.locator("#recs [data-emma-kind=co_purchase] a").first
    clicked_sku = first.get_attribute("data-emma-sku")
    first.click()
    page.wait_for_url(f"{shop.origin}/p/{clicked_sku}")

    clicks = shop.wait_for("Product Clicked", lambda: _tracked(shop, "Product Clicked", cid))
    assert clicks[0].properties["sku"] == clicked_sku and clicks[0].properties["decision_id"] == decision_id
    assert clicks[0].properties["list_id"] == "product_page" and clicks[0].properties["position"] == 1
    pages = shop.wait_for("two page views", lambda: [e for e in shop.events(type="page") if e.customer_id == cid][1:])
    assert pages[0].properties["path"] == f"/p/{clicked_sku}"
    viewed = _tracked(shop, "Product Viewed", cid)
    assert [e.properties["sku"] for e in viewed][:2] == ["PAN-1", clicked_sku]
    assert viewed[0].properties["price"] == 39.9
    added = _tracked(shop, "Product Added", cid)
    assert len(added) == 1 and added[0].properties["cart_id"] == "cart-browser"
    depths = [e.properties["depth"] for e in _tracked(shop, "Scroll Depth Reached", cid)]
    assert sorted(depths) == [25, 50, 75, 100]  # each once
    assert len(_tracked(shop, "Exit Intent", cid)) == 1
    # Queued before the snippet had loaded, once per page load; the second page's may still be on its way.
    teasers = shop.wait_for("two Teaser Viewed", lambda: (lambda t: t if len(t) >= 2 else None)(
        _tracked(shop, "Teaser Viewed", cid)))
    assert len(teasers) == 2 and teasers[0].properties == {"teaser": "sommer"}
    assert _tracked(shop, "Promotion Viewed", cid)[0].properties["coupon"] == coupon.code
    assert _tracked(shop, "Promotion Clicked", cid)[0].properties["decision_id"]
    for e in shop.events(customer_id=cid):
        assert e.context["library"]["name"] == "emma.js" and e.anonymous_id

    def logged() -> list[Decision]:
        with shop.sessions() as s:
            return list(s.scalars(select(Decision).where(Decision.customer_id == cid).order_by(Decision.id)))

    # Product page, exit intent, then the product page the click led to.
    decisions = shop.wait_for("impressions", lambda: (lambda d: d if len(d) == 3 else None)(logged()))
    assert [d.placement for d in decisions] == ["product_page", "exit_intent", "product_page"]
    assert decisions[0].decision_id == decision_id and decisions[0].context["sku"] == "PAN-1"
    assert "in_session_upsell" in decisions[0].reasons["tactic"]
    assert decisions[1].coupon_id == coupon.id and decisions[2].context["sku"] == clicked_sku
    assert not errors
    context.close()


def test_anonymous_visitor_keeps_its_id_and_gets_no_coupon(browser, shop):
    shop.settings = {"flushInterval": 100}
    context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="de-DE")
    page = context.new_page()
    page.goto(f"{shop.origin}/p/PAN-1")
    page.wait_for_selector("#recs .emma-widget .emma-item", timeout=10_000)
    assert page.locator("#recs .emma-heading").all_inner_texts() == ["Andere Kunden kauften auch",
                                                                     "Zu Ihrem Produkt passt"]
    aid = page.evaluate("localStorage.getItem('emma_aid')")
    assert aid and aid in page.evaluate("document.cookie")
    page.mouse.move(600, 300)
    page.mouse.move(600, -30)
    exits = shop.wait_for("Exit Intent", lambda: shop.events(name="Exit Intent", anonymous_id=aid))
    assert len(exits) == 1
    page.wait_for_timeout(300)  # the decide answer had time to arrive: it offers nothing
    assert page.locator(".emma-overlay").count() == 0
    page.reload()
    page.wait_for_selector("#recs .emma-widget")
    assert page.evaluate("emma.anonymousId()") == aid
    views = shop.wait_for("two page views", lambda: shop.events(type="page", anonymous_id=aid)[1:])
    assert views and all(e.user_id is None for e in shop.events(anonymous_id=aid))
    customer_ids = {e.customer_id for e in shop.events(anonymous_id=aid)}
    assert len(customer_ids) == 1 and None not in customer_ids  # one anonymous profile
    context.close()
