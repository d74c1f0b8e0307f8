"""Seeds to conclusions: the mean of a model's runs with its Student-t interval, the difference of two models
with its Welch interval, and the verdict sentence computed from that interval (../docs/science.md: "A beats B"
only when the interval of the difference excludes zero)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence


CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """The mean of n seeds, their sample standard deviation and the 95% Student-t interval of the mean
    (std, low and high are None for a single seed: one run has no spread)."""
    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width}

    def text(self, digits: int = 2) -> str:
        """'93.10 ± 0.42 (n=3)' or '93.10 (n=1)'."""
        spread = "" if self.half_width is None else f" ± {self.half_width:.{digits}f}"
        return f"{self.mean:.{digits}f}{spread} (n={self.n})"


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, standard deviation and Student-t confidence interval of the mean of `values`."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("estimate needs at least one value")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Estimate(1, mean, None, None, None)
    std = statistics.stdev(values)
    from scipy import stats as scipy_stats  # here, not at import: scipy.stats takes 1-2 s to load

    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * std / math.sqrt(len(values))
    return Estimate(len(values), mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with its Welch (unequal variances) confidence interval; low/high are None when either
    side has a single seed."""
    a: str
    b: str
    diff: float
    low: float | None
    high: float | None
    df: float | None
    p_value: float | None

    @property
    def decided(self) -> bool:
        """The interval excludes zero."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def larger_first(self) -> "Difference":
        """The same difference stated as the larger side minus the smaller, with the interval of that difference."""
        if self.diff > 0:
            return self
        low, high = (None, None) if self.low is None else (-self.high, -self.low)
        return Difference(self.b, self.a, -self.diff, low, high, self.df, self.p_value)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decided": self.decided, "verdict": verdict(self)}


def welch(a: Sequence[float], b: Sequence[float], name_a: str = "A", name_b: str = "B",
          confidence: float = CONFIDENCE) -> Difference:
    """The difference of the means of a and b with Welch's t interval (scipy.stats.ttest_ind, equal_var=False).

    When both samples have zero spread the interval collapses to the observed difference (df and p are None):
    identical runs on either side leave no noise to test against."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(name_a, name_b, diff, None, None, None, None)
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return Difference(name_a, name_b, diff, diff, diff, None, None)
    from scipy import stats as scipy_stats

    result = scipy_stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence)
    return Difference(name_a, name_b, diff, float(interval.low), float(interval.high), float(result.df),
                      float(result.pvalue))


def verdict(d: Difference, unit: str = "points", digits: int = 2) -> str:
    """The sentence a results file may state about a and b, computed from the interval alone."""
    if d.low is None:
        return (f"{d.a} vs {d.b}: {d.diff:+.{digits}f} {unit} from one seed on a side; no interval, so no "
                f"verdict (run more seeds)")
    if d.decided:
        s = d.larger_first()
        return f"{s.a} above {s.b} by {s.diff:.{digits}f} {unit} (95% CI [{s.low:+.{digits}f}, {s.high:+.{digits}f}])"
    interval = f"95% CI [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"
    return f"{d.a} vs {d.b}: no detectable difference at this budget ({d.diff:+.{digits}f} {unit}, {interval})"
