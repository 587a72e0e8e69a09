"""Every message a tactic's scenario produces renders in its locale and in the other one, with the payload the
engine built (viewed products, alternatives, offers, survey links): a template that breaks on real data fails here."""

from __future__ import annotations

import pytest

from emma.automation import library, scenario
from emma.channels import content
from emma.config import Settings

TACTICS = sorted(library.library())


def _context(payload: dict, transactional: bool) -> dict:
    return {**payload, "payload": payload, "customer": {"first_name": "Erika", "last_name": "Muster", "id": 1,
                                                        "email": "e@example.com", "external_id": "e"},
            "message_id": 7, "tactic_id": "t", "transactional": transactional, "base_url": "https://shop.example",
            "links": {"unsubscribe": None if transactional else "https://shop.example/u",
                      "preferences": "https://shop.example/p"},
            "cart": payload.get("cart"), "recommendations": payload.get("recommendations") or [],
            "coupon": {"code": "EMMA-1", "value": "10 %", "expires_at": None} if payload.get("coupon") else None,
            "offer": payload.get("offer")}


@pytest.mark.parametrize("tactic_id", TACTICS)
def test_scenario_messages_render_in_both_languages(tactic_id, tmp_path):
    result = scenario.play(tactic=library.library()[tactic_id], workdir=tmp_path)
    settings = Settings()
    for m in result.messages:
        if m["channel"] == "webhook" or m["status"] == "suppressed":
            continue
        for locale in ("de", "en"):
            out = content.render(channel=m["channel"], template=m["template"], locale=locale,
                                 context=_context(m["payload"] or {}, m["transactional"]), settings=settings)
            assert out.text or out.html
            assert "{{" not in (out.text or "") and "{%" not in (out.text or "")
