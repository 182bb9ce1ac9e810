"""`edgesft check`: the CI regression gate, and the baselines it compares against.

Deterministic figures (file size, parameter count, fallback tensors, verification, quality) come from the
run's ``bench/bench.json`` and are compared exactly or within the recipe's tolerances (``bench.check``).

Decode latency must survive shared, noisy runners, so it is never compared as two absolute numbers:

- Two artifacts at hand (two run folders, or two artifact files): each opens once in its own persistent
  timing worker (a child process, so a native crash or hang is one line: a failing row when it is the
  current artifact's, an error when it is the baseline's or the reference workload's), then after a
  warm-up they are timed in interleaved rounds in A B, B A, A B ... order, so a neighbour's load or a clock
  change hits both alike and order effects cancel. The gate is the median of the per-round time ratios
  with a bootstrap 95% interval (:func:`edgesft.stats.latency_gate`): it fails only when the whole interval
  lies above ``1 + allowed_slowdown``.
- Only a stored baseline file: the current artifact is interleaved with a fixed reference workload instead,
  and each round gives a normalized time, artifact / reference. The baseline file holds its own normalized
  rounds, measured the same way when it was saved; the gate is the ratio of the two medians with a
  two-sample bootstrap interval (:func:`edgesft.stats.two_sample_gate`).

Each timed run is :mod:`edgesft.runtimes.timing`'s, as bench's are: decode at depth 0 for
``bench.check.decode_tokens`` tokens. ``bench/gate_calibration.py`` measures both gates' false-alarm rate
(identical artifacts) and power (a slower one) on a machine.

The modules, one job each: :mod:`~edgesft.gate.worker` (the timing workers and their rounds),
:mod:`~edgesft.gate.facts` (what a check reads of a run folder), :mod:`~edgesft.gate.settings`,
:mod:`~edgesft.gate.baseline` (the baseline file: its type, load, save) and :mod:`~edgesft.gate.compare`
(rows, judging, :func:`check`).
"""

from edgesft.gate.baseline import SCHEMA, Baseline, load_baseline, save_baseline
from edgesft.gate.compare import CheckResult, Row, check, compare_facts
from edgesft.gate.facts import artifact_facts, artifact_path, load_bench, primary_key
from edgesft.gate.settings import check_settings
from edgesft.gate.worker import (
    DEFAULT_TIMEOUT_S,
    LEGACY_REFERENCE,
    TimingFailure,
    TimingWorker,
    against_reference,
    interleave,
    normalized_rounds,
    open_workers,
    reference_workload,
)
from edgesft.runtimes.timing import WARMUP

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LEGACY_REFERENCE",
    "SCHEMA",
    "WARMUP",
    "Baseline",
    "CheckResult",
    "Row",
    "TimingFailure",
    "TimingWorker",
    "artifact_facts",
    "artifact_path",
    "check",
    "check_settings",
    "compare_facts",
    "against_reference",
    "interleave",
    "load_baseline",
    "load_bench",
    "normalized_rounds",
    "reference_workload",
    "open_workers",
    "primary_key",
    "save_baseline",
]
