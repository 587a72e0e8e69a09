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
import contextlib
import datetime as dt
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

import httpload
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


async def load(port: int, key: str, bodies: list[bytes], rate: float, warmup: int,
               server_pid: int) -> tuple[np.ndarray, int, float, float]:
    """Send bodies on a fixed schedule; latencies (s) of the measured part, errors, achieved rate, and the
    server's CPU seconds per measured request."""
    lat, errors, achieved, cpu = await httpload.open_loop(port, httpload.post_head(port, "/v1/decide", key), bodies,
                                                          rate, warmup=warmup, server_pid=server_pid)
    measured = np.array(lat)
    return measured[~np.isnan(measured)], errors, achieved, cpu or 0.0


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
