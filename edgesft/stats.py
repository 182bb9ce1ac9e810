"""Statistics for noisy latency comparisons: median of per-round ratios and a bootstrap confidence interval.

Two artifacts timed in alternating rounds (A B A B ...) share each round's machine state, so the ratio
within a round cancels most of the drift a shared runner adds; the median of those ratios ignores the odd
round that a neighbour's burst ruins. The interval comes from resampling rounds with replacement (percentile
bootstrap), with a fixed seed so a gate's verdict is reproducible. numpy does the arithmetic; scipy's
``bootstrap`` would do the same but scipy is not otherwise a dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def per_round_ratios(current: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    """current[i] / baseline[i] for each round (times: above 1 means slower)."""
    a, b = np.asarray(current, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equal, non-empty series of rounds (got {a.shape} and {b.shape})")
    if (b <= 0).any() or (a <= 0).any():
        raise ValueError("timings must be positive")
    return a / b


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values``."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    medians = np.median(x[idx], axis=1)
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(medians, tail)), float(np.quantile(medians, 1.0 - tail))


@dataclass(frozen=True)
class Verdict:
    """Outcome of a latency gate on interleaved rounds."""

    median_ratio: float
    ci_low: float
    ci_high: float
    rounds: int
    allowed_slowdown: float
    regression: bool

    def line(self) -> str:
        verdict = "REGRESSION" if self.regression else "ok"
        return (
            f"time ratio {self.median_ratio:.3f} (95% CI {self.ci_low:.3f}-{self.ci_high:.3f}, {self.rounds} "
            f"rounds), allowed +{self.allowed_slowdown:.0%}: {verdict}"
        )


def latency_gate(
    current: Sequence[float], baseline: Sequence[float], allowed_slowdown: float = 0.10, seed: int = 0
) -> Verdict:
    """Fail only when the whole interval of the median time ratio lies above ``1 + allowed_slowdown``."""
    ratios = per_round_ratios(current, baseline)
    low, high = bootstrap_ci(ratios.tolist(), seed=seed)
    return Verdict(
        median_ratio=float(np.median(ratios)),
        ci_low=low,
        ci_high=high,
        rounds=int(ratios.size),
        allowed_slowdown=allowed_slowdown,
        regression=low > 1.0 + allowed_slowdown,
    )


def two_sample_gate(
    current: Sequence[float],
    baseline: Sequence[float],
    allowed_slowdown: float = 0.10,
    seed: int = 0,
    confidence: float = 0.95,
    resamples: int = 10000,
) -> Verdict:
    """Gate on median(current) / median(baseline) for two sets of rounds timed at different times.

    Used when the baseline artifact is not at hand: each value is already a within-round ratio to a
    reference workload, so the sets are independent samples, and each is resampled on its own (percentile
    bootstrap of the ratio of medians). Fails only when the whole interval lies above ``1 + allowed_slowdown``.
    """
    a, b = np.asarray(current, dtype=float), np.asarray(baseline, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or a.size == 0 or b.size == 0:
        raise ValueError(f"need two non-empty series of rounds (got {a.shape} and {b.shape})")
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("timings must be positive")
    rng = np.random.default_rng(seed)
    med_a = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    ratios = med_a / med_b
    tail = (1.0 - confidence) / 2.0
    low, high = float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1.0 - tail))
    return Verdict(
        median_ratio=float(np.median(a) / np.median(b)),
        ci_low=low,
        ci_high=high,
        rounds=int(a.size),
        allowed_slowdown=allowed_slowdown,
        regression=low > 1.0 + allowed_slowdown,
    )
