"""Bulk import: read CSV / JSONL files, validate rows with line-numbered errors, land them in chunks.

Reading and validating happen here; the writes go through the domain services (orders.import_lines,
profiles.upsert_customers, consent.record_many, catalog.upsert_products, ingest.ingest), one chunk per
call. Nothing here commits: the caller (ingest.jobs.run_import) commits each chunk.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gc
import gzip
import io
import itertools
import json
import multiprocessing as mp
import operator
import os
import pickle
import queue
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.orm import Session

from emma.catalog import service as catalog
from emma.consent import service as consent
from emma.consent.models import PURPOSES, STATUSES
from emma.orders import service as orders
from emma.profiles import service as profiles

KINDS = ("customers", "consents", "products", "orders", "events")
FORMATS = ("csv", "jsonl")
# Rows per transaction: large enough to amortise the lookups of a chunk, small enough to keep memory flat.
CHUNK_ROWS = {"customers": 5000, "consents": 10000, "products": 2000, "orders": 20000, "events": 10000}
# Timestamps further ahead than this are rejected (the same allowance as for tracked events).
FUTURE_SKEW = dt.timedelta(hours=24)
MAX_WARNINGS = 20


class ImportFileError(ValueError):
    """The file as a whole cannot be read (unknown format, no header, missing required columns)."""


@dataclass
class RowError:
    line: int
    field: str
    reason: str
    row: str = ""


@dataclass(slots=True)
class Record:
    line: int
    data: dict[str, Any] | None
    raw: str | list[str]
    error: RowError | None = None

    def text(self) -> str:
        """The row as it was in the file (CSV fields re-joined), for the rejects file."""
        if isinstance(self.raw, str):
            return self.raw.rstrip("\r\n")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(self.raw)
        return buf.getvalue()


@dataclass
class ChunkResult:
    """What one committed chunk did; added to the summary only after its commit."""

    landed: int = 0
    unchanged: int = 0
    rejected: list[RowError] = field(default_factory=list)
    customers_created: int = 0
    details: dict[str, int] = field(default_factory=dict)
    unknown_skus: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    conflicts: int = 0  # identity conflicts recorded


@dataclass
class ImportSummary:
    kind: str
    path: str
    format: str
    rows: int = 0
    landed: int = 0
    unchanged: int = 0
    rejected: int = 0
    customers_created: int = 0
    details: dict[str, int] = field(default_factory=dict)
    unknown_skus: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    conflicts: int = 0
    rejects_path: str | None = None
    seconds: float = 0.0

    def add(self, chunk: ChunkResult) -> None:
        """Count a committed chunk."""
        self.landed += chunk.landed
        self.unchanged += chunk.unchanged
        self.rejected += len({e.line for e in chunk.rejected})
        self.customers_created += chunk.customers_created
        for k, v in chunk.details.items():
            self.details[k] = self.details.get(k, 0) + v
        self.unknown_skus |= chunk.unknown_skus
        self.conflicts += chunk.conflicts
        for w in chunk.warnings:
            if w not in self.warnings and len(self.warnings) < MAX_WARNINGS:
                self.warnings.append(w)

    def all_warnings(self) -> list[str]:
        """Warnings, the unknown skus first."""
        out = []
        if self.unknown_skus:
            shown = sorted(self.unknown_skus)
            more = f" ... ({len(shown)} in all)" if len(shown) > 10 else ""
            out.append(f"unknown skus kept (add them to the catalog): {', '.join(shown[:10])}{more}")
        if self.conflicts:
            out.append(f"{self.conflicts} identity conflict(s) recorded; profiles kept apart")
        return out + self.warnings


# ---------------------------------------------------------------------------------------------- reading


def detect_format(path: Path, fmt: str | None = None) -> str:
    """csv or jsonl, from the option or the file name (.csv, .jsonl, .ndjson; also with .gz)."""
    if fmt:
        if fmt not in FORMATS:
            raise ImportFileError(f"format: must be one of {', '.join(FORMATS)}, not {fmt!r}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".csv", ".tsv"):
        return "csv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext == ".parquet":
        raise ImportFileError("Parquet is not supported; export the file as CSV or JSONL")
    raise ImportFileError(f"{path.name}: cannot tell the format from the extension; pass --format csv|jsonl")


class Source:
    """A file being read line by line, with the byte position for the progress bar."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.format = path, fmt
        self.raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self.raw.fileno()).st_size
        self.stream: IO[bytes] = gzip.GzipFile(fileobj=self.raw) if path.suffix.lower() == ".gz" else self.raw
        self.line = 0
        self.bad_lines: set[int] = set()
        self.delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
        self.header: list[str] = []

    def position(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.stream.close()
        self.raw.close()

    def _lines(self) -> Iterator[str]:
        for b in self.stream:
            self.line += 1
            try:
                text = b.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_lines.add(self.line)
                text = b.decode("utf-8", "replace")
            if self.line == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield text

    def records(self) -> Iterator[Record]:
        """Every data row of the file with its line number (header and blank lines are skipped).

        A CSV record comes with its fields (raw) only: data is built from the header when needed.
        """
        if self.format == "jsonl":
            return self._jsonl()
        reader = csv.reader(self._lines(), delimiter=self.delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            header = []
        except csv.Error as exc:
            raise ImportFileError(f"line 1: unreadable header: {exc}") from exc
        if header and not any(header):
            raise ImportFileError("line 1: the first line must name the columns")
        dupes = {h for h in header if header.count(h) > 1}
        if dupes:
            raise ImportFileError(f"line 1: column(s) named twice: {', '.join(sorted(dupes))}")
        self.header = header
        return self._csv(reader, header)

    def _jsonl(self) -> Iterator[Record]:
        loads = json.loads
        for text in self._lines():
            if not text.strip():
                continue
            if self.line in self.bad_lines:
                yield Record(self.line, None, text, RowError(self.line, "", "is not valid UTF-8"))
                continue
            try:
                data = loads(text)
            except ValueError as exc:
                yield Record(self.line, None, text, RowError(self.line, "", f"malformed JSON: {exc}"))
                continue
            if not isinstance(data, dict):
                yield Record(self.line, None, text, RowError(self.line, "", "must be a JSON object"))
                continue
            yield Record(self.line, data, text)

    def _csv(self, reader: Any, header: list[str]) -> Iterator[Record]:
        if not header:
            return
        width = len(header)
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                line, start = start, reader.line_num + 1
                yield Record(line, None, [], RowError(line, "", f"malformed CSV: {exc}"))
                continue
            line, start = start, reader.line_num + 1
            if not values:
                continue
            if self.bad_lines and any(n in self.bad_lines for n in range(line, start)):
                yield Record(line, None, values, RowError(line, "", "is not valid UTF-8"))
                continue
            if len(values) != width:
                if not any(v.strip() for v in values):
                    continue
                yield Record(line, None, values, RowError(
                    line, "", f"has {len(values)} fields, the header names {width}"))
                continue
            yield Record(line, None, values)


# ------------------------------------------------------------------------------------------- validation


class _Row:
    """Typed access to one row's fields that collects (field, reason) errors instead of raising."""

    __slots__ = ("d", "errors", "used")

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d
        self.errors: list[tuple[str, str]] = []
        self.used: set[str] = set()

    def fail(self, name: str, reason: str) -> None:
        self.errors.append((name, reason))

    def get(self, name: str, *aliases: str) -> tuple[str, Any]:
        self.used.add(name)
        v = self.d.get(name)
        if v == "":
            v = None
        for a in aliases:
            self.used.add(a)
            if v is None:
                v = self.d.get(a)
                if v == "":
                    v = None
                if v is not None:
                    name = a
        return name, v

    def text(self, name: str, *aliases: str, required: bool = False, max_len: int = 255) -> str | None:
        key, v = self.get(name, *aliases)
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(int(v)) if float(v).is_integer() else str(v)
        elif v is not None and not isinstance(v, str):
            self.fail(key, "must be a string")
            return None
        if v is not None:
            v = v.strip()
        if not v:
            if required:
                self.fail(key, "is required")
            return None
        if len(v) > max_len:
            self.fail(key, f"is longer than {max_len} characters")
            return None
        return v

    def timestamp(self, name: str, *, required: bool = False, now: dt.datetime) -> dt.datetime | None:
        key, v = self.get(name)
        if v is None or v == "":
            if required:
                self.fail(key, "is required (ISO 8601, e.g. 2026-03-01T14:30:00Z)")
            return None
        try:
            ts = dt.datetime.fromisoformat(v) if isinstance(v, str) else None
        except ValueError:
            ts = None
        if ts is None:
            self.fail(key, f"is not an ISO 8601 date/time: {v!r}")
            return None
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)  # no offset: UTC, as for tracked events
        if ts - now > FUTURE_SKEW:
            self.fail(key, "is in the future")
            return None
        return ts

    def date(self, name: str) -> dt.date | None:
        key, v = self.get(name)
        if v is None or v == "":
            return None
        try:
            return dt.date.fromisoformat(str(v)[:10])
        except ValueError:
            self.fail(key, f"is not a date (YYYY-MM-DD): {v!r}")
            return None

    def integer(self, name: str, *, required: bool = False, minimum: int | None = None) -> int | None:
        key, v = self.get(name)
        if v is None or v == "":
            if required:
                self.fail(key, "is required")
            return None
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            n = int(v)
        except (TypeError, ValueError):
            self.fail(key, f"must be a whole number, not {v!r}")
            return None
        if minimum is not None and n < minimum:
            self.fail(key, f"must be a whole number >= {minimum}, not {n}")
            return None
        return n

    def number(self, name: str, *, low: float, high: float) -> float | None:
        key, v = self.get(name)
        if v is None or v == "":
            return None
        try:
            if isinstance(v, bool):
                raise ValueError
            x = float(v)
        except (TypeError, ValueError):
            self.fail(key, f"must be a number, not {v!r}")
            return None
        if not low <= x <= high:
            self.fail(key, f"must be between {low:g} and {high:g}")
            return None
        return x

    def money(self, name: str, *aliases: str, required: bool = False) -> Decimal | None:
        key, v = self.get(name, *aliases)
        if v is None or v == "":
            if required:
                self.fail(key, "is required")
            return None
        try:
            if isinstance(v, bool):
                raise InvalidOperation
            m = Decimal(v if isinstance(v, str) else str(v)).quantize(Decimal("0.01"))
        except (InvalidOperation, ValueError):
            self.fail(key, f"must be a number, not {v!r}")
            return None
        if not m.is_finite() or m < 0 or m >= Decimal("1e10"):
            self.fail(key, f"must be a number >= 0 (and below 10^10), not {v!r}")
            return None
        return m

    def boolean(self, name: str) -> bool | None:
        key, v = self.get(name)
        if v is None or v == "":
            return None
        return _as_bool(key, v, self)

    def currency(self, name: str = "currency") -> str | None:
        v = self.text(name, max_len=3)
        if v is None:
            return None
        if not re.fullmatch(r"[A-Za-z]{3}", v):
            self.fail(name, f"must be a three-letter ISO 4217 code, not {v!r}")
            return None
        return v.upper()

    def json_object(self, name: str) -> dict[str, Any]:
        key, v = self.get(name)
        if v is None or v == "":
            return {}
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError as exc:
                self.fail(key, f"malformed JSON: {exc}")
                return {}
        if not isinstance(v, dict):
            self.fail(key, "must be a JSON object")
            return {}
        return v

    def extra(self) -> dict[str, Any]:
        """Columns not named by the schema: custom attributes."""
        return {k: v for k, v in self.d.items() if k not in self.used and v != ""}


_TRUE, _FALSE = {"true", "1", "yes", "y", "ja", "t"}, {"false", "0", "no", "n", "nein", "f"}


def _as_bool(key: str, v: Any, row: _Row) -> bool | None:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    row.fail(key, f"must be true or false, not {v!r}")
    return None


def _timezone_ok(name: str) -> bool:
    if name not in _ZONES:
        try:
            ZoneInfo(name)
            _ZONES[name] = True
        except (ZoneInfoNotFoundError, ValueError):
            _ZONES[name] = False
    return _ZONES[name]


_ZONES: dict[str, bool] = {}
_LOCALE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")


@dataclass
class ImportState:
    """What a validation needs to remember across chunks of one file."""

    kind: str
    now: dt.datetime
    lines_of_order: dict[str, int] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    _getter: Any = None
    # Timestamp and price texts of clean order lines, parsed
    _times: dict[str, dt.datetime] = field(default_factory=dict)
    _prices: dict[str, Decimal] = field(default_factory=dict)

    def set_header(self, header: list[str]) -> None:
        """The CSV columns; orders get a getter that picks their fields out of a row in one call."""
        self.header = header
        if self.kind == "orders" and "line_no" not in header and all(c in header for c in _ORDER_REQUIRED):
            pos = [header.index(c) for c in _ORDER_REQUIRED]
            optional = [header.index(c) if c in header else -1 for c in ("currency", "status")]
            self._getter = (operator.itemgetter(*pos, *(max(i, 0) for i in optional)), *(i >= 0 for i in optional))


_CENT = Decimal("0.01")
_MAX_MONEY = Decimal("1e10")
_ORDER_STATUSES = frozenset(orders.ORDER_STATUSES)


_ORDER_REQUIRED = ("order_id", "customer_id", "ordered_at", "sku", "quantity", "unit_price")


def _fast_order(values: list[str], state: ImportState) -> dict[str, Any] | None:
    """The common, clean CSV line without the per-field bookkeeping; None sends the row to the full check."""
    getter, has_currency, has_status = state._getter
    oid, cid, ts, sku, q, p, currency, status = getter(values)
    now = state.now
    if not (0 < len(oid) <= 128 and 0 < len(cid) <= 255 and 0 < len(sku) <= 128 and q.isdigit()):
        return None
    if oid.strip() != oid or cid.strip() != cid or sku.strip() != sku:
        return None
    quantity = int(q)
    # An order's lines repeat its timestamp and a catalog repeats its prices: parse each text once.
    times, prices = state._times, state._prices
    at = times.get(ts)
    if at is None:
        try:
            at = dt.datetime.fromisoformat(ts)
        except ValueError:
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        if at - now > FUTURE_SKEW:
            return None
        if len(times) > 100_000:
            times.clear()
        times[ts] = at
    price = prices.get(p)
    if price is None:
        try:
            price = Decimal(p).quantize(_CENT)
        except (ValueError, InvalidOperation):
            return None
        if not price.is_finite() or price < 0 or price >= _MAX_MONEY:
            return None
        if len(prices) > 100_000:
            prices.clear()
        prices[p] = price
    if quantity < 1:
        return None
    currency = (currency or None) if has_currency else None
    status = (status or None) if has_status else None
    if currency is not None:
        if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
            return None
        currency = currency.upper()
    if status is not None:
        status = status.lower()
        if status not in _ORDER_STATUSES:
            return None
    return {"order_id": oid, "customer_id": cid, "ordered_at": at, "sku": sku, "quantity": quantity,
            "unit_price": price, "currency": currency, "status": status, "line_no": None}


def fast_order(rec: Record, state: ImportState) -> dict[str, Any] | None:
    """validate_order for the common, clean CSV row, or None."""
    if state._getter is None or rec.data is not None:
        return None
    out = _fast_order(rec.raw, state)  # type: ignore[arg-type]
    if out is not None:
        n = state.lines_of_order.get(out["order_id"], 0) + 1
        state.lines_of_order[out["order_id"]] = out["line_no"] = n
    return out


def validate_order(row: _Row, state: ImportState) -> dict[str, Any]:
    """One order line: order_id, customer_id, ordered_at, sku, quantity, unit_price[, currency, status, line_no]."""
    out = {
        "order_id": row.text("order_id", required=True, max_len=128),
        "customer_id": row.text("customer_id", required=True),
        "ordered_at": row.timestamp("ordered_at", required=True, now=state.now),
        "sku": row.text("sku", "product_id", required=True, max_len=128),
        "quantity": row.integer("quantity", required=True, minimum=1),
        "unit_price": row.money("unit_price", "price", required=True),
        "currency": row.currency(),
        "status": row.text("status", max_len=32),
        "line_no": row.integer("line_no", minimum=1),
    }
    if out["status"] is not None:
        out["status"] = out["status"].lower()
        if out["status"] not in orders.ORDER_STATUSES:
            row.fail("status", f"unknown status {out['status']!r}; one of {', '.join(orders.ORDER_STATUSES)}")
    if not row.errors and out["line_no"] is None:
        # Lines are numbered in file order within their order, so a re-run finds the same line again.
        n = state.lines_of_order.get(out["order_id"], 0) + 1
        state.lines_of_order[out["order_id"]] = n
        out["line_no"] = n
    return out


def validate_consent(row: _Row, state: ImportState) -> dict[str, Any]:
    """One consent decision: customer_id, purpose, status[, source, recorded_at, text_version]."""
    recorded_at = row.timestamp("recorded_at", now=state.now)
    out = {
        "customer_id": row.text("customer_id", required=True),
        "purpose": row.text("purpose", required=True, max_len=32),
        "status": row.text("status", required=True, max_len=16),
        "source": row.text("source", max_len=64) or "import",
        "recorded_at": recorded_at or state.now,
        "dated": recorded_at is not None,  # the file's own time, not the import's
        "text_version": row.text("text_version", max_len=64),
    }
    if out["purpose"] is not None and out["purpose"] not in PURPOSES:
        row.fail("purpose", f"unknown purpose {out['purpose']!r}; one of {', '.join(PURPOSES)}")
    if out["status"] is not None and out["status"] not in STATUSES:
        row.fail("status", f"unknown status {out['status']!r}; one of {', '.join(STATUSES)}")
    return out


_ADDRESS = ("postal_code", "city", "country", "lat", "lon")


def validate_customer(row: _Row, state: ImportState) -> dict[str, Any]:
    """One profile: customer_id (the shop's id), email, phone, names, birthday, locale, timezone, address, ..."""
    traits = row.d.get("traits")
    if isinstance(traits, dict):  # a JSONL row may carry the profile as Segment identify traits
        row.used.add("traits")
        for k, v in traits.items():
            row.d.setdefault(k, v)
    address = row.d.get("address")
    if isinstance(address, dict):  # JSONL may nest the address as Segment traits do
        row.used.add("address")
        for k, alias in (("postal_code", "postalCode"), ("city", None), ("country", None), ("lat", "latitude"),
                         ("lon", "longitude")):
            v = address.get(k, address.get(alias) if alias else None)
            if v is not None and k not in row.d:
                row.d[k] = v
    out: dict[str, Any] = {
        "external_id": row.text("customer_id", "external_id", "userId", required=True),
        "email": row.text("email", max_len=320),
        "phone": row.text("phone", max_len=64),
        "first_name": row.text("first_name", "firstName"),
        "last_name": row.text("last_name", "lastName"),
        "birthday": row.date("birthday"),
        "locale": row.text("locale", max_len=16),
        "timezone": row.text("timezone", max_len=64),
        "postal_code": row.text("postal_code", "postalCode", max_len=32),
        "city": row.text("city"),
        "country": row.text("country", max_len=2),
        "lat": row.number("lat", low=-90, high=90),
        "lon": row.number("lon", low=-180, high=180),
        "created_at": row.timestamp("created_at", now=state.now),
    }
    if out["email"] is not None:
        out["email"] = out["email"].lower()
        if "@" not in out["email"][1:-1]:
            row.fail("email", f"is not an email address: {out['email']!r}")
    if out["locale"] is not None and not _LOCALE.fullmatch(out["locale"]):
        row.fail("locale", f"is not a language tag such as de or en-GB: {out['locale']!r}")
    if out["timezone"] is not None and not _timezone_ok(out["timezone"]):
        row.fail("timezone", f"unknown time zone {out['timezone']!r} (IANA name, e.g. Europe/Berlin)")
    if out["country"] is not None:
        out["country"] = out["country"].upper()
        if not re.fullmatch(r"[A-Z]{2}", out["country"]):
            row.fail("country", f"must be a two-letter ISO 3166 code, not {out['country']!r}")
    attributes = row.json_object("attributes")
    out["attributes"] = {**attributes, **row.extra()}
    return out


# Custom product attributes with a known type; other extra columns are kept as given.
_PRODUCT_ATTR_TYPES = {"sustainable": "bool", "warranty_months": "int", "runout_days": "int",
                       "accessory_skus": "list", "successor_sku": "str"}


def validate_product(row: _Row, state: ImportState) -> dict[str, Any]:
    """One product: sku, name[, category, price, currency, stock, url, image_url, brand, active, attributes]."""
    out: dict[str, Any] = {
        "sku": row.text("sku", "product_id", required=True, max_len=128),
        "name": row.text("name", required=True, max_len=512),
        "category": row.text("category", "category_path", max_len=512),
        "price": row.money("price"),
        "currency": row.currency(),
        "stock": row.integer("stock"),
        "url": row.text("url", max_len=4000),
        "image_url": row.text("image_url", "image", max_len=4000),
        "brand": row.text("brand"),
        "active": row.boolean("active"),
    }
    attributes = {**row.json_object("attributes"), **row.extra()}
    for key, kind in _PRODUCT_ATTR_TYPES.items():
        v = attributes.get(key)
        if v is None or not isinstance(v, str):
            continue
        if kind == "bool":
            attributes[key] = _as_bool(key, v, row)
        elif kind == "int":
            sub = _Row({key: v})
            attributes[key] = sub.integer(key, minimum=0)
            row.errors += sub.errors
        elif kind == "list":
            s = v.strip()
            if s.startswith("["):
                try:
                    attributes[key] = [str(x) for x in json.loads(s)]
                except (ValueError, TypeError):
                    row.fail(key, "must be skus separated by | or a JSON array")
            else:
                attributes[key] = [x.strip() for x in s.split("|") if x.strip()]
    # Only what the row names is changed on an existing product.
    product = {k: v for k, v in out.items() if v is not None}
    if attributes:
        product["attributes"] = attributes
    return product


_EVENT_JSON_FIELDS = ("properties", "traits", "context", "integrations")


def event_from_csv(data: dict[str, str], row: _Row) -> dict[str, Any]:
    """A Segment message from a CSV row: top-level fields as columns, properties / traits / context as JSON
    columns or as dotted columns (properties.sku); dotted cells are read as JSON where they parse."""
    msg: dict[str, Any] = {}
    for key, value in data.items():
        if value == "":
            continue
        head, _, rest = key.partition(".")
        if head in _EVENT_JSON_FIELDS and rest:
            try:
                v: Any = json.loads(value)
            except ValueError:
                v = value
            msg.setdefault(head, {})
            if isinstance(msg[head], dict):
                msg[head][rest] = v
        elif key in _EVENT_JSON_FIELDS:
            try:
                msg[key] = {**json.loads(value), **msg.get(key, {})}
            except (ValueError, TypeError):
                row.fail(key, "malformed JSON object")
        else:
            msg[key] = value
    return msg


FAST_VALIDATORS = {"orders": fast_order}
VALIDATORS = {"orders": validate_order, "consents": validate_consent, "customers": validate_customer,
              "products": validate_product}


def validate_chunk(records: list[Record], state: ImportState) -> tuple[list[tuple[Record, dict[str, Any]]],
                                                                       list[RowError]]:
    """Split a chunk into valid rows (with their record) and row errors."""
    good: list[tuple[Record, dict[str, Any]]] = []
    bad: list[RowError] = []
    validator = VALIDATORS.get(state.kind)
    fast = FAST_VALIDATORS.get(state.kind)
    for rec in records:
        if rec.error is not None:
            rec.error.row = rec.text()
            bad.append(rec.error)
            continue
        if fast is not None:
            clean = fast(rec, state)
            if clean is not None:
                good.append((rec, clean))
                continue
        if rec.data is None:  # CSV: empty cells stay "", which the validators read as missing
            rec.data = dict(zip(state.header, rec.raw, strict=True))
        row = _Row(rec.data)
        if validator is None:  # events: ingest validates them
            value = event_from_csv(rec.data, row) if isinstance(rec.raw, list) else rec.data
        else:
            value = validator(row, state)
        if row.errors:
            text = rec.text()
            bad += [RowError(rec.line, f, r, text) for f, r in row.errors]
        else:
            good.append((rec, value))
    return good, bad


# ------------------------------------------------------------------------------------------------ chunks


@dataclass(slots=True)
class Chunk:
    """A chunk of the file: how many rows it read, the valid ones (what land takes), the row errors, and
    the bytes of the file read so far."""

    rows: int
    good: list[Any]
    bad: list[RowError]
    position: int


# Events files from this size on are read and validated in a second process while this one writes.
READER_PROCESS_BYTES = 1 << 20
# The reader process sends the file in pieces of this many rows; a chunk is what has arrived by the time the
# importing process asks, up to its size. The first rows the importing process reads itself, while the
# reader process starts (a fork of a large process takes tens of milliseconds) and skips them.
READER_PIECE_ROWS = 1000
READER_HEAD_ROWS = 500
_END = pickle.dumps(None)  # what the reader process sends last when it read the whole file


def read_chunks(source: Source, state: ImportState, size: int, *,
                reader_process: bool | None = None) -> ChunkReader:
    """The file chunk by chunk, validated: iterate, then close() (it may own a process).

    Events: with reader_process (by default for files of READER_PROCESS_BYTES and more; on Linux), a
    forked process reads, parses and validates (ingest.service.parse) the file ahead of the caller, so that
    reading and validation run on the other core; the first READER_HEAD_ROWS rows are read here while it
    starts. What crosses is cheap to pickle: the messages as tuples of texts (ingest.service.compact) and
    the row errors. Chunks then hold what the reader process has sent by the time the caller asks (up to
    size rows); the outcome is the same as in one process.
    """
    if reader_process is None:
        reader_process = source.size >= READER_PROCESS_BYTES
    # fork only where it is safe with threads that do not cross into the child (Linux); elsewhere one process.
    return ChunkReader(source, state, size, forked=state.kind == "events" and reader_process
                       and sys.platform == "linux")


class ChunkReader:
    """Iterator of a file's chunks (see read_chunks). An iterator object rather than a generator: a suspended
    generator would keep the chunk it handed out alive while the caller drops it and collects garbage."""

    def __init__(self, source: Source, state: ImportState, size: int, *, forked: bool) -> None:
        self.source, self.state, self.size, self.forked = source, state, size, forked
        self._records: Iterator[Record] | None = None
        self._child: Any = None
        self._receiver: Any = None
        self._pieces: queue.Queue[Any] | None = None
        self._receiving: threading.Thread | None = None
        self._stop = threading.Event()
        self._ending: Any = None  # what ended the reader process (StopIteration or its exception)
        self._held: Any = None  # a piece that did not fit into the last chunk
        self._head = min(size, READER_HEAD_ROWS)  # rows read here before the reader process's first piece
        self._rows_before = 0  # rows of the chunks that came from the reader process so far
        self._done = False

    def start(self) -> None:
        """Start the reader process now (if there is one), so that it reads while the caller prepares."""
        if not self.forked or self._child is not None:
            return
        context = mp.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        # Forked before this process starts threads of its own for the import; the child touches no
        # connection or lock it inherits: it opens the file anew and only reads, validates and sends.
        self._child = context.Process(target=_prepare_events, daemon=True, name="emma-import-reader",
                                      args=(sender, self.source.path, self.source.format, self.state.now,
                                            self.size, self._head))
        self._child.start()
        sender.close()
        # A thread keeps the pipe empty, so that the reader process runs up to two chunks ahead instead of
        # waiting for this one to ask.
        self._pieces = queue.Queue(maxsize=max(2, 2 * self.size // READER_PIECE_ROWS))
        self._receiving = threading.Thread(target=self._receive, name="emma-import-receiver", daemon=True)
        self._receiving.start()

    def _receive(self) -> None:
        assert self._pieces is not None
        while True:
            # Only the bytes: unpickling here would hold the GIL against the importing thread.
            try:
                item = self._receiver.recv_bytes()
            except (EOFError, OSError):
                item = ImportFileError("the reader process ended unexpectedly")
            while not self._stop.is_set():
                try:
                    self._pieces.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException) or item == _END or self._stop.is_set():
                return

    def __iter__(self) -> ChunkReader:
        return self

    def __next__(self) -> Chunk:
        if self._done:
            raise StopIteration
        if self._records is None:
            self._records = self.source.records()
            self.state.set_header(self.source.header)
            if self.forked:
                self.start()
                head = list(itertools.islice(self._records, self._head))
                good, bad = validate_chunk(head, self.state)
                if head:
                    return Chunk(len(head), good, bad, self.source.position())
        if self.forked:
            return self._from_process()
        chunk = list(itertools.islice(self._records, self.size))
        if not chunk:
            self._done = True
            raise StopIteration
        good, bad = validate_chunk(chunk, self.state)
        return Chunk(len(chunk), good, bad, self.source.position())

    def _from_process(self) -> Chunk:
        from emma.ingest.service import Prepared

        self.start()
        assert self._pieces is not None
        chunk = Chunk(0, [], [], 0)
        # One piece, waited for, and then what else has arrived: chunks grow while this process is the
        # slower one, and it never waits for a whole chunk to be read.
        while self._ending is None:
            if self._held is not None:
                item, self._held = self._held, None
            else:
                try:
                    item = self._pieces.get(block=not chunk.rows or self._rest_fits(chunk))
                except queue.Empty:
                    break
                if not isinstance(item, BaseException):
                    item = pickle.loads(item)
            if item is None or isinstance(item, BaseException):
                self._ending = item if item is not None else StopIteration()
                break
            rows, position, bad, compact = item
            if chunk.rows and chunk.rows + rows > self.size:
                self._held = item  # the first piece of the next chunk
                break
            chunk.rows += rows
            chunk.good += [Prepared(t) for t in compact]
            chunk.bad += bad
            chunk.position = position
        if chunk.rows:
            self._rows_before += chunk.rows
            return chunk
        ending = self._ending
        self.close()
        raise ending

    def _rest_fits(self, chunk: Chunk) -> bool:
        """Whether the rest of the file is small enough to wait for and land with this chunk, instead of in a
        chunk of its own (which costs its statements and commit however few rows it has)."""
        read = self._head + self._rows_before + chunk.rows  # rows the reader process has handed over so far
        if not chunk.position or not read:
            return False
        rest = (self.source.size - chunk.position) * read / chunk.position  # estimated from bytes per row
        # Waiting pays only for about a piece: the reader process has it (nearly) read, while a chunk of its own
        # would cost more than the wait. For more, landing this chunk now overlaps with the reading.
        return chunk.rows + rest <= self.size and rest <= READER_PIECE_ROWS

    def close(self) -> None:
        """Stop reading; ends the reader process if there is one."""
        self._done = True
        if self._child is not None:
            self._stop.set()
            if self._child.is_alive():
                self._child.terminate()
            self._child.join()
            assert self._receiving is not None
            self._receiving.join()  # the pipe has ended with the process
            self._receiver.close()
            self._child = None


def _prepare_events(sender: Any, path: Path, fmt: str, now: dt.datetime, size: int, skip: int) -> None:
    """The reader process: the events file after its first `skip` rows read and validated piece by piece, each
    sent as (rows read, bytes read, row errors, compact messages); then None, or the exception that ended it."""
    from emma.config import get_settings
    from emma.ingest import service as ingest

    gc.disable()  # as in run_import: the rows hold no cycles, collect once per chunk
    try:
        settings = get_settings()
        state = ImportState(kind="events", now=now)
        source = Source(path, fmt)
        try:
            records = source.records()
            state.set_header(source.header)
            parse, compact = ingest.parse, ingest.compact
            for _ in itertools.islice(records, skip):  # the importing process reads these
                pass
            take = min(size, READER_PIECE_ROWS)
            while True:
                chunk = list(itertools.islice(records, take))
                if not chunk:
                    break
                good, bad = validate_chunk(chunk, state)
                messages = []
                for rec, raw in good:
                    parsed = parse(raw, settings=settings, received_at=now)
                    if isinstance(parsed, list):
                        text = rec.text()
                        bad += [RowError(rec.line, e.field, e.reason, text) for e in parsed]
                    else:
                        messages.append(compact(parsed))
                sender.send((len(chunk), source.position(), bad, messages))
                del chunk, good, messages
                gc.collect(1)
        finally:
            source.close()
        sender.send(None)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            return  # the importing process has gone (it stopped early or ended): nothing to hand over
        _hand_over(sender, exc)
    except BaseException as exc:  # noqa: BLE001 - handed to the importing process, which raises it
        _hand_over(sender, exc)
    finally:
        sender.close()


def _hand_over(sender: Any, exc: BaseException) -> None:
    with contextlib.suppress(OSError):
        try:
            sender.send(exc)
        except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
            sender.send(ImportFileError(f"reading the file failed: {exc}"))


# ------------------------------------------------------------------------------------------------ landing


def land(*, session: Session, kind: str, rows: list[tuple[Record, dict[str, Any]]],
         now: dt.datetime) -> ChunkResult:
    """Write one chunk of valid rows through the domain services."""
    return _LANDERS[kind](session, rows, now)


def _land_orders(session: Session, rows: list[tuple[Record, dict[str, Any]]], now: dt.datetime) -> ChunkResult:
    result = ChunkResult()
    first_seen: dict[str, dt.datetime] = {}
    for _, r in rows:
        # The shop's id is kept aside and customer_id becomes the internal id in place (cheaper than a copy
        # of every row); a retried chunk maps it again from external_id.
        ext = r.setdefault("external_id", r["customer_id"])
        seen = first_seen.get(ext)
        if seen is None or r["ordered_at"] < seen:
            first_seen[ext] = r["ordered_at"]
    ids, created = profiles.customers_for(session=session, external_ids=list(first_seen), at=now,
                                          first_seen=first_seen)
    result.customers_created = len(created)
    lines = []
    for _, r in rows:
        r["customer_id"] = ids[r["external_id"]]
        lines.append(r)
    counts = orders.import_lines(session=session, lines=lines, at=now)
    for i in counts.pop("conflicting"):
        rec, r = rows[i]
        result.rejected.append(RowError(rec.line, "customer_id", f"order {r['order_id']} belongs to another "
                                        "customer", rec.text()))
    result.landed, result.unchanged = counts["lines_created"], counts["lines_present"]
    result.details = {"orders created": counts["orders_created"], "orders updated": counts["orders_updated"],
                      "order status kept (the stored one is further along)": counts["orders_kept"]}
    skus = {r["sku"] for _, r in rows}
    result.unknown_skus = skus - catalog.known_skus(session=session, skus=skus)
    profiles.mark_seen(session=session, seen=counts.pop("seen"))
    return result


def _land_consents(session: Session, rows: list[tuple[Record, dict[str, Any]]], now: dt.datetime) -> ChunkResult:
    result = ChunkResult()
    ids, created = profiles.customers_for(session=session, external_ids=[r["customer_id"] for _, r in rows],
                                          at=now)
    result.customers_created = len(created)
    decisions = [{**r, "customer_id": ids[r["customer_id"]]} for _, r in rows]
    result.landed, result.unchanged = consent.record_many(session=session, decisions=decisions, now=now)
    return result


def _land_customers(session: Session, rows: list[tuple[Record, dict[str, Any]]], now: dt.datetime) -> ChunkResult:
    result = ChunkResult()
    counts = profiles.upsert_customers(session=session, rows=[r for _, r in rows], source="import", at=now)
    result.customers_created = counts["created"]
    result.landed = counts["created"] + counts["updated"]
    result.unchanged = len(rows) - result.landed
    result.details = {"customers updated": counts["updated"]}
    return result


def _land_products(session: Session, rows: list[tuple[Record, dict[str, Any]]], now: dt.datetime) -> ChunkResult:
    result = ChunkResult()
    counts = catalog.upsert_products(session=session, products=[r for _, r in rows], at=now)
    result.landed = counts["created"] + counts["updated"]
    result.unchanged = len(rows) - result.landed
    result.details = {"products created": counts["created"], "products updated": counts["updated"]}
    return result


def _land_events(session: Session, rows: list[Any], now: dt.datetime) -> ChunkResult:
    from emma.ingest import service as ingest

    result = ChunkResult()
    if rows and type(rows[0]) is ingest.Prepared:  # validated by the reader process
        res = ingest.ingest_prepared(session=session, messages=rows, received_at=now)
    else:
        res = ingest.ingest(session=session, raw_messages=[m for _, m in rows], received_at=now)
        for rej in res.rejected:
            rec = rows[rej.index][0]
            text = rec.text()
            result.rejected += [RowError(rec.line, e.field, e.reason, text) for e in rej.errors]
    result.landed, result.unchanged = res.accepted, res.duplicates
    # Counted for the file, not worded per chunk: the summary does not depend on where chunks end.
    result.unknown_skus = res.unknown_skus
    result.conflicts = res.conflicts
    return result


_LANDERS = {"orders": _land_orders, "consents": _land_consents, "customers": _land_customers,
            "products": _land_products, "events": _land_events}


# ------------------------------------------------------------------------------------------------ rejects


class RejectsWriter:
    """The rejects file: line, field, reason and the row as it was; created when the first reject comes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._writer: Any = None
        self.count = 0

    def write(self, errors: list[RowError]) -> None:
        if not errors:
            return
        if self._writer is None:
            self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
            self._writer = csv.writer(self._file)
            self._writer.writerow(["line", "field", "reason", "row"])
        for e in sorted(errors, key=lambda e: e.line):
            self._writer.writerow([e.line, e.field, e.reason, e.row])
        self.count += len(errors)
        assert self._file is not None
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def default_rejects_path(path: Path) -> Path:
    """FILE.rejects.csv next to the imported file."""
    return path.with_name(path.name + ".rejects.csv")
