"""Ingestion throughput, on SQLite and PostgreSQL.

Part `import`: `emma import` (ingest.jobs.run_import, the path the CLI takes) of generated files:
products, customers, consents, order lines (CSV) and Segment events (JSONL), in that order, into a fresh
database; then the order lines once more (a re-import, which must change nothing). By default every import
runs in this process, one after the other; with --fresh each runs in a new Python process, as each
`emma import KIND FILE` does. The difference matters for events: the reader process is forked, and a fork of
a process that imported 200,000 order lines before costs both processes copy-on-write page faults that a
fresh `emma import events` does not have.

Part `http-batch`: `emma serve` (uvicorn, one process, without the embedded worker unless --worker) on
127.0.0.1 against a fresh database; a few concurrent clients POST /v1/batch with 100 events each (a shop-like
mix of page views, product views, cart adds, identifies, orders) until --batch-events are sent; events/s
accepted, and the server's CPU time (the machine may be shared: CPU time says what the work costs).
The load generator (bench/httpload.py) sends pre-built HTTP/1.1 requests over keep-alive connections, so
that it takes little of the CPU the server needs; its own CPU time is printed too.

Part `http-track`: the same server; single POST /v1/track at a fixed offered rate (--rate, default 500/s,
open loop: requests start on schedule whether or not earlier ones have answered) for --seconds; latency is
measured from the scheduled start, so queueing counts; p50/p95/p99 after a one-second warm-up.

    .venv/bin/python bench/ingest.py                                  # every part, both databases
    .venv/bin/python bench/ingest.py --part import --order-lines 500000 --events 50000
    .venv/bin/python bench/ingest.py --part import --db sqlite
    .venv/bin/python bench/ingest.py --part import --db sqlite --repeat 5        # medians of five fresh runs
    .venv/bin/python bench/ingest.py --part import --db sqlite --fresh           # each import its own process
    .venv/bin/python bench/ingest.py --part http-batch --part http-track --db sqlite
    EMMA_BENCH_PG_URL=postgresql+psycopg://user@host/db .venv/bin/python bench/ingest.py --db postgres

PostgreSQL: a throwaway server in a temp dir (as the test suite starts it), or the server of
EMMA_BENCH_PG_URL (a fresh database is created there and dropped afterwards).
Each line gives wall time and CPU time: this process, plus on the throwaway PostgreSQL server the
server's processes. On a shared machine wall time says what the import got, CPU time what it costs.
A part is a function (args, targets) registered in PARTS; `--part all` runs them all.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import importlib.util
import itertools
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from emma.db import make_engine, make_sessionmaker, upgrade
from emma.ingest import jobs

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("products", "customers", "consents", "orders", "events")
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


# --------------------------------------------------------------------------------------------- databases


def _postgres_server() -> Any:  # the class lives in tests/conftest.py
    spec = importlib.util.spec_from_file_location("emma_tests_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bindir = module._pg_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL binaries not found; set EMMA_BENCH_PG_URL or use --db sqlite")
    return module.PostgresServer(bindir)


_PG_DATA: list[Path] = []  # the data directory of the throwaway server, for its CPU time


def _proc_stat(pid: int | str) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # from field 3 (state) on


def server_cpu_seconds() -> float | None:
    """CPU time of the throwaway PostgreSQL server so far: the postmaster, its ended and its live backends."""
    if not _PG_DATA:
        return None
    postmaster = int((_PG_DATA[0] / "postmaster.pid").read_text().split()[0])
    ticks = sum(int(x) for x in _proc_stat(postmaster)[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _proc_stat(entry.name)
            except OSError:
                continue
            if fields[1] == str(postmaster):
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def fresh_database(kind: str, workdir: Path) -> Iterator[str]:
    """A freshly migrated, empty database URL of the kind (sqlite | postgres), removed afterwards."""
    if kind == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
        upgrade(url)
        try:
            yield url
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        return
    server = None
    base = os.environ.get("EMMA_BENCH_PG_URL")
    if not base:
        server = _postgres_server()
        server.start()
        base = server.url()
        _PG_DATA[:] = [server.dir / "data"]
    name = "emma_bench_" + uuid.uuid4().hex[:12]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {name}"))
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
        if server is not None:
            _PG_DATA.clear()
            server.stop()


# ------------------------------------------------------------------------------------------------- files


def generate_files(workdir: Path, *, order_lines: int, events: int, seed: int) -> dict[str, Path]:
    """Catalog, customers, consents, order lines and events as a shop would export them."""
    rng = random.Random(seed)
    n_customers = max(100, order_lines // 10)
    n_products = max(200, order_lines // 200)
    skus = [f"SKU-{i:06d}" for i in range(n_products)]
    prices = {s: round(rng.uniform(2, 300), 2) for s in skus}
    files = {k: workdir / f"{k}.{'jsonl' if k == 'events' else 'csv'}"
             for k in ("products", "customers", "consents", "orders", "events")}
    with open(files["products"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "name", "category", "price", "currency", "stock", "url", "brand", "sustainable",
                    "warranty_months"])
        for s in skus:
            w.writerow([s, f"Produkt {s}", rng.choice(["Küche > Töpfe", "Garten", "Bad > Handtücher"]),
                        prices[s], "EUR", rng.randint(0, 200), f"https://shop.example/p/{s}",
                        rng.choice(["Fissler", "WMF", "Gardena"]), rng.choice(["true", "false"]), 24])
    with open(files["customers"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "email", "first_name", "last_name", "birthday", "locale", "city", "country",
                    "loyalty_tier"])
        for i in range(n_customers):
            birthday = f"{rng.randint(1950, 2005)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
            w.writerow([f"c-{i}", f"kunde{i}@example.com", rng.choice(["Anna", "Jonas", "Emma", "Paul"]),
                        rng.choice(["Müller", "Schmidt", "Weber"]), birthday, rng.choice(["de", "en"]), "Berlin", "DE",
                        rng.choice(["gold", "silver"])])
    with open(files["consents"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "purpose", "status", "source", "recorded_at", "text_version"])
        for i in range(n_customers):
            at = (T0 + dt.timedelta(minutes=i)).isoformat()
            w.writerow([f"c-{i}", "email_marketing", "granted", "legacy-crm", at, "v3"])
            w.writerow([f"c-{i}", "sms_marketing", rng.choice(["granted", "revoked"]), "legacy-crm", at, "v3"])
    with open(files["orders"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "customer_id", "ordered_at", "sku", "quantity", "unit_price", "currency", "status"])
        written, n = 0, 0
        while written < order_lines:
            n += 1
            at = (T0 + dt.timedelta(seconds=n * 37)).isoformat()
            customer = f"c-{rng.randrange(n_customers + n_customers // 5)}"  # some customers are new
            status = rng.choice(["completed", "delivered", "shipped"])
            for _ in range(min(rng.randint(1, 5), order_lines - written)):
                s = rng.choice(skus)
                w.writerow([f"o-{n}", customer, at, s, rng.randint(1, 3), prices[s], "EUR", status])
                written += 1
    with open(files["events"], "w") as f:
        for i in range(events):
            user = f"c-{rng.randrange(n_customers)}"
            at = (T0 + dt.timedelta(seconds=i * 11)).isoformat()
            s = rng.choice(skus)
            roll = rng.random()
            msg: dict[str, object]
            if roll < 0.4:
                msg = {"type": "page", "name": "Produkt", "properties": {"path": f"/p/{s}"}}
            elif roll < 0.7:
                msg = {"type": "track", "event": "Product Viewed", "properties": {"sku": s, "price": prices[s]}}
            elif roll < 0.85:
                msg = {"type": "track", "event": "Product Added",
                       "properties": {"sku": s, "price": prices[s], "quantity": 1, "cart_id": f"cart-{user}"}}
            elif roll < 0.9:
                msg = {"type": "identify", "traits": {"email": f"{user}@example.com", "firstName": "Anna"}}
            elif roll < 0.95:
                msg = {"type": "track", "event": "Order Completed",
                       "properties": {"order_id": f"ev-o-{i}", "revenue": prices[s], "currency": "EUR",
                                      "products": [{"sku": s, "price": prices[s], "quantity": 1}]}}
            else:
                msg = {"type": "track", "event": "Newsletter Opened", "properties": {"campaign": "nl-7"}}
            if rng.random() < 0.2:
                msg["anonymousId"] = f"anon-{rng.randrange(events // 4 + 1)}"
                if msg["type"] == "identify":
                    msg["userId"] = user
            else:
                msg["userId"] = user
            msg.update(messageId=f"m-{i}", timestamp=at)
            f.write(json.dumps(msg) + "\n")
    return files


# ------------------------------------------------------------------------------------------------- parts


def part_import(args: argparse.Namespace, databases: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="emma-bench-ingest-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        files = generate_files(workdir, order_lines=args.order_lines, events=args.events, seed=args.seed)
        print(f"generated files in {time.perf_counter() - started:.1f} s: "
              + ", ".join(f"{k} {f.stat().st_size / 1e6:.1f} MB" for k, f in files.items()))
        rates: dict[tuple[str, str], list[float]] = {}
        for run, db in itertools.product(range(args.repeat), databases):
            if args.repeat > 1:
                print(f"run {run + 1} of {args.repeat}, {db}", flush=True)
            with fresh_database(db, workdir) as url:
                engine = make_engine(url)
                sessions = make_sessionmaker(engine)
                try:
                    for kind in ("products", "customers", "consents", "orders", "events", "orders again"):
                        name = kind.split()[0]
                        if name not in args.kinds:
                            continue
                        cpu, server, kids = time.process_time(), server_cpu_seconds(), _children_cpu()
                        if args.fresh:
                            s, cpu, reader = import_in_fresh_process(url, name, files[name],
                                                                     workdir / f"{name}.rejects.csv")
                        else:
                            s = jobs.run_import(sessions=sessions, kind=name, path=files[name],
                                                rejects=workdir / f"{name}.rejects.csv")
                            cpu = time.process_time() - cpu
                            reader = _children_cpu() - kids  # the events import's reader process
                        # The machine is shared: CPU seconds say what the import costs, wall time what it got.
                        split = ""
                        if server is not None:
                            pg = server_cpu_seconds() - server  # type: ignore[operator]
                            split = f" (emma {cpu:.1f} s, PostgreSQL {pg:.1f} s)"
                            cpu += pg
                        rates.setdefault((db, kind), []).append(s.rows / s.seconds)
                        print(f"import {kind:<13} {db:<9} {s.rows:>9,} rows {s.seconds:7.2f} s "
                              f"{s.rows / s.seconds:>9,.0f} rows/s   CPU {cpu:6.1f} s{split} "
                              f"{s.rows / cpu:>9,.0f} rows/CPU-s"
                              + (f" (+ reader process {reader:.1f} s: {s.rows / (cpu + reader):,.0f} rows/CPU-s in all)"
                                 if reader > 0 else "")
                              + f"   load average {os.getloadavg()[0]:.1f}"
                              f"   landed {s.landed:,}, unchanged {s.unchanged:,}, rejected {s.rejected:,}, "
                              f"customers created {s.customers_created:,}", flush=True)
                finally:
                    engine.dispose()
        if args.repeat > 1:  # the machine may be shared: the median of fresh runs says more than one run
            for (db, kind), values in rates.items():
                print(f"median of {len(values)}: import {kind:<13} {db:<9} {statistics.median(values):>9,.0f} rows/s "
                      f"(min {min(values):,.0f}, max {max(values):,.0f})")


_FRESH = """
import json, resource, sys, time
from pathlib import Path
from emma.db import make_engine, make_sessionmaker
from emma.ingest import jobs
url, kind, path, rejects = sys.argv[1:5]
engine = make_engine(url)
cpu = time.process_time()
s = jobs.run_import(sessions=make_sessionmaker(engine), kind=kind, path=Path(path), rejects=Path(rejects))
cpu = time.process_time() - cpu
engine.dispose()
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"summary": {k: v for k, v in vars(s).items() if k != "unknown_skus"}, "cpu": cpu,
                  "reader": kids.ru_utime + kids.ru_stime}))
