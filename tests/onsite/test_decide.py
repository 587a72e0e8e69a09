"""/v1/decide on SQLite and PostgreSQL: placements, consent, unknown visitors, the coupon rule, impressions."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from emma.coupons.models import Coupon
from emma.gdpr import service as gdpr
from emma.onsite import service
from emma.onsite.models import Decision
from emma.orders import service as orders
from emma.predict.models import Prediction


def _skus(block):
    return [i["sku"] for i in block["items"]]


def test_home_personalised_only_with_consent(shop):
    mine = shop.decide(placement="home", userId="c-consent").json()
    assert mine["personalized"] is True and mine["locale"] == "en"
    [block] = mine["blocks"]
    # Stored recommendations in their order; the inactive one is left out.
    assert block["kind"] == "recommendations" and _skus(block) == ["CUP-6", "LID-2", "BAG-7"]
    assert block["heading"] == "Recommended for you" and block["reason"]
    assert "consent granted" in mine["reasons"]["audience"]

    other = shop.decide(placement="home", userId="c-noconsent").json()
    assert other["personalized"] is False and other["locale"] == "de"
    [block] = other["blocks"]
    assert block["kind"] == "popular" and block["heading"] == "Beliebt bei unseren Kunden"
    assert _skus(block)[0] == "TEA-5"  # bought by every buyer
    assert "SOLD-8" not in _skus(block) and "OLD-9" not in _skus(block)
    assert "no personalization consent" in other["reasons"]["audience"]


def _predict(shop, cust: str, **values) -> None:  # noqa: ANN001
    with shop.session_factory() as s:
        p = s.get(Prediction, shop.ids[cust])
        for k, v in values.items():
            setattr(p, k, v)
        s.commit()


def test_home_leads_with_the_next_best_offer_from_the_predictions(shop):
    _predict(shop, "c-consent", next_best_offer="LID-2")
    r = shop.decide(placement="home", userId="c-consent").json()
    nbo, recs = r["blocks"]
    assert nbo["kind"] == "next_best_offer" and _skus(nbo) == ["LID-2"] and nbo["heading"] == "Our pick for you"
    # The recommendations follow without repeating the offer; together they fill the placement's 4 slots at most.
    assert recs["kind"] == "recommendations" and _skus(recs) == ["CUP-6", "BAG-7"]
    assert "next best offer LID-2" in r["reasons"]["next_best_offer"]
    assert "scored as of" in r["reasons"]["recommendations"]
    two = shop.decide(placement="home", userId="c-consent", limit=2).json()
    assert [_skus(b) for b in two["blocks"]] == [["LID-2"], ["CUP-6"]]

    _predict(shop, "c-consent", next_best_offer="SOLD-8")  # sold out since scoring: not offered
    r = shop.decide(placement="home", userId="c-consent").json()
    [recs] = r["blocks"]
    assert recs["kind"] == "recommendations" and _skus(recs) == ["CUP-6", "LID-2", "BAG-7"]
    assert "SOLD-8 is not available" in r["reasons"]["next_best_offer"]

    # Scored without personalization consent (generic values), consent granted since: popular, not "for you".
    _predict(shop, "c-consent", personalized=False, next_best_offer="LID-2")
    r = shop.decide(placement="home", userId="c-consent").json()
    [block] = r["blocks"]
    assert r["personalized"] is True and block["kind"] == "popular"
    assert "no individual predictions" in r["reasons"]["popular"]


def test_unknown_visitor_gets_popular_items_in_the_browser_language(shop):
    r = shop.decide(placement="home", anonymousId="never-seen", context={"locale": "en-US"}).json()
    assert r["personalized"] is False and r["locale"] == "en"
    assert r["blocks"][0]["kind"] == "popular" and _skus(r["blocks"][0])[0] == "TEA-5"
    assert r["blocks"][0]["heading"] == "Popular with our customers"
    assert "unknown visitor" in r["reasons"]["audience"]
    assert len(r["blocks"][0]["items"]) == 4  # onsite_items
    default = shop.decide(placement="home", userId="nobody", limit=2).json()
    assert default["locale"] == "de" and len(default["blocks"][0]["items"]) == 2


def test_product_page_co_purchase_and_accessories(shop):
    r = shop.decide(placement="product_page", anonymousId="a-1", context={"sku": "PAN-1"}).json()
    kinds = {b["kind"]: b for b in r["blocks"]}
    assert list(kinds) == ["co_purchase", "accessories"]
    co, acc = kinds["co_purchase"], kinds["accessories"]
    assert co["heading"] == "Andere Kunden kauften auch" and _skus(co)[0] == "SPA-4"
    assert "Bratpfanne" in co["reason"]
    # Accessories from the catalog, without the inactive one, and not repeated in the co-purchase list.
    assert acc["heading"] == "Zu Ihrem Produkt passt" and _skus(acc) == ["LID-2", "OIL-3"]
    assert not set(_skus(co)) & set(_skus(acc)) and "PAN-1" not in _skus(co)
    item = co["items"][0]
    assert item["name"] == "Pfannenwender" and item["price"] == 6.0 and item["price_text"] == "6,00 €"
    english = shop.decide(placement="product_page", userId="c-consent", context={"sku": "PAN-1"}).json()
    assert {b["heading"] for b in english["blocks"]} == {"Customers also bought", "Goes with your product"}
    assert english["blocks"][1]["items"][0]["name"] == "Glass lid"


def test_personal_recommendations_rank_first_on_product_page(shop):
    generic = shop.decide(placement="product_page", userId="c-noconsent", context={"sku": "PAN-1"}).json()
    mine = shop.decide(placement="product_page", userId="c-consent", context={"sku": "PAN-1"}).json()
    g, m = _skus(generic["blocks"][0]), _skus(mine["blocks"][0])
    assert set(g) == set(m) and "BAG-7" in g
    assert m[0] == "BAG-7" and g[0] != "BAG-7"  # c-consent's stored recommendation comes first


def test_cart_placement_uses_page_cart_or_stored_cart(shop):
    r = shop.decide(placement="cart", anonymousId="a-2", context={"cart_skus": ["PAN-1", "LID-2"]}).json()
    kinds = {b["kind"]: _skus(b) for b in r["blocks"]}
    assert kinds["accessories"] == ["OIL-3"] and "LID-2" not in kinds["co_purchase"]
    assert r["blocks"][0]["reason"] == "Wird oft zusammen mit Artikeln in Ihrem Warenkorb gekauft"
    empty = shop.decide(placement="cart", anonymousId="a-2").json()
    assert [b["kind"] for b in empty["blocks"]] == ["popular"]
    with shop.session_factory() as s:
        orders.cart_add(session=s, customer_id=shop.ids["c-consent"], cart_id="k-1", sku="PAN-1", quantity=1,
                        price=None, at=dt.datetime.now(dt.UTC))
        s.commit()
    stored = shop.decide(placement="cart", userId="c-consent").json()
    assert "OIL-3" in _skus(stored["blocks"][-1]) and "latest open cart" in stored["reasons"]["cart"]


def test_unknown_sku_falls_back_to_popular(shop):
    r = shop.decide(placement="product_page", userId="c-consent", context={"sku": "NEW-99"}).json()
    assert [b["kind"] for b in r["blocks"]] == ["popular"] and "NEW-99" in r["reasons"]["popular"]


def _coupons(shop, cust):
    with shop.session_factory() as s:
        return list(s.scalars(select(Coupon).where(Coupon.customer_id == shop.ids[cust])))


def test_exit_intent_coupon_only_where_uplift_pays_and_only_once(shop):
    first = shop.decide(placement="exit_intent", userId="c-consent").json()
    offer = first["coupon"]
    assert offer is not None and offer["value"] == "10 %" and offer["code"] in offer["text"]
    assert offer["heading"] == "Before you go: 10 % off" and "valid until" in offer["reason"]
    assert "coupon pays" in first["reasons"]["coupon"] and first["blocks"] == []
    again = shop.decide(placement="exit_intent", userId="c-consent").json()
    assert again["coupon"]["code"] == offer["code"] and "shown again" in again["reasons"]["coupon"]
    [c] = _coupons(shop, "c-consent")
    assert c.code == offer["code"] and c.campaign == "exit-intent"

    low = shop.decide(placement="exit_intent", userId="c-lowuplift").json()
    assert low["coupon"] is None and "does not pay" in low["reasons"]["coupon"]
    none = shop.decide(placement="exit_intent", userId="c-noprediction").json()
    assert none["coupon"] is None and "no incentive-uplift prediction" in none["reasons"]["coupon"]
    refused = shop.decide(placement="exit_intent", userId="c-noconsent").json()  # high uplift, but no consent
    assert refused["coupon"] is None and "no personalization consent" in refused["reasons"]["coupon"]
    anon = shop.decide(placement="exit_intent", anonymousId="a-3").json()
    assert anon["coupon"] is None and "unknown visitor" in anon["reasons"]["coupon"]
    assert not _coupons(shop, "c-lowuplift") and not _coupons(shop, "c-noconsent")

    with shop.session_factory() as s:  # once redeemed, the campaign is used up for this customer
        s.get(Coupon, c.id).redeemed_at = dt.datetime.now(dt.UTC)
        s.commit()
    used = shop.decide(placement="exit_intent", userId="c-consent").json()
    assert used["coupon"] is None and "already redeemed" in used["reasons"]["coupon"]
    assert len(_coupons(shop, "c-consent")) == 1


def test_impressions_are_logged_with_items_coupon_and_reasons(shop):
    a = shop.decide(placement="product_page", anonymousId="visitor-x", context={"sku": "PAN-1"}).json()
    b = shop.decide(placement="exit_intent", userId="c-consent").json()
    c = shop.decide(placement="home", userId="c-noconsent").json()
    assert shop.flush() == 3
    with shop.session_factory() as s:
        rows = {d.decision_id: d for d in s.scalars(select(Decision))}
        assert set(rows) == {a["decision_id"], b["decision_id"], c["decision_id"]}
        da, db_, dc = rows[a["decision_id"]], rows[b["decision_id"]], rows[c["decision_id"]]
        assert da.customer_id is None and da.anonymous_id == "visitor-x" and da.placement == "product_page"
        assert da.items == {"co_purchase": _skus(a["blocks"][0]), "accessories": ["LID-2", "OIL-3"]}
        assert da.context == {"sku": "PAN-1"} and da.reasons["accessories"]
        coupon = s.scalar(select(Coupon).where(Coupon.customer_id == shop.ids["c-consent"]))
        assert db_.customer_id == shop.ids["c-consent"] and db_.coupon_id == coupon.id and db_.personalized
        assert "coupon_issued" in db_.reasons and db_.locale == "en"
        assert dc.personalized is False and dc.anonymous_id is None and dc.items["popular"]
    assert shop.flush() == 0  # nothing is written twice


def test_erasure_removes_the_customers_impressions(shop):
    shop.decide(placement="exit_intent", userId="c-consent")
    shop.decide(placement="home", userId="c-noconsent")
    shop.flush()
    with shop.session_factory() as s:
        gdpr.erase(session=s, ref="c-consent")
        s.commit()
        left = s.scalars(select(Decision.customer_id)).all()
        assert left == [shop.ids["c-noconsent"]]


def test_snapshot_is_cached_until_refreshed(shop):
    before = _skus(shop.decide(placement="home", anonymousId="a").json()["blocks"][0])
    with shop.session_factory() as s:
        now = dt.datetime.now(dt.UTC)
        orders.create_orders(session=s, source="import", orders=[
            {"order_id": f"bag-{i}", "customer_id": shop.ids[f"buyer-{i}"], "ordered_at": now, "status": "completed",
             "lines": [{"sku": "BAG-7", "quantity": 1, "unit_price": 3}] * 3} for i in range(12)])
        s.commit()
    assert _skus(shop.decide(placement="home", anonymousId="a").json()["blocks"][0]) == before
    shop.client.portal.call(shop.client.app.state.onsite.refresh)
    assert _skus(shop.decide(placement="home", anonymousId="a").json()["blocks"][0])[0] == "BAG-7"


@pytest.mark.parametrize(("body", "field"), [
    ({"placement": "sidebar", "userId": "c-consent"}, "placement"),
    ({"placement": "home"}, "userId"),
    ({"placement": "product_page", "userId": "c-consent"}, "context.sku"),
    ({"placement": "home", "userId": "c-consent", "limit": 500}, "limit"),
    ({"placement": "cart", "userId": "c-consent", "context": {"cart_skus": "PAN-1"}}, "context.cart_skus"),
])
def test_bad_input_names_the_field(shop, body, field):
    r = shop.client.post("/v1/decide", json=body, auth=(shop.key, ""))
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert [e["field"] for e in errors] == [field] and errors[0]["reason"]


def test_auth_and_malformed_bodies(shop):
    assert shop.client.post("/v1/decide", json={"placement": "home", "userId": "x"}).status_code == 401
    assert shop.client.post("/v1/decide", json={"placement": "home", "userId": "x"},
                            auth=("wrong", "")).status_code == 401
    bad = shop.client.post("/v1/decide", content=b"{nope", auth=(shop.key, ""),
                           headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "body"
    assert shop.client.post("/v1/decide", json=[1], auth=(shop.key, "")).status_code == 400
    with shop.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 0
    assert shop.flush() == 0


def test_coupon_arithmetic():
    pays, why = service.coupon_pays(uplift=0.08, baseline=0.10, discount=0.10, margin=0.35)
    assert pays and "0.0200 vs." in why and "0.0100" in why  # 0.08 x 0.25 = 0.02 > 0.10 x 0.10
    assert not service.coupon_pays(uplift=0.04, baseline=0.10, discount=0.10, margin=0.35)[0]  # 0.01 = 0.01
    assert not service.coupon_pays(uplift=-0.02, baseline=0.0, discount=0.10, margin=0.35)[0]
    assert service.coupon_pays(uplift=0.01, baseline=None, discount=0.10, margin=0.35)[0]
    assert not service.coupon_pays(uplift=0.5, baseline=0.0, discount=0.40, margin=0.35)[0]  # discount > margin
    assert service.coupon_pays(uplift=None, baseline=0.1, discount=0.1, margin=0.35) == (
        False, "no incentive-uplift prediction for the customer: no coupon (rule: no evidence, no discount)")


def test_price_text_and_locale():
    assert service.price_text(1234.5, "EUR", "de") == "1.234,50 €"
    assert service.price_text(1234.5, "EUR", "en") == "€1,234.50"
    assert service.price_text(9.0, "CHF", "en") == "CHF 9.00" and service.price_text(None, "EUR", "de") is None
    assert service.locale_of(customer_locale="en-GB", page_locale="de", default="de") == "en"
    assert service.locale_of(customer_locale=None, page_locale="de-AT", default="en") == "de"
    assert service.locale_of(customer_locale=None, page_locale="fr", default="de") == "en"
    assert service.locale_of(customer_locale=None, page_locale=None, default="de") == "de"


def test_snippet_is_served_and_only_shop_origins_pass_the_preflight(sqlite_template, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from emma.app import create_app
    from emma.config import Settings

    shutil.copy(sqlite_template, tmp_path / "e.db")
    url = f"sqlite:///{tmp_path / 'e.db'}"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with TestClient(create_app(Settings(database_url=url, cors_origins=["https://shop.example.com"]))) as c:
        js = c.get("/static/emma.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "/v1/decide" in js.text
        for path in ("/v1/batch", "/v1/track", "/v1/decide"):
            ok = c.options(path, headers={"Origin": "https://shop.example.com", **preflight})
            assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://shop.example.com"
            assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        evil = c.options("/v1/batch", headers={"Origin": "https://evil.example", **preflight})
        assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
    with TestClient(create_app(Settings(database_url=url))) as c:  # no origins configured: no CORS at all
        r = c.options("/v1/batch", headers={"Origin": "https://shop.example.com", **preflight})
        assert "access-control-allow-origin" not in r.headers


def test_stale_snapshot_is_rebuilt_in_the_background(shop):
    import time

    runtime = shop.client.app.state.onsite
    runtime.settings = runtime.settings.model_copy(update={"onsite_cache_seconds": 0.05})
    first = runtime.snapshot
    with shop.session_factory() as s:
        orders.create_orders(session=s, source="import", orders=[
            {"order_id": f"cup-{i}", "customer_id": shop.ids[f"buyer-{i}"], "ordered_at": dt.datetime.now(dt.UTC),
             "status": "completed", "lines": [{"sku": "CUP-6", "quantity": 1, "unit_price": 4}] * 4}
            for i in range(12)])
        s.commit()
    time.sleep(0.1)
    deadline = time.time() + 10
    top = None
    while time.time() < deadline and top != "CUP-6":
        top = _skus(shop.decide(placement="home", anonymousId="a").json()["blocks"][0])[0]
        time.sleep(0.05)
    assert top == "CUP-6" and runtime.snapshot is not first


def test_report_joins_impressions_clicks_and_redeemed_coupons(shop, db_url, monkeypatch):
    from typer.testing import CliRunner

    from emma.cli.main import app as cli
    from emma.config import get_settings

    page = shop.decide(placement="product_page", userId="c-consent", context={"sku": "PAN-1"}).json()
    shop.decide(placement="product_page", anonymousId="a-9", context={"sku": "PAN-1"})
    exit_ = shop.decide(placement="exit_intent", userId="c-consent").json()
    shop.decide(placement="exit_intent", userId="c-lowuplift")
    shop.flush()
    sku = page["blocks"][0]["items"][0]["sku"]
    for n, (event, props) in enumerate([
            ("Product Clicked", {"sku": sku, "decision_id": page["decision_id"], "position": 1}),
            ("Product Clicked", {"sku": sku, "decision_id": page["decision_id"], "position": 1}),
            ("Promotion Clicked", {"coupon": exit_["coupon"]["code"], "decision_id": exit_["decision_id"]}),
            ("Product Clicked", {"sku": sku, "decision_id": "not-a-decision"})]):
        r = shop.client.post("/v1/track", auth=(shop.key, ""), json={
            "userId": "c-consent", "event": event, "properties": props, "messageId": f"click-{n}"})
        assert r.status_code == 200, r.text
    with shop.session_factory() as s:
        s.scalar(select(Coupon).where(Coupon.code == exit_["coupon"]["code"])).redeemed_at = dt.datetime.now(dt.UTC)
        s.commit()
        rows = {r["placement"]: r for r in service.report(session=s, since=dt.datetime.now(dt.UTC)
                                                           - dt.timedelta(days=1))}
    assert rows["product_page"] == {"placement": "product_page", "impressions": 2, "personalized": 1, "clicked": 1,
                                    "clicks": 2, "coupons_shown": 0, "coupons_redeemed": 0, "click_rate": 0.5}
    assert rows["exit_intent"]["impressions"] == 2 and rows["exit_intent"]["coupons_shown"] == 1
    assert rows["exit_intent"]["clicked"] == 1 and rows["exit_intent"]["coupons_redeemed"] == 1
    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(cli, ["onsite", "report", "--days", "7"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    assert "product_page" in out.output and "50.0%" in out.output
