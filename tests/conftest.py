"""Fixtures: a migrated database per test, on SQLite and on a real PostgreSQL the suite starts itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from emma.db import make_engine, make_sessionmaker, upgrade

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Apps built in tests run no background worker unless a test asks for one.
os.environ.setdefault("EMMA_WORKER_EMBEDDED", "false")


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    root = Path("/usr/lib/postgresql")
    if root.exists():
        versions = sorted(root.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
        if versions and (versions[-1] / "bin" / "pg_ctl").exists():
            return versions[-1] / "bin"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temp dir, on loopback (run as `postgres` when we are root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="emma-pg-"))
        self.port = _free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "emma", "-E", "UTF8")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-o", opts, "-l", f"{self.dir}/log", "-w", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://emma@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bin()
    if bindir is None:
        if IN_CI:
            pytest.fail("PostgreSQL binaries not found, and CI=true: the suite must run on PostgreSQL")
        pytest.skip("PostgreSQL binaries not found (install Debian's postgresql); Postgres tests skipped")
    server = PostgresServer(bindir)
    server.start()
    # One migrated template; each test clones it (CREATE DATABASE ... TEMPLATE is fast).
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("CREATE DATABASE emma_template"))
    upgrade(server.url("emma_template"))
    server.admin = admin  # type: ignore[attr-defined]
    yield server
    admin.dispose()
    server.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _new_db_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, object]:
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "emma.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}", None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = "t_" + uuid.uuid4().hex[:16]
    with server.admin.connect() as c:  # type: ignore[attr-defined]
        c.execute(text(f"CREATE DATABASE {name} TEMPLATE emma_template"))
    return server.url(name), (server, name)


def _drop(handle: object) -> None:
    if handle is None:
        return
    server, name = handle  # type: ignore[misc]
    with server.admin.connect() as c:
        for _ in range(20):
            try:
                c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                return
            except Exception:  # noqa: BLE001 - a lingering connection; try again shortly
                time.sleep(0.05)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database URL: once on SQLite, once on PostgreSQL."""
    url, handle = _new_db_url(request.param, request, tmp_path)
    yield url
    _drop(handle)


@pytest.fixture
def other_db_url(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A second fresh database of db_url's kind: to run one scenario two ways and compare the tables."""
    (tmp_path / "other").mkdir()
    url, handle = _new_db_url("sqlite" if db_url.startswith("sqlite") else "postgres", request, tmp_path / "other")
    yield url
    _drop(handle)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    s = session_factory()
    yield s
    s.rollback()
    s.close()
