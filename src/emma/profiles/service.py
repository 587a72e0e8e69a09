"""Customers and identity resolution: anonymous activity joins the known customer, known ones never merge."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from emma.db import (
    allocate_ids,
    among,
    insert_columns,
    insert_rows,
    read_datetime,
    rows_among,
    typed_rows_among,
    update_rows,
    utcnow,
)
from emma.profiles.exceptions import CustomerNotFound, MergeNotRevertible
from emma.profiles.models import Customer, Identity, IdentityConflict, MergeLog, TraitChange

# Segment trait names (camelCase and snake_case) -> profile columns.
TRAIT_COLUMNS: dict[str, str] = {
    "email": "email", "phone": "phone",
    "firstName": "first_name", "first_name": "first_name",
    "lastName": "last_name", "last_name": "last_name",
    "birthday": "birthday", "locale": "locale", "timezone": "timezone",
}
ADDRESS_COLUMNS: dict[str, str] = {
    "postalCode": "postal_code", "postal_code": "postal_code", "city": "city", "country": "country",
    "lat": "lat", "lon": "lon", "latitude": "lat", "longitude": "lon",
}
# Tables whose customer_id follows an anonymous profile into the known one on merge.
_MOVABLE = ("events", "carts", "wishlist_items", "orders", "consents", "consent_log", "trait_history")
# Tables with one row per customer and this column: a merge moves only the rows the target lacks.
_UNIQUE_PER_CUSTOMER = {"consents": "purpose", "wishlist_items": "sku"}


def _table(name: str) -> Any:
    from emma.db import Base

    return Base.metadata.tables[name]


class Resolver:
    """Resolves (user id, anonymous id) to customer ids within one transaction, with a cache for batches."""

    def __init__(self, session: Session, *, now: dt.datetime | None = None) -> None:
        self.session = session
        self.now = now or utcnow()
        self._cache: dict[tuple[str, str], int] = {}
        self._missing: set[tuple[str, str]] = set()  # looked up and not found: no second query
        self._anonymous: dict[int, bool] = {}
        self.conflicts: list[IdentityConflict] = []
        self.merges: list[MergeLog] = []
        self._pending: list[tuple[int, int, str]] = []
        self._new_identities: list[dict[str, Any]] = []
        # Customers created by resolution get a provisional (negative) id until flush writes them all with
        # one INSERT; real_id maps a provisional id to the stored one.
        self._new_customers: dict[int, dict[str, Any]] = {}
        self._promoted: dict[int, str] = {}  # stored anonymous profile -> the userId it now carries
        self._real: dict[int, int] = {}
        self._unsaved_conflicts: list[IdentityConflict] = []
        self._last_seen: dict[int, Any] = {}  # last_seen_at as the preloads read it (the driver's value)
        # Deferred merges, source -> target: identities cached for a source resolve to its target (lookup
        # settles them one by one, instead of a pass over the whole cache for every merge).
        self._merged: dict[int, int] = {}

    def preload(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Load the customers of many identities with one query per kind."""
        by_kind: dict[str, set[str]] = {}
        for kind, value in pairs:
            if (kind, value) not in self._cache and (kind, value) not in self._missing:
                by_kind.setdefault(kind, set()).add(value)
        for kind, values in by_kind.items():
            vals = list(values)
            rows = rows_among(self.session, "identities i JOIN customers c ON c.id = i.customer_id",
                              ["i.value", "i.customer_id", "c.is_anonymous", "c.last_seen_at"], "i.value", vals,
                              where="i.kind = {p}", params=[kind])
            for value, cid, anon, seen in rows:
                self._cache[(kind, value)] = cid
                self._anonymous[cid] = bool(anon)
                self._last_seen[cid] = seen
            self._missing.update((kind, v) for v in vals if (kind, v) not in self._cache)

    def unseen(self, seen: dict[int, dt.datetime]) -> dict[int, dt.datetime]:
        """The entries of seen that move a customer's last_seen_at forward, as far as the preloads tell:
        a customer whose stored last_seen_at is already as late needs no UPDATE."""
        known = self._last_seen
        out = {}
        parse = dt.datetime.fromisoformat
        for cid, ts in seen.items():
            stored = known.get(cid)
            if stored is not None:
                if type(stored) is str:  # SQLite gives the stored text: naive UTC
                    try:
                        stored = parse(stored + "+00:00")
                    except ValueError:
                        stored = None
                elif stored.tzinfo is None:
                    stored = stored.replace(tzinfo=dt.UTC)
                if stored is not None and stored >= ts:
                    continue
            out[cid] = ts
        return out

    def lookup(self, kind: str, value: str) -> int | None:
        key = (kind, value)
        if key not in self._cache and key not in self._missing:
            self.preload([key])
        cid = self._cache.get(key)
        if cid is not None and cid in self._merged:
            for _ in range(len(self._merged)):  # a chain of merges ends within as many steps
                cid = self._merged[cid]
                if cid not in self._merged:
                    break
            self._cache[key] = cid
        return cid

    def is_anonymous(self, customer_id: int) -> bool:
        if customer_id not in self._anonymous:
            self._anonymous[customer_id] = bool(
                self.session.scalar(select(Customer.is_anonymous).where(Customer.id == customer_id)))
        return self._anonymous[customer_id]

    def _add_identity(self, customer_id: int, kind: str, value: str) -> None:
        self._new_identities.append({"customer_id": customer_id, "kind": kind, "value": value,
                                     "created_at": self.now})
        self._cache[(kind, value)] = customer_id

    def real_id(self, customer_id: int) -> int:
        """The stored id of a customer resolve returned (the same id unless it was provisional)."""
        return self._real.get(customer_id, customer_id)

    def flush(self) -> None:
        """Write the customers and identities resolution added (apply_merges does it too)."""
        if self._new_customers:
            self._store_new_customers()
        if self._promoted:
            update_rows(self.session, Customer, [{"id": cid, "external_id": user_id, "is_anonymous": False}
                                                 for cid, user_id in self._promoted.items()])
            self._promoted = {}
        if self._new_identities:
            insert_rows(self.session, Identity, self._new_identities)
            self._new_identities = []
        if self._unsaved_conflicts:
            self.session.add_all(self._unsaved_conflicts)
            self._unsaved_conflicts = []

    def _store_new_customers(self) -> None:
        provisional = list(self._new_customers)
        ids = allocate_ids(self.session, Customer, len(provisional))
        real = dict(zip(provisional, ids, strict=True))
        rows = self._new_customers.values()
        insert_columns(self.session, Customer, {
            "id": ids, "external_id": [r["external_id"] for r in rows],
            "is_anonymous": [r["external_id"] is None for r in rows], "attributes": [{} for _ in ids],
            "created_at": [r["first_seen"] for r in rows], "last_seen_at": [r["first_seen"] for r in rows]})
        for cid, r in zip(ids, rows, strict=True):
            self._last_seen[cid] = r["first_seen"]
        self._new_customers = {}
        self._real.update(real)
        for key, cid in self._cache.items():
            if cid < 0:
                self._cache[key] = real[cid]
        if self._merged:
            self._merged = {real.get(s, s): real.get(t, t) for s, t in self._merged.items()}
        for cid in provisional:
            self._anonymous[real[cid]] = self._anonymous.pop(cid)
        for row in self._new_identities:
            row["customer_id"] = real.get(row["customer_id"], row["customer_id"])
        self._pending = [(real.get(s, s), real.get(t, t), r) for s, t, r in self._pending]
        for c in self._unsaved_conflicts:
            c.customer_id = real.get(c.customer_id, c.customer_id)
            c.other_customer_id = real.get(c.other_customer_id, c.other_customer_id)

    def _create(self, *, user_id: str | None, first_seen: dt.datetime) -> int:
        cid = -len(self._real) - len(self._new_customers) - 1
        self._new_customers[cid] = {"external_id": user_id, "first_seen": first_seen}
        self._anonymous[cid] = user_id is None
        if user_id is not None:
            self._add_identity(cid, "user_id", user_id)
        return cid

    def _conflict(self, a: int, b: int, kind: str, value: str, message_id: str | None) -> None:
        # Added to the session by flush, once provisional ids are real (an autoflush must not see them).
        conflict = IdentityConflict(customer_id=a, other_customer_id=b, kind=kind, value=value,
                                    message_id=message_id, created_at=self.now)
        self._unsaved_conflicts.append(conflict)
        self.conflicts.append(conflict)

    def resolve(self, *, user_id: str | None, anonymous_id: str | None, at: dt.datetime | None = None,
                message_id: str | None = None) -> int:
        """The customer these ids belong to, creating, promoting or merging profiles as the rules allow."""
        at = at or self.now
        if user_id is None and anonymous_id is None:
            raise ValueError("userId or anonymousId is required")
        anon_cid = self.lookup("anonymous_id", anonymous_id) if anonymous_id else None
        if user_id is None:
            if anon_cid is not None:
                return anon_cid
            cid = self._create(user_id=None, first_seen=at)
            self._add_identity(cid, "anonymous_id", anonymous_id)  # type: ignore[arg-type]
            return cid
        user_cid = self.lookup("user_id", user_id)
        if user_cid is None:
            if anon_cid is not None and self.is_anonymous(anon_cid):
                # The anonymous visitor identifies: the same profile becomes the known customer.
                if anon_cid in self._new_customers:
                    self._new_customers[anon_cid]["external_id"] = user_id
                else:
                    self._promoted[anon_cid] = user_id
                self._anonymous[anon_cid] = False
                self._add_identity(anon_cid, "user_id", user_id)
                return anon_cid
            cid = self._create(user_id=user_id, first_seen=at)
            if anonymous_id is not None:
                if anon_cid is None:
                    self._add_identity(cid, "anonymous_id", anonymous_id)
                else:  # device already used by another known customer: keep both apart
                    self._conflict(cid, anon_cid, "anonymous_id", anonymous_id, message_id)
            return cid
        if anonymous_id is not None:
            if anon_cid is None:
                self._add_identity(user_cid, "anonymous_id", anonymous_id)
            elif anon_cid != user_cid:
                if self.is_anonymous(anon_cid):
                    self._defer_merge(anon_cid, user_cid, f"identify: anonymousId {anonymous_id} is userId {user_id}")
                else:
                    self._conflict(user_cid, anon_cid, "anonymous_id", anonymous_id, message_id)
        return user_cid

    def claim(self, *, customer_id: int, kind: str, value: str, message_id: str | None = None) -> bool:
        """Attach an email / phone to a customer; a value owned by another known customer is a conflict."""
        owner = self.lookup(kind, value)
        if owner is None:
            self._add_identity(customer_id, kind, value)
            return True
        if owner == customer_id:
            return True
        if self.is_anonymous(owner):
            self._defer_merge(owner, customer_id, f"{kind} {value} identified")
            return True
        self._conflict(customer_id, owner, kind, value, message_id)
        return False

    def _defer_merge(self, source_id: int, target_id: int, reason: str) -> None:
        # Rows of this very batch are written with the ids resolved so far; merging after they are
        # stored (apply_merges) lets the merge log list every row it moved, so it stays reversible.
        self._merged[source_id] = target_id
        self._pending.append((source_id, target_id, reason))

    def apply_merges(self) -> list[MergeLog]:
        """Write the new identities and carry out the merges that resolution decided on."""
        self.flush()
        pending, self._pending = self._pending, []
        sources = [s for s, _, _ in pending]
        if len(pending) > 1 and len(set(sources)) == len(sources) and not set(sources) & {t for _, t, _ in pending}:
            return self._merge_many(pending)
        # A profile merged twice, or into one that is merged itself: one by one, in order.
        return [self.merge(source_id=s, target_id=t, reason=r) for s, t, r in pending]

    def _merge_many(self, pending: list[tuple[int, int, str]]) -> list[MergeLog]:
        """merge for each (source, target, reason) in order, with a few statements per table for all of them.

        Only for distinct sources that are no one's target: then no merge moves rows another one moves, and the
        outcome is the one of merging one after another (a target's own consent or wishlist rows win, also over
        those an earlier merge of the same batch brought in).
        """
        for source, _, _ in pending:
            if not self.is_anonymous(source):
                raise ValueError("only anonymous profiles are merged automatically")
        self.session.flush()
        sources = sorted({s for s, _, _ in pending})
        targets = sorted({t for _, t, _ in pending})
        moved: dict[int, dict[str, list[int]]] = {s: {} for s in sources}
        for name in (*_MOVABLE, "identities"):
            key = _UNIQUE_PER_CUSTOMER.get(name)
            cols = ["id", "customer_id", key] if key else ["id", "customer_id"]
            rows = sorted(rows_among(self.session, name, cols, "customer_id", sources))
            if not rows:
                continue
            by_source: dict[int, list[tuple[Any, ...]]] = {}
            for row in rows:
                by_source.setdefault(row[1], []).append(row)
            own: dict[int, set[Any]] = {}
            if key:
                for cid, value in rows_among(self.session, name, ["customer_id", key], "customer_id", targets):
                    own.setdefault(cid, set()).add(value)
            updates = []
            for source, target, _ in pending:
                mine = by_source.get(source, [])
                if key:
                    # The known customer's own rows win; those stay with the anonymous profile (reversible).
                    taken = own.setdefault(target, set())
                    mine = [r for r in mine if r[2] not in taken]
                    taken.update(r[2] for r in mine)
                if mine:
                    moved[source][name] = [r[0] for r in mine]
                    updates += [{"id": r[0], "customer_id": target} for r in mine]
            update_rows(self.session, _table(name), updates)
        update_rows(self.session, Customer, [{"id": s, "merged_into_id": t} for s, t, _ in pending])
        into = {s: t for s, t, _ in pending}
        for k, cid in self._cache.items():
            if cid in into:
                self._cache[k] = into[cid]
        logs = []
        for source, target, reason in pending:
            log = MergeLog(source_customer_id=source, target_customer_id=target, reason=reason,
                           moved=moved[source], created_at=self.now)
            self.session.add(log)
            self.merges.append(log)
            logs.append(log)
        return logs

    def merge(self, *, source_id: int, target_id: int, reason: str) -> MergeLog:
        """Move an anonymous profile's rows into the known customer, logging what moved."""
        if not self.is_anonymous(source_id):
            raise ValueError("only anonymous profiles are merged automatically")
        self.flush()
        self.session.flush()
        moved: dict[str, list[int]] = {}
        for name in (*_MOVABLE, "identities"):
            table = _table(name)
            ids = list(self.session.scalars(select(table.c.id).where(table.c.customer_id == source_id)))
            if not ids:
                continue
            if name in _UNIQUE_PER_CUSTOMER:
                # The known customer's own rows (consent decisions, wishlist entries) win over the
                # anonymous visitor's; those stay with the anonymous profile, so the merge stays reversible.
                col = table.c[_UNIQUE_PER_CUSTOMER[name]]
                own = set(self.session.scalars(select(col).where(table.c.customer_id == target_id)))
                ids = list(self.session.scalars(select(table.c.id).where(
                    table.c.customer_id == source_id, col.not_in(own or {""}))))
            if ids:
                self.session.execute(update(table).where(table.c.id.in_(ids)).values(customer_id=target_id))
                moved[name] = ids
        self.session.execute(update(Customer).where(Customer.id == source_id).values(merged_into_id=target_id))
        for key, cid in list(self._cache.items()):
            if cid == source_id:
                self._cache[key] = target_id
        log = MergeLog(source_customer_id=source_id, target_customer_id=target_id, reason=reason,
                       moved=moved, created_at=self.now)
        self.session.add(log)
        self.merges.append(log)
        return log


