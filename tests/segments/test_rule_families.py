"""Each rule family on SQLite and PostgreSQL: the members are the expected customers, by SQL and by predicate."""

from __future__ import annotations

import datetime as dt

NOW = dt.datetime(2026, 5, 17, 10, 0, tzinfo=dt.UTC)  # as in conftest.py


def test_profile_fields_and_attributes(shop, members):
    anna = shop.customer(country="DE", city="München", locale="de-DE", birthday=dt.date(1980, 5, 17),
                         attributes={"tier": "gold", "kids": 2, "newsletter": True, "tags": ["garten", "vip"],
                                     "address": {"zip": "80331"}})
    ben = shop.customer(country="AT", city="Wien", locale="de-AT", birthday=dt.date(1992, 12, 1),
                        attributes={"tier": "silver", "kids": 0, "newsletter": False, "tags": "gartenfreund"})
    cem = shop.customer(country=None, attributes={"tier": 3, "kids": "2"}, created_at=NOW - dt.timedelta(days=5))
    dora = shop.customer(country="CH", is_anonymous=True, attributes={"tier": None})

    assert members({"country": {"in": ["DE", "AT"]}}) == {anna, ben}
    assert members({"country": ["DE", "CH"]}) == {anna, dora}
    assert members({"country": {"ne": "DE"}}) == {ben, dora}  # missing country matches no comparison
    assert members({"not": {"country": "DE"}}) == {ben, cem, dora}
    assert members({"country": {"exists": False}}) == {cem}
    assert members({"city": {"contains": "ü"}}) == {anna}
    assert members({"locale": {"gte": "de-B", "lt": "de-Z"}}) == {anna}
    assert members({"anonymous": True}) == {dora}
    assert members({"birthday.month": 5}) == {anna}
    assert members({"birthday.year": {"between": [1985, 1995]}}) == {ben}
    assert members({"birthday": {"lt": "1990-01-01"}}) == {anna}
    assert members({"created_at": {"within_days": 30}}) == {cem}
    assert members({"created_at": {"older_than_days": 30}}) == {anna, ben, dora}
    # JSON attributes are typed by the literal: the text "2" is not the number 2, and null is missing.
    assert members({"attributes.kids": {"gte": 1}}) == {anna}
    assert members({"attributes.kids": "2"}) == {cem}
    assert members({"attributes.tier": {"in": ["gold", "silver"]}}) == {anna, ben}
    assert members({"attributes.tier": {"exists": True}}) == {anna, ben, cem}
    assert members({"attributes.newsletter": False}) == {ben}
    assert members({"attributes.tags": {"contains": "vip"}}) == {anna}
    assert members({"attributes.tags": {"contains": "garten"}}) == {anna, ben}  # list element or substring
    assert members({"attributes.address.zip": {"gt": "8"}}) == {anna}


