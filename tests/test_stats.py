"""Latency statistics on synthetic timings with known answers, and the figures of a timed run."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgesft.benchmark import measure_latency, stats
from edgesft.runtimes.timing import TimedRun, TimingError, filler_ids, timed_run
from edgesft.stats import bootstrap_ci, latency_gate, per_round_ratios, two_sample_gate


def test_per_round_ratio_cancels_shared_drift() -> None:
    # Both artifacts slow down together round by round; B is exactly 20% slower in every round.
    drift = np.array([1.0, 1.5, 0.8, 2.0, 1.1])
    ratios = per_round_ratios(1.2 * drift, drift)
    np.testing.assert_allclose(ratios, 1.2)
    with pytest.raises(ValueError, match="equal"):
        per_round_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        per_round_ratios([1.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="non-empty"):
        per_round_ratios([], [])


def test_hand_computed_median_of_per_round_ratios() -> None:
    # ratios 3, 2, 3, 1 -> sorted 1, 2, 3, 3 -> median (2 + 3) / 2
    verdict = latency_gate([3.0, 2.0, 6.0, 1.0], [1.0, 1.0, 2.0, 1.0])
    assert verdict.median_ratio == 2.5 and verdict.rounds == 4
    assert 1.0 <= verdict.ci_low <= 2.5 <= verdict.ci_high <= 3.0  # a median of resamples stays in range


def test_constant_ratios_give_that_ratio_and_a_zero_width_interval() -> None:
    base = [1.0, 2.0, 0.5, 4.0, 0.25, 8.0]  # powers of two: r * t / t is exactly r
    for r in (0.75, 1.0, 1.25, 3.0):
        current = [r * t for t in base]
        assert bootstrap_ci([r] * 7) == (r, r)
        gate = latency_gate(current, base)
        assert (gate.median_ratio, gate.ci_low, gate.ci_high) == (r, r, r)
        assert two_sample_gate(current, base).median_ratio == r  # each set's median scales by r alone
        two = two_sample_gate([r] * 5, [1.0] * 5)
        assert (two.median_ratio, two.ci_low, two.ci_high) == (r, r, r)


def test_regression_threshold_at_the_boundary() -> None:
    base = [1.0, 2.0, 4.0, 8.0]
    at_limit = latency_gate([1.25 * t for t in base], base, allowed_slowdown=0.25)
    assert at_limit.ci_low == 1.25 and not at_limit.regression  # exactly 1 + allowed: not a regression
    above = latency_gate([1.2500001 * t for t in base], base, allowed_slowdown=0.25)
    assert above.ci_low > 1.25 and above.regression
    assert not two_sample_gate([1.25] * 5, [1.0] * 5, allowed_slowdown=0.25).regression
    assert two_sample_gate([1.2500001] * 5, [1.0] * 5, allowed_slowdown=0.25).regression


def test_bootstrap_interval_covers_the_true_median() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        x = 1.0 + rng.normal(0.0, 0.05, size=15)  # true median 1.0
        low, high = bootstrap_ci(x, resamples=2000, seed=trial)
        assert low <= np.median(x) <= high
        hits += low <= 1.0 <= high
    assert hits / 200 >= 0.88  # nominal 95%; the percentile bootstrap of a median undercovers a little


def test_gate_passes_identical_and_catches_a_slowdown() -> None:
    rng = np.random.default_rng(7)
    base = 10.0 * np.exp(rng.normal(0, 0.08, size=12))  # ~8% noise per round
    same = base * np.exp(rng.normal(0, 0.03, size=12))
    slow = base * 1.25 * np.exp(rng.normal(0, 0.03, size=12))
    ok = latency_gate(same, base, allowed_slowdown=0.10)
    assert not ok.regression and ok.ci_low < 1.1 and "ok" in ok.line()
    bad = latency_gate(slow, base, allowed_slowdown=0.10)
    assert bad.regression and bad.ci_low > 1.1 and bad.median_ratio == pytest.approx(1.25, rel=0.05)
    # a one-off burst in one round does not flip the verdict of identical artifacts
    burst = same.copy()
    burst[3] *= 3.0
    assert not latency_gate(burst, base).regression


def test_two_sample_gate_on_independent_sets_of_rounds() -> None:
    rng = np.random.default_rng(3)
    base = 2.0 * np.exp(rng.normal(0, 0.04, size=12))  # normalized times saved with a baseline
    same = two_sample_gate(base, base)
    assert same.median_ratio == pytest.approx(1.0) and same.ci_low <= 1.0 <= same.ci_high
    assert not same.regression and same.rounds == 12
    fresh = 2.0 * np.exp(rng.normal(0, 0.04, size=12))  # the same artifact timed again
    again = two_sample_gate(fresh, base, allowed_slowdown=0.10)
    assert not again.regression and again.ci_low < 1.0 < again.ci_high
    slow = two_sample_gate(1.3 * fresh, base, allowed_slowdown=0.10)
    assert slow.regression and slow.ci_low > 1.1 and slow.median_ratio == pytest.approx(1.3, rel=0.05)
    # a 5% shift stays inside a 10% allowance; a shorter current series is fine
    assert not two_sample_gate(1.05 * fresh[:8], base, allowed_slowdown=0.10).regression
    # the verdict is reproducible (fixed seed) and the sets are checked
    assert two_sample_gate(fresh, base) == two_sample_gate(fresh, base)
    with pytest.raises(ValueError, match="non-empty"):
        two_sample_gate([], base)
    with pytest.raises(ValueError, match="positive"):
        two_sample_gate([1.0, -1.0], base)


# --------------------------------------------------------------------------------------------------------
# Timed runs (edgesft.runtimes.timing)


def test_timed_run_figures_and_no_rate_of_zero() -> None:
    run = TimedRun(prompt_tokens=128, prefill_s=0.5, decode_s=0.25, steps=32)
    assert (run.prefill_tok_s, run.seconds_per_token, run.decode_tok_s) == (256.0, 0.25 / 32, 128.0)
    for untimed in (TimedRun(128, 0.5, 0.0, 0), TimedRun(128, 0.5, 0.0, 8)):
        with pytest.raises(TimingError, match="no decode step was timed"):
            _ = untimed.decode_tok_s
    with pytest.raises(TimingError, match="prefill took no measurable time"):
        _ = TimedRun(1, 0.0, 1.0, 1).prefill_tok_s
    assert stats([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


class _AlwaysEos:
    """A runtime whose greedy choice is always its end-of-generation token (2)."""

    def __init__(self) -> None:
        self.fed: list[int] = []
        self.room = -1

    def tokenize(self, text: str) -> list[int]:
        return [1, 5, 6, 7]

    def prefill(self, ids: list[int], max_new_tokens: int) -> None:
        self.fed, self.room = list(ids), max_new_tokens

    def next_token(self) -> int:
        return 2

    def step(self, token: int) -> None:
        time.sleep(1e-4)
        self.fed.append(token)


def test_timed_runs_take_every_step_from_filler_prompts() -> None:
    art = _AlwaysEos()
    assert filler_ids(art, 0) == [1] and filler_ids(art, 10) == [1, 5, 6, 7, 1, 5, 6, 7, 1, 5]
    run = timed_run(art, [1, 5, 6], 4)  # an end-of-generation token does not cut a timed run short
    assert run.steps == 4 and art.fed == [1, 5, 6, 2, 2, 2, 2] and art.room == 4 and run.decode_s > 0
    cfg = {"decode_tokens": 4, "prompt_lengths": [3], "decode_depths": [0, 6], "warmup": 1, "repeats": 2}
    lat = measure_latency(art, cfg)
    assert list(lat["prefill"]) == ["3"] and list(lat["decode"]) == ["0", "6"]
    assert lat["decode"]["6"]["tok_s"]["n"] == 2 and lat["decode"]["6"]["tok_s"]["median"] > 0
    assert art.fed[:6] == [1, 5, 6, 7, 1, 5] and len(art.fed) == 6 + 4  # the last run: depth 6, 4 steps
