"""Local receivers for the demo's messages: an SMTP server (aiosmtpd) and an HTTP endpoint for webhook,
SMS and push providers, both on 127.0.0.1 on a free port. What they receive is kept for the simulated
customers to read."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mail:
    rcpt_tos: list[str]
    message: EmailMessage


class MailSink:
    """An SMTP server that accepts every message and keeps it, parsed, until `take` collects it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received = 0
        self._lock = threading.Lock()
        self._mails: list[Mail] = []
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd hook
        msg = message_from_bytes(envelope.original_content, policy=policy.default)
        with self._lock:
            self._mails.append(Mail(list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
            self.received += 1
        return "250 Message accepted"

    def take(self) -> list[Mail]:
        """The mails that arrived since the last call."""
        with self._lock:
            out, self._mails = self._mails, []
        return out

    def __enter__(self) -> MailSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class HookSink:
    """An HTTP server taking JSON POSTs (/webhook, /sms, /push) and answering like a provider ({"id": ...})."""

    port: int = field(default_factory=free_port)
    received: int = 0
    _items: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def take(self) -> list[Delivery]:
        """The requests that arrived since the last call."""
        with self._lock:
            out, self._items = self._items, []
        return out

    def __enter__(self) -> HookSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server hook
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                with sink._lock:
                    sink.received += 1
                    n = sink.received
                    if isinstance(body, dict):
                        sink._items.append(Delivery(self.path, dict(self.headers), body))
                reply = json.dumps({"id": f"sink-{n}"}).encode()
                self.send_response(200 if isinstance(body, dict) else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="emma-demo-hooks", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
