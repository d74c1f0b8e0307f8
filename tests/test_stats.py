"""Intervals and verdicts against values computed by hand (scipy's t quantiles), and verdicts that follow the
data: the same code says 'above' for separated samples and 'no detectable difference' for overlapping ones."""

import math

import pytest

from nondeep.stats import estimate, verdict, welch


def test_estimate_is_mean_std_and_the_student_t_interval():
    e = estimate([90.0, 92.0, 94.0])
    assert e.mean == 92.0 and e.std == 2.0 and e.n == 3
    half = 4.302652729911275 * 2.0 / math.sqrt(3)  # t(0.975, df=2) = 4.3027
    assert e.low == pytest.approx(92.0 - half) and e.high == pytest.approx(92.0 + half)
    assert e.text() == f"92.00 ± {half:.2f} (n=3)"
    one = estimate([91.5])
    assert one.std is None and one.low is None and one.text() == "91.50 (n=1)"


def test_welch_interval_matches_the_formula():
    a, b = [93.1, 93.5, 92.9, 93.3], [92.0, 92.6, 91.8]
    d = welch(a, b, "A", "B")
    va, vb = 0.0666666667 / 4, 0.1733333333 / 3  # sample variances / n
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    from scipy.stats import t
    half = t.ppf(0.975, df) * math.sqrt(va + vb)
    assert d.diff == pytest.approx(93.2 - 92.1333333) and d.df == pytest.approx(df, rel=1e-6)
    assert d.low == pytest.approx(d.diff - half, rel=1e-6) and d.high == pytest.approx(d.diff + half, rel=1e-6)


def test_verdict_follows_the_data():
    separated = welch([93.1, 93.5, 92.9], [90.0, 90.4, 89.8], "parnet", "wrn")
    assert separated.decided and verdict(separated).startswith("parnet above wrn by 3.10 points")
    reversed_ = welch([90.0, 90.4, 89.8], [93.1, 93.5, 92.9], "parnet", "wrn")
    assert verdict(reversed_).startswith("wrn above parnet by 3.10 points")
    # the interval is that of the stated difference (wrn - parnet), so both ends are positive
    assert f"[{-reversed_.high:+.2f}, {-reversed_.low:+.2f}]" in verdict(reversed_) and -reversed_.high > 0
    overlapping = welch([93.1, 90.5, 92.0], [92.5, 91.0, 91.9], "parnet", "wrn")
    assert not overlapping.decided and "no detectable difference at this budget" in verdict(overlapping)
    single = welch([93.0], [92.0, 92.5], "parnet", "wrn")
    assert single.low is None and "no verdict" in verdict(single)


def test_identical_runs_on_both_sides_give_a_point_interval():
    same = welch([80.0, 80.0], [80.0, 80.0], "a", "b")
    assert same.low == same.high == 0.0 and not same.decided
    apart = welch([81.0, 81.0], [80.0, 80.0], "a", "b")
    assert apart.decided and verdict(apart).startswith("a above b by 1.00")
