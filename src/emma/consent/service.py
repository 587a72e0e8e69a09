"""Consent per customer and purpose; every change is appended to the audit log."""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from emma import signing
from emma.config import Settings
from emma.consent.exceptions import InvalidConsent
from emma.consent.models import PURPOSES, STATUSES, Consent, ConsentLog
from emma.db import among, for_update, insert_rows, update_rows, utcnow

# Channel -> the purpose whose consent a marketing message on it needs.
CHANNEL_PURPOSE = {"email": "email_marketing", "sms": "sms_marketing", "push": "push", "ads": "ads",
                   "onsite": "personalization"}


def validate(*, purpose: str, status: str) -> None:
    """Reject unknown purposes and statuses with the field that is wrong."""
    if purpose not in PURPOSES:
        raise InvalidConsent("purpose", f"unknown purpose {purpose!r}; one of {', '.join(PURPOSES)}")
    if status not in STATUSES:
        raise InvalidConsent("status", f"unknown status {status!r}; one of {', '.join(STATUSES)}")


def record(*, session: Session, customer_id: int, purpose: str, status: str, source: str,
           recorded_at: dt.datetime | None = None, text_version: str | None = None) -> bool:
    """Record a consent decision; False when the current consent stays as it is (a replay, or a decision older
    than the current one, which joins the audit log as history)."""
    validate(purpose=purpose, status=status)
    recorded_at = recorded_at or utcnow()
    current = session.scalar(select(Consent).where(Consent.customer_id == customer_id,
                                                   Consent.purpose == purpose))
    if current is not None:
        if current.recorded_at > recorded_at:  # a stale decision must not overwrite a newer one
            insert_rows(session, ConsentLog, _backdated(session, [{
                "customer_id": customer_id, "purpose": purpose, "status": status, "source": source,
                "text_version": text_version, "recorded_at": recorded_at}], utcnow()))
            return False
        if (current.status, current.source, current.text_version, current.recorded_at) == (
                status, source, text_version, recorded_at):
            return False  # replayed import: idempotent
    previous = current.status if current else None
    if current is None:
        session.add(Consent(customer_id=customer_id, purpose=purpose, status=status, source=source,
                            text_version=text_version, recorded_at=recorded_at))
    else:
        current.status, current.source = status, source
        current.text_version, current.recorded_at = text_version, recorded_at
    session.add(ConsentLog(customer_id=customer_id, purpose=purpose, status=status, previous_status=previous,
                           source=source, text_version=text_version, recorded_at=recorded_at,
                           logged_at=utcnow()))
    return True


def status_of(*, session: Session, customer_id: int) -> dict[str, str]:
    """Current status per purpose (purposes never decided are absent)."""
    rows = session.execute(select(Consent.purpose, Consent.status).where(Consent.customer_id == customer_id))
    return dict(rows.all())


def allows(*, session: Session, customer_id: int, purpose: str) -> bool:
    """True only for an explicit, confirmed grant (pending double opt-in is not consent)."""
    return session.scalar(select(Consent.status).where(Consent.customer_id == customer_id,
                                                       Consent.purpose == purpose)) == "granted"


def history(*, session: Session, customer_id: int) -> list[ConsentLog]:
    """The audit log of the customer's consent, oldest first."""
    return list(session.scalars(select(ConsentLog).where(ConsentLog.customer_id == customer_id)
                                .order_by(ConsentLog.recorded_at, ConsentLog.id)))


# Signed links: unsubscribe (RFC 8058 one-click), preference center, double opt-in confirmation.
# The purpose of each token is part of its signature, so one kind cannot be replayed as another.

def unsubscribe_token(*, customer_id: int, purpose: str, message_id: int | None, settings: Settings) -> str:
    """A signed token that revokes one purpose of one customer (carried in List-Unsubscribe)."""
    return signing.sign(purpose="unsubscribe", data={"c": customer_id, "p": purpose, "m": message_id},
                        secret=settings.secret_key, ttl=dt.timedelta(days=settings.unsubscribe_link_ttl_days))


