"""Item-to-item co-purchase recommendations (cosine on the customer x item matrix), pure numpy/scipy."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class CoPurchaseRecommender:
    """Scores items for a customer by their similarity to what the customer bought, recent buys weigh more.

    fit takes interaction triples (customer index, item index, weight); items are 0..n_items-1.
    """

    def __init__(self, *, neighbors: int = 50, shrinkage: float = 10.0) -> None:
        self.neighbors = neighbors
        self.shrinkage = shrinkage

    def fit(self, customers: np.ndarray, items: np.ndarray, weights: np.ndarray | None = None, *,
            n_items: int) -> CoPurchaseRecommender:
        n_cust = int(customers.max()) + 1 if len(customers) else 0
        w = np.ones(len(items)) if weights is None else weights
        X = sp.csr_matrix((np.ones(len(items)), (customers, items)), shape=(n_cust, n_items))
        X.data[:] = 1.0  # co-purchase: did both, not how often
        co = (X.T @ X).tocsr().astype(np.float64)
        counts = np.asarray(X.sum(axis=0)).ravel()
        co.setdiag(0)
        co.eliminate_zeros()
        # cosine with shrinkage: pairs seen together only a few times are not trusted much
        rows, cols = co.nonzero()
        vals = np.asarray(co[rows, cols]).ravel()
        sim = vals / (np.sqrt(counts[rows] * counts[cols]) + 1e-12) * (vals / (vals + self.shrinkage))
        S = sp.csr_matrix((sim, (rows, cols)), shape=(n_items, n_items))
        self.similarity_ = _top_k_per_row(S, self.neighbors)
        self.popularity_ = np.bincount(items, weights=w, minlength=n_items).astype(np.float64)
        self.n_items_ = n_items
        return self

    def score(self, items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Scores over all items for one customer's history (item indices, optional weights)."""
        v = np.zeros(self.n_items_)
        if len(items):
            np.add.at(v, items, 1.0 if weights is None else weights)
        return self.similarity_.T @ v

    def score_many(self, customers: np.ndarray, items: np.ndarray, weights: np.ndarray, *,
                   n_customers: int) -> sp.csr_matrix:
        """Scores for many customers at once: (customer x item) history times the similarity matrix."""
        H = sp.csr_matrix((weights, (customers, items)), shape=(n_customers, self.n_items_))
        return (H @ self.similarity_).tocsr()

    def similar(self, item: int, k: int = 10) -> list[tuple[int, float]]:
        """The k items most often bought together with item ("Andere Kunden kauften auch")."""
        row = self.similarity_.getrow(item)
        order = np.argsort(-row.data)[:k]
        return [(int(row.indices[i]), float(row.data[i])) for i in order]


def _top_k_per_row(S: sp.csr_matrix, k: int) -> sp.csr_matrix:
    S = S.tocsr()
    indptr, indices, data = [0], [], []
    for i in range(S.shape[0]):
        lo, hi = S.indptr[i], S.indptr[i + 1]
        d, ix = S.data[lo:hi], S.indices[lo:hi]
        if len(d) > k:
            keep = np.argpartition(-d, k)[:k]
            d, ix = d[keep], ix[keep]
        indices.extend(ix.tolist())
        data.extend(d.tolist())
        indptr.append(len(indices))
    return sp.csr_matrix((np.array(data), np.array(indices, dtype=np.int64), np.array(indptr)), shape=S.shape)


def top_k(scores: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
          category: np.ndarray | None = None, max_per_category: int | None = None,
          allowed: np.ndarray | None = None) -> np.ndarray:
    """Indices of the best k items under business rules (allowed mask, exclusions, per-category cap)."""
    s = scores.astype(np.float64).copy()
    if allowed is not None:
        s[~allowed] = -np.inf
    if exclude is not None and len(exclude):
        s[exclude] = -np.inf
    order = np.argsort(-s, kind="stable")
    out: list[int] = []
    per_cat: dict[int, int] = {}
    for i in order:
        if not np.isfinite(s[i]) or len(out) >= k:
            break
        if category is not None and max_per_category is not None:
            c = int(category[i])
            if per_cat.get(c, 0) >= max_per_category:
                continue
            per_cat[c] = per_cat.get(c, 0) + 1
        out.append(int(i))
    return np.array(out, dtype=np.int64)


