"""Consent in practice: one-click unsubscribe (RFC 8058), preference center, double opt-in, sign-up API."""

from __future__ import annotations

import re
import urllib.parse
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, model_validator
from sqlalchemy.orm import Session

from emma.auth.dependencies import write_or_admin
from emma.consent import service
from emma.consent.models import PURPOSES
from emma.consent.views import TEXT, lang_of, page, preference_groups
from emma.ingest.jobs import run_with_retry
from emma.profiles.models import Customer
from emma.signing import ExpiredToken, InvalidToken

router = APIRouter()
pages = APIRouter(tags=["consent pages"], include_in_schema=False)
api = APIRouter(prefix="/v1/consent", tags=["consent"], dependencies=[Depends(write_or_admin)])

_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _lang(request: Request, session: Session | None, customer_id: int | None) -> str:
    customer = session.get(Customer, customer_id) if session is not None and customer_id else None
    return lang_of(requested=request.query_params.get("lang"), customer_locale=customer.locale if customer else None,
                   default=request.app.state.settings.default_locale)


def _switch(request: Request, lang: str) -> str:
    return f"{request.url.path}?lang={'en' if lang == 'de' else 'de'}"


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def _bad_link(request: Request, exc: InvalidToken) -> HTMLResponse:
    lang = lang_of(requested=request.query_params.get("lang"), customer_locale=None,
                   default=request.app.state.settings.default_locale)
    t = TEXT[lang]
    expired = isinstance(exc, ExpiredToken)
    return _html(page(lang=lang, title=t["invalid_title"], paragraphs=[t["expired" if expired else "invalid"]]),
                 410 if expired else 400)


async def _form(request: Request) -> dict[str, list[str]]:
    raw = (await request.body()).decode(errors="replace")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        # RFC 8058 allows multipart bodies; the one field that matters is read without a multipart parser.
        found = re.search(r'name="List-Unsubscribe"\r?\n(?:[^\r\n]+\r?\n)*\r?\n([^\r\n]*)', raw)
        return {"List-Unsubscribe": [found.group(1)]} if found else {}
    return urllib.parse.parse_qs(raw, keep_blank_values=True)


@pages.get("/u/{token}")
def unsubscribe_page(token: str, request: Request) -> Response:
    """Ask before unsubscribing: a GET must change nothing (link scanners fetch URLs in mail)."""
    settings = request.app.state.settings
    try:
        data = service.read_token(token=token, kind="unsubscribe", settings=settings)
    except InvalidToken as exc:
        return _bad_link(request, exc)
    with request.app.state.sessions() as session:
        lang = _lang(request, session, int(data["c"]))
    t = TEXT[lang]
    return _html(page(lang=lang, title=t["unsub_title"], paragraphs=[t["unsub_ask"].format(what=t[data["p"]])],
                      form_action=f"/u/{token}?lang={lang}", button=t["unsub_button"],
                      switch_url=_switch(request, lang)))


@pages.post("/u/{token}")
async def unsubscribe(token: str, request: Request) -> Response:
    """Unsubscribe: the RFC 8058 one-click POST from a mail client, or the button on the page."""
    settings = request.app.state.settings
    form = await _form(request)
    one_click = form.get("List-Unsubscribe") == ["One-Click"]
    source = "unsubscribe:one-click" if one_click else "unsubscribe:page"
    try:
        cid, purpose, _ = await run_with_retry(request.app, lambda s: service.unsubscribe(
            session=s, token=token, settings=settings, source=source, now=request.app.state.clock.now()))
    except InvalidToken as exc:
        if one_click:
            return PlainTextResponse(str(exc), status_code=410 if isinstance(exc, ExpiredToken) else 400)
        return _bad_link(request, exc)
    if one_click:  # the mail client shows nothing; no redirect, no cookies (RFC 8058 section 3.2)
        return PlainTextResponse("unsubscribed", headers=_HEADERS)
    with request.app.state.sessions() as session:
        lang = _lang(request, session, cid)
    t = TEXT[lang]
    prefs = service.preferences_url(customer_id=cid, settings=settings)
    return _html(page(lang=lang, title=t["unsub_done_title"], paragraphs=[t["unsub_done"].format(what=t[purpose])],
                      links=[(prefs, t["prefs_link"])]))