def preferences_token(*, customer_id: int, settings: Settings) -> str:
    """A signed token that opens the customer's preference center."""
    return signing.sign(purpose="preferences", data={"c": customer_id}, secret=settings.secret_key,
                        ttl=dt.timedelta(days=settings.unsubscribe_link_ttl_days))


def confirmation_token(*, customer_id: int, purpose: str, settings: Settings,
                       now: dt.datetime | None = None) -> str:
    """A signed, short-lived token that confirms a pending double opt-in."""
    return signing.sign(purpose="doi", data={"c": customer_id, "p": purpose}, secret=settings.secret_key,
                        ttl=dt.timedelta(hours=settings.doi_link_ttl_hours), now=now)


def read_token(*, token: str, kind: str, settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    """The data of a genuine, unexpired token of kind; signing.InvalidToken / ExpiredToken otherwise."""
    return signing.unsign(token, purpose=kind, secret=settings.secret_key, now=now)


def unsubscribe_url(*, customer_id: int, purpose: str, message_id: int | None, settings: Settings) -> str:
    """The HTTPS link for List-Unsubscribe and the footer."""
    token = unsubscribe_token(customer_id=customer_id, purpose=purpose, message_id=message_id, settings=settings)
    return f"{settings.base_url.rstrip('/')}/u/{token}"


def preferences_url(*, customer_id: int, settings: Settings) -> str:
    """The link to the customer's preference center."""
    token = preferences_token(customer_id=customer_id, settings=settings)
    return f"{settings.base_url.rstrip('/')}/preferences/{token}"


def confirmation_url(*, customer_id: int, purpose: str, settings: Settings, now: dt.datetime | None = None) -> str:
    """The double opt-in confirmation link."""
    token = confirmation_token(customer_id=customer_id, purpose=purpose, settings=settings, now=now)
    return f"{settings.base_url.rstrip('/')}/consent/confirm/{token}"


# Flows: double opt-in, unsubscribe, preference center. Callers commit (request edge).

DOI_TEMPLATE = "double_opt_in"


def request_opt_in(*, session: Session, customer_id: int, settings: Settings, purpose: str = "email_marketing",
                   source: str = "signup", text_version: str | None = None,
                   now: dt.datetime | None = None) -> int | None:
    """Start double opt-in: consent stays pending and a confirmation mail is queued; returns its outbox id.

    Nothing happens when consent is already granted. The confirmation mail is transactional: it is the one
    message that may go out before consent exists.
    """
    validate(purpose=purpose, status="pending")
    now = now or utcnow()
    current = status_of(session=session, customer_id=customer_id).get(purpose)
    if current == "granted":
        return None
    if current != "pending":  # a repeated sign-up while pending keeps the first record (and its text version)
        record(session=session, customer_id=customer_id, purpose=purpose, status="pending", source=source,
               recorded_at=now, text_version=text_version)
    from emma.channels import service as channels  # channels depends on consent, not the other way round

    msg = channels.enqueue(session=session, now=now, **_confirmation_mail(customer_id, purpose, settings, now))
    return msg.id


def _confirmation_mail(customer_id: int, purpose: str, settings: Settings, now: dt.datetime) -> dict[str, Any]:
    url = confirmation_url(customer_id=customer_id, purpose=purpose, settings=settings, now=now)
    # One confirmation mail per customer, purpose and hour: a form submitted twice does not mail twice.
    return {"idempotency_key": f"doi:{customer_id}:{purpose}:{now:%Y%m%d%H}", "customer_id": customer_id,
            "channel": "email", "template": DOI_TEMPLATE, "transactional": True, "due_at": now,
            "payload": {"confirm_url": url, "ttl_hours": settings.doi_link_ttl_hours, "purpose": purpose}}


def confirm_opt_in(*, session: Session, token: str, settings: Settings,
                   now: dt.datetime | None = None) -> tuple[int, str, bool]:
    """Grant the consent a genuine, unexpired confirmation link names; (customer, purpose, changed)."""
    now = now or utcnow()
    data = read_token(token=token, kind="doi", settings=settings, now=now)
    cid, purpose = int(data["c"]), str(data["p"])
    current = session.scalar(select(Consent.status).where(Consent.customer_id == cid, Consent.purpose == purpose))
    if current != "pending":
        # Already confirmed (a second click) or withdrawn since: an old link must not re-grant.
        return cid, purpose, False
    record(session=session, customer_id=cid, purpose=purpose, status="granted", source="double_opt_in",
           recorded_at=now)
    return cid, purpose, True


def unsubscribe(*, session: Session, token: str, settings: Settings, source: str = "unsubscribe",
                now: dt.datetime | None = None) -> tuple[int, str, int | None]:
    """Revoke the purpose an unsubscribe link names; (customer, purpose, message id)."""
    now = now or utcnow()
    data = read_token(token=token, kind="unsubscribe", settings=settings, now=now)
    cid, purpose, mid = int(data["c"]), str(data["p"]), data.get("m")
    if record(session=session, customer_id=cid, purpose=purpose, status="revoked", source=source, recorded_at=now):
        _unsubscribed_feedback(session, cid, purpose, mid, source, now)
    return cid, purpose, mid


def _unsubscribed_feedback(session: Session, cid: int, purpose: str, mid: int | None, source: str,
                           now: dt.datetime) -> None:
    """The unsubscribe is logged on the message and comes back as an event, like opens and clicks."""
    from emma.channels import service as channels
    from emma.channels.models import OutboxMessage

    m = session.get(OutboxMessage, int(mid)) if mid is not None else None
    if m is not None and m.customer_id == cid:
        channels.log(session=session, message_id=m.id, status="unsubscribed", detail={"purpose": purpose,
                                                                                       "source": source}, at=now)
        channels.feed_back(session=session, message=m, event="Email Unsubscribed",
                           message_key=f"emma-unsub-{m.id}-{purpose}", props={"purpose": purpose}, now=now)


def set_preferences(*, session: Session, customer_id: int, choices: dict[str, bool], source: str,
                    now: dt.datetime | None = None) -> list[str]:
    """Apply the preference center's choices (purpose -> wanted); returns the purposes that changed.

    Granting email here needs no second opt-in: the customer reached the page through a signed link that
    was sent to that address.
    """
    now = now or utcnow()
    current = status_of(session=session, customer_id=customer_id)
    changed = []
    for purpose, wanted in choices.items():
        validate(purpose=purpose, status="granted")
        status = "granted" if wanted else "revoked"
        if current.get(purpose, "revoked" if not wanted else None) == status:
            continue
        if record(session=session, customer_id=customer_id, purpose=purpose, status=status, source=source,
                  recorded_at=now):
            changed.append(purpose)
    return changed


class Batch:
    """Consent decisions of many messages, applied in memory and written with a few statements.

    `record` and `request_opt_in` have the semantics of the functions of the same name; preload the
    customers first, then `flush`.
    """

    def __init__(self, session: Session, *, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self._current: dict[tuple[int, str], dict[str, Any]] = {}
        self._log: list[dict[str, Any]] = []
        self._older: list[dict[str, Any]] = []  # decisions older than the current ones: history for the log
        self._mails: list[dict[str, Any]] = []

    def preload(self, *, customer_ids: Iterable[int]) -> None:
        """Load the current consent of these customers."""
        t = Consent.__table__
        cids = sorted(set(customer_ids))
        for i in range(0, len(cids), 900):
            for row in self.session.execute(for_update(self.session, select(
                    t.c.id, t.c.customer_id, t.c.purpose, t.c.status, t.c.source, t.c.text_version, t.c.recorded_at)
                    .where(among(self.session, t.c.customer_id, cids[i:i + 900])).order_by(t.c.id))).mappings():
                self._current[(row["customer_id"], row["purpose"])] = {**row, "dirty": False}

    def status(self, *, customer_id: int, purpose: str) -> str | None:
        """The current status of one purpose, None when never decided."""
        current = self._current.get((customer_id, purpose))
        return current["status"] if current else None

    def record(self, *, customer_id: int, purpose: str, status: str, source: str,
               recorded_at: dt.datetime | None = None, text_version: str | None = None) -> bool:
        """As record (a decision older than the current one joins the audit log at flush)."""
        validate(purpose=purpose, status=status)
        recorded_at = recorded_at or utcnow()
        current = self._current.get((customer_id, purpose))
        if current is not None:
            if current["recorded_at"] > recorded_at:
                self._older.append({"customer_id": customer_id, "purpose": purpose, "status": status,
                                    "source": source, "text_version": text_version, "recorded_at": recorded_at})
                return False
            if (current["status"], current["source"], current["text_version"], current["recorded_at"]) == (
                    status, source, text_version, recorded_at):
                return False
        previous = current["status"] if current else None
        if current is None:
            current = self._current[(customer_id, purpose)] = {"id": None, "customer_id": customer_id,
                                                               "purpose": purpose}
        current.update(status=status, source=source, text_version=text_version, recorded_at=recorded_at,
                       dirty=True)
        self._log.append({"customer_id": customer_id, "purpose": purpose, "status": status,
                          "previous_status": previous, "source": source, "text_version": text_version,
                          "recorded_at": recorded_at, "logged_at": utcnow()})
        return True

    def request_opt_in(self, *, customer_id: int, purpose: str = "email_marketing", source: str = "signup",
                       text_version: str | None = None, now: dt.datetime | None = None) -> None:
        """As request_opt_in; the confirmation mail is queued by flush."""
        validate(purpose=purpose, status="pending")
        now = now or utcnow()
        current = self.status(customer_id=customer_id, purpose=purpose)
        if current == "granted":
            return
        if current != "pending":
            self.record(customer_id=customer_id, purpose=purpose, status="pending", source=source,
                        recorded_at=now, text_version=text_version)
        self._mails.append(_confirmation_mail(customer_id, purpose, self.settings, now))

    def flush(self) -> None:
        """Write the changed consents and their log, queue the confirmation mails."""
        from emma.channels import service as channels

        if self._mails:
            channels.enqueue_many(session=self.session, messages=self._mails)
            self._mails = []
        t = Consent.__table__
        cols = ("customer_id", "purpose", "status", "source", "text_version", "recorded_at")
        fresh = [{k: c[k] for k in cols} for c in self._current.values() if c["dirty"] and c["id"] is None]
        changed = [{"id": c["id"], **{k: c[k] for k in cols[2:]}}
                   for c in self._current.values() if c["dirty"] and c["id"] is not None]
        insert_rows(self.session, t, fresh)
        update_rows(self.session, t, changed)
        insert_rows(self.session, ConsentLog, self._log)
        if self._older:
            insert_rows(self.session, ConsentLog, _backdated(
                self.session, sorted(self._older, key=lambda d: d["recorded_at"]), utcnow()))
        for c in self._current.values():
            c["dirty"] = False
        self._log, self._older = [], []


def record_many(*, session: Session, decisions: list[dict[str, Any]],
                now: dt.datetime | None = None) -> tuple[int, int]:
    """Record many decisions set-based, in recorded_at order; (changed, unchanged).

    Each dict: customer_id, purpose, status, source, recorded_at, text_version, and dated (False when
    recorded_at is only the time of the import). The audit entries keep the decision's own recorded_at,
    source and text version, and the current row is always the latest decision, so the outcome does not
    depend on the order in which files, chunks or concurrent imports bring the decisions:
    - a dated decision is logged once (a replay of it changes nothing), also when it repeats the status;
    - an undated one that repeats the current status (and text version, when it names one) changes nothing,
      so re-importing a file without times is a no-op too;
    - one older than the current decision joins the log as history and leaves the current row alone.
    """
    now = now or utcnow()
    for d in decisions:
        validate(purpose=d["purpose"], status=d["status"])
    cids = list({d["customer_id"] for d in decisions})
    current: dict[tuple[int, str], dict[str, Any]] = {}
    for i in range(0, len(cids), 900):
        # Locked (PostgreSQL): a concurrent import of the same customers waits and then reads this one's result.
        for row in session.execute(for_update(session, select(
                Consent.id, Consent.customer_id, Consent.purpose, Consent.status, Consent.source,
                Consent.text_version, Consent.recorded_at).where(among(session, Consent.customer_id,
                                                                       cids[i:i + 900])).order_by(Consent.id))
                                   ).mappings():
            current[(row["customer_id"], row["purpose"])] = dict(row)
    touched: dict[tuple[int, str], dict[str, Any]] = {}
    log: list[dict[str, Any]] = []
    unchanged = 0
    older: list[dict[str, Any]] = []
    for d in sorted(decisions, key=lambda d: d["recorded_at"]):
        key = (d["customer_id"], d["purpose"])
        state = current.get(key)
        if state is not None:
            if state["recorded_at"] > d["recorded_at"]:
                older.append(d)
                continue
            if state["status"] == d["status"] and (
                    state["recorded_at"] == d["recorded_at"]  # a replay
                    or (not d.get("dated", True) and d.get("text_version") in (None, state["text_version"]))):
                unchanged += 1
                continue
        version = d.get("text_version")
        if state is not None and version is None and state["status"] == d["status"]:
            version = state["text_version"]  # a repeat that names no text version confirms the one in force
        log.append({"customer_id": key[0], "purpose": key[1], "status": d["status"],
                    "previous_status": state["status"] if state else None, "source": d["source"],
                    "text_version": d.get("text_version"), "recorded_at": d["recorded_at"], "logged_at": now})
        state = {**(state or {}), "customer_id": key[0], "purpose": key[1], "status": d["status"],
                 "source": d["source"], "text_version": version, "recorded_at": d["recorded_at"]}
        current[key] = touched[key] = state
    insert_rows(session, Consent, [{k: v for k, v in s.items() if k != "id"} for s in touched.values()
                                   if "id" not in s])
    update_rows(session, Consent, [{"id": s["id"], "status": s["status"], "source": s["source"],
                                    "text_version": s["text_version"], "recorded_at": s["recorded_at"]}
                                   for s in touched.values() if "id" in s])
    history = _backdated(session, older, now) if older else []
    insert_rows(session, ConsentLog, log + history)
    return len(log) + len(history), unchanged + len(older) - len(history)


def _backdated(session: Session, decisions: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """Audit entries for decisions older than the current ones (in recorded_at order) that the log does not
    hold yet. previous_status is the status the log shows at the decision's time; the entries logged after
    it keep theirs, as the log is never rewritten."""
    keys = {(d["customer_id"], d["purpose"]) for d in decisions}
    cids = sorted({cid for cid, _ in keys})
    t = ConsentLog.__table__
    known: dict[tuple[int, str], list[tuple[dt.datetime, str]]] = {}
    for i in range(0, len(cids), 900):
        for cid, purpose, at, status in session.execute(
                select(t.c.customer_id, t.c.purpose, t.c.recorded_at, t.c.status)
                .where(among(session, t.c.customer_id, cids[i:i + 900])).order_by(t.c.recorded_at, t.c.id)):
            if (cid, purpose) in keys:
                known.setdefault((cid, purpose), []).append((at, status))
    out = []
    for d in decisions:
        key = (d["customer_id"], d["purpose"])
        entries = known.setdefault(key, [])
        entry = (d["recorded_at"], d["status"])
        if entry in entries:
            continue  # logged by an earlier run of the same migration
        at = bisect.bisect_right(entries, d["recorded_at"], key=lambda e: e[0])
        entries.insert(at, entry)
        out.append({"customer_id": key[0], "purpose": key[1], "status": d["status"],
                    "previous_status": entries[at - 1][1] if at else None, "source": d["source"],
                    "text_version": d.get("text_version"), "recorded_at": d["recorded_at"], "logged_at": now})
    return out
