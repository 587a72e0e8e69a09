"""The other paths of the library's tactics: each test plays a tactic's scenario with a changed timeline or
customer and checks the flow takes the exit, the fallback or the suppression it should."""

from __future__ import annotations

import datetime as dt
from typing import Any

from emma.automation import library, scenario
from emma.automation import schemas as S


def _play(tactic_id: str, tmp_path, *, timeline: list[dict[str, Any]] | None = None,
          customer: dict[str, Any] | None = None, run_for: str | None = None) -> scenario.Result:
    t = library.library()[tactic_id]
    sc = t.scenario
    update: dict[str, Any] = {"expect": S.Expectations()}
    if timeline is not None:
        update["timeline"] = [S.ScenarioStep.model_validate(s) for s in timeline]
    if customer is not None:
        update["customer"] = sc.customer.model_copy(update=customer)
    if run_for is not None:
        update["run_for"] = run_for
    return scenario.play(tactic=t.model_copy(update={"scenario": sc.model_copy(update=update)}), workdir=tmp_path)


def _sent(result: scenario.Result) -> list[tuple[str, dt.timedelta]]:
    return [(m["template"], m["offset"]) for m in result.messages if m["status"] != "suppressed"]


def _journal(result: scenario.Result) -> str:
    return "\n".join(ln.text for ln in result.lines)


def test_new_registration_without_confirmation_sends_only_the_confirmation(tmp_path):
    r = _play("new_registration", tmp_path, timeline=[{"at": "0m", "track": {"event": "Signed Up"}}], run_for="8d")
    assert [t for t, _ in _sent(r)] == ["double_opt_in"]
    assert r.runs[0]["status"] == "exited" and "not confirmed within 7 days" in r.runs[0]["outcome"]


def test_abandoned_browse_stops_when_a_cart_follows(tmp_path):
    views = [{"at": f"{i}m", "track": {"event": "Product Viewed",
                                       "properties": {"sku": s, "category": "Küche > Pfannen"}}}
             for i, s in ((1, "B-1"), (2, "B-2"), (3, "B-3"))]
    cart = {"at": "1h", "track": {"event": "Product Added", "properties": {"sku": "B-2", "cart_id": "c-1"}}}
    r = _play("abandoned_browse", tmp_path, timeline=[*views, cart], run_for="1d")
    assert _sent(r) == []
    assert r.runs[0]["status"] == "exited" and "cart" in r.runs[0]["outcome"]


def test_first_to_repeat_buyer_without_predictions_falls_back(tmp_path):
    order = {"at": "0m", "track": {"event": "Order Completed", "properties": {
        "order_id": "o-1", "revenue": 39.9, "products": [{"sku": "F-1", "quantity": 1, "price": 39.9}]}}}
    r = _play("first_to_repeat_buyer", tmp_path, timeline=[order], customer={"prediction": None, "birthday": None},
              run_for="31d")
    # Without a predicted date or a birthday, the next holiday is the occasion: Easter (5 April) ten days before.
    assert _sent(r) == [("next_best_offer", dt.timedelta(days=24))]
    text = _journal(r)
    assert "wait until the earliest occasion: occasion.holiday 2026-04-05 -10d at 10:00" in text
    assert "no next-best-offer prediction" in text


def test_first_to_repeat_buyer_exits_when_the_customer_came_back_first(tmp_path):
    orders = [{"at": at, "track": {"event": "Order Completed", "properties": {
        "order_id": oid, "revenue": 19.9, "products": [{"sku": "F-2", "quantity": 1, "price": 19.9}]}}}
        for at, oid in (("0m", "o-1"), ("5d", "o-2"))]
    r = _play("first_to_repeat_buyer", tmp_path, timeline=orders, run_for="20d")
    assert _sent(r) == []
    assert r.runs[0]["status"] == "converted"  # the second order is the goal; nothing was needed