"""


def import_in_fresh_process(url: str, kind: str, path: Path, rejects: Path) -> tuple[Any, float, float]:
    """run_import in a new Python process, as `emma import KIND FILE` runs it: (summary, its CPU seconds, the
    CPU seconds of its reader process). The import's own clock (summary.seconds) starts after start-up."""
    import subprocess
    import sys
    from types import SimpleNamespace

    out = subprocess.run([sys.executable, "-c", _FRESH, url, kind, str(path), str(rejects)], check=True,
                         capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return SimpleNamespace(**got["summary"]), got["cpu"], got["reader"]


def _children_cpu() -> float:
    """CPU time of this process's ended child processes."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its child processes (`emma serve --workers N`) used so far."""
    ticks = sum(int(x) for x in _proc_stat(pid)[11:15])  # its own, and that of children it waited for
    for child in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            stat = _proc_stat(child.name)
            if int(stat[1]) == pid:
                ticks += sum(int(x) for x in stat[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_server(url: str, *, worker: bool = False, processes: int = 1) -> Iterator[tuple[str, str, int]]:
    """`emma serve` on a free port of 127.0.0.1 in its own process; (base URL, write key, its pid).

    Without worker, the server runs without the embedded automation and delivery worker
    (EMMA_WORKER_EMBEDDED=false), as a busy shop deploys it: the figures are those of ingestion alone.
    """
    import socket
    import subprocess
    import sys

    import httpx

    from emma.auth import service as auth

    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        key = auth.create_key(session=s, kind="write")
        s.commit()
    engine.dispose()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "EMMA_DATABASE_URL": url, "EMMA_WORKER_EMBEDDED": "true" if worker else "false"}
    workers = ["--workers", str(processes)] if processes > 1 else []
    proc = subprocess.Popen([sys.executable, "-c", "from emma.cli.main import app; app()", "serve", "--port",
                             str(port), *workers], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.1)
        yield base, key, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def shop_event(rng: random.Random, n: int, *, users: int = 5_000) -> dict[str, Any]:
    """One Segment message of a shop-like mix, with a unique messageId."""
    user = f"c-{rng.randrange(users)}"
    sku = f"SKU-{rng.randrange(400):06d}"
    price = round(10 + rng.randrange(2000) / 10, 2)
    roll = rng.random()
    msg: dict[str, Any]
    if roll < 0.4:
        msg = {"type": "page", "name": "Produkt", "properties": {"path": f"/p/{sku}"}}
    elif roll < 0.7:
        msg = {"type": "track", "event": "Product Viewed", "properties": {"sku": sku, "price": price}}
    elif roll < 0.85:
        msg = {"type": "track", "event": "Product Added",
               "properties": {"sku": sku, "price": price, "quantity": 1, "cart_id": f"cart-{user}"}}
    elif roll < 0.9:
        msg = {"type": "identify", "traits": {"email": f"{user}@example.com", "firstName": "Anna"}}
    elif roll < 0.95:
        msg = {"type": "track", "event": "Order Completed",
               "properties": {"order_id": f"o-{uuid.uuid4().hex[:12]}", "revenue": price, "currency": "EUR",
                              "products": [{"sku": sku, "price": price, "quantity": 1}]}}
    else:
        msg = {"type": "track", "event": "Newsletter Opened", "properties": {"campaign": "nl-7"}}
    msg["userId"] = user
    if rng.random() < 0.2:
        msg["anonymousId"] = f"anon-{rng.randrange(users * 2)}"
    msg.update(messageId=f"b-{uuid.uuid4().hex}", timestamp=(T0 + dt.timedelta(seconds=n)).isoformat(),
               context={"library": {"name": "analytics.js", "version": "4.1.0"},
                        "page": {"url": f"https://shop.example/p/{sku}"}, "locale": "de-DE"})
    return msg


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def part_http_batch(args: argparse.Namespace, databases: list[str]) -> None:
    import asyncio

    import httpload

    per_request = 100
    requests = max(1, args.batch_events // per_request)
    rng = random.Random(args.seed)
    bodies = [json.dumps({"batch": [shop_event(rng, i * per_request + j) for j in range(per_request)]}).encode()
              for i in range(requests)]

    async def drive(port: int, key: str) -> tuple[float, int, int, list[float]]:
        head = httpload.post_head(port, "/v1/batch", key)
        queue = list(range(requests))
        accepted, failed, latencies = 0, 0, []

        async def client() -> None:
            nonlocal accepted, failed
            conn = await httpload.connect(port)
            while queue:
                body = bodies[queue.pop()]
                t = time.perf_counter()
                status = await conn.post(head, body)
                latencies.append(time.perf_counter() - t)
                if status == 200:
                    accepted += json.loads(conn.body)["accepted"]
                else:
                    failed += 1
            conn.writer.close()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        return time.perf_counter() - started, accepted, failed, latencies

    with tempfile.TemporaryDirectory(prefix="emma-bench-http-") as tmp:
        for db in databases:
            with fresh_database(db, Path(tmp)) as url, \
                    running_server(url, worker=args.worker, processes=args.workers) as (base, key, pid):
                port = int(base.rsplit(":", 1)[1])
                cpu, server, own = process_cpu_seconds(pid), server_cpu_seconds(), time.process_time()
                secs, accepted, failed, lat = httpload.run(drive(port, key))
                cpu = process_cpu_seconds(pid) - cpu
                own = time.process_time() - own
                pg = server_cpu_seconds() - server if server is not None else 0.0  # type: ignore[operator]
                split = f" (emma {cpu:.1f} s, PostgreSQL {pg:.1f} s)" if server is not None else ""
                cpu += pg
                print(f"http batch    {db:<9} {requests:,} requests x {per_request} events, {args.clients} clients: "
                      f"{secs:6.1f} s {accepted / secs:>9,.0f} events/s accepted   request p50 "
                      f"{_percentile(lat, 0.5) * 1000:.0f} ms p99 {_percentile(lat, 0.99) * 1000:.0f} ms   "
                      f"server CPU {cpu:.1f} s{split} {accepted / cpu:>7,.0f} events/CPU-s "
                      f"({cpu / max(accepted, 1) * 1e6:.0f} us per event)   load generator CPU {own:.1f} s   "
                      f"accepted {accepted:,} failed requests {failed}   load average {os.getloadavg()[0]:.1f}   "
                      "target >= 10,000 events/s", flush=True)


def part_http_track(args: argparse.Namespace, databases: list[str]) -> None:
    import httpload

    total = int(args.rate * args.seconds)
    warmup = int(args.rate)  # the first second warms up
    rng = random.Random(args.seed)
    bodies = [json.dumps(shop_event(rng, i) | {"type": "track", "event": "Product Viewed",
                                               "properties": {"sku": "SKU-000001", "price": 9.5}}).encode()
              for i in range(total)]

    with tempfile.TemporaryDirectory(prefix="emma-bench-http-") as tmp:
        for db in databases:
            with fresh_database(db, Path(tmp)) as url, \
                    running_server(url, worker=args.worker, processes=args.workers) as (base, key, pid):
                port = int(base.rsplit(":", 1)[1])
                cpu, server, own = process_cpu_seconds(pid), server_cpu_seconds(), time.process_time()
                measured, failed, achieved, _ = httpload.run(httpload.open_loop(
                    port, httpload.post_head(port, "/v1/track", key), bodies, args.rate, warmup=warmup))
                cpu = process_cpu_seconds(pid) - cpu
                own = time.process_time() - own
                pg = server_cpu_seconds() - server if server is not None else 0.0  # type: ignore[operator]
                split = f" (emma {cpu:.1f} s, PostgreSQL {pg:.1f} s)" if server is not None else ""
                cpu += pg
                # A failed request counts as never answered.
                measured = [x if x == x else float("inf") for x in measured]
                print(f"http track    {db:<9} {total:,} requests offered at {args.rate:,.0f}/s "
                      f"for {args.seconds:.0f} s, achieved {achieved:,.0f}/s: p50 "
                      f"{_percentile(measured, 0.5) * 1000:.1f} ms p95 {_percentile(measured, 0.95) * 1000:.1f} ms "
                      f"p99 {_percentile(measured, 0.99) * 1000:.1f} ms max {max(measured) * 1000:.0f} ms   "
                      f"server CPU {cpu / total * 1000:.2f} ms per request{split}   "
                      f"load generator CPU {own / total * 1000:.2f} ms per request   failed {failed}   "
                      f"load average {os.getloadavg()[0]:.1f}   target p99 < 10 ms", flush=True)


PARTS: dict[str, Callable[[argparse.Namespace, list[str]], None]] = {
    "import": part_import, "http-batch": part_http_batch, "http-track": part_http_track}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=[*PARTS, "all"], action="append",
                        help="a part to run (repeatable); all of them when not given")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--order-lines", type=int, default=200_000, help="order lines to import (import part)")
    parser.add_argument("--events", type=int, default=20_000, help="events to import (import part)")
    parser.add_argument("--batch-events", type=int, default=50_000, help="events to send (http-batch part)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (http-batch part)")
    parser.add_argument("--rate", type=float, default=500, help="offered requests/s (http-track part)")
    parser.add_argument("--seconds", type=float, default=10, help="duration (http-track part)")
    parser.add_argument("--worker", action="store_true",
                        help="run the server with its embedded automation and delivery worker (HTTP parts)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (HTTP parts; `emma serve --workers`, PostgreSQL only)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fresh", action="store_true",
                        help="import part: each import in a new Python process, as `emma import` runs it")
    parser.add_argument("--repeat", type=int, default=1,
                        help="import part: run the imports this many times on fresh databases; print the medians")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                        help="what to import (import part); orders are imported twice (the second time a no-op)")
    args = parser.parse_args()
    databases = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    print(f"bench/ingest.py on {_machine()}")
    for name, part in PARTS.items():
        if not args.part or name in args.part or "all" in args.part:
            part(args, databases)


if __name__ == "__main__":
    main()
