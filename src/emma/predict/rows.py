"""The stored prediction rows, built a chunk of customers at a time, column by column.

A million customers are a million rows of twenty columns: building a dict per row and letting the database
layer convert every value costs more than all the models together. Here the numeric columns come straight
from the arrays, the JSON columns are encoded once per distinct value where they repeat (the generic list,
the empty list) and by the C encoder otherwise, and the rows go to the driver in one executemany per chunk.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from emma.db import insert_columns
from emma.predict import features as F
from emma.predict.estimators.recommend import REASONS
from emma.predict.lifecycle import churn_reason, stage_reason
from emma.predict.models import Prediction, ScoreRun

NOT_PERSONALIZED = {"personalized": "no personalization consent: generic content only"}
CHANNELS = ("email", "push", "sms")


@dataclass
class RowContext:
    """Everything the rows are made of, aligned to the scored population (k) or the RFM rows (i)."""

    run: ScoreRun
    as_of: dt.datetime
    as_of_day: float
    scores: Any  # service.Scores | None
    churn: np.ndarray | None
    stages: np.ndarray | None
    still: np.ndarray | None
    buy_active: np.ndarray | None
    recs: dict[str, Any]
    extras: dict[str, Any]
    lead_p: np.ndarray | None
    uplift: np.ndarray | None


def _opt(values: np.ndarray | None, mask: np.ndarray, cast: type = float) -> list[Any]:
    """Python values where mask holds, None elsewhere (what the driver takes)."""
    if values is None:
        return [None] * len(mask)
    vals = values.tolist()
    return [cast(v) if m else None for v, m in zip(vals, mask.tolist(), strict=True)]


def _rec_json(it: F.Items) -> tuple[list[str], list[str]]:
    """Per item, the JSON text before the score, and per reason index the JSON text after it."""
    head = [f'{{"sku": {json.dumps(s)}, "score": ' for s in it.sku]
    tail = [f', "reason": {json.dumps(r)}}}' for r in REASONS]
    return head, tail


def _recommendation_texts(ctx: RowContext, ks: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Per customer of the chunk who gets individual recommendations: JSON text, top item and score rows."""
    it: F.Items = ctx.recs["items"]
    cache = ctx.recs.setdefault("_json", {})
    if "head" not in cache:
        cache["head"], cache["tail"] = _rec_json(it)
        cache["affinity"] = [f', "reason": {json.dumps("affinity:" + c)}}}' for c in it.categories]
    head, tail, aff = cache["head"], cache["tail"], cache["affinity"]
    cols, vals, reasons = ctx.recs["recs"][ks], np.round(ctx.recs["scores"][ks], 5), ctx.recs["reasons"][ks]
    cat = it.category
    texts: list[str] = []
    first_reason: list[str] = []
    for c_row, v_row, r_row in zip(cols.tolist(), vals.tolist(), reasons.tolist(), strict=True):
        parts = []
        for j, v, r in zip(c_row, v_row, r_row, strict=True):
            if j < 0:
                break
            parts.append(head[j] + repr(v) + (aff[cat[j]] if r == 1 else tail[r]))
        texts.append("[" + ", ".join(parts) + "]")
        if c_row[0] >= 0:
            r = r_row[0]
            first_reason.append(f"affinity:{it.categories[cat[c_row[0]]]}" if r == 1 else REASONS[r])
        else:
            first_reason.append("")
    return texts, cols, vals, first_reason


def _generic(ctx: RowContext) -> tuple[str, np.ndarray, np.ndarray]:
    """The popular items everyone sees: JSON text, items, scores."""
    cache = ctx.recs.setdefault("_json", {})
    if "generic" not in cache:
        it: F.Items = ctx.recs["items"]
        model = ctx.recs.get("model")
        top = np.asarray(ctx.recs["popular"][:10], dtype=np.int64)
        scores = [round(float(model.popularity_[j]), 4) if model else 0.0 for j in top.tolist()]
        cache["generic"] = (json.dumps([{"sku": it.sku[j], "score": s, "reason": "popular"}
                                        for j, s in zip(top.tolist(), scores, strict=True)]),
                            top, np.array(scores, dtype=np.float64))
    return cache["generic"]


