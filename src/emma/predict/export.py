"""The predictions export (CSV) other tools and people rely on."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from emma.predict.models import Prediction
from emma.profiles.models import Customer

COLUMNS = ("customer_id", "p_alive", "expected_orders", "expected_revenue", "clv", "churn_probability",
           "next_order_date", "lifecycle_stage", "propensity_30d", "best_send_hour", "preferred_channel",
           "top_affinities", "recommendations", "personalized")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "|".join(str(x["sku"] if isinstance(x, dict) and "sku" in x else
                            x["name"] if isinstance(x, dict) and "name" in x else x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def export_csv(*, session: Session, path: Path) -> int:
    """Write every customer's latest predictions; customer_id is the shop's id (external id)."""
    stmt = (select(Prediction, Customer.external_id).join(Customer, Customer.id == Prediction.customer_id)
            .order_by(Prediction.customer_id).execution_options(yield_per=10_000))
    n = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for pred, ext in session.execute(stmt):
            values = [ext or f"#{pred.customer_id}"] + [_fmt(getattr(pred, c)) for c in COLUMNS[1:]]
            w.writerow(values)
            n += 1
    return n
