"""Art. 15 / 20 export and Art. 17 erasure, over every table that refers to a customer.

The tables are found from the schema (foreign keys to customers, and tables hanging off those), so a
domain that adds a table is covered without touching this module. Erasure deletes by default; a few
tables are kept in anonymised form so that business aggregates (orders, revenue, sends) stay correct.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from sqlalchemy import String, Table, cast, delete, literal, or_, select, update
from sqlalchemy.orm import Session

from emma.db import Base, import_all_models, utcnow
from emma.profiles import service as profiles
from emma.profiles.models import Customer

# Kept rows: orders and their lines carry revenue, the outbox and delivery log carry send/open/conversion
# counts, coupons and conversions (no personal data) carry redemption and attribution counts. Their personal
# parts are cleared below; all else is deleted.
KEEP = {"orders", "order_lines", "coupons", "conversions"}
SCRUB: dict[str, dict[str, Any]] = {"outbox": {"payload": {}, "last_error": None},
                                    "delivery_log": {"detail": {}}}
# Profile columns that survive erasure: none of them identifies a person.
PROFILE_KEPT = {"id", "created_at", "is_anonymous", "merged_into_id", "country"}


def _plain(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    return v


def _links() -> list[tuple[Table, list[tuple[str, Table]]]]:
    """Each table with the (column, parent table) foreign keys that lead, directly or not, to customers."""
    import_all_models()
    customers = Base.metadata.tables["customers"]
    reach = {customers}
    out: list[tuple[Table, list[tuple[str, Table]]]] = []
    for table in Base.metadata.sorted_tables:  # parents come before children
        if table is customers:
            continue
        fks = [(fk.parent.name, fk.column.table) for fk in table.foreign_keys if fk.column.table in reach]
        if fks:
            reach.add(table)
            out.append((table, fks))
    return out


def profile_ids(*, session: Session, customer_id: int) -> list[int]:
    """The customer and every profile merged into it (the same person's earlier anonymous profiles)."""
    ids = [customer_id]
    frontier = [customer_id]
    while frontier:
        found = list(session.scalars(select(Customer.id).where(Customer.merged_into_id.in_(frontier))))
        frontier = [i for i in found if i not in ids]
        ids.extend(frontier)
    return ids


def _collect(session: Session, ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Rows per table that belong to the profiles ids (all columns)."""
    customers = Base.metadata.tables["customers"]
    rows: dict[str, list[dict[str, Any]]] = {
        "customers": [dict(r._mapping) for r in session.execute(select(customers).where(customers.c.id.in_(ids)))]}
    keys: dict[str, set[Any]] = {"customers": set(ids)}
    for table, fks in _links():
        conds = [table.c[col].in_(keys[parent.name]) for col, parent in fks if keys.get(parent.name)]
        found = [dict(r._mapping) for r in session.execute(select(table).where(or_(*conds)))] if conds else []
        rows[table.name] = found
        pk = list(table.primary_key.columns)
        keys[table.name] = {r[pk[0].name] for r in found} if len(pk) == 1 else set()
    return rows


def export(*, session: Session, ref: str | int) -> dict[str, Any]:
    """Everything held about the customer, table by table, as plain JSON data."""
    customer = profiles.get_customer(session=session, ref=ref)
    ids = profile_ids(session=session, customer_id=customer.id)
    data = _collect(session, ids)
    return {"customer_id": customer.id, "exported_at": utcnow().isoformat(), "profiles": ids,
            "tables": {name: [{k: _plain(v) for k, v in row.items()} for row in rows]
                       for name, rows in data.items()}}


def erase(*, session: Session, ref: str | int, now: dt.datetime | None = None) -> dict[str, dict[str, int]]:
    """Delete or anonymise everything about the customer; returns what happened per table."""
    now = now or utcnow()
    customer = profiles.get_customer(session=session, ref=ref)
    ids = profile_ids(session=session, customer_id=customer.id)
    data = _collect(session, ids)
    links = dict(_links())
    summary: dict[str, dict[str, int]] = {}
    # Children first, so nothing is deleted while rows still point at it.
    for table in reversed(Base.metadata.sorted_tables):
        name = table.name
        if name == "customers" or name not in data or not data[name]:
            continue
        pk = list(table.primary_key.columns)
        pks = [r[pk[0].name] for r in data[name]]
        if name in KEEP:
            summary[name] = {"kept": len(pks)}
        elif name in SCRUB:
            values = dict(SCRUB[name])
            if name == "outbox":  # keys are made by tactics and may embed anything; keep them unique
                values["idempotency_key"] = literal("erased:").op("||")(cast(table.c.id, String))
            session.execute(update(table).where(pk[0].in_(pks)).values(**values))
            summary[name] = {"anonymised": len(pks)}
        elif len(pk) == 1:
            session.execute(delete(table).where(pk[0].in_(pks)))
            summary[name] = {"deleted": len(pks)}
        else:  # composite key: delete by the customer link itself
            conds = [table.c[col].in_(ids) for col, parent in links[table] if parent.name == "customers"]
            session.execute(delete(table).where(or_(*conds)))
            summary[name] = {"deleted": len(pks)}
    blank = {c.name: None for c in Customer.__table__.columns if c.name not in PROFILE_KEPT and c.nullable}
    session.execute(update(Customer).where(Customer.id.in_(ids)).values(
        **blank, attributes={"erased_at": now.isoformat()}, is_anonymous=True))
    summary["customers"] = {"anonymised": len(ids)}
    session.expire_all()
    return summary
