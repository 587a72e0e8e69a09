"""Bad rules are refused with every error naming its path and reason."""

from __future__ import annotations

import pytest

from emma.segments import rules
from emma.segments.exceptions import InvalidRule


def errors_of(rule) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRule) as exc:
        rules.parse(rule)
    return exc.value.errors


@pytest.mark.parametrize(("rule", "path", "reason"), [
    ({"all": [{"country": "DE"}, {"cart": "open"}, {"event": "Product Viewed", "within_days": -3}]},
     "rule.all[2].within_days", "must be a positive integer"),
    ({"all": [{"event": "Product Viewed", "within_days": "7"}]}, "rule.all[0].within_days",
     "must be a positive integer"),
    ({"any": []}, "rule.any", "must be a non-empty list of conditions, not list"),
    ({"all": {"country": "DE"}}, "rule.all", "must be a non-empty list of conditions, not mapping"),
    ({"colour": "blue"}, "rule.colour", "unknown condition"),
    ({"country": {"like": "D%"}}, "rule.country.like", "unknown operator"),
    ({"country": {"within_days": 3}}, "rule.country.within_days", "not allowed here"),
    ({"country": 49}, "rule.country.eq", "must be text, not number"),
    ({"birthday.month": "Mai"}, "rule.birthday.month.eq", "must be an integer"),
    ({"birthday": {"gte": "17.05.1980"}}, "rule.birthday.gte", "must be a date (YYYY-MM-DD)"),
    ({"consent.email": "granted"}, "rule.consent.email", "unknown consent purpose"),
    ({"consent.email_marketing": "yes"}, "rule.consent.email_marketing.eq", "must be one of granted, revoked, pending"),
    ({"prediction.wealth": {"gt": 1}}, "rule.prediction.wealth", "unknown prediction"),
    ({"attributes.tier": {"in": ["gold", 3]}}, "rule.attributes.tier.in", "values must all be of one type"),
    ({"attributes.tier": {"between": [1]}}, "rule.attributes.tier.between", "must be a list of two values"),
    ({"attributes.tier": {"gt": True}}, "rule.attributes.tier.gt", "must be text or a number"),
    ({"attributes.1st": 1}, "rule.attributes.1st", "attribute names are letters"),
    ({"event": "Product Viewed", "where": {"category": {"eq": ["a"]}}}, "rule.where.category.eq",
     "must be text, a number or true/false, not list"),
    ({"event": "", "within_days": 3}, "rule.event", "must be non-empty text"),
    ({"event": "X", "within_days": 7, "older_than_days": 7}, "rule.older_than_days", "must be less than within_days"),
    ({"event": "X", "colour": 1}, "rule.colour", "unknown key"),
    ({"event": "X", "count": {"gte": 1.5}}, "rule.count.gte", "must be an integer"),
    ({"orders": {"contains": 3}}, "rule.orders.contains", "not allowed here"),
    ({"cart": {"idle_minutes": 60}}, "rule.cart.idle_minutes.eq", "not allowed here"),
    ({"cart": {"colour": 1}}, "rule.cart.colour", "unknown key"),
    ({"wishlist": {"sku": []}}, "rule.wishlist.sku", "must be a sku or a non-empty list"),
    ({"bought": {"sku": "A"}, "cart": "open"}, "rule", "has both 'bought' and 'cart'"),
    ({"country": "DE", "city": "Köln"}, "rule", "has 2 conditions"),
    ({"not": {"country": "DE"}, "city": "Köln"}, "rule.city", "not allowed beside 'not'"),
    ({"birthday": {"in_days": 400}}, "rule.birthday.in_days", "must be at most 366"),
    ("country = DE", "rule", "must be a mapping, not text"),
    ({"created_at": {"gt": "gestern"}}, "rule.created_at.gt", "must be a date or time"),
    # A duration written the tactic way is not a number of days: the error says which it must be.
    ({"event": "X", "within_days": "3d"}, "rule.within_days", "(a number of days, e.g. 30), not text '3d'"),
    ({"last_order": {"older_than_days": "90 Tage"}}, "rule.last_order.older_than_days", "not text '90 Tage'"),
    ({"revenue": {"gte": "100 EUR"}}, "rule.revenue.gte", "must be a number, not text '100 EUR'"),
    ({"event": "X", "where": {"preis-eur": 1}}, "rule.where.preis-eur", "property names are letters"),
    ({"event": "X", "where": {"category": {"within_days": 3}}}, "rule.where.category.within_days", "not allowed"),
    ({"event": "X", "where": {"category": {"like": "Gar%"}}}, "rule.where.category.like", "unknown operator"),
    ({"event": "X", "where": {}}, "rule.where", "must not be empty"),
    ({"event": "X", "count": {"exists": True}}, "rule.count.exists", "not allowed here"),
    ({"anonymous": {"gt": True}}, "rule.anonymous.gt", "not allowed here; expected one of eq, ne, exists"),
    ({"all": []}, "rule.all", "must be a non-empty list"),
    ({"not": {}}, "rule.not", "must not be empty"),
    ({"any": [{"country": "DE"}, None]}, "rule.any[1]", "must be a mapping, not null"),
    ({"event": "   "}, "rule.event", "must be non-empty text, not empty"),
    ({"wishlist": "some"}, "rule.wishlist", "must be any, or a mapping with sku and/or category"),
    ({"cart": "voll"}, "rule.cart", "must be open, or a mapping"),
    ({"bought": "everything"}, "rule.bought", "must be anything, or a mapping"),
    ({"birthday": "tomorrow"}, "rule.birthday", "must be today, {in_days: N} or a date"),
    ({"consent.push": "ja"}, "rule.consent.push.eq", "not text 'ja'"),
])
def test_error_names_path_and_reason(rule, path, reason):
    errors = errors_of(rule)
    assert any(p == path and reason in msg for p, msg in errors), errors


def test_every_error_is_reported_at_once():
    errors = errors_of({"all": [{"country": 1}, {"any": [{"event": "X", "within_days": 0}, {"orders": "many"}]}]})
    assert [p for p, _ in errors] == ["rule.all[0].country.eq", "rule.all[1].any[0].within_days",
                                      "rule.all[1].any[1].orders.eq"]
    assert str(InvalidRule(errors)).startswith("rule.all[0].country.eq: must be text")


def test_shorthands_mean_what_they_say():
    assert rules.parse({"country": "DE"}) == rules.parse({"country": {"eq": "DE"}})
    assert rules.parse({"country": ["DE", "AT"]}) == rules.parse({"country": {"in": ["DE", "AT"]}})
    assert rules.parse({"did_not": "Order Completed", "within_days": 90}) == rules.parse(
        {"event": "Order Completed", "within_days": 90, "count": 0})
    assert rules.parse({"event": "X", "where": {"properties.a.b": 1}}) == rules.parse(
        {"event": "X", "where": {"a.b": 1}})


def test_consent_recorded_at_is_a_time():
    assert rules.parse({"consent.email_marketing.recorded_at": {"older_than_days": 700}}) == rules.Field(
        "consent_recorded", "email_marketing", (), rules.DATETIME, rules.Test((("older_than_days", 700),)))
    assert errors_of({"consent.email_marketing.given_at": {"exists": True}}) == [
        ("rule.consent.email_marketing.given_at", "unknown consent field 'given_at'; consent.<purpose> is the status, "
                                                   "consent.<purpose>.recorded_at the time it was recorded")]
    assert errors_of({"consent.email_marketing.recorded_at": "granted"})[0][0] == \
        "rule.consent.email_marketing.recorded_at.eq"
