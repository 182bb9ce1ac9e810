"""Parity checks of an exported artifact against the PyTorch model it came from.

The artifact runs in its own runtime inside a child process (:func:`probe` through :mod:`edgesft.isolate`);
the PyTorch reference runs here. Checks:

- tokenizer: the runtime's tokenizer gives the HF tokenizer's ids on fixed strings (unicode, digits,
  whitespace, JSON, code, special tokens, rendered chat prompts);
- eos: the artifact declares the HF EOS id, and the runtime stops on every HF end-of-generation id;
- chat template: the artifact's own template renders the HF prompt, character for character;
- logits: teacher-forced on validation rows, the share of positions with the same top-1 token and the mean
  KL divergence (PyTorch || artifact), against limits for the artifact's precision;
- generation: greedy continuations equal PyTorch's for float artifacts (a mismatch where PyTorch's top-2
  logits are within ``tie_margin`` is a tie, not a failure), and where PyTorch stops at EOS the artifact
  stops too, at any precision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgesft.chat import encode_conversation, prompt_and_answer, render
from edgesft.config import ParityLimits, VerifyConfig
from edgesft.data import Row
from edgesft.errors import EdgesftError
from edgesft.io import load_npy, save_npy, sha256_json
from edgesft.isolate import IsolatedFailure, call

PROBE_TEXTS = [
    "Hello world",
    "  leading spaces,  double  spaces and a trailing one ",
    "Tabs\tand\nnewlines\n\n\nend",
    "Numbers 1234567 and 3.14159; dates 2026-11-21, 07:30am",
    "Ünïcödé façade naïve — “quotes” … ß",
    "日本語のテキストと中文",
    "emoji 😀👍🏽 mixed in",
    '{"intent": "set_alarm", "slots": {"time": "7am", "days": ["mon", "tue"]}}',
    "def f(x):\n    return x ** 2  # square\n",
]

FLOAT_PRECISIONS = {"F32", "F16", "BF16", "fp32", "fp16"}
EIGHT_BIT = {"Q8_0", "int8"}
SIX_BIT = {"Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0"}
FOUR_BIT = {"Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "int4"}
LOW_BIT = {"Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"}  # judged by the 4-bit limits (the loosest there are)


def limits_for(precision: str, cfg: VerifyConfig) -> tuple[str, ParityLimits]:
    """(precision class, limits) for an artifact's precision name."""
    if precision in FLOAT_PRECISIONS:
        return "float", cfg.limits_float
    if precision in EIGHT_BIT:
        return "8bit", cfg.limits_8bit
    if precision in SIX_BIT:
        return "6bit", cfg.limits_6bit
    if precision in FOUR_BIT | LOW_BIT:
        return "4bit", cfg.limits_4bit
    # A precision nobody classified must not be judged by some other class's limits.
    raise EdgesftError(f"export.verify: no parity limits for the precision {precision!r} (a bug)")


# --------------------------------------------------------------------------------------------------------
# The request (built once per source model) and the child-process probe


def build_request(tok: Any, rows: list[Row], cfg: VerifyConfig) -> dict[str, Any]:
    """What every artifact is asked: strings to tokenize, chats to render, sequences to score, prompts to
    continue. Built from the validation rows with the HF tokenizer."""
    chats: list[list[dict[str, str]]] = []
    sequences: list[list[int]] = []
    prompts: list[list[int]] = []
    texts = list(PROBE_TEXTS)
    for tok_text in (tok.eos_token, tok.bos_token, tok.pad_token):
        if tok_text and f"x{tok_text}y" not in texts:
            texts.append(f"x{tok_text}y")
    for i, row in enumerate(rows[: cfg.prompts]):
        prompt_msgs, _ = prompt_and_answer(row.messages)
        ids, _ = encode_conversation(tok, row.messages)
        sequences.append(ids[: cfg.max_tokens])
        if i < cfg.generate_prompts:
            chats.append(prompt_msgs)
            rendered = render(tok, prompt_msgs, add_generation_prompt=True)
            texts.append(rendered)
            prompts.append([int(t) for t in tok(rendered, add_special_tokens=False)["input_ids"]])
    chats.append([{"role": "user", "content": "Hi!"}])
    chats.append(
        [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Wake me at 7"},
            {"role": "assistant", "content": '{"intent": "set_alarm"}'},
            {"role": "user", "content": "and at 8?"},
        ]
    )
    return {"texts": texts, "chats": chats, "sequences": sequences, "prompts": prompts}