def _prefs_page(request: Request, session: Session, cid: int, token: str, notice: str | None) -> HTMLResponse:
    lang = _lang(request, session, cid)
    t = TEXT[lang]
    status = service.status_of(session=session, customer_id=cid)
    return _html(page(lang=lang, title=t["prefs_title"], paragraphs=[t["prefs_intro"]],
                      groups=preference_groups(lang=lang, status=status), shown=",".join(PURPOSES),
                      form_action=f"/preferences/{token}?lang={lang}", button=t["prefs_button"],
                      notice=notice, switch_url=_switch(request, lang)))


@pages.get("/preferences/{token}")
def preferences(token: str, request: Request) -> Response:
    """The preference center: every purpose, grouped by channel, as the customer's consent stands now."""
    try:
        cid = int(service.read_token(token=token, kind="preferences", settings=request.app.state.settings)["c"])
    except InvalidToken as exc:
        return _bad_link(request, exc)
    with request.app.state.sessions() as session:
        return _prefs_page(request, session, cid, token, None)


@pages.post("/preferences/{token}")
async def save_preferences(token: str, request: Request) -> Response:
    """Apply the choices at once (consent and audit log); unchecked boxes that were shown mean 'no'."""
    try:
        cid = int(service.read_token(token=token, kind="preferences", settings=request.app.state.settings)["c"])
    except InvalidToken as exc:
        return _bad_link(request, exc)
    form = await _form(request)
    shown = [p for p in (form.get("shown") or [""])[0].split(",") if p in PURPOSES]
    choices = {p: form.get(p, [""])[0] in ("1", "on", "true") for p in shown}
    await run_with_retry(request.app, lambda s: service.set_preferences(
        session=s, customer_id=cid, choices=choices, source="preference_center",
        now=request.app.state.clock.now()))
    with request.app.state.sessions() as session:
        lang = _lang(request, session, cid)
        return _prefs_page(request, session, cid, token, TEXT[lang]["prefs_saved"])


@pages.get("/consent/confirm/{token}")
async def confirm(token: str, request: Request) -> Response:
    """Double opt-in: the click on the link in the confirmation mail grants the pending consent."""
    settings = request.app.state.settings
    try:
        cid, purpose, changed = await run_with_retry(request.app, lambda s: service.confirm_opt_in(
            session=s, token=token, settings=settings, now=request.app.state.clock.now()))
    except InvalidToken as exc:
        return _bad_link(request, exc)
    with request.app.state.sessions() as session:
        lang = _lang(request, session, cid)
    t = TEXT[lang]
    text = t["doi_done"].format(what=t[purpose]) if changed else t["doi_noop"]
    return _html(page(lang=lang, title=t["doi_title"] if changed else t["unsub_title"], paragraphs=[text]))


class SubscribeIn(BaseModel):
    userId: str | None = Field(default=None, max_length=255)
    anonymousId: str | None = Field(default=None, max_length=255)
    email: str = Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    purpose: str = "email_marketing"
    source: str = Field(default="signup", max_length=64)
    text_version: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _who(self) -> SubscribeIn:
        if not self.userId and not self.anonymousId:
            raise ValueError("userId or anonymousId is required")
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose: unknown {self.purpose!r}; one of {', '.join(PURPOSES)}")
        return self


@api.post("/subscribe")
async def subscribe(body: SubscribeIn, request: Request) -> JSONResponse:
    """A sign-up form: the consent is pending and a confirmation mail goes out (double opt-in)."""
    settings = request.app.state.settings

    def work(session: Session) -> dict[str, Any]:
        from emma.ingest import service as ingest
        from emma.profiles import service as profiles

        traits: dict[str, Any] = {"email": body.email}
        if body.locale:
            traits["locale"] = body.locale
        ingest.ingest(session=session, settings=settings, raw_messages=[{
            "type": "identify", "userId": body.userId, "anonymousId": body.anonymousId, "traits": traits,
            "messageId": f"subscribe-{uuid.uuid4()}"}])
        customer = profiles.get_customer(session=session, ref=body.userId or body.anonymousId)  # type: ignore[arg-type]
        mid = service.request_opt_in(session=session, customer_id=customer.id, settings=settings,
                                     purpose=body.purpose, source=body.source, text_version=body.text_version)
        status = service.status_of(session=session, customer_id=customer.id).get(body.purpose)
        return {"success": True, "customer_id": customer.id, "status": status, "confirmation_message_id": mid}

    return JSONResponse(await run_with_retry(request.app, work))


router.include_router(pages)
router.include_router(api)
