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
