"""Wilson score intervals used by every success-rate report."""

import pytest

from runtime.analysis.stats import wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 20, 0.0, 0.161), (10, 20, 0.299, 0.701), (20, 20, 0.839, 1.0), (95, 100, 0.888, 0.978)],
)
def test_wilson_interval_matches_reference_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-3) and hi == pytest.approx(high, abs=1e-3)


def test_no_trials_means_no_information():
    assert wilson_interval(0, 0) == (0.0, 1.0)
