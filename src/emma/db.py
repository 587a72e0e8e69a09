"""Engine and session factories, the shared declarative base and column types."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii as _encode_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Float, MetaData, Numeric, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timestamps are stored as naive UTC and always come back timezone-aware (UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware datetimes")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA cache_size=-65536")
    # Reads map the file instead of copying pages through read(): identity look-ups on a new connection
    # took about a third less time.
    cur.execute("PRAGMA mmap_size=268435456")
    cur.close()


class WalCheckpointer:
    """SQLite: copies the write-ahead log into the database file in a thread of its own, for a bulk writer.

    A connection that commits runs the checkpoint itself once the log holds 1,000 pages: it copies the
    pages and waits for fsync while the writer could go on. With start(session) the writer's connection
    leaves that to this thread, which checkpoints (PASSIVE, never blocking the writer) after every commit
    the writer reports with committed(). What is committed and when it is synced does not change (the
    same checkpoints, with synchronous=NORMAL); they run on the other core. A no-op except for SQLite files.

    A server's writer, which commits hundreds of small transactions a second, calls after_commit() instead:
    the thread checkpoints at most every `every` seconds, and the connections keep their own automatic
    checkpoint for when the thread falls behind (it then finds the log already copied).
    """

    def __init__(self, engine: Engine, *, every: float = 0.0, name: str = "emma-wal-checkpoint") -> None:
        url = engine.url
        self.path = url.database if url.get_backend_name() == "sqlite" else None
        if self.path in ("", ":memory:") or (self.path or "").startswith("file:"):
            self.path = None
        self.every = every
        self.name = name
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self, session: Session) -> None:
        """Take over the checkpoints of the session's connection (call in each transaction of the writer)."""
        if self.path is None:
            return
        session.connection().exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def committed(self) -> None:
        """The writer committed: checkpoint what it wrote."""
        self._wake.set()

    def after_commit(self) -> None:
        """A commit of a writer that keeps its connection's own checkpoints: copy the log soon, in the thread."""
        if self.path is None:
            return
        if self._thread is None:
            self._ensure_thread()
        self._wake.set()

    def stop(self, session: Session | None = None) -> None:
        """Last checkpoint, end the thread; the session's connection checkpoints by itself again."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        if session is not None:
            session.connection().exec_driver_sql(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT}")

    def _run(self) -> None:
        import sqlite3

        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # as the writer's connections: sync at checkpoints
            began = 0.0
            while True:
                self._wake.wait()
                if self.every and not self._stopping.is_set():
                    # Commits that arrive meanwhile are copied by the same checkpoint; stop() cuts the wait short.
                    self._stopping.wait(max(0.0, began + self.every - time.monotonic()))
                    began = time.monotonic()
                self._wake.clear()
                last = self._stopping.is_set()  # read before the checkpoint: it then covers every commit before stop()
                with contextlib.suppress(sqlite3.Error):  # busy or locked: the next commit's checkpoint catches up
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                if last:
                    return
        finally:
            conn.close()


_WAL_AUTOCHECKPOINT = 1000  # SQLite's default, pages


def make_engine(url: str, *, echo: bool = False, wal_autocheckpoint: int | None = None) -> Engine:
    """Create an engine; SQLite gets WAL mode and a busy timeout so several threads can share it.

    wal_autocheckpoint (SQLite, pages) is when a committing connection copies the log into the database
    file itself; for a process whose WalCheckpointer does that in the background.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        if wal_autocheckpoint is not None:
            event.listen(engine, "connect", lambda conn, _record: conn.execute(
                f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}"))
        return engine
    # JSONB parameters through the compact encoder built once (json_text), not a json.dumps call per value:
    # 5 % of the server's CPU on /v1/batch (measured).
    engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20,
                           json_serializer=json_text)
    if url.startswith("postgresql"):
        event.listen(engine, "do_execute", _plan_array_queries_for_their_values)
    return engine


