"""/v1/decide latency under an open-loop load: p50 / p99 at a fixed request rate against a real server.

    .venv/bin/python bench/decide.py                       # 500 req/s for 20 s, 10,000 customers
    .venv/bin/python bench/decide.py --rate 1000 --seconds 10 --customers 2000

The database is demo-like: the demo shop's German catalog (with accessories), its simulated year of
orders for --customers customers, user and anonymous ids, personalization consent for about 70 %, and
stored predictions (co-purchase recommendations, next best offer, incentive uplift) for every customer. The server is
`uvicorn emma.app:create_app` in its own process on 127.0.0.1 (SQLite, WAL). Requests are sent on a fixed
schedule whatever the answers do (open loop), over keep-alive connections; a request's latency runs from
its scheduled time to the end of its answer, so a server that falls behind shows it. The mix: product
page 40 %, home 25 %, exit intent 20 %, cart 15 %; visitors: 60 % known by userId, 25 % by a known
anonymousId, 15 % never seen before.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select

from emma.auth import service as auth
from emma.catalog import service as catalog
from emma.config import Settings
from emma.consent.models import Consent
from emma.db import make_engine, make_sessionmaker, upgrade
from emma.demo.simulate import DemoConfig, Simulation
from emma.onsite import service as onsite
from emma.onsite.models import Decision
from emma.orders import service as orders
from emma.predict.estimators.recommend import CoPurchaseRecommender, top_k
from emma.predict.models import Prediction, ScoreRun
from emma.profiles import service as profiles
from emma.profiles.models import Identity


def build(url: str, customers: int, seed: int) -> dict[str, list[str]]:
    """Fill the database; returns the ids and skus the load generator draws from."""
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    config = DemoConfig(customers=customers, seed=seed, days=365)
    sim = Simulation(config)
    while sim.day < config.days:
        sim.step(emit=False)
    cat, pop = sim.catalog, sim.population
    now = dt.datetime.now(dt.UTC)
    rng = np.random.default_rng(seed)
    with sessions() as s:
        catalog.upsert_products(session=s, products=[cat.row(i, day=config.days - 1) for i in range(len(cat))],
                                at=now - dt.timedelta(days=config.days))
        ids = profiles.ensure_customers(session=s, external_ids=pop.user_id, at=now - dt.timedelta(days=400))
        s.execute(insert(Identity), [{"customer_id": ids[u], "kind": "anonymous_id", "value": a, "created_at": now}
                                     for u, a in zip(pop.user_id, pop.anonymous_id, strict=True)])
        price = cat.price_cents / 100
        batch = [{"order_id": o.order_id, "customer_id": ids[pop.user_id[o.customer]],
                  "ordered_at": config.day_start(o.day) + dt.timedelta(hours=12), "status": "completed",
                  "currency": "EUR", "revenue": None, "discount": None, "coupon": o.coupon, "cart_id": None,
                  "lines": [{"sku": cat.sku[p], "quantity": 1, "unit_price": float(price[p])} for p in o.skus]}
                 for o in sim.orders if o.skus]
        for i in range(0, len(batch), 5000):
            orders.create_orders(session=s, orders=batch[i:i + 5000], source="import")
        cids = np.array([ids[u] for u in pop.user_id])
        granted = rng.random(customers) < 0.7
        s.execute(insert(Consent), [{"customer_id": int(c), "purpose": "personalization",
                                     "status": "granted" if g else "revoked", "source": "bench", "recorded_at": now}
                                    for c, g in zip(cids, granted, strict=True)])
        # Stored predictions as scoring would leave them: co-purchase recommendations on each history.
        hist_c = np.array([o.customer for o in sim.orders for _ in o.skus], dtype=np.int64)
        hist_i = np.array([p for o in sim.orders for p in o.skus], dtype=np.int64)
        model = CoPurchaseRecommender().fit(hist_c, hist_i, n_items=len(cat))
        scores = model.score_many(hist_c, hist_i, np.ones(len(hist_i)), n_customers=customers).toarray()
        run = ScoreRun(as_of=now, horizon_days=365, status="done")
        s.add(run)
        s.flush()
        bought_by: dict[int, list[int]] = {}
        for c, p in zip(hist_c.tolist(), hist_i.tolist(), strict=True):
            bought_by.setdefault(c, []).append(p)
        rows = []
        for k in range(customers):
            recs = top_k(scores[k], 8, exclude=np.array(bought_by.get(k, []), dtype=np.int64)) if granted[k] else []
            skus = [cat.sku[int(j)] for j in recs if scores[k][j] > 0]
            rows.append({"customer_id": int(cids[k]), "run_id": run.id, "as_of": now, "personalized": bool(granted[k]),
                         "recommendations": [{"sku": sku} for sku in skus],
                         "next_best_offer": skus[0] if skus else None,
                         "incentive_uplift": float(rng.normal(0.02, 0.03)) if granted[k] else None,
                         "propensity_30d": float(rng.uniform(0, 0.3)), "top_affinities": [], "reasons": {}})
        s.execute(insert(Prediction), rows)
        key = auth.create_key(session=s, kind="write")
        s.commit()
    engine.dispose()
    bought = sorted({cat.sku[p] for o in sim.orders for p in o.skus})
    return {"user_ids": list(pop.user_id), "anonymous_ids": list(pop.anonymous_id), "skus": bought, "key": [key],
            "orders": [str(len(batch))]}


def requests(data: dict[str, list[str]], n: int, seed: int) -> list[bytes]:
    """n request bodies drawn from the mix in the module docstring."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        r = rnd.random()
        who: dict[str, str]
        if r < 0.60:
            who = {"userId": rnd.choice(data["user_ids"])}
        elif r < 0.85:
            who = {"anonymousId": rnd.choice(data["anonymous_ids"])}
        else:
            who = {"anonymousId": f"new-visitor-{seed}-{i}"}
        p = rnd.random()
        if p < 0.40:
            body = {"placement": "product_page", "context": {"sku": rnd.choice(data["skus"])}}
        elif p < 0.65:
            body = {"placement": "home"}
        elif p < 0.85:
            body = {"placement": "exit_intent"}
        else:
            body = {"placement": "cart", "context": {"cart_skus": rnd.sample(data["skus"], rnd.randint(1, 3))}}
        body.update(who)
        body.setdefault("context", {})["locale"] = "de-DE"
        out.append(json.dumps(body).encode())
    return out