def _affinity_texts(ctx: RowContext, ks: np.ndarray) -> list[str]:
    """Top category affinities (lift >= 1.2) and sustainability of customers with a purchase history."""
    model = ctx.recs.get("model")
    if model is None or not len(ks):
        return ["[]"] * len(ks)
    it: F.Items = ctx.recs["items"]
    if "sustainability" not in ctx.recs:
        ctx.recs["sustainability"] = _attribute_lift(model, it.sustainable.astype(float))
    sus = ctx.recs["sustainability"][ks].tolist()
    lift = model.affinity(ks) / model.category_share_
    top = np.argsort(-lift, axis=1)[:, :3]
    top_lift = np.round(np.take_along_axis(lift, top, axis=1), 3).tolist()
    names = [json.dumps(c) for c in it.categories]
    sus_name = json.dumps("sustainability")
    out = []
    for cs, ls, s in zip(top.tolist(), top_lift, sus, strict=True):
        items = [(v, names[c]) for c, v in zip(cs, ls, strict=True) if v >= 1.2]
        if s >= 1.2:
            items.append((round(s, 3), sus_name))
            items.sort(key=lambda x: -x[0])
        out.append("[" + ", ".join(f'{{"name": {n}, "score": {v!r}}}' for v, n in items) + "]")
    return out


def _attribute_lift(model: Any, flag: np.ndarray, strength: float = 3.0) -> np.ndarray:
    """Share of a customer's purchased items having the attribute, shrunk, over the population's share."""
    bought = model.last_day_.copy()
    bought.data[:] = 1.0
    n = np.asarray(bought.sum(axis=1)).ravel()
    hits = bought @ flag
    base = max(float(hits.sum() / max(n.sum(), 1)), 1e-6)
    return (hits + strength * base) / (n + strength) / base


def _channels(ex: dict[str, Any], cids: list[int]) -> tuple[list[str], list[str]]:
    counts_of = ex["channel_counts"]
    consent = [ex["consent_channels"][ch] for ch in CHANNELS]
    channel, reason = [], []
    for cid in cids:
        counts = counts_of.get(cid)
        if counts:
            ch = max(counts, key=lambda c: counts[c])
            channel.append(ch)
            reason.append(f"preferred channel {ch}: {counts[ch]} of {sum(counts.values())} message interactions")
            continue
        for ch, granted in zip(CHANNELS, consent, strict=True):
            if cid in granted:
                channel.append(ch)
                reason.append(f"preferred channel {ch}: no message interactions yet, first channel with consent")
                break
        else:
            channel.append("onsite")
            reason.append("preferred channel onsite: no message interactions and no channel consent")
    return channel, reason