def test_consent_and_predictions(shop, members):
    a, b, c = shop.customer(), shop.customer(), shop.customer()
    shop.consent(a, "email_marketing", "granted", days_ago=800)
    shop.consent(b, "email_marketing", "revoked")
    shop.consent(b, "sms_marketing", "pending", days_ago=20)
    shop.prediction(a, clv=820.5, churn_probability=0.1, p_alive=0.9, lifecycle_stage="loyal",
                    top_affinities=["Garten", "Küche"])
    shop.prediction(b, clv=40.0, churn_probability=0.75, p_alive=0.2, lifecycle_stage="at_risk", propensity_30d=0.05,
                    next_order_date=dt.date(2026, 5, 24))
    shop.prediction(c, next_order_date=dt.date(2026, 5, 25))

    assert members({"consent.email_marketing": "granted"}) == {a}
    assert members({"consent.email_marketing": {"ne": "granted"}}) == {b}
    assert members({"consent.email_marketing": {"exists": False}}) == {c}
    assert members({"consent.sms_marketing": {"in": ["pending", "granted"]}}) == {b}
    # When it was recorded: a consent nearing two years, a double opt-in left unconfirmed for two weeks.
    assert members({"consent.email_marketing.recorded_at": {"older_than_days": 700}}) == {a}
    assert members({"consent.email_marketing.recorded_at": {"within_days": 700}}) == {b}
    assert members({"all": [{"consent.sms_marketing": "pending"},
                            {"consent.sms_marketing.recorded_at": {"older_than_days": 14}}]}) == {b}
    assert members({"consent.sms_marketing.recorded_at": {"exists": False}}) == {a, c}
    assert members({"prediction.churn_probability": {"gte": 0.6}}) == {b}
    assert members({"prediction.clv": {"between": [100, 1000]}}) == {a}
    assert members({"prediction.lifecycle_stage": {"in": ["at_risk", "lapsed"]}}) == {b}
    assert members({"prediction.propensity_30d": {"exists": False}}) == {a, c}
    # Dates count whole days: 17 May + 7 days is 24 May, included; 25 May is not.
    assert members({"prediction.next_order_date": {"within_next_days": 7}}) == {b}
    assert members({"prediction.next_order_date": {"within_next_days": 8}}) == {b, c}
    assert members({"prediction.next_order_date": {"within_days": 30}}) == set()
    assert members({"prediction.top_affinities": {"contains": "Garten"}}) == {a}
    assert members({"all": [{"prediction.clv": {"gte": 500}}, {"consent.email_marketing": "granted"}]}) == {a}


def test_events(shop, members):
    a, b, c = shop.customer(), shop.customer(), shop.customer()
    for days in (1, 2, 3):
        shop.event(a, "Product Viewed", days, category="Garten", price=19.9)
    shop.event(b, "Product Viewed", 1, category="Küche", price=5)
    shop.event(b, "Product Viewed", 40, category="Garten", price=50)
    shop.event(c, "Order Completed", 100, order_id="o-1")
    shop.event(c, "Product Viewed", -1, category="Garten")  # in the future of `now`: not yet happened

    assert members({"event": "Product Viewed"}) == {a, b}
    assert members({"event": "Product Viewed", "within_days": 7}) == {a, b}
    assert members({"event": "Product Viewed", "within_days": 7, "count": {"gte": 3}}) == {a}
    assert members({"event": "Product Viewed", "where": {"properties.category": "Garten"}, "within_days": 30}) == {a}
    assert members({"event": "Product Viewed", "where": {"category": "Garten"}, "older_than_days": 30}) == {b}
    assert members({"event": "Product Viewed", "where": {"price": {"lt": 10}}}) == {b}
    assert members({"event": "Product Viewed", "count": {"lt": 3}}) == {b, c}  # zero counts too
    assert members({"did_not": "Order Completed", "within_days": 90}) == {a, b, c}
    assert members({"did_not": "Order Completed"}) == {a, b}
    assert members({"event": "Product Viewed", "count": 0}) == {c}


def test_orders(shop, members):
    for sku, cat in (("SPATEN", "Garten > Werkzeug"), ("ERDE", "Garten"), ("TOPF", "Küche"),
                     ("GARTENBUCH", "Gartenbuch")):
        shop.product(sku, cat)
    a, b, c, d = shop.customer(), shop.customer(), shop.customer(), shop.customer()
    shop.order(a, 10, "10.10", ("SPATEN",))
    shop.order(a, 20, "20.20", ("TOPF",))
    shop.order(b, 200, "500.00", ("ERDE", "TOPF"))
    shop.order(c, 5, "99.00", ("GARTENBUCH",), status="cancelled")
    shop.order(d, 50, "30.30", ("TOPF",))

    assert members({"orders": {"gte": 2}}) == {a}
    assert members({"orders": 0}) == {c}  # a cancelled order does not count
    assert members({"orders": {"gte": 1}, "within_days": 30}) == {a}
    assert members({"revenue": {"gte": 30.3}}) == {a, b, d}  # 10.10 + 20.20 is exactly 30.30
    assert members({"revenue": {"gte": 100}, "within_days": 365}) == {b}
    assert members({"revenue": {"lt": 1}}) == {c}
    assert members({"last_order": {"older_than_days": 90}}) == {b}
    assert members({"last_order": {"within_days": 30}}) == {a}
    assert members({"first_order": {"exists": False}}) == {c}
    assert members({"not": {"orders": {"gte": 1}, "within_days": 90}}) == {b, c}
    assert members({"bought": {"category": "Garten"}}) == {a, b}  # sub-categories, not "Gartenbuch"
    assert members({"bought": {"sku": ["TOPF"]}, "within_days": 60}) == {a, d}
    assert members({"bought": {"sku": "ERDE", "category": "Garten"}}) == {b}
    assert members({"bought": "anything", "within_days": 15}) == {a}


