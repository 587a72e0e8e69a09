"""Events import with the reader process: the same rows, rejects and counts as reading in one process."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from emma.config import get_settings
from emma.db import make_engine, make_sessionmaker
from emma.ingest import bulk, jobs
from emma.ingest import service as ingest

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
AT = "2026-11-01T10:00:00Z"
_TABLES = ("customers", "identities", "identity_conflicts", "events", "carts", "cart_items", "wishlist_items",
           "orders", "order_lines", "consents", "consent_log", "trait_history", "merge_log")
_REFS = ("customer_id", "other_customer_id", "merged_into_id", "source_customer_id", "target_customer_id")


def lines() -> list[Any]:
    """Every kind of line an events file holds: the shapes the import writes, and bad ones."""
    def ts(minutes: int, offset: str = "Z") -> str:
        return (dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)).strftime(
            "%Y-%m-%dT%H:%M:%S") + offset
    return [
        {"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": ts(1),
         "traits": {"email": " U1@Example.com ", "firstName": "Jürgen", "address": {"city": "Köln"}},
         "context": {"locale": "de-DE", "consent": {"categoryPreferences": {"analytics": True,
                                                                             "email_marketing": True}}}},
        {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "m2", "timestamp": ts(2, "+01:00"),
         "properties": {"path": "/", "nested": {"list": [1, 2.5, None, "ü"]}}},
        {"type": "track", "anonymousId": "a1", "event": "Product Added", "messageId": "m3", "timestamp": ts(3),
         "properties": {"sku": "S1", "price": 9.99, "quantity": 2, "cart_id": "c1"}},
        {"type": "track", "userId": 42, "event": "Product Viewed", "messageId": "m4", "timestamp": ts(4),
         "properties": {"product_id": "S2"}},
        "[1, 2",                                                                      # malformed JSON
        {"type": "track", "userId": "u1", "messageId": "m5", "timestamp": ts(5)},     # no event name
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m6", "timestamp": ts(6)},
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m7", "timestamp": ts(7),
         "properties": {"order_id": "o1", "cart_id": "c1", "revenue": 19.98, "currency": "EUR",
                        "products": [{"sku": "S1", "price": 9.99, "quantity": 2}]}},
        {"type": "track", "userId": "u1", "event": "Product Added", "messageId": "m3", "timestamp": ts(8),
         "properties": {"sku": "S1", "price": 9.99}},                                 # a resend of m3
        {"type": "track", "userId": "u2", "event": "Product Added to Wishlist", "timestamp": ts(9),
         "properties": {"sku": "W1"}},                                                # no messageId
        {"type": "alias", "previousId": "a2", "userId": "u2", "messageId": "m9", "timestamp": ts(10)},
        {"type": "track", "userId": "u2", "event": "Order Completed", "messageId": "m10", "timestamp": ts(11),
         "properties": {"order_id": "o2", "products": [{"sku": "S3", "quantity": 0}]}},  # bad line
        {"type": "screen", "userId": "u2", "name": "Cart", "messageId": "m11", "timestamp": "3026-01-01T00:00:00Z"},
        {"type": "track", "userId": "u1", "event": "Order Shipped", "messageId": "m12", "timestamp": ts(12),
         "properties": {"order_id": "o1"}},
        ["not", "an", "object"],
        {"type": "identify", "userId": "u3", "messageId": "m13", "timestamp": ts(13),
         "traits": {"email": "u1@example.com"}},
        {"type": "track", "userId": "u3", "event": "Checkout Started", "messageId": "m14", "timestamp": ts(14)},
    ]


def write(path: Path, items: list[Any]) -> Path:
    with open(path, "wb") as f:
        for x in items:
            f.write((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)).encode() + b"\n")
        f.write(b'{"type": "page", "userId": "u9", "name": "\xff"}\n')  # not UTF-8
    return path


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows in id order, ids replaced by their rank, so that two databases compare."""
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            raw = {t: [dict(r._mapping) for r in c.execute(text(f"SELECT * FROM {t} ORDER BY id"))] for t in _TABLES}
    finally:
        engine.dispose()
    rank = {t: {r["id"]: i for i, r in enumerate(rows)} for t, rows in raw.items()}
    out = {}
    for t, rows in raw.items():
        norm = []
        for r in rows:
            r.pop("id")
            r.pop("logged_at", None)
            for k in _REFS:
                if r.get(k) is not None:
                    r[k] = rank["customers"][r[k]]
            for k, ref in (("cart_pk", "carts"), ("order_pk", "orders")):
                if r.get(k) is not None:
                    r[k] = rank[ref][r[k]]
            if t == "merge_log":
                moved = r["moved"] if isinstance(r["moved"], dict) else json.loads(r["moved"])
                r["moved"] = {name: [rank[name][i] for i in ids] for name, ids in moved.items()}
            norm.append(tuple(sorted((k, str(v)) for k, v in r.items())))
        out[t] = norm
    return out