def _plan_array_queries_for_their_values(cursor: Any, statement: str, parameters: Any, _context: Any) -> bool:
    # psycopg prepares a statement on its fifth execution, and PostgreSQL may then switch to a generic plan,
    # which knows nothing of the array an IN (SELECT unnest(...)) or = ANY(...) look-up is given: the identity
    # look-up of an ingestion group went from 1.5 ms to 75 ms (measured). Such queries are never prepared, so
    # each is planned for its values. Everything else keeps PostgreSQL's default: forcing custom plans for all
    # statements cost the bulk import of 200,000 order lines 2.7 s of server CPU (6.6 s against 3.9 s).
    if statement.lstrip().startswith(("SELECT", "WITH")) and ("unnest(" in statement or "ANY(" in statement):
        cursor.execute(statement, parameters, prepare=False)
        return True
    return False


def insert_ignoring_conflicts(session: Session, model: Any, index_elements: list[str]) -> Any:
    """INSERT ... ON CONFLICT (index_elements) DO NOTHING for the session's dialect (SQLite or PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    # On the table, not the mapped class: a Core executemany, without the ORM's per-row bookkeeping.
    return dialect_insert(getattr(model, "__table__", model)).on_conflict_do_nothing(index_elements=index_elements)


def among(session: Session, column: Any, values: Any) -> Any:
    """column IN values (strings or integers), fast on both databases.

    On PostgreSQL a list of parameters (or = ANY(array)) is checked row by row once psycopg's prepared statement
    gets a generic plan, and on a freshly loaded table without statistics that cost ~0.5 s per 900 values
    (measured); IN (SELECT unnest(array)) is planned as a semi-join and takes milliseconds.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import bindparam, func, select
        from sqlalchemy.dialects.postgresql import ARRAY

        return column.in_(select(func.unnest(bindparam(None, list(values), type_=ARRAY(column.type)))))
    values = list(values)
    if not all(type(v) is str or type(v) is int for v in values):
        return column.in_(values)
    from sqlalchemy import String, bindparam, func, select

    # SQLite: one JSON parameter instead of an expanding list, which SQLAlchemy renders anew each time.
    each = func.json_each(bindparam(None, json.dumps(values), type_=String)).table_valued("value")
    return column.in_(select(each.c.value))


