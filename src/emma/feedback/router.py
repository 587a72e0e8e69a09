"""GET /feedback: the page a click on a number of the NPS email opens; it records the answer and says thank you."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from emma.consent.views import lang_of, page
from emma.feedback import service
from emma.feedback.exceptions import BadScore, UnknownSurvey
from emma.ingest.jobs import run_with_retry
from emma.profiles.models import Customer

router = APIRouter(tags=["feedback"])
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
TEXT = {
    "de": {"title": "Danke für Ihre Antwort!", "got": "Ihre Bewertung: {score} von 10.",
           "more": "Möchten Sie uns mehr sagen? Antworten Sie einfach auf die E-Mail.",
           "ask": "Wie wahrscheinlich ist es, dass Sie uns empfehlen? Klicken Sie auf Ihre Zahl (0 = gar nicht, "
                  "10 = sehr wahrscheinlich).", "ask_title": "Eine Frage an Sie",
           "unknown": "Diese Umfrage kennen wir nicht (mehr).", "unknown_title": "Umfrage nicht gefunden",
           "bad": "Bitte wählen Sie eine Zahl von 0 bis 10."},
    "en": {"title": "Thank you for your answer!", "got": "Your rating: {score} out of 10.",
           "more": "Would you like to tell us more? Simply reply to the email.",
           "ask": "How likely are you to recommend us? Click your number (0 = not at all, 10 = very likely).",
           "ask_title": "One question for you", "unknown": "We do not know this survey (any more).",
           "unknown_title": "Survey not found", "bad": "Please choose a number from 0 to 10."},
}


def _lang(request: Request, locale: str | None) -> str:
    return lang_of(requested=request.query_params.get("lang"), customer_locale=locale,
                   default=request.app.state.settings.default_locale)


@router.get("/feedback", response_class=HTMLResponse, include_in_schema=False)
async def answer(request: Request, ref: str | None = None, score: str | None = None) -> HTMLResponse:
    """Record a click on a number of the NPS email (once per message) and thank the customer."""
    now = request.app.state.clock.now()

    def work(session):  # type: ignore[no-untyped-def]
        m = service.survey_message(session=session, ref=ref, now=now)
        c = session.get(Customer, m.customer_id)
        locale = c.locale if c is not None else None
        if score is None:
            return locale, None
        return locale, service.record_answer(session=session, message=m, score=service.parse_score(score), now=now)

    try:
        locale, props = await run_with_retry(request.app, work)
    except UnknownSurvey:
        t = TEXT[_lang(request, None)]
        return HTMLResponse(page(lang=_lang(request, None), title=t["unknown_title"], paragraphs=[t["unknown"]]),
                            status_code=404, headers=_HEADERS)
    except BadScore:
        lang = _lang(request, None)
        t = TEXT[lang]
        links = [(f"/feedback?ref={ref}&score={n}", str(n)) for n in range(11)]
        return HTMLResponse(page(lang=lang, title=t["ask_title"], paragraphs=[t["bad"]], links=links),
                            status_code=400, headers=_HEADERS)
    lang = _lang(request, locale)
    t = TEXT[lang]
    if props is None:  # the form: the link without a number
        links = [(f"/feedback?ref={ref}&score={n}", str(n)) for n in range(11)]
        return HTMLResponse(page(lang=lang, title=t["ask_title"], paragraphs=[t["ask"]], links=links),
                            headers=_HEADERS)
    return HTMLResponse(page(lang=lang, title=t["title"], paragraphs=[t["got"].format(score=props["score"]),
                                                                    t["more"]]), headers=_HEADERS)
