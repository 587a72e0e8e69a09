"""`emma serve --workers N`: several server processes on PostgreSQL; refused on SQLite with the reason."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from emma.auth import service as auth
from emma.db import make_engine, make_sessionmaker
from emma.ingest.models import Event

CLI = [sys.executable, "-c", "from emma.cli.main import app; app()"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_serve_with_several_workers(db_url):
    env = {**os.environ, "EMMA_DATABASE_URL": db_url, "EMMA_WORKER_EMBEDDED": "false"}
    port = _port()
    cmd = [*CLI, "serve", "--port", str(port), "--workers", "2"]
    if db_url.startswith("sqlite"):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "needs PostgreSQL" in done.stdout
        return
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        key = auth.create_key(session=s, kind="write")
        s.commit()
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()
            time.sleep(0.2)
        workers = [c for c in _children(server.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) == 2
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(key, "")) as client:
            for i in range(20):  # spread over both processes by the kernel; each lands once
                r = client.post("/v1/track", json={"userId": "u1", "event": "Signed Up", "messageId": f"w-{i}"})
                assert r.status_code == 200, r.text
            assert client.post("/v1/track", json={"userId": "u1", "event": "Signed Up",
                                                  "messageId": "w-0"}).status_code == 200
    finally:
        server.terminate()
        server.wait(30)
    with make_sessionmaker(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Event).where(Event.message_id.like("w-%"))) == 20
    engine.dispose()