def rows_among(session: Session, table: Any, columns: Sequence[str], key: str, values: Sequence[Any], *,
               where: str = "", params: Sequence[Any] = (), for_update: bool = False,
               described: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """SELECT columns FROM table (a table, or a FROM clause as text) WHERE key IN values [AND where], as plain
    SQL on the driver.

    For hot look-ups of strings, integers and booleans: no statement is built, compiled or cached per call
    (building one costs more than a small query itself). where may hold {p} markers for params; values
    come back as the driver returns them (no type processing; see read_datetime). Pending ORM changes are
    flushed first. for_update locks the rows until commit on PostgreSQL, as db.for_update; described, if
    given, receives the driver's type code of each column.
    """
    values = list(values)
    if not values:
        return []
    session.flush()
    conn = session.connection()
    name = table if isinstance(table, str) else getattr(table, "__table__", table).name
    cols = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        kind = "bigint" if all(type(v) is int for v in values) else "text"
        cond = f" AND {where.replace('{p}', '%s')}" if where else ""
        sql = f"SELECT {cols} FROM {name} WHERE {key} IN (SELECT unnest(%s::{kind}[])){cond}"
        if for_update:
            sql += " FOR UPDATE"
        args: tuple[Any, ...] = (values, *params)
    else:
        cond = f" AND {where.replace('{p}', '?')}" if where else ""
        sql = f"SELECT {cols} FROM {name} WHERE {key} IN (SELECT value FROM json_each(?)){cond}"
        args = (json.dumps(values), *params)
    result = conn.exec_driver_sql(sql, args)
    if described is not None:
        described[:] = [d[1] for d in result.cursor.description]
    return driver_rows(result)


def typed_rows_among(session: Session, table: Any, columns: Sequence[str], key: str, values: Sequence[Any],
                     **kw: Any) -> list[tuple[Any, ...]]:
    """rows_among for a mapped table, with each column's values converted as SQLAlchemy would (dates, JSON,
    booleans, aware datetimes), column by column instead of through a Row per row."""
    types: list[Any] = []  # the driver's type codes, which some of PostgreSQL's processors go by
    rows = rows_among(session, table, columns, key, values, described=types, **kw)
    if not rows:
        return rows
    dialect = session.get_bind().dialect
    table = getattr(table, "__table__", table)
    processors = [table.c[c].type.dialect_impl(dialect).result_processor(dialect, code)
                  for c, code in zip(columns, types, strict=True)]
    if not any(processors):
        return rows
    cols = [list(col) if process is None else [None if v is None else process(v) for v in col]
            for col, process in zip(zip(*rows, strict=True), processors, strict=True)]
    return list(zip(*cols, strict=True))


def driver_rows(result: Any) -> list[Any]:
    """All rows of a result as the driver's tuples, without building a Row object for each."""
    rows = result.cursor.fetchall()
    result.close()
    return rows


_MISSING = object()


def _default(column: Any) -> Any:
    default = column.default
    if default is None:
        return None
    return default.arg(None) if default.is_callable else default.arg


def _raw_values(column: Any, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """One column of many rows, the column's Python default where a row leaves it out."""
    name = column.name
    try:
        return [r[name] for r in rows]
    except KeyError:
        values = [r.get(name, _MISSING) for r in rows]
        return [_default(column) if v is _MISSING else v for v in values]


def _to_driver(dialect: Any, column: Any, values: list[Any], memo: dict[int, Any] | None = None) -> list[Any]:
    """Values as the driver takes them, by SQLAlchemy's own bind processing of the column type."""
    if dialect.name == "sqlite":
        if isinstance(column.type, UTCDateTime):
            return _sqlite_datetimes(values, memo)
        if isinstance(column.type, JSON) and dialect._json_serializer is None:
            return [None if v is None else json_text(v) for v in values]
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if not process:
        return values
    if values and values[0] is not None and all(v is values[0] for v in values):  # one value repeated: once
        return [process(values[0])] * len(values)
    return [None if v is None else process(v) for v in values]


def read_datetime(value: Any) -> dt.datetime | None:
    """A UTCDateTime column's value as the driver returns it (SQLite: text; PostgreSQL: naive UTC), aware UTC."""
    if value is None:
        return None
    if type(value) is str:
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def driver_datetimes(dialect_name: str, values: list[Any]) -> list[Any]:
    """Datetimes as the driver takes them for a UTCDateTime column (SQLite stores them as text), for plain SQL."""
    return _sqlite_datetimes(values) if dialect_name == "sqlite" else values


_ZERO = dt.timedelta(0)


def stored_datetime(value: dt.datetime) -> str:
    """The text a UTCDateTime column holds for value on SQLite (UTC, to the microsecond); PostgreSQL reads it
    as a timestamp too."""
    return _sqlite_datetimes([value])[0]

if _c_make_encoder is not None:
    # json.dumps builds an encoder for every call, which costs more than encoding a small object; this one is
    # built once. Same output as json.dumps with compact separators (ASCII, NaN allowed, TypeError on
    # values JSON cannot hold).
    _encode = _c_make_encoder(None, json.JSONEncoder().default, _encode_ascii, None, ":", ",", False, False, True)

    def json_text(value: Any) -> str:
        """value as compact JSON text, as a JSON column stores it."""
        if not value and type(value) is dict:
            return "{}"
        return "".join(_encode(value, 0))
else:  # pragma: no cover - Python without the C accelerator
    def json_text(value: Any) -> str:
        """value as compact JSON text, as a JSON column stores it."""
        return json.dumps(value, separators=(",", ":"))


def _sqlite_datetimes(values: list[Any], memo: dict[int, Any] | None = None) -> list[Any]:
    """The text SQLAlchemy's SQLite DATETIME writes, without its per-value strftime.

    A batch repeats datetime objects (received_at, an order's time in its columns and lines): each object is
    formatted once per memo. The memo holds the object with its text, so its id cannot be reused meanwhile.
    """
    memo = {} if memo is None else memo
    out: list[Any] = []
    append = out.append
    for v in values:
        if v is None:
            append(None)
            continue
        known = memo.get(id(v))
        if known is None:
            if v.utcoffset() == _ZERO:  # UTC already: cut the "+00:00" off instead of converting
                text = v.isoformat(" ", "microseconds")[:26]
            else:
                text = _utc_naive(v).isoformat(" ", "microseconds")
            memo[id(v)] = known = (v, text)
        append(known[1])
    return out


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime given; use timezone-aware datetimes")
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _pg_uniform(column: Any, values: list[Any]) -> list[Any]:
    """A number column's values as one Python type: psycopg dumps an array only if its elements share one."""
    if not isinstance(column.type, Numeric) or len({type(v) for v in values if v is not None}) < 2:
        return values
    if isinstance(column.type, Float):
        return [None if v is None else float(v) for v in values]
    return [v if v is None or isinstance(v, Decimal) else Decimal(str(v)) for v in values]


def _pg_array_type(dialect: Any, column: Any) -> str:
    return column.type.compile(dialect=dialect) + "[]"


def insert_rows(session: Session, table: Any, rows: Sequence[dict[str, Any]], *,
                on_conflict: Sequence[str] | None = None, returning: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """INSERT many rows (dicts) on the driver's fast path; see insert_columns."""
    table = getattr(table, "__table__", table)
    if not rows:
        return []
    given = set().union(*rows)
    return insert_columns(session, table, {c.name: _raw_values(c, rows) for c in table.columns if c.name in given},
                          on_conflict=on_conflict, returning=returning)


def insert_columns(session: Session, table: Any, columns: dict[str, list[Any]], *,
                   on_conflict: Sequence[str] | None = None, returning: Sequence[str] = (),
                   encoded: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """INSERT many rows given column-wise (name -> values); with on_conflict, clashing rows are skipped.

    SQLite: executemany, or multi-row VALUES when rows come back. PostgreSQL: one INSERT ... SELECT FROM
    unnest(arrays), a column per parameter. Both skip the per-row parameter handling of an ORM or Core
    executemany, which costs more than the database itself for large chunks. Returns the RETURNING rows.
    `encoded` names columns whose values are already as the driver takes them (e.g. JSON columns as text).
    """
    table = getattr(table, "__table__", table)
    n = len(next(iter(columns.values()))) if columns else 0
    if not n:
        return []
    conn = session.connection()
    dialect = conn.dialect
    cols = [c for c in table.columns if c.name in columns or (c.default is not None and not c.primary_key)]
    memo: dict[int, Any] = {}
    data = [columns[c.name] if c.name in encoded else
            _to_driver(dialect, c, columns[c.name] if c.name in columns else [_default(c)] * n, memo) for c in cols]
    names = ", ".join(dialect.identifier_preparer.quote(c.name) for c in cols)
    conflict = f" ON CONFLICT ({', '.join(on_conflict)}) DO NOTHING" if on_conflict else ""
    ret = f" RETURNING {', '.join(returning)}" if returning else ""
    if dialect.name == "postgresql":
        # Binary parameters: psycopg's text array dumper escapes every element with a regular expression,
        # which was most of emma's CPU per row here; the binary one writes lengths instead (9x less CPU for
        # 20,000 events).
        data = [_pg_uniform(c, v) for c, v in zip(cols, data, strict=True)]
        arrays = ", ".join(f"%b::{_pg_array_type(dialect, c)}" for c in cols)
        sql = f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays}){conflict}{ret}"
        result = conn.exec_driver_sql(sql, tuple(data))
        return [tuple(r) for r in result] if returning else []
    one = "(" + ", ".join("?" * len(cols)) + ")"
    tuples = list(zip(*data, strict=True))
    if not returning:
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES {one}{conflict}", tuples)
        return []
    out: list[tuple[Any, ...]] = []
    per = max(1, 32000 // len(cols))  # SQLite allows 32,766 parameters per statement
    for i in range(0, len(tuples), per):
        part = tuples[i:i + per]
        sql = f"INSERT INTO {table.name} ({names}) VALUES {', '.join([one] * len(part))}{conflict}{ret}"
        out += [tuple(r) for r in conn.exec_driver_sql(sql, tuple(v for t in part for v in t))]
    return out


def allocate_ids(session: Session, table: Any, n: int) -> list[int]:
    """n fresh primary keys for table, so a batch of new rows and the rows that refer to them can be written
    in one statement each.

    PostgreSQL draws them from the column's sequence. SQLite continues after the largest id; a concurrent
    writer that took the same ids makes the insert fail on the primary key, and the transaction is retried.
    """
    table = getattr(table, "__table__", table)
    if n <= 0:
        return []
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        return list(conn.exec_driver_sql(
            f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) FROM generate_series(1, %s)",
            (n,)).scalars())
    start = conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table.name}").scalar_one()
    return list(range(start + 1, start + n + 1))


def update_rows(session: Session, table: Any, rows: Sequence[dict[str, Any]], *, key: str = "id",
                only_newer: str | None = None) -> None:
    """UPDATE many rows by key; every row sets the same columns. only_newer names a column that is only
    moved forward: rows where it is already at or past the new value are left alone."""
    table = getattr(table, "__table__", table)
    if not rows:
        return
    conn = session.connection()
    dialect = conn.dialect
    cols = [table.c[key]] + [table.c[n] for n in rows[0] if n != key]
    memo: dict[int, Any] = {}
    data = [_to_driver(dialect, c, _raw_values(c, rows), memo) for c in cols]
    q = dialect.identifier_preparer.quote
    if dialect.name == "postgresql":
        sets = ", ".join(f"{q(c.name)} = u.{q(c.name)}" for c in cols[1:])
        arrays = ", ".join(f"%s::{_pg_array_type(dialect, c)}" for c in cols)
        aliases = ", ".join(q(c.name) for c in cols)
        cond = (f" AND (t.{q(only_newer)} IS NULL OR t.{q(only_newer)} < u.{q(only_newer)})" if only_newer else "")
        conn.exec_driver_sql(f"UPDATE {table.name} AS t SET {sets} FROM unnest({arrays}) AS u({aliases}) "
                             f"WHERE t.{q(key)} = u.{q(key)}{cond}", tuple(data))
        return
    sets = ", ".join(f"{q(c.name)} = ?" for c in cols[1:])
    params = [(*r[1:], r[0]) for r in zip(*data, strict=True)]
    cond = ""
    if only_newer:
        i = [c.name for c in cols].index(only_newer)
        cond = f" AND ({q(only_newer)} IS NULL OR {q(only_newer)} < ?)"
        params = [(*p, r[i]) for p, r in zip(params, zip(*data, strict=True), strict=True)]
    conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE {q(key)} = ?{cond}", params)


def for_update(session: Session, stmt: Any) -> Any:
    """stmt locking the rows it reads until commit, on PostgreSQL (SQLite has one writer at a time anyway).

    For read-modify-write of rows that concurrent transactions may change too (cart quantities, consent
    history): the second transaction waits and then reads the first one's result instead of overwriting it.
    """
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update()
    return stmt


def lock_keys(session: Session, keys: Any) -> None:
    """Serialise transactions that name the same keys (PostgreSQL advisory locks until commit).

    All keys are locked at once in one order, so two writers cannot deadlock on them; SQLite needs nothing
    (one writer at a time).
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    from sqlalchemy import text

    values = sorted(set(keys))
    if values:
        session.execute(text("SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h "
                             "FROM unnest(CAST(:keys AS text[])) AS k ORDER BY h) AS locks"), {"keys": values})


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error (for edges: CLI, workers)."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Any:
    """An Alembic config pointing at the packaged migrations."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at url to the given revision."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def import_all_models() -> None:
    """Import every domain's models so Base.metadata is complete (Alembic, tests)."""
    from emma.auth import models as _auth  # noqa: F401
    from emma.automation import models as _automation  # noqa: F401
    from emma.catalog import models as _catalog  # noqa: F401
    from emma.channels import models as _channels  # noqa: F401
    from emma.consent import models as _consent  # noqa: F401
    from emma.coupons import models as _coupons  # noqa: F401
    from emma.ingest import models as _ingest  # noqa: F401
    from emma.onsite import models as _onsite  # noqa: F401
    from emma.orders import models as _orders  # noqa: F401
    from emma.predict import models as _predict  # noqa: F401
    from emma.profiles import models as _profiles  # noqa: F401
    from emma.segments import models as _segments  # noqa: F401
    from emma.stores import models as _stores  # noqa: F401
