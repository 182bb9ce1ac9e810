"""Prefill and decode timing of one artifact in its own runtime (call it in a child process).

Decode time covers the runtime's forward steps only: the next token is the argmax of the last logits
(greedy), taken outside the timed region where the runtime allows it (llama.cpp, PyTorch); onnxruntime-genai
picks it inside ``generate_next_token``, a microsecond-scale argmax next to a millisecond-scale step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def _gguf_run(art: Any, ids: list[int], n: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    art.prefill(ids)
    prefill = time.perf_counter() - t0
    decode = 0.0
    steps = 0
    for _ in range(n):
        nxt = int(np.argmax(art.last_logits()))
        t1 = time.perf_counter()
        art.llm.eval([nxt])
        decode += time.perf_counter() - t1
        steps += 1
    return prefill, decode, steps


def _onnx_run(art: Any, ids: list[int], n: int) -> tuple[float, float, int]:
    og = art._og
    params = og.GeneratorParams(art._model)
    # min_length = max_length: an end-of-generation token must not end a timed run early (EOS is masked).
    length = len(ids) + n + 1
    params.set_search_options(do_sample=False, num_beams=1, max_length=length, min_length=length)
    gen = og.Generator(art._model, params)
    t0 = time.perf_counter()
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    gen.generate_next_token()  # the first token comes from the prefill's logits
    prefill = time.perf_counter() - t0
    steps = 0
    t1 = time.perf_counter()
    while steps < n and not gen.is_done():
        gen.generate_next_token()
        steps += 1
    return prefill, time.perf_counter() - t1, steps


def _torch_run(art: Any, ids: list[int], n: int) -> tuple[float, float, int]:
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        # logits_to_keep=1: only the last position goes through the LM head, as llama.cpp and
        # onnxruntime-genai run a prompt (the head is ~20% of SmolLM2's prefill FLOPs).
        out = art.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - t0
        past, logits = out.past_key_values, out.logits
        decode = 0.0
        for _ in range(n):
            nxt = logits[0, -1].argmax().view(1, 1)
            t1 = time.perf_counter()
            out = art.model(input_ids=nxt, past_key_values=past, use_cache=True)
            decode += time.perf_counter() - t1
            past, logits = out.past_key_values, out.logits
    return prefill, decode, n


def timed_run(art: Any, ids: list[int], new_tokens: int) -> tuple[float, float, int]:
    """One prefill of ``ids`` into a fresh KV cache, then ``new_tokens`` greedy decode steps on an open
    artifact: (prefill seconds, decode seconds, decode steps taken)."""
    run = {"gguf": _gguf_run, "onnx": _onnx_run, "torch": _torch_run}[art.kind]
    return run(art, ids, new_tokens)


def time_decode(
    artifact: str, prompt: list[int], new_tokens: int, repeats: int, threads: int
) -> dict[str, Any]:
    """Load ``artifact``, warm up once, then ``repeats`` timed runs of prefill + ``new_tokens`` decode steps."""
    from edgesft.runtimes import open_artifact

    t0 = time.perf_counter()
    art = open_artifact(Path(artifact), threads=threads)
    load = time.perf_counter() - t0
    timed_run(art, prompt, min(8, new_tokens))  # warm-up
    prefill_s, decode_tok_s = [], []
    for _ in range(repeats):
        p, d, steps = timed_run(art, prompt, new_tokens)
        prefill_s.append(p)
        decode_tok_s.append(steps / d if d > 0 else 0.0)
    art.close()
    return {
        "load_s": load,
        "prefill_s": prefill_s,
        "decode_tok_s": decode_tok_s,
        "threads": threads,
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
    }
