"""Demo shop generation rate: customers/s and events/s, split into simulation and ingestion.

    .venv/bin/python bench/demo.py                          # 10,000 and 100,000 customers, 365 days
    .venv/bin/python bench/demo.py --customers 10000 --days 90
    .venv/bin/python bench/demo.py --generate-only --customers 1000000

Each run builds a fresh SQLite database in a temporary directory through the same path as `emma demo`
(catalog upserts, ingest of Segment messages, a commit per simulated day).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from emma.demo import service
from emma.demo.simulate import DemoConfig, Simulation


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def generate_only(config: DemoConfig) -> None:
    started = time.perf_counter()
    sim = Simulation(config)
    messages = 0
    while sim.day < config.days:
        messages += len(sim.step(emit=True).messages)
    secs = time.perf_counter() - started
    print(f"generate only  customers={config.customers:>9,} days={config.days} events={messages:>11,} "
          f"orders={len(sim.orders):>9,} {secs:8.1f} s  {config.customers / secs:>9,.0f} customers/s  "
          f"{messages / secs:>9,.0f} events/s")


def full(config: DemoConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="emma-bench-demo-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        last = [time.perf_counter()]

        def progress(done: int, total: int, events: int) -> None:
            if time.perf_counter() - last[0] > 30:
                last[0] = time.perf_counter()
                print(f"  ... day {done}/{total}, {events:,} events", flush=True)

        started = time.perf_counter()
        _, run = service.run_demo(database=url, config=config, progress=progress)
        secs = time.perf_counter() - started
    print(f"sqlite         customers={config.customers:>9,} days={config.days} events={run.messages:>11,} "
          f"orders={run.orders:>9,} {secs:8.1f} s (simulate {run.generate_seconds:.1f} s, ingest "
          f"{run.ingest_seconds:.1f} s)  {config.customers / secs:>9,.0f} customers/s  "
          f"{run.messages / secs:>9,.0f} events/s  rejected={len(run.rejected)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--generate-only", action="store_true", help="simulate and build messages, no database")
    args = parser.parse_args()
    print(f"bench/demo.py on {_machine()}")
    for n in args.customers:
        config = DemoConfig(customers=n, seed=args.seed, days=args.days)
        (generate_only if args.generate_only else full)(config)


if __name__ == "__main__":
    main()
