"""GET /feedback: a click on a number of the NPS email records "Survey Answered" once per message, verified when it
came through the email's signed tracked link; unknown surveys and bad numbers get a clear page."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import select

from emma.app import create_app
from emma.channels import service as channels
from emma.config import Settings
from emma.ingest.models import Event
from emma.profiles import service as profiles
from emma.profiles.models import Customer


def _survey(session, ext: str, locale: str, template: str = "nps_survey") -> int:
    cid = profiles.ensure_customers(session=session, external_ids=[ext], at=dt.datetime.now(dt.UTC))[ext]
    session.get(Customer, cid).locale = locale
    m = channels.enqueue(session=session, idempotency_key=f"k-{ext}-{template}", customer_id=cid, channel="email",
                         template=template, tactic_id="feedback_request")
    m.status, m.sent_at = "sent", dt.datetime.now(dt.UTC)
    session.commit()
    return m.id


def _answers(session, ext: str) -> list[dict]:
    session.expire_all()
    return [e.properties for e in session.scalars(select(Event).where(Event.name == "Survey Answered",
                                                                      Event.user_id == ext))]


def test_a_click_on_a_number_is_the_answer(session, db_url):
    settings = Settings(database_url=db_url)
    clicked, typed = _survey(session, "c-click", "en-GB"), _survey(session, "c-typed", "de")
    other = _survey(session, "c-other", "de", template="order_status")
    client = TestClient(create_app(settings))

    # The email's link went through the signed click redirect, which records the click and sends the customer on.
    url = f"{settings.base_url}/feedback?score=9&ref={clicked}"
    token = channels.tracking_token(kind="click", message_id=clicked, url=url, settings=settings)
    r = client.get(f"/t/c/{token}", follow_redirects=False)
    assert r.status_code in (302, 303, 307) and r.headers["location"] == url
    r = client.get("/feedback", params={"score": "9", "ref": str(clicked)})
    assert r.status_code == 200 and "Your rating: 9 out of 10." in r.text
    assert _answers(session, "c-click") == [{"survey": "nps", "score": 9, "message_id": clicked,
                                             "campaign_id": "feedback_request", "verified": True}]
    client.get("/feedback", params={"score": "3", "ref": str(clicked)})
    assert [a["score"] for a in _answers(session, "c-click")] == [9]  # the first answer counts

    # Typed from the text part (or guessed): recorded, but not verified.
    r = client.get("/feedback", params={"score": "10", "ref": str(typed)})
    assert r.status_code == 200 and "Ihre Bewertung: 10 von 10." in r.text
    assert [(a["score"], a["verified"]) for a in _answers(session, "c-typed")] == [(10, False)]

    # The link without a number is the form; wrong numbers and unknown surveys say so.
    form = client.get("/feedback", params={"ref": str(typed)})
    assert form.status_code == 200 and f"/feedback?ref={typed}&amp;score=10" in form.text
    assert client.get("/feedback", params={"score": "11", "ref": str(typed)}).status_code == 400
    assert client.get("/feedback", params={"score": "zehn", "ref": str(typed)}).status_code == 400
    assert client.get("/feedback", params={"score": "5", "ref": "999999"}).status_code == 404
    assert client.get("/feedback", params={"score": "5", "ref": str(other)}).status_code == 404  # not a survey
    assert _answers(session, "c-other") == []