def import_events(url: str, path: Path, **kw: Any) -> tuple[bulk.ImportSummary, str]:
    engine = make_engine(url)
    try:
        rejects = path.with_suffix(f".{url.split(':')[0]}.{kw.get('reader_process')}.rejects.csv")
        summary = jobs.run_import(sessions=make_sessionmaker(engine), kind="events", path=path, now=NOW,
                                  rejects=rejects, **kw)
    finally:
        engine.dispose()
    return summary, rejects.read_text(encoding="utf-8") if rejects.exists() else ""


def counts(s: bulk.ImportSummary) -> tuple[Any, ...]:
    return s.rows, s.landed, s.unchanged, s.rejected, s.customers_created, s.all_warnings()


def test_the_reader_process_lands_what_one_process_lands(db_url, other_db_url, tmp_path, monkeypatch):
    path = write(tmp_path / "events.jsonl", lines())
    prepared: list[int] = []  # chunks that came validated from the reader process
    here: list[int] = []  # chunks read in this process
    store, store_raw = ingest.ingest_prepared, ingest.ingest
    monkeypatch.setattr(ingest, "ingest_prepared", lambda **kw: prepared.append(len(kw["messages"])) or store(**kw))
    monkeypatch.setattr(ingest, "ingest", lambda **kw: here.append(len(kw["raw_messages"])) or store_raw(**kw))
    progress: list[tuple[int, int]] = []
    by_reader, rejects = import_events(db_url, path, chunk_rows=3, reader_process=True,
                                       progress=lambda done, size: progress.append((done, size)))
    # every valid line, the resend too: the first chunk read here while the reader process starts, the rest by it
    assert (here, sum(prepared)) == ([3], 9)
    alone, rejects_alone = import_events(other_db_url, path, chunk_rows=3, reader_process=False)
    assert sum(prepared) == 9 and sum(here) == 3 + 15  # in one process, every line that is a JSON object
    assert counts(by_reader) == counts(alone)
    assert (by_reader.rows, by_reader.landed, by_reader.unchanged, by_reader.rejected) == (18, 11, 1, 6)
    assert rejects == rejects_alone
    assert sorted({int(line.split(",")[0]) for line in rejects.splitlines()[1:]}) == [5, 6, 12, 13, 15, 18]
    assert snapshot(db_url) == snapshot(other_db_url)
    assert len(progress) == 6 and progress[-1] == (path.stat().st_size, path.stat().st_size)
    assert multiprocessing.active_children() == []
    # a re-import changes nothing, with the reader process too
    before = snapshot(db_url)
    again, _ = import_events(db_url, path, chunk_rows=4, reader_process=True)
    assert (again.landed, again.unchanged) == (0, 12)
    assert snapshot(db_url) == before


def test_an_import_stopped_midway_with_the_reader_process_completes_on_a_rerun(db_url, other_db_url, tmp_path):
    path = write(tmp_path / "events.jsonl", lines())
    first, _ = import_events(db_url, path, chunk_rows=4, reader_process=True, stop_after_chunks=2)
    assert first.rows == 8 and multiprocessing.active_children() == []
    import_events(db_url, path, chunk_rows=4, reader_process=True)
    import_events(other_db_url, path, chunk_rows=4, reader_process=False)
    assert snapshot(db_url) == snapshot(other_db_url)