def probe(
    artifact: str, request: str, out_dir: str, threads: int | None, max_new_tokens: int
) -> dict[str, Any]:
    """Run in a child process: ask the artifact's runtime everything in ``request`` (a JSON file).

    Logits go to ``out_dir/logits_<i>.npy`` (they are large); the rest is returned.
    """
    from edgesft.runtimes import open_artifact

    req = json.loads(Path(request).read_text())
    art = open_artifact(Path(artifact), threads=threads)
    out: dict[str, Any] = {"tokens": [art.tokenize(t) for t in req["texts"]]}
    out["eos_ids"] = art.eos_ids()
    out["declared_eos"] = getattr(art, "declared_eos_id", lambda: None)()
    renders: list[Any] = []
    for messages in req["chats"]:
        try:
            renders.append(art.render_chat(messages, True))
        except Exception as e:  # a template the runtime cannot render is a finding, not a crash
            renders.append({"error": f"{type(e).__name__}: {e}"})
    out["chats"] = renders
    for i, ids in enumerate(req["sequences"]):
        save_npy(Path(out_dir) / f"logits_{i}.npy", art.logits(ids))
    out["generations"] = [art.generate(ids, max_new_tokens) for ids in req["prompts"]]
    art.close()
    return out


# --------------------------------------------------------------------------------------------------------
# The reference