MAX_CONNECTIONS = 256


class Conn:
    """One keep-alive HTTP/1.1 connection (a minimal client: the load generator must cost little)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, head: bytes, body: bytes) -> int:
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("closed by the server")  # an idle keep-alive connection timed out
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(port: int, key: str, bodies: list[bytes], rate: float, warmup: int,
               server_pid: int) -> tuple[np.ndarray, int, float, float]:
    """Send bodies on a fixed schedule; latencies (s) of the measured part, errors, achieved rate, and the
    server's CPU seconds per measured request."""
    auth_header = base64.b64encode(f"{key}:".encode()).decode()
    head = (f"POST /v1/decide HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth_header}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()
    idle: list[Conn] = []
    latencies = np.zeros(len(bodies))
    errors = 0

    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        async with slots:  # past MAX_CONNECTIONS in flight, a request waits here, and its latency grows
            conn = idle.pop() if idle else Conn(*await asyncio.open_connection("127.0.0.1", port))
            try:
                try:
                    status = await conn.post(head, bodies[i])
                except ConnectionResetError:  # nothing was answered: send it again on a new connection
                    conn = Conn(*await asyncio.open_connection("127.0.0.1", port))
                    status = await conn.post(head, bodies[i])
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors += 1
                latencies[i] = np.nan
                return
            latencies[i] = time.perf_counter() - scheduled
            if status != 200:
                errors += 1
            idle.append(conn)

    # The load generator is a Python process too: a full collection of everything this script imported
    # (numpy, scikit-learn, the simulator) stops it for 50 ms and more, and would count as server latency.
    gc.collect()
    gc.freeze()
    for _ in range(32):  # connections a shop's visitors would hold open anyway
        idle.append(Conn(*await asyncio.open_connection("127.0.0.1", port)))
    tasks = []
    start = time.perf_counter() + 0.05
    cpu0 = None
    for i in range(len(bodies)):
        if i == warmup:
            cpu0 = cpu_seconds(server_pid)
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    cpu = (cpu_seconds(server_pid) - (cpu0 or 0.0)) / max(len(bodies) - warmup, 1)
    for c in idle:
        c.writer.close()
    measured = latencies[warmup:]
    errors_measured = int(np.isnan(measured).sum()) + errors
    return measured[~np.isnan(measured)], errors_measured, len(bodies) / elapsed, cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration (after 3 s of warm-up)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--uvicorn", default="", help="extra uvicorn options, e.g. '--http httptools'")
    parser.add_argument("--nice", type=int, default=0,
                        help="scheduling priority of this process, the server and their autogroup (negative: "
                             "ahead of other work on a shared machine; needs root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="emma-bench-decide-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'emma.db'}"
        t0 = time.perf_counter()
        data = build(url, args.customers, args.seed)
        print(f"database: {args.customers:,} customers, {data['orders'][0]} orders, {len(data['skus'])} skus "
              f"bought, built in {time.perf_counter() - t0:.1f} s", flush=True)
        port = free_port()
        env = {**os.environ, "EMMA_DATABASE_URL": url}
        if args.nice:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # the server process inherits it
            # With autogroup scheduling (most desktop and cloud kernels), nice only ranks processes within
            # their session's group, and each group gets its fair share: rank the group too.
            with contextlib.suppress(OSError):
                Path("/proc/self/autogroup").write_text(str(args.nice))
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "emma.app:create_app", "--factory", "--host",
                                   "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
                                   *args.uvicorn.split()],
                                  env=env)
        try:
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            warmup = int(args.rate * 3)
            bodies = requests(data, warmup + int(args.rate * args.seconds), args.seed)
            lat, errors, achieved, cpu = asyncio.run(load(port, data["key"][0], bodies, args.rate, warmup,
                                                          server.pid))
            load_avg = os.getloadavg()
        finally:
            server.terminate()
            server.wait(30)  # shutdown writes the impressions still queued
        engine = make_engine(url)
        with make_sessionmaker(engine)() as s:
            logged = s.scalar(select(func.count()).select_from(Decision))
            snap = onsite.build_snapshot(session=s, settings=Settings(database_url=url))
        engine.dispose()
    ms = lat * 1000
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"rate target {args.rate:.0f}/s  achieved {achieved:.0f}/s  measured {len(ms):,} requests over "
          f"{args.seconds:.0f} s  errors {errors}")
    print(f"latency ms  p50 {np.percentile(ms, 50):.2f}  p90 {np.percentile(ms, 90):.2f}  "
          f"p99 {np.percentile(ms, 99):.2f}  p99.9 {np.percentile(ms, 99.9):.2f}  max {ms.max():.2f}")
    print(f"server CPU per request {cpu * 1000:.3f} ms (user + system)  load average during the run "
          f"{load_avg[0]:.1f} (1 min)")
    print(f"impressions logged {logged:,} of {len(bodies):,} requests")
    print(f"catalog snapshot: {len(snap.cards)} products, {len(snap.neighbours)} with co-purchase neighbours, "
          f"{len(snap.accessories)} with accessories, built in {snap.build_seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
