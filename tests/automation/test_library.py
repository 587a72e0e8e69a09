"""The tactic library: every shipped tactic validates, has its templates, and its scenario holds."""

from __future__ import annotations

import pytest

from emma.automation import library, scenario
from emma.automation.exceptions import TacticInvalid
from emma.config import Settings

TACTICS = sorted(library.library())


def test_library_is_not_empty():
    assert "abandoned_cart" in TACTICS


@pytest.mark.parametrize("tactic_id", TACTICS)
def test_templates_exist_in_german_and_english(tactic_id):
    t = library.library()[tactic_id]
    assert library.missing_templates(tactic=t, settings=Settings()) == []
    assert t.names.de and t.names.en


@pytest.mark.parametrize("tactic_id", TACTICS)
def test_scenario_expectations_hold(tactic_id, tmp_path):
    result = scenario.play(tactic=library.library()[tactic_id], workdir=tmp_path)
    assert result.ok, "\n".join(result.failures)
    assert result.runs, "the scenario never entered the tactic"


def test_scenario_detects_a_wrong_expectation(tmp_path):
    t = library.library()["abandoned_cart"]
    wrong = t.scenario.expect.model_copy(update={"status": "exited"})
    bad = t.model_copy(update={"scenario": t.scenario.model_copy(update={"expect": wrong})})
    result = scenario.play(tactic=bad, workdir=tmp_path)
    assert not result.ok and "exited" in result.failures[0]


def _errors(text: str) -> list[tuple[str, str]]:
    with pytest.raises(TacticInvalid) as exc:
        library.load_text(text, source="t.yaml")
    assert "t.yaml" in str(exc.value)
    return exc.value.errors


BASE = """
id: demo
version: 1
names: {de: Demo, en: Demo}
channels: [email]
entry: {kind: event, event: Signed Up}
content: {m: {channel: email, template: welcome}}
nodes:
  - {id: hello, kind: message, content: m}
scenario: {expect: {}}
"""


def test_valid_definition_loads():
    t = library.load_text(BASE, source="t.yaml")
    assert t.start == "hello" and t.holdout == 0.1


def test_errors_name_path_and_reason():
    errs = _errors(BASE.replace("next: x", "").replace("content: m}", "content: m, next: nowhere}"))
    assert any("nowhere" in reason for _, reason in errs)
    errs = _errors(BASE.replace("{kind: event, event: Signed Up}", "{kind: event}"))
    assert any(path.startswith("entry") and "event" in path for path, _ in errs)
    errs = _errors(BASE.replace("kind: message, content: m", "kind: wait, duration: soon, next: hello"))
    assert any("not a duration" in reason for _, reason in errs)
    errs = _errors(BASE.replace("version: 1", "version: 0"))
    assert any(path == "version" for path, _ in errs)
    errs = _errors(BASE.replace("content: m}", "content: missing}"))
    assert any("content 'missing'" in reason for _, reason in errs)
    errs = _errors("id: [")
    assert "not valid YAML" in errs[0][1]


def test_a_schedule_rule_is_a_valid_segment_rule():
    good = BASE.replace("{kind: event, event: Signed Up}",
                        "{kind: schedule, rule: {consent.email_marketing.recorded_at: {older_than_days: 700}}}")
    assert library.load_text(good, source="t.yaml").entry.rule is not None
    errs = _errors(BASE.replace("{kind: event, event: Signed Up}",
                                "{kind: schedule, rule: {all: [{country: DE}, {consent.email: granted}]}}"))
    assert any(path == "entry.schedule.rule" and reason.startswith("rule.all[1].consent.email: unknown consent purpose")
               for path, reason in errs), errs
    both = "{kind: schedule, segment: vip, rule: {country: DE}}"
    errs = _errors(BASE.replace("{kind: event, event: Signed Up}", both))
    assert any("not both" in reason for _, reason in errs), errs


def test_transactional_message_may_not_carry_a_coupon():
    text = BASE.replace("content: m}", "content: m, transactional: true, payload: {coupon: {campaign: x}}}")
    errs = _errors(text)
    assert any("transactional" in reason for _, reason in errs)
