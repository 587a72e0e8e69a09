"""Channel adapters: one small interface, send(envelope) -> DeliveryResult, raising the channel error tree."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import hmac
import json
import re
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

from emma.channels.exceptions import PermanentError, RateLimited, TransientError
from emma.config import Settings

_EMAIL_RE = re.compile(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+\.[^@\s<>\"(),;:]+$")
_PHONE_RE = re.compile(r"^\+[1-9]\d{6,14}$")  # E.164


@dataclass
class Envelope:
    """A rendered message ready for one adapter."""

    message_id: int
    channel: str
    to: str | None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeliveryResult:
    provider_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    channel: str

    def send(self, message: Envelope) -> DeliveryResult: ...


def valid_email(address: str | None) -> bool:
    """A plausible single mailbox address (no display name, no list)."""
    return bool(address) and len(address) <= 320 and _EMAIL_RE.match(address) is not None  # type: ignore[arg-type]


def valid_phone(number: str | None) -> bool:
    """An E.164 phone number (+491701234567)."""
    return bool(number) and _PHONE_RE.match(number) is not None  # type: ignore[arg-type]


def _mail_domain(sender: str) -> str:
    addr = email.utils.parseaddr(sender)[1]
    return addr.rpartition("@")[2] or "localhost"


class EmailAdapter:
    """Email over SMTP (smtplib): multipart text + HTML. The connection is kept for the messages of one delivery
    pass and closed by `close` (the delivery loop calls it at the end of each pass)."""

    channel = "email"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def build(self, message: Envelope) -> EmailMessage:
        """The MIME message: text first, HTML as the preferred alternative."""
        s = self.settings
        msg = EmailMessage()
        msg["From"] = s.mail_from
        msg["To"] = message.to
        msg["Subject"] = message.subject or ""
        msg["Date"] = email.utils.formatdate(usegmt=True)
        msg["Message-ID"] = email.utils.make_msgid(idstring=f"emma.{message.message_id}",
                                                   domain=_mail_domain(s.mail_from))
        if s.mail_reply_to:
            msg["Reply-To"] = s.mail_reply_to
        for name, value in message.headers.items():
            msg[name] = value
        msg.set_content(message.text or "")
        if message.html:
            msg.add_alternative(message.html, subtype="html")
        return msg

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.smtp_security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                                  context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            if s.smtp_security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
        if s.smtp_username:
            smtp.login(s.smtp_username, s.smtp_password or "")
        return smtp

    def close(self) -> None:
        """Say goodbye to the SMTP server (end of a delivery pass)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()

    def _send_once(self, mime: EmailMessage, to: str) -> dict[str, tuple[int, bytes]]:
        reused = self._smtp is not None
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            return self._smtp.send_message(mime, to_addrs=[to])
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            self._drop()
            if not reused:
                raise
            # The server closed the kept connection meanwhile (idle timeout): one fresh attempt.
            self._smtp = self._connect()
            return self._smtp.send_message(mime, to_addrs=[to])
        except smtplib.SMTPResponseException:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.rset()  # a refused message leaves the connection usable for the next one
            raise

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.close()

    def send(self, message: Envelope) -> DeliveryResult:
        if not valid_email(message.to):
            raise PermanentError(f"invalid email address {message.to!r}")
        mime = self.build(message)
        try:
            refused = self._send_once(mime, message.to)  # type: ignore[arg-type]
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise _smtp_error(code, reply, recipient=True) from exc
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, auth, ...
            raise _smtp_error(exc.smtp_code, exc.smtp_error, recipient=False) from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused connection, timeout, dropped line
            self._drop()
            raise TransientError(f"SMTP {self.settings.smtp_host}:{self.settings.smtp_port}: {exc}") from exc
        if refused:
            code, reply = next(iter(refused.values()))
            raise _smtp_error(code, reply, recipient=True)
        return DeliveryResult(provider_id=mime["Message-ID"], detail={"smtp": f"{self.settings.smtp_host}"})