def distinct(a: np.ndarray) -> np.ndarray:
    """np.unique(a) by sorting: numpy 2's hashing np.unique is 25x slower on ten million mostly distinct int64."""
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


REASONS = ("popular", "affinity", "also_bought", "replenish", "accessory")


def sparse_top_k(M: sp.csr_matrix, k: int, *, group: np.ndarray | None = None,
                 max_per_group: int | None = None, shortlist: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest entries (column, value), at most max_per_group columns from one group; -1 pads.

    Ties go to the lower group, then the lower column. Sorting every entry of every row costs most of the
    time at a million customers with a few hundred candidates each, so each row is first cut to the entries
    at or above its `shortlist`-th largest value (ties kept), one np.partition per block of rows of similar
    length; rows the group cap leaves short of k from that shortlist are ranked again in full. The result is
    the same as ranking everything: the shortlist is a prefix of the full ranking within every row and group.
    """
    M = M.tocsr()
    M.eliminate_zeros()
    n = M.shape[0]
    rows = np.repeat(np.arange(n), np.diff(M.indptr))
    cols, vals = M.indices.astype(np.int64), M.data
    keep = np.isfinite(vals) & (vals > 0)
    if not keep.all():
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    capped = group is not None and max_per_group is not None
    short = max(shortlist, k)
    counts = np.bincount(rows, minlength=n)
    long_rows = np.flatnonzero(counts > short)
    if not len(long_rows):
        return _rank_short(n, k, rows, cols, vals, group if capped else None, max_per_group, width=short)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    threshold = np.full(n, -np.inf)
    threshold[long_rows] = _kth_largest(vals, starts[long_rows], counts[long_rows], short)
    sel = vals >= threshold[rows]
    out_c, out_v = _rank_short(n, k, rows[sel], cols[sel], vals[sel], group if capped else None, max_per_group,
                               width=2 * short)
    if capped:  # the cap may have left a row short although it has more entries: rank those in full
        again = long_rows[(out_c[long_rows] < 0).any(axis=1)]
        if len(again):
            m = np.isin(rows, again)
            sub = np.searchsorted(again, rows[m])
            c2, v2 = _rank_entries(len(again), k, sub, cols[m], vals[m], group, max_per_group)
            out_c[again], out_v[again] = c2, v2
    return out_c, out_v


def _kth_largest(vals: np.ndarray, starts: np.ndarray, counts: np.ndarray, kth: int,
                 block: int = 4_000_000) -> np.ndarray:
    """The kth largest value of each row segment vals[starts[r]:starts[r] + counts[r]] (counts >= kth)."""
    out = np.empty(len(starts))
    order = np.argsort(counts, kind="stable")  # similar lengths together: little padding
    i = 0
    while i < len(order):
        j = min(len(order), i + max(1, block // int(counts[order[i]])))
        while j - i > 1 and (j - i) * int(counts[order[j - 1]]) > block:  # the batch's widest row sets the size
            j = i + max(1, block // int(counts[order[j - 1]]))
        part = order[i:j]
        width = int(counts[part[-1]])
        pad = np.full((len(part), width), -np.inf)
        col = np.arange(width)
        mask = col[None, :] < counts[part][:, None]
        pad[mask] = vals[(starts[part][:, None] + col[None, :])[mask]]
        out[part] = np.partition(pad, width - kth, axis=1)[:, width - kth]
        i = j
    return out


def _rank_short(n: int, k: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, group: np.ndarray | None,
                max_per_group: int | None, *, width: int, block: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """_rank_entries for entries sorted by row, most rows having at most `width`: ranked row-wise in dense
    (rows x width) blocks, where sorting short rows is much cheaper than one sort of all entries."""
    counts = np.bincount(rows, minlength=n)
    out_c = np.full((n, k), -1, dtype=np.int64)
    out_v = np.zeros((n, k))
    wide = counts > width
    if wide.any():  # rare: many ties at the shortlist's threshold
        m = wide[rows]
        w = np.flatnonzero(wide)
        out_c[w], out_v[w] = _rank_entries(len(w), k, np.searchsorted(w, rows[m]), cols[m], vals[m], group,
                                           max_per_group)
        rows, cols, vals = rows[~m], cols[~m], vals[~m]
        counts[wide] = 0
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    span = int(cols.max()) + 1 if len(cols) else 1
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        a, b = starts[lo], starts[hi - 1] + counts[hi - 1]
        if a == b:
            continue
        r = rows[a:b] - lo
        w = max(int(counts[lo:hi].max()), 1)
        slot = np.arange(a, b) - starts[rows[a:b]]
        V = np.full((hi - lo, w), -np.inf)
        C = np.full((hi - lo, w), np.iinfo(np.int64).max, dtype=np.int64)
        V[r, slot] = vals[a:b]
        C[r, slot] = cols[a:b]
        G = np.zeros_like(C)
        if group is not None:
            G[r, slot] = group[cols[a:b]]
        # order each row by (-value, group, column): sort by (group, column) first, then stably by value
        o = np.argsort(G * span + np.minimum(C, span), axis=1, kind="stable")
        V, C, G = (np.take_along_axis(X, o, axis=1) for X in (V, C, G))
        o = np.argsort(-V, axis=1, kind="stable")
        V, C, G = (np.take_along_axis(X, o, axis=1) for X in (V, C, G))
        ok = np.isfinite(V)
        if group is not None and max_per_group is not None:
            same = (G[:, :, None] == G[:, None, :]) & np.tri(w, w, -1, dtype=bool)[None, :, :]
            ok &= same.sum(axis=2) < max_per_group
        pick = np.argsort(~ok, axis=1, kind="stable")[:, :k]
        good = np.take_along_axis(ok, pick, axis=1)
        kk = pick.shape[1]
        filled = lo + np.flatnonzero(counts[lo:hi] > 0)  # not the wide rows ranked above
        out_c[filled, :kk] = np.where(good, np.take_along_axis(C, pick, axis=1), -1)[filled - lo]
        out_v[filled, :kk] = np.where(good, np.take_along_axis(V, pick, axis=1), 0.0)[filled - lo]
    return out_c, out_v


def _rank_entries(n: int, k: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, group: np.ndarray | None,
                  max_per_group: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of (row, col, value) entries by sorting them all, with the per-group cap."""
    if group is not None and max_per_group is not None and len(rows):
        g = group[cols]
        order = np.lexsort((cols, -vals, g, rows))
        rows, cols, vals, g = rows[order], cols[order], vals[order], g[order]
        new = np.r_[True, (rows[1:] != rows[:-1]) | (g[1:] != g[:-1])]
        start = np.maximum.accumulate(np.where(new, np.arange(len(rows)), 0))
        ok = np.arange(len(rows)) - start < max_per_group
        rows, cols, vals = rows[ok], cols[ok], vals[ok]
        order = np.lexsort((-vals, rows))  # stable: ties keep the (group, column) order
    else:
        order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    first = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - first[rows] if len(rows) else np.empty(0, np.int64)
    ok = rank < k
    out_c = np.full((n, k), -1, dtype=np.int64)
    out_v = np.zeros((n, k))
    out_c[rows[ok], rank[ok]] = cols[ok]
    out_v[rows[ok], rank[ok]] = vals[ok]
    return out_c, out_v


class NextOrderRecommender:
    """What a customer is most likely to buy next, as P(item | next order), from purchase history.

    Three parts add up: the customer's category affinity (shrunk toward the population) times the item's
    recent share of its category; co-purchase and accessory relations of what the customer bought; and
    re-purchase of consumables that are due to run out. fit takes the order lines (customer index, day,
    item index, quantity) and the catalog arrays; nothing else.
    """

    def __init__(self, *, prior_strength: float = 2.0, popularity_days: float = 90.0, candidates_per_category: int = 40,
                 top_categories: int = 3, co_weight: float = 0.15, replenish_p: float = 0.6,
                 recent_days: float = 30.0, neighbors: int = 20) -> None:
        self.prior_strength = prior_strength
        self.popularity_days = popularity_days
        self.candidates_per_category = candidates_per_category
        self.top_categories = top_categories
        self.co_weight = co_weight
        self.replenish_p = replenish_p
        self.recent_days = recent_days
        self.neighbors = neighbors

    def fit(self, customer: np.ndarray, day: np.ndarray, item: np.ndarray, quantity: np.ndarray, *,
            n_customers: int, category: np.ndarray, runout_days: np.ndarray, accessories: list[list[int]],
            as_of_day: float) -> NextOrderRecommender:
        n_items = len(category)
        n_cat = int(category.max()) + 1 if n_items else 0
        self.n_items_, self.n_categories_, self.as_of_day_ = n_items, n_cat, float(as_of_day)
        self.category_, self.runout_days_ = category, runout_days
        recent = day >= as_of_day - self.popularity_days
        # one sort of the (customer, item) keys gives the distinct pairs and each pair's last purchase
        ni = max(n_items, 1)
        key = customer.astype(np.int64) * ni + item
        order = np.argsort(key, kind="stable")
        k_sorted = key[order]
        new = np.r_[True, k_sorted[1:] != k_sorted[:-1]] if len(key) else np.empty(0, dtype=bool)
        starts = np.flatnonzero(new)
        pairs = k_sorted[starts]
        # distinct buyers per item: one big order should not make an item popular
        buyers = np.bincount(pairs % ni, minlength=n_items).astype(np.float64)
        rpairs = distinct(customer[recent].astype(np.int64) * max(n_items, 1) + item[recent])
        rbuyers = np.bincount(rpairs % max(n_items, 1), minlength=n_items).astype(np.float64)
        pop = rbuyers + 0.1 * buyers + 1e-3
        cat_total = np.bincount(category, weights=pop, minlength=n_cat)
        self.popularity_ = pop
        self.share_in_category_ = pop / cat_total[category]
        cat_buys = np.bincount(category[item], minlength=n_cat).astype(np.float64) + 1.0
        self.category_share_ = cat_buys / cat_buys.sum()
        # candidates from affinity: the most popular items of each category
        self.cat_items_ = sp.csr_matrix((n_cat, n_items))
        rows, cols = [], []
        for c in range(n_cat):
            idx = np.flatnonzero(category == c)
            top = idx[np.argsort(-pop[idx], kind="stable")[: self.candidates_per_category]]
            rows.append(np.full(len(top), c))
            cols.append(top)
        r, c = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.empty(0, int), np.empty(0, int))
        self.cat_items_ = sp.csr_matrix((self.share_in_category_[c], (r, c)), shape=(n_cat, n_items))
        # per customer: category counts, items bought (with last day and quantity)
        self.cat_counts_ = sp.csr_matrix((np.ones(len(item)), (customer, category[item])),
                                         shape=(n_customers, n_cat))
        self.cat_counts_.sum_duplicates()
        # the last line of each pair: its latest day, the latest line of that day in input order
        d_sorted = day[order]
        lday = np.maximum.reduceat(d_sorted, starts) if len(starts) else np.empty(0)
        at_last = d_sorted == np.repeat(lday, np.diff(np.r_[starts, len(key)]))
        last_pos = np.maximum.reduceat(np.where(at_last, np.arange(len(key)), -1), starts) if len(starts) else starts
        lqty = quantity[order[last_pos]]
        lc, li = np.divmod(pairs, ni)
        self.last_day_ = sp.csr_matrix((lday + 1.0, (lc, li)), shape=(n_customers, n_items))  # +1: day 0 is a value
        due = lday + runout_days[li] * lqty
        cons = runout_days[li] > 0
        self.due_ = sp.csr_matrix((due[cons] + 1.0, (lc[cons], li[cons])), shape=(n_customers, n_items))
        # co-purchase, plus the catalog's accessory relations at full strength
        co = CoPurchaseRecommender(neighbors=self.neighbors).fit(lc, li, n_items=n_items)  # did both, not how often
        acc_r = np.repeat(np.arange(n_items), [len(a) for a in accessories])
        acc_c = np.array([j for a in accessories for j in a], dtype=np.int64)
        A = sp.csr_matrix((np.full(len(acc_c), 0.5), (acc_r, acc_c)), shape=(n_items, n_items))
        self.similarity_ = (co.similarity_ + A).tocsr()
        self.accessory_ = A
        return self

    def affinity(self, customers: np.ndarray) -> np.ndarray:
        """Shrunk category shares per customer (rows sum to one)."""
        n = self.cat_counts_[customers].toarray()
        s = self.prior_strength
        return (n + s * self.category_share_) / (n.sum(axis=1, keepdims=True) + s)

    def score(self, customers: np.ndarray, *, allowed: np.ndarray | None = None) -> tuple[sp.csr_matrix, dict]:
        """Sparse (customers x items) scores, and the parts they are made of (for the reasons)."""
        aff = self.affinity(customers)
        n = len(customers)
        top = np.argsort(-aff, axis=1)[:, : self.top_categories]
        r = np.repeat(np.arange(n), top.shape[1])
        A = sp.csr_matrix((aff[r, top.ravel()], (r, top.ravel())), shape=(n, self.n_categories_))
        P = (A @ self.cat_items_).tocsr()
        last = self.last_day_[customers]
        age = last.copy()
        age.data = np.exp(-(self.as_of_day_ - (age.data - 1.0)) / 180.0)  # recent purchases count more
        CO = (age @ self.similarity_).tocsr()
        if CO.nnz:
            rowmax = np.maximum.reduceat(CO.data, CO.indptr[:-1][np.diff(CO.indptr) > 0])
            scale = np.zeros(n)
            scale[np.diff(CO.indptr) > 0] = 1.0 / rowmax
            CO = sp.diags(scale) @ CO
        # what the customer would buy from the category anyway is the scale for co-purchase evidence
        CO = (CO * self.co_weight).tocsr()
        due = self.due_[customers].tocsr()
        rep = due.copy()
        left = (rep.data - 1.0) - self.as_of_day_  # days until it runs out (negative: overdue)
        rd = self.runout_days_[rep.indices]
        rep.data = np.where((left <= 30) & (left >= -2 * rd), self.replenish_p, 0.02)
        S = (P + CO + rep).tocsr()
        # business rule: nothing bought in the last `recent_days` again, unless it is a consumable
        recent = last.copy()
        recent.data = ((self.as_of_day_ - (recent.data - 1.0)) <= self.recent_days).astype(np.float64)
        recent = recent.multiply(self.runout_days_[None, :] == 0).tocsr()
        S = (S - S.multiply(recent)).tocsr()
        if allowed is not None:
            S = (S @ sp.diags(allowed.astype(np.float64))).tocsr()
        S.eliminate_zeros()
        return S, {"affinity": aff, "co": CO, "replenish": rep}

    def recommend(self, customers: np.ndarray, k: int = 10, *, allowed: np.ndarray | None = None,
                  group: np.ndarray | None = None, max_per_group: int | None = 3
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, scores, reason index into REASONS), each (len(customers), k); -1 pads."""
        S, parts = self.score(customers, allowed=allowed)
        cols, vals = sparse_top_k(S, k, group=group, max_per_group=max_per_group)
        rows = np.repeat(np.arange(len(customers)), k)
        c = cols.ravel()
        ok = c >= 0
        cc = np.where(ok, c, 0)
        p_aff = parts["affinity"][rows, self.category_[cc]] * self.share_in_category_[cc]
        p_co = np.asarray(parts["co"][rows, cc]).ravel()
        p_rep = np.asarray(parts["replenish"][rows, cc]).ravel()
        reason = np.argmax(np.column_stack([np.zeros_like(p_aff) + 1e-12, p_aff, p_co, p_rep]), axis=1)
        has_history = np.asarray(self.cat_counts_[customers].sum(axis=1)).ravel() > 0
        reason = np.where((reason == 1) & ~has_history[rows], 0, reason)
        reason = np.where(ok, reason, -1).reshape(cols.shape)
        return cols, vals, reason

    def popular(self, k: int, *, allowed: np.ndarray | None = None) -> np.ndarray:
        """The k most popular items of the last `popularity_days` (the fallback for new customers)."""
        s = self.popularity_.copy()
        if allowed is not None:
            s[~allowed] = -np.inf
        order = np.argsort(-s, kind="stable")[:k]
        return order[np.isfinite(s[order])]

    def related(self, item: int, k: int = 10) -> list[tuple[int, float, int]]:
        """Items bought with `item` or listed as its accessories: (item, score, reason index)."""
        row = self.similarity_.getrow(item)
        order = np.argsort(-row.data, kind="stable")[:k]
        acc = set(self.accessory_.getrow(item).indices.tolist())
        return [(int(row.indices[i]), float(row.data[i]), 4 if int(row.indices[i]) in acc else 2) for i in order]