def test_a_file_error_in_the_reader_process_is_raised_as_in_one_process(db_url, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("type,userId,type\ntrack,u1,x\n", encoding="utf-8")
    with pytest.raises(bulk.ImportFileError) as alone:
        import_events(db_url, path, reader_process=False)
    with pytest.raises(bulk.ImportFileError) as by_reader:
        import_events(db_url, path, reader_process=True)
    assert str(by_reader.value) == str(alone.value) == "line 1: column(s) named twice: type"
    assert multiprocessing.active_children() == []


def test_a_prepared_message_reads_like_the_parsed_one():
    settings = get_settings()
    for raw in lines():
        if not isinstance(raw, dict):
            continue
        msg = ingest.parse(raw, settings=settings, received_at=NOW)
        if isinstance(msg, list):
            continue
        prepared = ingest.Prepared(ingest.compact(msg))
        for name in ("messageId", "type", "event", "name", "userId", "anonymousId", "previousId", "timestamp",
                     "properties", "traits", "context"):
            assert getattr(prepared, name) == getattr(msg, name), name
        assert prepared.timestamp.utcoffset() == msg.timestamp.utcoffset()  # type: ignore[union-attr]
        assert (ingest._consent_prefs(prepared) is None) == (ingest._consent_prefs(msg) is None)


def test_chunks_take_the_pieces_that_arrived_while_the_last_one_landed(db_url, other_db_url, tmp_path, monkeypatch):
    # Pieces of 2 rows, chunks of up to 6: while a slow chunk lands, the reader process runs ahead, and the
    # next chunk takes the pieces that arrived (more than one, never more than the chunk size).
    monkeypatch.setattr(bulk, "READER_PIECE_ROWS", 2)
    monkeypatch.setattr(bulk, "READER_HEAD_ROWS", 1)
    items = [{"type": "track", "userId": f"u{i % 7}", "event": "Product Viewed", "messageId": f"p{i}",
              "timestamp": AT, "properties": {"sku": f"S{i}"}} for i in range(40)]
    path = write(tmp_path / "events.jsonl", items)
    sizes: list[int] = []
    store = ingest.ingest_prepared

    def slow(**kw: Any) -> Any:
        sizes.append(len(kw["messages"]))
        time.sleep(0.05)
        return store(**kw)

    monkeypatch.setattr(ingest, "ingest_prepared", slow)
    by_reader, rejects = import_events(db_url, path, chunk_rows=6, reader_process=True)
    assert max(sizes) == 6 and all(s <= 6 for s in sizes)
    assert len(sizes) < 40 // 2  # fewer chunks than pieces
    alone, rejects_alone = import_events(other_db_url, path, chunk_rows=6, reader_process=False)
    assert counts(by_reader) == counts(alone) and (by_reader.rows, by_reader.landed, by_reader.rejected) == (41, 40, 1)
    assert rejects == rejects_alone
    assert snapshot(db_url) == snapshot(other_db_url)
    assert multiprocessing.active_children() == []


def test_the_rest_of_a_file_is_waited_for_when_it_is_about_a_piece_and_fits_the_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(bulk, "READER_PIECE_ROWS", 10)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"x" * 100_000)  # 100 bytes per row below: 1,000 rows in all
    reader = bulk.ChunkReader(bulk.Source(path, "jsonl"), bulk.ImportState(kind="events", now=NOW), 100,
                              forked=True)
    reader._head, reader._rows_before = 10, 900
    try:
        # 950 of 1,000 rows handed over: the 50 left are more than a piece; 995: 5 left, and they fit
        assert not reader._rest_fits(bulk.Chunk(40, [], [], 95_000))
        assert reader._rest_fits(bulk.Chunk(85, [], [], 99_500))
        assert reader._rest_fits(bulk.Chunk(90, [], [], 100_000))  # nothing left
        reader.size = 88
        assert not reader._rest_fits(bulk.Chunk(85, [], [], 99_500))  # 85 + 5 rows would not fit into 88
        assert not reader._rest_fits(bulk.Chunk(0, [], [], 0))
    finally:
        reader.source.close()
