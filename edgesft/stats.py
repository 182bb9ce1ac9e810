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

MIN_ROUNDS = 10
"""Fewest interleaved rounds a speed verdict (the gate's, a peer comparison's) is drawn from."""


def _rounds(values: Sequence[float]) -> np.ndarray:
    """One series of timings as a float array: one-dimensional, non-empty and positive, else ValueError."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty series of rounds (got shape {x.shape})")
    if (x <= 0).any():
        raise ValueError("timings must be positive")
    return x


def _bootstrap_medians(x: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The median of each of ``resamples`` resamples of ``x`` (rounds drawn with replacement)."""
    return np.median(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def per_round_ratios(current: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    """current[i] / baseline[i] for each round (times: above 1 means slower)."""
    a, b = _rounds(current), _rounds(baseline)
    if a.shape != b.shape:
        raise ValueError(f"need two equal series of rounds (got {a.shape} and {b.shape})")
    return a / b


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values``."""
    x = np.asarray(values, dtype=float)
    return _percentiles(_bootstrap_medians(x, np.random.default_rng(seed), resamples), confidence)


@dataclass(frozen=True)
class Verdict:
    """Outcome of either latency gate: :func:`latency_gate` (interleaved rounds, median of the per-round
    time ratios) or :func:`two_sample_gate` (a stored baseline, ratio of the two sets' medians).

    ``median_ratio`` and the interval ``ci_low``-``ci_high`` are current / baseline time (above 1 is slower);
    ``rounds`` counts the current rounds; ``regression`` is true when ``ci_low`` lies above
    ``1 + allowed_slowdown``.
    """

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
    a, b = _rounds(current), _rounds(baseline)
    rng = np.random.default_rng(seed)
    med_a = _bootstrap_medians(a, rng, resamples)
    med_b = _bootstrap_medians(b, rng, resamples)
    low, high = _percentiles(med_a / med_b, confidence)
    return Verdict(
        median_ratio=float(np.median(a) / np.median(b)),
        ci_low=low,
        ci_high=high,
        rounds=int(a.size),
        allowed_slowdown=allowed_slowdown,
        regression=low > 1.0 + allowed_slowdown,
    )