def write_chunk(session: Session, ctx: RowContext, ids: np.ndarray, ks: np.ndarray, index: np.ndarray,
                personal: np.ndarray) -> int:
    """Build and insert the prediction rows of the customers ks (positions in the population); returns rows."""
    n = len(ks)
    it: F.Items = ctx.recs["items"]
    s = ctx.scores
    idx = index[ks]
    pers = personal[ks]
    scored = pers & (idx >= 0) if s is not None else np.zeros(n, dtype=bool)
    lead = pers & ~scored
    i = np.where(scored, idx, 0)
    has_hist = ctx.recs["has_history"][ks] if "has_history" in ctx.recs else np.zeros(n, dtype=bool)
    own_recs = pers & has_hist & (ctx.recs.get("recs") is not None)

    # numeric columns: models' values for buyers, the lead values for the others who consented, else None
    zeros = np.zeros(n)
    if s is not None:
        churn_all = ctx.churn if ctx.churn is not None else s.churn
        p_alive, e_orders = s.p_alive[i], s.expected_orders[i]
        e_rev, clv, churn, prop = s.expected_revenue[i], s.clv[i], churn_all[i], s.propensity_30d[i]
        nd = s.next_order_days[i]
    else:
        p_alive = e_orders = e_rev = clv = churn = prop = nd = np.full(n, np.nan)
    lead_p = ctx.lead_p[ks] if ctx.lead_p is not None else None
    propensity = np.where(scored, prop, lead_p if lead_p is not None else np.nan)
    prop_mask = scored | (lead & (lead_p is not None))
    stage = np.full(n, None, dtype=object)
    if ctx.stages is not None:
        stage[scored] = ctx.stages[i[scored]]
    stage[lead] = "lead"
    has_next = scored & ~np.isnan(nd)
    next_date = np.full(n, None, dtype=object)
    if has_next.any():
        base = np.datetime64(ctx.as_of.replace(tzinfo=None), "us")
        days_us = (nd[has_next] * 86_400e6).astype("timedelta64[us]")
        next_date[has_next] = (base + days_us).astype("datetime64[D]").astype(object)
    ex = ctx.extras
    hour_mask = pers & (ex["engaged"][ks] > 0) if "best_hour" in ex else np.zeros(n, dtype=bool)
    best_hour = ex["best_hour"][ks] if "best_hour" in ex else None
    uplift = ctx.uplift[ks] if ctx.uplift is not None else None
    early = ctx.recs.get("early")
    early_v = early[ks] if early is not None else None

    # recommendations: own for consenting customers with history, the generic list for everyone else
    gen_text, gen_cols, gen_vals = _generic(ctx)
    width = ctx.recs["recs"].shape[1] if ctx.recs.get("recs") is not None else max(len(gen_cols), 1)
    rec_text = np.full(n, gen_text, dtype=object)
    top_cols = np.full((n, width), -1, dtype=np.int64)
    top_vals = np.zeros((n, width))
    top_cols[:, :len(gen_cols)] = gen_cols[:width]
    top_vals[:, :len(gen_cols)] = gen_vals[:width]
    first_reason = np.full(n, "popular", dtype=object)
    own = np.flatnonzero(own_recs)
    if len(own):
        texts, cols, vals, first = _recommendation_texts(ctx, ks[own])
        rec_text[own] = texts
        top_cols[own], top_vals[own] = cols, vals
        first_reason[own] = first
    aff_text = np.full(n, "[]", dtype=object)
    aff_rows = np.flatnonzero(pers & has_hist)
    if len(aff_rows):
        aff_text[aff_rows] = _affinity_texts(ctx, ks[aff_rows])

    # next best offer: the recommendation with the highest P(buy) x score x margin
    p_buy = np.where(prop_mask, np.nan_to_num(propensity, nan=1.0), 1.0)
    valid = top_cols >= 0
    ev = np.where(valid, p_buy[:, None] * top_vals * it.margin[np.maximum(top_cols, 0)] if len(it) else 0.0,
                  -np.inf)
    best = np.argmax(ev, axis=1)
    has_rec = pers & valid.any(axis=1)
    best_item = top_cols[np.arange(n), best]
    best_ev = ev[np.arange(n), best]

    cids = ids[ks].tolist()
    channel: list[str | None] = [None] * n
    pers_rows = np.flatnonzero(pers).tolist()
    ch, ch_reason = _channels(ex, [cids[r] for r in pers_rows])
    reasons = [json.dumps(NOT_PERSONALIZED)] * n
    # reasons of the consenting customers, in the order `emma customers show` lists them; the loop reads Python
    # lists, not numpy scalars (indexing and formatting a numpy scalar costs several times more)
    rfm = s.rfm if s is not None else None
    if rfm is not None:
        freq, last, first = rfm.frequency[i].tolist(), rfm.last_day[i].tolist(), rfm.first_day[i].tolist()
        n_days, spend = rfm.orders[i].tolist(), rfm.monetary[i].tolist()
    churn_l, clv_l, pa_l, prop_l = churn.tolist(), clv.tolist(), p_alive.tolist(), prop.tolist()
    stage_l, date_l, scored_l = stage.tolist(), next_date.tolist(), scored.tolist()
    hour_l = hour_mask.tolist()
    best_hour_l = best_hour.tolist() if best_hour is not None else None
    engaged_l = ex["engaged"][ks].tolist() if "engaged" in ex else None
    uplift_l = uplift.tolist() if uplift is not None else None
    lead_l = lead_p.tolist() if lead_p is not None else None
    still_l = ctx.still[i].tolist() if ctx.still is not None and rfm is not None else None
    buy_l = ctx.buy_active[i].tolist() if ctx.buy_active is not None and rfm is not None else None
    rec_l, best_l, ev_l, top_l = has_rec.tolist(), best_item.tolist(), best_ev.tolist(), top_cols[:, 0].tolist()
    first_reason_l, sku_of, as_of_day = first_reason.tolist(), it.sku, ctx.as_of_day
    for pos, r in enumerate(pers_rows):
        channel[r] = ch[pos]
        why: dict[str, str] = {}
        if hour_l[r]:
            why["best_send_hour"] = f"best send hour {int(best_hour_l[r])}:00: active in {int(engaged_l[r])} " \
                                    f"quarter hours (local time), shrunk toward the population"
        why["preferred_channel"] = ch_reason[pos]
        if uplift_l is not None:
            why["incentive_uplift"] = f"incentive uplift {uplift_l[r]:+.3f}: learnt from randomised coupon " \
                                      f"tests (coupon vs no coupon in the same send)"
        if scored_l[r]:
            x = freq[r]
            c, value = churn_l[r], clv_l[r]
            why["churn_probability"] = churn_reason(churn=c, days_since_last=as_of_day - last[r],
                                                    usual_gap_days=(last[r] - first[r]) / x if x > 0 else None)
            why["clv"] = f"clv {value:.2f}: {int(n_days[r])} purchase days, average repeat spend " \
                         f"{spend[r]:.2f}, p_alive {pa_l[r]:.2f}"
            why["lifecycle_stage"] = (
                stage_reason(stage=str(stage_l[r]), still=still_l[r], churn=c, buy_if_active=buy_l[r], clv=value)
                if still_l is not None and buy_l is not None else f"{stage_l[r]}: churn {c:.2f}, clv {value:.2f}")
            why["propensity_30d"] = f"propensity {prop_l[r]:.2f}: P(order within 30 days), BG/NBD"
            if date_l[r] is not None:
                why["next_order_date"] = f"next order around {date_l[r]}: median wait while active"
        else:
            why["lifecycle_stage"] = "no order yet"
            if lead_l is not None:
                why["propensity_30d"] = f"propensity {lead_l[r]:.2f}: lead, scored from recent activity"
        if rec_l[r]:
            why["next_best_offer"] = f"next best offer {sku_of[best_l[r]]}: expected margin {ev_l[r]:.2f} " \
                                     f"(P(buy) x margin)"
            why["recommendations"] = f"top pick {sku_of[top_l[r]]}: {first_reason_l[r]}"
        reasons[r] = json.dumps(why)

    run_id = ctx.run.id
    columns = {
        "customer_id": cids, "run_id": [run_id] * n, "as_of": [ctx.as_of] * n, "personalized": pers.tolist(),
        "p_alive": _opt(p_alive, scored), "expected_orders": _opt(np.where(scored, e_orders, zeros), pers),
        "expected_revenue": _opt(np.where(scored, e_rev, zeros), pers),
        "clv": _opt(np.where(scored, clv, zeros), pers), "churn_probability": _opt(churn, scored),
        "next_order_date": next_date.tolist(), "lifecycle_stage": stage.tolist(),
        "propensity_30d": _opt(propensity, prop_mask), "best_send_hour": _opt(best_hour, hour_mask, int),
        "preferred_channel": channel, "top_affinities": aff_text.tolist(), "recommendations": rec_text.tolist(),
        "next_best_offer": [it.sku[j] if h else None for j, h in zip(best_item.tolist(), has_rec.tolist(),
                                                                         strict=True)],
        "incentive_uplift": _opt(uplift, pers), "early_adopter": _opt(early_v, pers & has_hist),
        "reasons": reasons,
    }
    insert_columns(session, Prediction, columns, encoded=("top_affinities", "recommendations", "reasons"))
    return n
