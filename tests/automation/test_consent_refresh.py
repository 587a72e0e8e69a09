"""consent_refresh asks for email marketing consent where it is missing, unconfirmed or old, and only on a lawful
channel: never by email without a valid email consent, never after a revocation, never without any channel."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from emma.automation import library, scenario
from emma.automation import schemas as S


def _play(tmp_path: Any, *, consent: dict[str, str], recorded: dict[str, dt.date], phone: str | None = None,
          prediction: dict[str, Any] | None = None, timeline: list[dict[str, Any]] | None = None,
          run_for: str = "1d") -> scenario.Result:
    t = library.library()["consent_refresh"]
    customer = t.scenario.customer.model_copy(update={"consent": consent, "consent_recorded": recorded,
                                                      "phone": phone, "prediction": prediction})
    sc = t.scenario.model_copy(update={
        "customer": customer, "timeline": [S.ScenarioStep.model_validate(s) for s in timeline or []],
        "run_for": run_for, "expect": S.Expectations()})
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = scenario.play(tactic=t.model_copy(update={"scenario": sc}), workdir=tmp_path)
    assert result.ok, result.failures
    return result


def _sent(result: scenario.Result) -> list[tuple[str, str]]:
    return [(m["channel"], m["template"]) for m in result.messages]


def _journal(result: scenario.Result) -> str:
    return "\n".join(line.text for line in result.lines)


OLD = dt.date(2024, 4, 1)  # 700 days before the scenario start (2026-03-02)


def test_an_old_consent_is_renewed_by_email_or_on_the_preferred_channel(tmp_path):
    by_mail = _play(tmp_path / "a", consent={"email_marketing": "granted"}, recorded={"email_marketing": OLD})
    assert _sent(by_mail) == [("email", "consent_refresh")]
    assert "no case holds -> ask_email" in _journal(by_mail)
    by_sms = _play(tmp_path / "b", consent={"email_marketing": "granted", "sms_marketing": "granted"},
                   recorded={"email_marketing": OLD, "sms_marketing": dt.date(2025, 10, 1)}, phone="+491701112233",
                   prediction={"preferred_channel": "sms"},
                   timeline=[{"at": "2d 3h", "consent": {"email_marketing": "granted"}}])
    assert _sent(by_sms) == [("sms", "consent_refresh")]
    assert by_sms.runs[-1]["status"] == "done" and "set consent_renewed = True" in _journal(by_sms)


def test_a_missing_consent_is_asked_for_by_sms_never_by_email(tmp_path):
    result = _play(tmp_path, consent={"sms_marketing": "granted"}, recorded={"sms_marketing": OLD},
                   phone="+491701112233", run_for="22d")
    assert _sent(result) == [("sms", "consent_invite")]
    assert result.runs[-1]["status"] == "exited" and "no email consent given within 21 days" in _journal(result)


def test_an_unconfirmed_double_opt_in_gets_no_second_mail(tmp_path):
    pending = {"email_marketing": "pending", "push": "granted"}
    young = _play(tmp_path / "a", consent=pending, recorded={"email_marketing": dt.date(2026, 2, 25)})
    assert young.runs == []  # five days: the confirmation mail may still be answered
    old = _play(tmp_path / "b", consent=pending, recorded={"email_marketing": dt.date(2026, 2, 1)})
    assert _sent(old) == [("push", "consent_invite")]  # not the double opt-in mail again


@pytest.mark.parametrize(("consent", "recorded", "why"), [
    ({}, {}, "no consent on any channel: nobody to ask lawfully"),
    ({"email_marketing": "revoked", "push": "granted"}, {"email_marketing": OLD}, "a revocation is a no"),
    ({"email_marketing": "granted"}, {"email_marketing": dt.date(2025, 6, 1)}, "a consent of nine months"),
    ({"sms_marketing": "granted"}, {}, "SMS consent but no phone number"),
])
def test_no_run_starts_for(tmp_path, consent, recorded, why):
    result = _play(tmp_path, consent=consent, recorded=recorded, run_for="2d")
    assert result.runs == [] and result.messages == [], why
