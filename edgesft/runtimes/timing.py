"""Prefill and decode timing of an open artifact: the one timing path of bench, check and the bench/ scripts.

A timed run (:func:`timed_run`) is one prefill of a prompt into a fresh KV cache, then greedy decode steps,
through the runtime interface (:class:`edgesft.runtimes.Artifact`'s ``prefill``, ``next_token``, ``step``).
The clock covers the runtime's forward passes only: the prompt is token ids made before it starts, and each
next token (the argmax of the last logits) is picked outside it. End-of-generation tokens are not special,
so a run always takes the steps it asks for.

One policy for every caller:

- the artifact is opened once with :func:`open_for_timing` (llama.cpp then computes only the last
  position's logits, as an application does: a prefill that projects every position onto the vocabulary
  is slower);
- a prompt of ``n`` tokens is the artifact's own tokens of :data:`FILLER`, repeated (:func:`filler_ids`);
  decode at depth ``d`` (tokens already in the KV cache) runs after a prompt of ``max(d, 1)`` tokens;
- :data:`WARMUP` untimed runs of the same prompt and length come before the timed ones (``bench.latency``
  sets its own count).

A figure that cannot be measured raises :class:`TimingError`; it is never a rate of 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesft.errors import EdgesftError

if TYPE_CHECKING:
    from edgesft.runtimes import Artifact

# A long neutral paragraph (any text works: speed does not depend on which tokens they are).
FILLER = (
    "The committee met on Tuesday morning to review the quarterly figures, the hiring plan and the new "
    "office layout. Most of the discussion concerned delivery dates for the mobile release, which depend on "
    "the translation work and on two outside vendors. "
)
WARMUP = 1


class TimingError(EdgesftError):
    """A run that cannot give the figure asked of it (one line)."""


@dataclass(frozen=True)
class TimedRun:
    """One prefill of ``prompt_tokens`` tokens, then ``steps`` decode steps, in seconds."""

    prompt_tokens: int
    prefill_s: float
    decode_s: float
    steps: int

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens per second of prefill (``prefill_s`` is the time to first token)."""
        if self.prefill_s <= 0:
            raise TimingError(f"the prefill took no measurable time ({self.prefill_s:g} s)")
        return self.prompt_tokens / self.prefill_s

    @property
    def seconds_per_token(self) -> float:
        """Decode seconds per step."""
        if self.steps == 0 or self.decode_s <= 0:
            raise TimingError(f"no decode step was timed ({self.steps} steps in {self.decode_s:g} s)")
        return self.decode_s / self.steps

    @property
    def decode_tok_s(self) -> float:
        return 1.0 / self.seconds_per_token


def open_for_timing(path: Path, threads: int) -> Artifact:
    """Open an artifact the way every timed run has it (only the last position's logits)."""
    from edgesft.runtimes import open_artifact

    return open_artifact(Path(path), threads=threads, all_logits=False)


def filler_ids(art: Artifact, length: int) -> list[int]:
    """``max(length, 1)`` ids: the artifact's own tokens of :data:`FILLER`, repeated to that length."""
    chunk = art.tokenize(FILLER)
    if not chunk:
        raise TimingError("the artifact tokenizes the filler text to no tokens")
    length = max(length, 1)
    return (chunk * -(-length // len(chunk)))[:length]


def timed_run(art: Artifact, ids: list[int], new_tokens: int) -> TimedRun:
    """One prefill of ``ids`` into a fresh KV cache, then ``new_tokens`` greedy decode steps."""
    t0 = time.perf_counter()
    art.prefill(ids, new_tokens)
    prefill = time.perf_counter() - t0
    decode = 0.0
    for _ in range(new_tokens):
        token = art.next_token()
        t1 = time.perf_counter()
        art.step(token)
        decode += time.perf_counter() - t1
    return TimedRun(len(ids), prefill, decode, new_tokens)


def decode_speeds(artifact: str, depth: int, new_tokens: int, repeats: int, threads: int) -> dict[str, Any]:
    """Decode tok/s of ``repeats`` timed runs at ``depth`` after :data:`WARMUP` untimed ones, the artifact
    opened once (run it in a child process: :func:`edgesft.isolate.call`; the bench/ scripts do)."""
    t0 = time.perf_counter()
    art = open_for_timing(Path(artifact), threads)
    load = time.perf_counter() - t0
    try:
        ids = filler_ids(art, depth)
        for _ in range(WARMUP):
            timed_run(art, ids, new_tokens)
        runs = [timed_run(art, ids, new_tokens) for _ in range(repeats)]
    finally:
        art.close()
    return {
        "load_s": load,
        "prefill_s": [r.prefill_s for r in runs],
        "decode_tok_s": [r.decode_tok_s for r in runs],
        "threads": threads,
        "depth": depth,
        "prompt_tokens": len(ids),
        "new_tokens": new_tokens,
    }
