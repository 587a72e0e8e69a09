"""Fit time of emma's BG/NBD against lifetimes' BetaGeoFitter on synthetic customers drawn from a BG/NBD process.

Customers are acquired uniformly over a year and observed until week 78; purchases are recorded by day, so
recency and T are whole days expressed in weeks (as in the CDNOW data).

    .venv/bin/python bench/bgnbd.py                      # 1,000,000 customers
    .venv/bin/python bench/bgnbd.py --customers 100000 1000000 --skip-lifetimes

Both fitters run with one BLAS/OpenMP thread (as `emma score` does): on a shared machine spinning BLAS
threads slow the many small dot products of a likelihood down by an order of magnitude. Each fit prints its
wall time and its CPU time; on a busy machine compare the CPU times.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from emma.predict.estimators.bgnbd import BGNBD, simulate_bgnbd

TRUE = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # the CDNOW estimates (weeks)
OBSERVED_DAYS = 546  # 78 weeks
ACQUISITION_DAYS = 364


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    first = rng.integers(0, ACQUISITION_DAYS, n)
    T_days = OBSERVED_DAYS - first
    x, tx = simulate_bgnbd(T_days / 7.0, **TRUE, seed=rng)
    # purchases are recorded by day
    return x, np.floor(tx * 7.0) / 7.0, T_days / 7.0


def fit_ours(x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> tuple[float, dict[str, float], str]:
    start, cpu = time.perf_counter(), time.process_time()
    bg = BGNBD().fit(x, tx, T)
    seconds = time.perf_counter() - start
    return seconds, bg.params_, (f"{bg.n_patterns_:,} distinct (x, t_x, T), {bg.n_iter_} iterations; "
                                 f"CPU {time.process_time() - cpu:.3f} s")


def fit_lifetimes(x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> tuple[float, dict[str, float], str] | str:
    try:
        from lifetimes import BetaGeoFitter
    except Exception as exc:  # e.g. an incompatible pandas
        return f"lifetimes does not import: {exc!r}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start, cpu = time.perf_counter(), time.process_time()
        try:
            bg = BetaGeoFitter().fit(x, tx, T)
        except Exception as exc:
            return f"lifetimes failed to fit: {exc!r}"
        seconds = time.perf_counter() - start
    return seconds, {k: float(v) for k, v in bg.params_.items()}, (f"BFGS, autograd; then a Hessian; "
                                                                     f"CPU {time.process_time() - cpu:.3f} s")


def lifetimes_optimisation_only(x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> float:
    """The minimisation lifetimes' fit runs (same objective, start and tolerance), without its Hessian."""
    from autograd import value_and_grad
    from lifetimes import BetaGeoFitter
    from scipy.optimize import minimize

    scale = 1.0 / T.max()
    args = (x.astype(int), tx * scale, T * scale, np.ones_like(x, dtype=int), 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        minimize(value_and_grad(BetaGeoFitter._negative_log_likelihood), x0=0.1 * np.ones(4), args=args, jac=True,
                 tol=1e-7)
        return time.perf_counter() - start


def fmt(params: dict[str, float]) -> str:
    return "  ".join(f"{k}={params[k]:.3f}" for k in ("r", "alpha", "a", "b"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-lifetimes", action="store_true")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        run(args)


def run(args: argparse.Namespace) -> None:
    print(f"true parameters: {fmt(TRUE)}")
    for n in args.customers:
        x, tx, T = synthetic(n, args.seed)
        print(f"\n{n:,} customers, {x.sum():,.0f} repeat purchases, {np.mean(x > 0):.1%} with a repeat purchase")
        ours_s, ours_p, ours_note = fit_ours(x, tx, T)
        print(f"  emma BGNBD          {ours_s:8.3f} s   {fmt(ours_p)}   ({ours_note})")
        if args.skip_lifetimes:
            continue
        theirs = fit_lifetimes(x, tx, T)
        if isinstance(theirs, str):
            print(f"  lifetimes           skipped: {theirs}")
            continue
        their_s, their_p, their_note = theirs
        print(f"  lifetimes           {their_s:8.3f} s   {fmt(their_p)}   ({their_note})")
        same = all(f"{ours_p[k]:.3f}" == f"{their_p[k]:.3f}" for k in TRUE)
        print(f"  speed-up {their_s / ours_s:.1f}x; parameters {'equal' if same else 'DIFFERENT'} to 3 decimals")
        opt_s = lifetimes_optimisation_only(x, tx, T)
        print(f"  lifetimes, minimisation only {opt_s:.3f} s: speed-up {opt_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
