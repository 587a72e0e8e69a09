"""The treated-vs-holdout interval: Newcombe's hybrid score interval, checked against his published examples."""

from __future__ import annotations

import pytest

from emma.reports import service as reports


@pytest.mark.parametrize(("counts", "expected"), [
    # Newcombe (1998), Statistics in Medicine 17:873-890, table II, method 10.
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
])
def test_difference_interval_matches_the_published_values(counts, expected):
    low, high = reports.difference_ci(*counts)
    assert (round(low, 4), round(high, 4)) == expected


def test_no_holdout_gives_no_interval_and_a_large_sample_a_narrow_one():
    assert reports.difference_ci(3, 10, 0, 0) is None
    low, high = reports.difference_ci(1100, 10_000, 1000, 10_000)
    assert 0 < low < 0.01 < high < 0.02  # +1 pp on 10,000 each: significant, and tight around it
    wide = reports.difference_ci(11, 100, 10, 100)
    assert wide[0] < 0 < wide[1]  # the same rates on 100 each: not distinguishable from chance


def test_reachable_comparison_keeps_the_runs_whose_customer_had_consent_when_the_run_began(session):
    """Runs of customers without marketing consent at entry dilute treated-vs-holdout; the reachable view drops
    them in both groups, decided by the consent history at the moment each run began (not today's)."""
    import datetime as dt

    from emma.automation.models import Run
    from emma.consent import service as consent
    from emma.profiles.models import Customer

    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    day = dt.timedelta(days=1)

    def person(n: int, grants: list[tuple[dt.datetime, str]]) -> int:
        c = Customer(external_id=f"r{n}", created_at=t0 - 30 * day)
        session.add(c)
        session.flush()
        for at, status in grants:
            consent.record(session=session, customer_id=c.id, purpose="email_marketing", status=status,
                           source="t", recorded_at=at)
        return c.id

    def run(cid: int, *, holdout: bool, converted: bool, at: dt.datetime = t0, tactic: str = "abandoned_cart"):
        session.add(Run(tactic_id=tactic, tactic_version=1, customer_id=cid, dedupe=f"{tactic}-{cid}-{at}",
                        status="converted" if converted else "completed", holdout=holdout, entered_at=at))

    # Treated and reachable: 3 of 4 convert; holdout and reachable: 0 of 2.
    for n in range(4):
        run(person(n, [(t0 - 5 * day, "granted")]), holdout=False, converted=n < 3)
    for n in range(4, 6):
        run(person(n, [(t0 - 5 * day, "granted")]), holdout=True, converted=False)
    # Not reachable at entry: never asked; consent only after the run began; revoked before it began.
    run(person(6, []), holdout=False, converted=False)
    run(person(7, [(t0 + day, "granted")]), holdout=False, converted=False)
    run(person(8, [(t0 - 9 * day, "granted"), (t0 - 2 * day, "revoked")]), holdout=True, converted=True)
    # Revoked after the run began (say, unsubscribed from its mail): still counts as reachable.
    run(person(9, [(t0 - 9 * day, "granted"), (t0 + 2 * day, "revoked")]), holdout=False, converted=False)
    # An on-site-only tactic has no reaching channel: not in the reachable view.
    run(person(10, [(t0 - 5 * day, "granted")]), holdout=False, converted=True, tactic="in_session_upsell")
    # A frequent buyer in the holdout with three runs, all converted: one customer, not three observations.
    often = person(11, [(t0 - 5 * day, "granted")])
    for k in range(3):
        run(often, holdout=True, converted=True, at=t0 + k * day)
    session.flush()

    got = reports.reachable_results(session=session)
    assert set(got) == {"abandoned_cart"}
    r = got["abandoned_cart"]
    assert (r["treated"], r["treated_converted"], r["holdout"], r["holdout_converted"]) == (5, 3, 3, 1)
    assert r["uplift"] == 3 / 5 - 1 / 3 and r["uplift_ci"] == reports.difference_ci(3, 5, 1, 3)
    [cart] = [t for t in reports.tactic_results(session=session) if t["tactic_id"] == "abandoned_cart"]
    assert (cart["treated"], cart["holdout"], cart["holdout_converted"]) == (7, 6, 4)  # runs
    assert (cart["customers_treated"], cart["customers_treated_converted"]) == (7, 3)
    assert (cart["customers_holdout"], cart["customers_holdout_converted"]) == (4, 2)
    assert cart["uplift_ci"] == reports.difference_ci(3, 7, 2, 4)