def test_lead_re_engagement_runs_three_steps_and_the_bandit_chooses_the_last(tmp_path):
    r = _play("lead_re_engagement", tmp_path, timeline=[], run_for="40d")
    sent = _sent(r)
    assert [t for t, _ in sent] == ["lead_priming_1", "lead_priming_2", "lead_priming_3"]
    assert [o - sent[0][1] for _, o in sent] == [dt.timedelta(0), dt.timedelta(days=4), dt.timedelta(days=9)]
    assert "bandit (Thompson sampling): variant" in _journal(r)


def test_lead_re_engagement_stops_when_the_lead_clicks_a_mail(tmp_path):
    # The click as the channels record it (emma.channels: "Email Link Clicked"), a day after the first mail.
    click = {"at": "31d", "track": {"event": "Email Link Clicked", "properties": {"url": "https://shop.example/x"}}}
    r = _play("lead_re_engagement", tmp_path, timeline=[click], run_for="10d")
    assert [t for t, _ in _sent(r)] == ["lead_priming_1"]
    assert r.runs[0]["status"] == "exited" and "the lead engaged" in r.runs[0]["outcome"]


def test_tactics_wait_for_the_email_events_the_channels_record():
    recorded = {"Email Opened", "Email Link Clicked"}  # emma.channels.service feed_back
    for tid, t in library.library().items():
        names = set(t.entry.names) if isinstance(t.entry, S.EventEntry) else set()
        names |= {t.goal.event} if t.goal else set()
        for n in t.nodes:
            names |= set(getattr(n, "events", []) or [])
        assert {e for e in names if e.startswith("Email ")} <= recorded, tid


def test_lead_re_engagement_skips_customers_who_ordered(tmp_path):
    order = {"at": "1d", "track": {"event": "Order Completed", "properties": {"order_id": "o-1", "revenue": 5}}}
    r = _play("lead_re_engagement", tmp_path, timeline=[order], run_for="40d")
    assert r.runs == []


def test_replenishment_exits_when_reordered_before_the_reminder(tmp_path):
    buy = {"event": "Order Completed", "properties": {"revenue": 37.8,
                                                      "products": [{"sku": "C-1", "quantity": 2, "price": 18.9}]}}
    first = {"at": "0m", "track": {**buy, "properties": {**buy["properties"], "order_id": "o-1"}}}
    again = {"at": "10d", "track": {**buy, "properties": {**buy["properties"], "order_id": "o-2"}}}
    r = _play("replenishment", tmp_path, timeline=[first, again], run_for="20d")
    assert r.runs[0]["status"] == "converted"  # the reorder is the goal: no reminder for the first order
    assert [t for t, _ in _sent(r)] == []


def test_consent_refresh_falls_back_to_email_and_ends_unchanged(tmp_path):
    r = _play("consent_refresh", tmp_path, timeline=[], run_for="22d",
              customer={"consent": {"email_marketing": "granted"},
                        "consent_recorded": {"email_marketing": dt.date(2024, 4, 1)}})
    assert [(m["channel"], m["template"]) for m in r.messages] == [("email", "consent_refresh")]
    assert r.runs[0]["status"] == "exited" and "no renewal" in r.runs[0]["outcome"]


def test_consent_refresh_sends_no_second_double_opt_in_mail(tmp_path):
    # An unconfirmed double opt-in with no other channel to ask on: nothing, not the confirmation mail again.
    r = _play("consent_refresh", tmp_path, timeline=[], run_for="1d",
              customer={"consent": {"email_marketing": "pending"},
                        "consent_recorded": {"email_marketing": dt.date(2024, 4, 1)}})
    assert r.messages == [] and r.runs == []


def test_progressive_profiling_asks_nothing_when_the_profile_is_complete(tmp_path):
    r = _play("progressive_profiling", tmp_path, customer={
        "birthday": dt.date(1990, 1, 1), "attributes": {"interests": ["tea"], "preferred_channel": "email"}})
    assert r.runs == []


def test_feedback_request_without_sms_consent_asks_once(tmp_path):
    r = _play("feedback_request", tmp_path, customer={"consent": {"email_marketing": "granted"}})
    assert [(m["channel"], m["template"]) for m in r.messages] == [("email", "nps_survey")]
    assert "consent.sms_marketing" in _journal(r)