def revert_merge(*, session: Session, merge_id: int) -> MergeLog:
    """Undo a logged merge: the moved rows go back to the anonymous profile."""
    log = session.get(MergeLog, merge_id)
    if log is None or log.reverted_at is not None:
        raise MergeNotRevertible(f"merge {merge_id} does not exist or was already reverted")
    for name, ids in log.moved.items():
        table = _table(name)
        session.execute(update(table).where(table.c.id.in_(ids), table.c.customer_id == log.target_customer_id)
                        .values(customer_id=log.source_customer_id))
    session.execute(update(Customer).where(Customer.id == log.source_customer_id).values(merged_into_id=None))
    log.reverted_at = utcnow()
    return log


def _coerce(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column == "birthday":
        if isinstance(value, dt.date):
            return value
        return dt.date.fromisoformat(str(value)[:10])
    if column in ("lat", "lon"):
        return float(value)
    if column == "country":
        return str(value).upper()[:2]
    if column == "email":
        return str(value).strip().lower()
    return str(value)


def apply_traits(*, session: Session, customer: Customer, traits: dict[str, Any], source: str,
                 at: dt.datetime, latest: dict[str, dt.datetime] | None = None,
                 history: list[dict[str, Any]] | None = None) -> list[str]:
    """Set profile fields from traits; every change is kept in the history, the latest by time wins.

    For many customers at once: latest (trait -> time of the customer's latest change, loaded beforehand; kept
    current here) saves the query, and history collects the rows for the caller to insert in bulk.
    """
    changes = _trait_changes(traits)
    if latest is None:
        latest = _latest_times(session, customer.id, [t for t, _, _ in changes]) if customer.id else {}
    rows: list[dict[str, Any]] = []
    changed = _apply_changes(customer, changes, latest, source, at, rows)
    for trait in changed:
        if trait not in latest or latest[trait] < at:
            latest[trait] = at
    if history is not None:
        history.extend(rows)
    else:
        session.add_all(TraitChange(**row) for row in rows)
    return changed


def trait_names(traits: dict[str, Any]) -> list[str]:
    """The names traits are recorded under (an address's parts each under its own)."""
    return [t for t, _, _ in _trait_changes(traits)]


def _trait_changes(traits: dict[str, Any]) -> list[tuple[str, str | None, Any]]:
    changes: list[tuple[str, str | None, Any]] = []  # (trait, column-or-None, value)
    for key, value in traits.items():
        if key == "address" and isinstance(value, dict):
            for sub, sval in value.items():
                changes.append((f"address.{sub}", ADDRESS_COLUMNS.get(sub), sval))
            continue
        changes.append((key, TRAIT_COLUMNS.get(key), value))
    return changes


def _apply_changes(customer: Customer, changes: list[tuple[str, str | None, Any]], latest: dict[str, dt.datetime],
                   source: str, at: dt.datetime, history: list[dict[str, Any]]) -> list[str]:
    changed: list[str] = []
    attrs = dict(customer.attributes or {})
    for trait, column, value in changes:
        history.append({"customer_id": customer.id, "trait": trait, "value": _jsonable(value), "source": source,
                        "recorded_at": at})
        if trait in latest and latest[trait] > at:
            continue  # an older update arrives late: history only
        if column is not None:
            setattr(customer, column, _coerce(column, value))
        else:
            attrs[trait] = value
        changed.append(trait)
    if attrs != (customer.attributes or {}):
        customer.attributes = attrs
    return changed


class _Profile:
    """The trait columns of one customer, as plain attributes (what _apply_changes reads and sets)."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.__dict__.update(row)
        self.original = dict(row)

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "original" and self.original.get(k) != v}


_PROFILE_COLUMNS = ("id", *sorted(set(TRAIT_COLUMNS.values()) | set(ADDRESS_COLUMNS.values())), "attributes")


class TraitBatch:
    """Trait updates of many messages: loaded with two queries, written with a few statements."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._profiles: dict[int, _Profile] = {}
        self._latest: dict[int, dict[str, dt.datetime]] = {}
        self._history: list[dict[str, Any]] = []
        self._traits: set[str] | None = None  # the traits whose latest times are loaded (None: all)

    def preload(self, *, customer_ids: Iterable[int], traits: Iterable[str] | None = None) -> None:
        """Load the customers' profile fields and the time of their latest change per trait (of the given
        traits only, when the caller knows which ones its messages set)."""
        table = Customer.__table__
        cids = sorted(set(customer_ids) - set(self._profiles))
        if traits is not None and not self._profiles:
            self._traits = set(traits)
        only = sorted(self._traits) if self._traits is not None else None
        for row in typed_rows_among(self.session, table, _PROFILE_COLUMNS, "id", cids):
            values = dict(zip(_PROFILE_COLUMNS, row, strict=True))
            self._profiles[values["id"]] = _Profile(values)
            self._latest[values["id"]] = {}
        if cids:
            self._load_latest(cids, only)

    def _load_latest(self, customer_ids: list[int], traits: list[str] | None) -> None:
        # The history rows as the driver gives them, the latest per trait found here: SQLAlchemy's parsing of
        # SQLite's datetime text cost more than the query (about 30 µs per customer with a few traits each).
        where, params = "", ()
        if traits is not None:
            if self.session.get_bind().dialect.name == "sqlite":
                where, params = "trait IN (SELECT value FROM json_each({p}))", (json.dumps(traits),)
            else:
                where, params = "trait = ANY({p})", (traits,)
        for cid, trait, stored in rows_among(self.session, TraitChange, ["customer_id", "trait", "recorded_at"],
                                             "customer_id", customer_ids, where=where, params=params):
            ts = read_datetime(stored)
            if ts is not None:
                latest = self._latest[cid]
                if trait not in latest or latest[trait] < ts:
                    latest[trait] = ts

    def apply(self, *, customer_id: int, traits: dict[str, Any], source: str, at: dt.datetime) -> list[str]:
        """As apply_traits."""
        if customer_id not in self._profiles:
            self.preload(customer_ids=[customer_id])
        if customer_id not in self._profiles:
            raise CustomerNotFound(str(customer_id))
        latest = self._latest[customer_id]
        changes = _trait_changes(traits)
        if self._traits is not None and any(t not in self._traits for t, _, _ in changes):
            # a trait the preload did not expect: its times for every loaded customer, before anything changes
            extra = sorted({t for t, _, _ in changes} - self._traits)
            self._traits.update(extra)
            self._load_latest(sorted(self._profiles), extra)
        start = len(self._history)
        changed = _apply_changes(self._profiles[customer_id], changes, latest,  # type: ignore[arg-type]
                                 source, at, self._history)
        for row in self._history[start:]:
            if row["trait"] not in latest or latest[row["trait"]] < at:
                latest[row["trait"]] = at
        return changed

    def flush(self) -> None:
        """Write the changed profile fields and the trait history."""
        table = Customer.__table__
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for cid, profile in self._profiles.items():
            changes = profile.changes()
            if changes:
                by_columns.setdefault(tuple(sorted(changes)), []).append({"id": cid, **changes})
                profile.original.update(changes)
        for rows in by_columns.values():
            update_rows(self.session, table, rows)
        insert_rows(self.session, TraitChange, self._history)
        self._history = []


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _latest_times(session: Session, customer_id: int, traits: list[str]) -> dict[str, dt.datetime]:
    from sqlalchemy import func

    rows = session.execute(
        select(TraitChange.trait, func.max(TraitChange.recorded_at))
        .where(TraitChange.customer_id == customer_id, TraitChange.trait.in_(traits))
        .group_by(TraitChange.trait))
    out: dict[str, dt.datetime] = {}
    for trait, ts in rows:
        if ts is not None:
            if isinstance(ts, str):
                ts = dt.datetime.fromisoformat(ts)
            out[trait] = ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
    return out


def event_identity(*, session: Session, customer_id: int | None) -> dict[str, str] | None:
    """The Segment ids (userId, else an anonymousId) an event about this customer is sent under; None if it has none."""
    if customer_id is None:
        return None
    c = session.get(Customer, customer_id)
    if c is None:
        return None
    if c.external_id:
        return {"userId": c.external_id}
    anon = session.scalar(select(Identity.value).where(Identity.customer_id == c.id,
                                                       Identity.kind == "anonymous_id").limit(1))
    return {"anonymousId": anon} if anon else None


def get_customer(*, session: Session, ref: str | int) -> Customer:
    """A customer by internal id, external id, email or anonymous id (merged profiles lead to the target)."""
    customer: Customer | None = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        customer = session.get(Customer, int(ref))
    if customer is None:
        customer = session.scalar(select(Customer).where(Customer.external_id == str(ref)))
    if customer is None:
        cid = session.scalar(select(Identity.customer_id).where(Identity.value == str(ref)).limit(1))
        customer = session.get(Customer, cid) if cid else None
    if customer is None:
        raise CustomerNotFound(str(ref))
    while customer.merged_into_id is not None:
        customer = session.get(Customer, customer.merged_into_id)  # type: ignore[assignment]
    return customer


def ensure_customers(*, session: Session, external_ids: Iterable[str], at: dt.datetime) -> dict[str, int]:
    """Customer ids for many external ids, creating the unknown ones (orders may name new customers)."""
    return customers_for(session=session, external_ids=external_ids, at=at)[0]


def customers_for(*, session: Session, external_ids: Iterable[str], at: dt.datetime,
                  first_seen: dict[str, dt.datetime] | None = None) -> tuple[dict[str, int], set[str]]:
    """Customer ids for many external ids, creating the unknown ones set-based; (ids, the external ids created).

    first_seen gives a new customer's created_at (e.g. its first order); at is used otherwise.
    """
    ids = list(dict.fromkeys(external_ids))
    out: dict[str, int] = dict(rows_among(session, Identity, ["value", "customer_id"], "value", ids,
                                          where="kind = {p}", params=["user_id"]))
    missing = [x for x in ids if x not in out]
    if not missing:
        return out, set()
    first_seen = first_seen or {}
    rows = [{"external_id": x, "is_anonymous": False, "attributes": {}, "created_at": first_seen.get(x, at),
             "last_seen_at": first_seen.get(x, at)} for x in missing]
    created = dict(insert_rows(session, Customer, rows, on_conflict=["external_id"], returning=["external_id", "id"]))
    lost = [x for x in missing if x not in created]
    if lost:  # a customer row without its user_id identity (or a concurrent writer): adopt it
        created_by_other = dict(session.execute(select(Customer.external_id, Customer.id)
                                                .where(among(session, Customer.external_id, lost))).all())
        out.update(created_by_other)
    out.update(created)
    insert_rows(session, Identity, [{"customer_id": out[x], "kind": "user_id", "value": x, "created_at": at}
                                    for x in missing], on_conflict=["kind", "value"])
    return out, set(created)


def identities_of(*, session: Session, customer_id: int) -> list[Identity]:
    """All identities that point at the customer."""
    return list(session.scalars(select(Identity).where(Identity.customer_id == customer_id).order_by(Identity.id)))


def conflicts(*, session: Session, open_only: bool = True) -> list[IdentityConflict]:
    """Identity conflicts awaiting a human decision."""
    stmt = select(IdentityConflict).order_by(IdentityConflict.id)
    if open_only:
        stmt = stmt.where(IdentityConflict.resolved_at.is_(None))
    return list(session.scalars(stmt))


PROFILE_COLUMNS = ("email", "phone", "first_name", "last_name", "birthday", "locale", "timezone", "postal_code",
                   "city", "country", "lat", "lon")


def upsert_customers(*, session: Session, rows: Iterable[dict[str, Any]], source: str,
                     at: dt.datetime) -> dict[str, int]:
    """Create or update known customers set-based; every changed field goes to the trait history.

    Each row: external_id, any of PROFILE_COLUMNS (already coerced), attributes (merged into the
    existing ones), created_at (for new customers). Fields absent from a row are left as they are; a row
    that changes nothing writes nothing. Emails become identities; an email that belongs to another known
    customer is recorded as an identity conflict (once), never merged.
    Returns counts: created, updated, unchanged.
    """
    by_ext = {r["external_id"]: r for r in rows}
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    if not by_ext:
        return counts
    cols = [getattr(Customer, c) for c in PROFILE_COLUMNS]
    existing: dict[str, dict[str, Any]] = {}
    exts = list(by_ext)
    for i in range(0, len(exts), 900):
        for row in session.execute(select(Customer.id, Customer.external_id, Customer.attributes, *cols)
                                   .where(among(session, Customer.external_id, exts[i:i + 900]))).mappings():
            existing[row["external_id"]] = dict(row)
    history: list[dict[str, Any]] = []
    emails: dict[int, str] = {}
    new = [r for x, r in by_ext.items() if x not in existing]
    if new:
        ids = dict(insert_rows(session, Customer, [
            {"external_id": r["external_id"], "is_anonymous": False, "created_at": r.get("created_at") or at,
             "attributes": r.get("attributes") or {}, **{c: r.get(c) for c in PROFILE_COLUMNS}} for r in new],
            on_conflict=["external_id"], returning=["external_id", "id"]))
        insert_rows(session, Identity, [{"customer_id": cid, "kind": "user_id", "value": x, "created_at": at}
                                        for x, cid in ids.items()], on_conflict=["kind", "value"])
        counts["created"] = len(ids)
        for r in new:
            cid = ids.get(r["external_id"])
            if cid is None:
                continue
            history += [{"customer_id": cid, "trait": c, "value": _jsonable(r[c]), "source": source,
                         "recorded_at": at} for c in PROFILE_COLUMNS if r.get(c) is not None]
            history += [{"customer_id": cid, "trait": k, "value": v, "source": source, "recorded_at": at}
                        for k, v in (r.get("attributes") or {}).items()]
            if r.get("email"):
                emails[cid] = r["email"]
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for x, old in existing.items():
        r = by_ext[x]
        values: dict[str, Any] = {}
        for c in PROFILE_COLUMNS:
            if r.get(c) is not None and r[c] != old[c]:
                values[c] = r[c]
                history.append({"customer_id": old["id"], "trait": c, "value": _jsonable(r[c]), "source": source,
                                "recorded_at": at})
        attrs = dict(old["attributes"] or {})
        for k, v in (r.get("attributes") or {}).items():
            if attrs.get(k, object()) != v:
                attrs[k] = v
                history.append({"customer_id": old["id"], "trait": k, "value": v, "source": source,
                                "recorded_at": at})
        if attrs != (old["attributes"] or {}):
            values["attributes"] = attrs
        if not values:
            counts["unchanged"] += 1
            continue
        counts["updated"] += 1
        if "email" in values:
            emails[old["id"]] = values["email"]
        updates.setdefault(tuple(sorted(values)), []).append({"id": old["id"], **values})
    for params in updates.values():  # one statement per set of changed columns
        update_rows(session, Customer, params)
    insert_rows(session, TraitChange, history)
    if emails:
        _claim_emails(session, emails, at)
    return counts


def _claim_emails(session: Session, emails: dict[int, str], at: dt.datetime) -> None:
    values = list(set(emails.values()))
    owners: dict[str, int] = {}
    for i in range(0, len(values), 900):
        owners.update(session.execute(select(Identity.value, Identity.customer_id).where(
            Identity.kind == "email", among(session, Identity.value, values[i:i + 900]))).all())
    free = [{"customer_id": cid, "kind": "email", "value": v, "created_at": at}
            for cid, v in emails.items() if v not in owners]
    if free:
        insert_rows(session, Identity, free, on_conflict=["kind", "value"])
    taken = [(cid, v) for cid, v in emails.items() if owners.get(v, cid) != cid]
    if not taken:
        return
    # Rare: the address is another profile's. Anonymous ones merge, known ones are a conflict (recorded once).
    resolver = Resolver(session, now=at)
    for cid, v in taken:
        if session.scalar(select(IdentityConflict.id).where(
                IdentityConflict.customer_id == cid, IdentityConflict.kind == "email", IdentityConflict.value == v,
                IdentityConflict.resolved_at.is_(None)).limit(1)) is None:
            resolver.claim(customer_id=cid, kind="email", value=v)
    resolver.apply_merges()


def mark_seen(*, session: Session, seen: dict[int, dt.datetime]) -> None:
    """Move customers' last_seen_at forward to the given times (never back)."""
    update_rows(session, Customer, [{"id": cid, "last_seen_at": ts} for cid, ts in seen.items()],
                only_newer="last_seen_at")
