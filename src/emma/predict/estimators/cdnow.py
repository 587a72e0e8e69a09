"""The CDNOW sample (Fader, Hardie & Lee) as shipped inside the `lifetimes` wheel, read without lifetimes."""

from __future__ import annotations

import datetime as dt
import importlib.resources as resources

import numpy as np

START = dt.date(1997, 1, 1)
CALIBRATION_DAYS = 273  # weeks 0-39
HOLDOUT_DAYS = 273  # weeks 40-78


def _path(name: str) -> str:
    return str(resources.files("lifetimes.datasets") / name)


def summary() -> dict[str, np.ndarray]:
    """The published calibration summary: frequency, recency, T (weeks)."""
    d = np.genfromtxt(_path("cdnow_customers_summary.csv"), delimiter=",", names=True)
    return {"frequency": d["frequency"], "recency": d["recency"], "T": d["T"]}


def spend_summary() -> dict[str, np.ndarray]:
    """Repeat transactions and their mean spend (the Gamma-Gamma data)."""
    d = np.genfromtxt(_path("cdnow_customers_summary_with_transactions.csv"), delimiter=",", names=True)
    return {"frequency": d["x"], "monetary": d["zbar"]}


def transactions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer id, day since 1997-01-01, amount) of every transaction in the 2,357-customer sample."""
    raw = np.loadtxt(_path("CDNOW_sample.txt"), dtype=str)
    cust = raw[:, 0].astype(np.int64)
    dates = raw[:, 2]
    base = np.datetime64(START.isoformat())
    iso = np.array([f"{s[:4]}-{s[4:6]}-{s[6:]}" for s in dates], dtype="datetime64[D]")
    day = (iso - base).astype(np.int64).astype(np.float64)
    return cust, day, raw[:, 4].astype(np.float64)
