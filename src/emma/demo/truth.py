"""The ground truth of a demo run: hidden traits and what really happened after the cut-off date.

It is recomputed from the seed, so it holds the simulation's own orders; orders placed in reaction to the live
days' messages (order ids "M-...") are not in it.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from emma.demo.catalog import CATEGORIES_EN
from emma.demo.population import CHANNELS, CITIES, INCENTIVE_TYPES
from emma.demo.response import true_uplift
from emma.demo.simulate import DOI_CONFIRM_P, Simulation

FUTURE_WINDOW_DAYS = 90  # "churned" = no purchase in this many days after the cut-off


def truth_rows(sim: Simulation) -> list[dict[str, Any]]:
    """One row per simulated customer; needs a simulation that has run to its end."""
    cfg, pop, cat = sim.config, sim.population, sim.catalog
    if sim.day < cfg.days:
        raise ValueError("the simulation has not run to its end")
    cut = cfg.cutoff_day
    window_end = min(cfg.days, cut + FUTURE_WINDOW_DAYS)
    n = len(pop)
    orders = np.zeros((3, n), dtype=np.int64)  # total, before cut-off, after cut-off
    revenue = np.zeros((3, n), dtype=np.int64)
    in_window = np.zeros(n, dtype=bool)
    returned = np.zeros(n, dtype=np.int64)
    for o in sim.orders:
        after = o.day >= cut
        for row in (0, 2 if after else 1):
            orders[row, o.customer] += 1
            revenue[row, o.customer] += o.revenue_cents
        if cut <= o.day < window_end:
            in_window[o.customer] = True
        returned[o.customer] += o.returned
    alive = sim.alive_at(cut)
    uplift = true_uplift(pop, alive, cat)
    top = pop.top_category()
    rows = []
    for i in range(n):
        reg = int(sim.registered_day[i])
        drop = int(sim.dropout_day[i])
        email = "none"
        if reg >= 0 and pop.consent[i, 0]:
            confirmed = (i * 2654435761 % 1000) < DOI_CONFIRM_P * 1000
            revoked = pop.revoke_after_days[i] >= 0 and reg + pop.revoke_after_days[i] < cfg.days
            email = "revoked" if revoked else ("granted" if confirmed else "pending")
        row: dict[str, Any] = {
            "user_id": pop.user_id[i] if reg >= 0 else "",
            "anonymous_id": pop.anonymous_id[i],
            "registered_date": (cfg.start + dt.timedelta(days=reg)).isoformat() if reg >= 0 else "",
            "first_visit_date": (cfg.start + dt.timedelta(days=int(pop.join_day[i]))).isoformat(),
            "purchase_rate_per_year": round(float(pop.purchase_rate[i]) * 365, 4),
            "dropout_probability": round(float(pop.dropout_p[i]), 4),
            "dropout_date": (cfg.start + dt.timedelta(days=drop)).isoformat() if drop >= 0 else "",
            "alive_at_cutoff": bool(alive[i]),
            "top_category": CATEGORIES_EN[int(top[i])],
            **{f"affinity_{c.lower()}": round(float(pop.affinity[i, k]), 4) for k, c in enumerate(CATEGORIES_EN)},
            "cares_sustainability": bool(pop.cares_sustainability[i]),
            "price_sensitivity": round(float(pop.price_sensitivity[i]), 4),
            "incentive_type": INCENTIVE_TYPES[int(pop.incentive_type[i])],
            "true_uplift": round(float(uplift[i]), 6),
            "preferred_channel": CHANNELS[int(pop.preferred_channel[i])],
            "preferred_hour": int(pop.preferred_hour[i]),
            "birthday": str(pop.birthday[i]),
            "locale": pop.locale_tag(i),
            "timezone": pop.timezone(i),
            "city": CITIES[int(pop.city[i])][0],
            "lat": round(float(pop.lat[i]), 4),
            "lon": round(float(pop.lon[i]), 4),
            "email_consent": email,
            "orders_total": int(orders[0, i]),
            "revenue_total": revenue[0, i] / 100,
            "orders_returned": int(returned[i]),
            "orders_before_cutoff": int(orders[1, i]),
            "revenue_before_cutoff": revenue[1, i] / 100,
            "orders_after_cutoff": int(orders[2, i]),
            "revenue_after_cutoff": revenue[2, i] / 100,
            f"purchased_within_{FUTURE_WINDOW_DAYS}d_after_cutoff": bool(in_window[i]),
            "churned": bool(not in_window[i]),
            "cutoff_date": (cfg.start + dt.timedelta(days=cut)).isoformat(),
            "end_date": cfg.end.isoformat(),
        }
        rows.append(row)
    return rows


def write_truth(sim: Simulation, path: str | Path) -> int:
    """Write the truth as CSV; returns the number of customers."""
    rows = truth_rows(sim)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["user_id"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
