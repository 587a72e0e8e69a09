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