def test_cart_and_wishlist(shop, members):
    shop.product("GIESSKANNE", "Garten")
    shop.product("PFANNE", "Küche > Pfannen")
    a, b, c, d = shop.customer(), shop.customer(), shop.customer(), shop.customer()
    shop.cart(a, 90, [("GIESSKANNE", 2, "12.50"), ("PFANNE", 1, "30.00")])
    shop.cart(b, 10, [("PFANNE", 1, None)])
    shop.cart(c, 500, [], status="open")  # no items: no cart
    shop.cart(d, 300, [("PFANNE", 1, "99.00")], status="ordered")
    shop.wish(a, "PFANNE")
    shop.wish(b, "GIESSKANNE", removed=True)
    shop.wish(c, "GIESSKANNE")

    assert members({"cart": "open"}) == {a, b}
    assert members({"cart": {"idle_minutes": {"gte": 60}}}) == {a}
    assert members({"cart": {"idle_minutes": {"between": [5, 15]}}}) == {b}
    assert members({"cart": {"value": {"gte": 55}}}) == {a}
    assert members({"cart": {"value": {"lt": 1}}}) == {b}  # an unknown price adds nothing
    assert members({"cart": {"items": {"gte": 2}, "sku": "GIESSKANNE"}}) == {a}
    assert members({"wishlist": "any"}) == {a, c}
    assert members({"wishlist": {"sku": "GIESSKANNE"}}) == {c}
    assert members({"wishlist": {"category": "Küche"}}) == {a}


def test_birthday_in_the_customers_time_zone(shop, members):
    # 2026-05-17 10:00 UTC: in Berlin it is the 17th, in Kiritimati (UTC+14) already the 18th.
    berlin = shop.customer(birthday=dt.date(1980, 5, 17), timezone="Europe/Berlin")
    kiritimati = shop.customer(birthday=dt.date(1990, 5, 18), timezone="Pacific/Kiritimati")
    default_tz = shop.customer(birthday=dt.date(1970, 5, 17), timezone=None)
    unknown_tz = shop.customer(birthday=dt.date(1970, 5, 17), timezone="Mars/Olympus")
    not_today = shop.customer(birthday=dt.date(1970, 5, 18), timezone="Europe/Berlin")
    assert members({"birthday": "today"}) == {berlin, kiritimati, default_tz, unknown_tz}
    assert members({"birthday": {"in_days": 1}}) == {not_today}
    # 28 February of a year without 29 February also greets those born on the 29th.
    leap = shop.customer(birthday=dt.date(2000, 2, 29), timezone="Europe/Berlin")
    feb28 = dt.datetime(2027, 2, 28, 12, 0, tzinfo=dt.UTC)
    assert members({"birthday": "today"}, now=feb28) == {leap}
    assert members({"all": [{"birthday.month": 5}, {"birthday.day": 17}]}) == {berlin, default_tz, unknown_tz}


def test_merged_profiles_are_never_members(shop, members, session):
    known = shop.customer(country="DE")
    merged = shop.customer(country="DE", merged_into_id=known)
    assert members({"country": "DE"}) == {known}
    assert merged not in members({"country": "DE"})
