"""Answers to the NPS question that feedback_request sends (template nps_survey): a click on a number.

The answer is recorded as the track event "Survey Answered" ({survey, score, message_id, campaign_id, verified}),
the goal feedback_request waits for, once per message (the first answer counts; the message id is its
messageId). `verified` says whether the answer came through the email's tracked link (a signed click on that very
number, recorded as "Email Link Clicked" just before); an answer typed from the text part of the email, or by
anyone who knows a message number, is recorded unverified, so reports can leave it out.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from emma.channels.models import OutboxMessage
from emma.feedback.exceptions import BadScore, UnknownSurvey
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.profiles import service as profiles

SURVEY_TEMPLATES = ("nps_survey",)
ANSWER_WINDOW = dt.timedelta(days=60)  # an answer to a survey older than this is not recorded


def survey_message(*, session: Session, ref: str | None, now: dt.datetime) -> OutboxMessage:
    """The sent survey message a reference names; UnknownSurvey otherwise (also when it is too old to answer)."""
    m = session.get(OutboxMessage, int(ref)) if ref and str(ref).isdigit() else None
    if m is None or m.template not in SURVEY_TEMPLATES or m.customer_id is None or m.status != "sent" \
            or (m.sent_at is not None and m.sent_at < now - ANSWER_WINDOW):
        raise UnknownSurvey(str(ref))
    return m


def parse_score(raw: str | None) -> int:
    """0..10 from the link; BadScore otherwise."""
    if raw is None or not raw.strip().isdigit() or not 0 <= int(raw) <= 10:
        raise BadScore(str(raw))
    return int(raw)


def _clicked(session: Session, m: OutboxMessage, score: int) -> bool:
    """Whether the email's tracked link for this score was clicked (the signed redirect recorded it)."""
    for props in session.scalars(select(Event.properties).where(
            Event.customer_id == m.customer_id, Event.name == "Email Link Clicked")):
        if isinstance(props, dict) and str(props.get("email_id")) == str(m.id):
            url = str(props.get("link_url") or "")
            if "/feedback?" in url and f"score={score}&" in url + "&":
                return True
    return False


def record_answer(*, session: Session, message: OutboxMessage, score: int, now: dt.datetime) -> dict[str, Any]:
    """Record the answer as "Survey Answered" (once per message); returns its properties."""
    assert message.customer_id is not None
    props = {"survey": "nps", "score": score, "message_id": message.id, "campaign_id": message.tactic_id,
             "verified": _clicked(session, message, score)}
    who = profiles.event_identity(session=session, customer_id=message.customer_id)
    if who is not None:
        ingest.ingest(session=session, received_at=now, raw_messages=[{
            "type": "track", "event": "Survey Answered", **who, "messageId": f"survey-{message.id}",
            "timestamp": now.isoformat(), "properties": props, "context": {"library": {"name": "emma.feedback"}}}])
    return props