class Reference:
    """The PyTorch model every artifact is compared with, answering each question once per set of checks:
    teacher-forced logits are kept as .npy files in ``cache_dir`` (they are large), greedy continuations in
    memory. Everything else is the wrapped model's."""

    def __init__(self, model: Any, cache_dir: Path):
        self.model = model
        self.cache_dir = cache_dir
        self._generations: dict[tuple[tuple[int, ...], int], tuple[list[int], list[float]]] = {}

    def __getattr__(self, name: str) -> Any:  # tok, eos_ids, render_chat, detokenize
        return getattr(self.model, name)

    def logits(self, ids: list[int]) -> Any:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / f"{sha256_json(ids)[:24]}.npy"
        cached = load_npy(path)
        if cached is not None and cached.ndim == 2 and cached.shape[0] == len(ids):
            return cached
        out = self.model.logits(ids)  # missing, torn or of another shape: computed again
        save_npy(path, out)
        return out

    def generate_with_margins(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
        key = (tuple(ids), max_new_tokens)
        if key not in self._generations:
            self._generations[key] = self.model.generate_with_margins(ids, max_new_tokens)
        return self._generations[key]


# --------------------------------------------------------------------------------------------------------
# Comparison


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64."""
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def log_prob_agreement(lp: np.ndarray, lq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position, from log-probabilities: KL(p || q) in nats, and whether the top-1 tokens agree."""
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return np.maximum(kl, 0.0), lp.argmax(-1) == lq.argmax(-1)


def logit_agreement(ref: np.ndarray, art: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: KL(ref || art) in nats, and whether the top-1 tokens agree."""
    return log_prob_agreement(log_softmax(ref), log_softmax(art))


def _first_diff(a: str, b: str) -> dict[str, Any]:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {"at": i, "expected": a[max(0, i - 20) : i + 40], "got": b[max(0, i - 20) : i + 40]}


def verify_artifact(
    artifact: Path,
    precision: str,
    reference: Any,
    request: dict[str, Any],
    cfg: VerifyConfig,
    work_dir: Path,
    threads: int | None = None,
) -> dict[str, Any]:
    """Every check for one artifact; ``status`` is ``passed``, ``failed`` or ``crashed``."""
    pclass, limits = limits_for(precision, cfg)
    record: dict[str, Any] = {
        "precision": precision,
        "precision_class": pclass,
        "limits": limits.model_dump(),
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    req_path = work_dir / "request.json"
    req_path.write_text(json.dumps(request))
    for f in work_dir.glob("logits_*.npy"):
        f.unlink()
    try:
        got = call(
            "edgesft.verify:probe",
            {
                "artifact": str(artifact),
                "request": str(req_path),
                "out_dir": str(work_dir),
                "threads": threads,
                "max_new_tokens": cfg.generate_tokens + 16,
            },
            timeout=cfg.timeout_s,
        )
    except IsolatedFailure as e:
        record.update(status="crashed" if e.kind != "error" else "failed", error=str(e))
        return record
    checks: dict[str, Any] = {}
    tok = reference.tok

    # Tokenizer
    mismatches = []
    for text, ids in zip(request["texts"], got["tokens"], strict=True):
        want = [int(i) for i in tok(text, add_special_tokens=True)["input_ids"]]
        if ids != want:
            mismatches.append({"text": text[:80], "expected": want[:24], "got": ids[:24]})
    checks["tokenizer"] = {"passed": not mismatches, "texts": len(request["texts"]), "mismatches": mismatches}

    # EOS
    hf_eos = reference.eos_ids()
    declared = got.get("declared_eos")
    eos_ok = set(hf_eos) <= set(got["eos_ids"]) and (declared is None or declared == tok.eos_token_id)
    checks["eos"] = {
        "passed": eos_ok,
        "hf_eos": hf_eos,
        "hf_eos_token_id": tok.eos_token_id,
        "declared": declared,
        "runtime_stop_ids": got["eos_ids"][:16],
    }

    # Chat template
    chat_fail = []
    for messages, rendered in zip(request["chats"], got["chats"], strict=True):
        want_text = reference.render_chat(messages, True)
        if isinstance(rendered, dict):
            chat_fail.append({"turns": len(messages), **rendered})
        elif rendered != want_text:
            chat_fail.append({"turns": len(messages), **_first_diff(want_text, rendered)})
    checks["chat_template"] = {
        "passed": not chat_fail,
        "chats": len(request["chats"]),
        "mismatches": chat_fail,
    }

    # Logits
    kls, agree = [], []
    for i, ids in enumerate(request["sequences"]):
        art = np.load(work_dir / f"logits_{i}.npy")
        ref = reference.logits(ids)
        if art.shape != ref.shape:
            checks["logits"] = {"passed": False, "error": f"logits shape {art.shape} vs PyTorch {ref.shape}"}
            break
        kl, same = logit_agreement(ref, art)
        kls.append(kl)
        agree.append(same)
    else:
        kl_all = np.concatenate(kls) if kls else np.zeros(0)
        top1 = float(np.concatenate(agree).mean()) if agree else 1.0
        kl_mean = float(kl_all.mean()) if kl_all.size else 0.0
        checks["logits"] = {
            "passed": top1 >= limits.min_top1 and kl_mean <= limits.max_kl,
            "positions": int(kl_all.size),
            "top1_agreement": round(top1, 5),
            "kl_mean": round(kl_mean, 6),
            "kl_p99": round(float(np.percentile(kl_all, 99)), 6) if kl_all.size else 0.0,
            "kl_max": round(float(kl_all.max()), 6) if kl_all.size else 0.0,
        }

    # Generation
    checks["generation"] = _generation_check(reference, request, got, cfg, pclass == "float")
    record["checks"] = checks
    failed = [name for name, c in checks.items() if not c["passed"]]
    record["status"] = "failed" if failed else "passed"
    record["failed_checks"] = failed
    return record


def _generation_check(
    reference: Any, request: dict[str, Any], got: dict[str, Any], cfg: VerifyConfig, exact: bool
) -> dict[str, Any]:
    stop_ids = set(reference.eos_ids())
    n = cfg.generate_tokens
    items, problems = [], []
    for ids, art_tokens in zip(request["prompts"], got["generations"], strict=True):
        ref_tokens, margins = reference.generate_with_margins(ids, n)
        k = next(
            (j for j, (a, b) in enumerate(zip(ref_tokens, art_tokens, strict=False)) if a != b),
            None,
        )
        ref_stopped = bool(ref_tokens) and ref_tokens[-1] in stop_ids
        art_stopped = bool(art_tokens) and art_tokens[-1] in stop_ids
        item: dict[str, Any] = {
            "reference_tokens": len(ref_tokens),
            "artifact_tokens": len(art_tokens),
            "agree_prefix": k if k is not None else min(len(ref_tokens), len(art_tokens)),
            "reference_stopped": ref_stopped,
            "artifact_stopped": art_stopped,
            "reference_text": reference.detokenize(ref_tokens)[:200],
            "artifact_text": reference.detokenize(art_tokens)[:200],
        }
        if exact and k is not None:
            item["margin_at_divergence"] = round(margins[k], 5)
            if margins[k] >= cfg.tie_margin:
                problems.append(f"greedy output diverges at token {k} (PyTorch top-2 gap {margins[k]:.3f})")
            else:
                item["tie"] = True
        elif exact and ref_stopped and len(art_tokens) != len(ref_tokens):
            problems.append(f"PyTorch stops after {len(ref_tokens)} tokens, the artifact does not")
        if ref_stopped and not art_stopped:
            problems.append(
                f"PyTorch stops at EOS after {len(ref_tokens)} tokens; the artifact has not stopped after "
                f"{len(art_tokens)}"
            )
        items.append(item)
    return {"passed": not problems, "exact_required": exact, "prompts": items, "problems": problems}