def _smtp_error(code: int, reply: bytes | str, *, recipient: bool) -> Exception:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    if code == 421 or code == 451 and "rate" in text.lower():
        return RateLimited(f"SMTP {code} {text}")
    if 400 <= code < 500 or code in (530, 535):  # 530/535: our credentials, fixable: retry later
        return TransientError(f"SMTP {code} {text}")
    return PermanentError(f"SMTP {code} {text}", bounced=recipient)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature header value: sha256=HMAC(secret, timestamp + '.' + body)."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookAdapter:
    """JSON POST to an HTTP endpoint, signed with HMAC-SHA256 (X-Emma-Signature over timestamp and body)."""

    channel = "webhook"

    def __init__(self, *, url: str, secret: str, timeout: float, token: str | None = None,
                 client: httpx.Client | None = None) -> None:
        self.url, self.secret, self.timeout, self.token = url, secret, timeout, token
        self.client = client

    def body(self, message: Envelope) -> dict[str, Any]:
        return {"message_id": message.message_id, "channel": message.channel, "to": message.to,
                "subject": message.subject, "text": message.text, "data": message.data}

    def send(self, message: Envelope) -> DeliveryResult:
        raw = json.dumps(self.body(message), separators=(",", ":"), ensure_ascii=False, default=str).encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Emma-Timestamp": ts,
                   "X-Emma-Signature": signature(self.secret, ts, raw),
                   "Idempotency-Key": f"emma-{message.message_id}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            if self.client is not None:
                r = self.client.post(self.url, content=raw, headers=headers, timeout=self.timeout)
            else:
                r = httpx.post(self.url, content=raw, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:  # refused, timeout, reset
            raise TransientError(f"{self.channel} {self.url}: {exc.__class__.__name__}: {exc}") from exc
        if r.status_code == 429:
            raise RateLimited(f"{self.channel}: HTTP 429", retry_after=_retry_after(r.headers.get("retry-after")))
        if r.status_code >= 500 or r.status_code == 408:
            raise TransientError(f"{self.channel}: HTTP {r.status_code}")
        if r.status_code >= 400:
            raise PermanentError(f"{self.channel}: HTTP {r.status_code} {r.text[:200]}")
        provider_id = None
        try:
            reply = r.json()
            if isinstance(reply, dict):
                provider_id = str(reply.get("id") or reply.get("message_id") or "") or None
        except ValueError:
            pass
        return DeliveryResult(provider_id=provider_id, detail={"http_status": r.status_code})


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class SmsAdapter(WebhookAdapter):
    """SMS through an HTTP provider: {"to": "+49...", "text": ...}."""

    channel = "sms"

    def body(self, message: Envelope) -> dict[str, Any]:
        return {"message_id": message.message_id, "to": message.to, "text": message.text}

    def send(self, message: Envelope) -> DeliveryResult:
        if not valid_phone(message.to):
            raise PermanentError(f"invalid phone number {message.to!r} (E.164 needed)")
        return super().send(message)


class PushAdapter(WebhookAdapter):
    """Push through an HTTP provider that maps the customer's external id to devices."""

    channel = "push"

    def body(self, message: Envelope) -> dict[str, Any]:
        # url: what the device opens on a tap, the signed tap link (it records the tap, then leads on).
        return {"message_id": message.message_id, "external_user_id": message.to, "title": message.subject,
                "body": message.text, "url": message.data.get("tap_url"), "data": message.data}

    def send(self, message: Envelope) -> DeliveryResult:
        if not message.to:
            raise PermanentError("customer has no external id to address push messages to")
        return super().send(message)


def configured_adapters(settings: Settings) -> dict[str, Adapter]:
    """The adapters the settings configure; messages on other channels wait in the outbox."""
    secret = settings.webhook_secret or settings.secret_key
    out: dict[str, Adapter] = {"email": EmailAdapter(settings)}
    if settings.webhook_url:
        out["webhook"] = WebhookAdapter(url=settings.webhook_url, secret=secret, timeout=settings.webhook_timeout)
    if settings.sms_provider_url:
        out["sms"] = SmsAdapter(url=settings.sms_provider_url, secret=secret, timeout=settings.webhook_timeout,
                                token=settings.sms_provider_token)
    if settings.push_provider_url:
        out["push"] = PushAdapter(url=settings.push_provider_url, secret=secret, timeout=settings.webhook_timeout,
                                  token=settings.push_provider_token)
    return out
