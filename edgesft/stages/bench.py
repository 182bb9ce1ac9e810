"""Stage ``bench``: latency, footprint and quality of every artifact, each in its own runtime.

Artifacts: the tuned float PyTorch model (merge stage) and, after pruning, the pruned one (``bench.torch``),
every GGUF file and every ONNX folder. Each runs in its own child process (:mod:`edgesft.isolate`) with
a fixed thread count, one after the other, so no two measurements share the CPU; a runtime that crashes or
hangs marks its artifact and the others are still measured.

Quality is measured against the tuned fp32 model (the merge stage's, before any pruning or quantization), on
the same validation and test rows for every artifact. Outputs: ``bench.json`` (also the manifest's metrics).
The run's report (``<run>/report/``) is built from it by :mod:`edgesft.report` after the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgesft.benchmark import kv_bytes_per_position, kv_element_bytes, weight_bytes
from edgesft.chat import encode_conversation
from edgesft.config import Recipe
from edgesft.data import load_rows
from edgesft.errors import EdgesftError
from edgesft.io import atomic_write_json, read_json, save_npy
from edgesft.isolate import IsolatedFailure, call
from edgesft.machine import default_threads, fingerprint, machine_info
from edgesft.pipeline import StageInputs, StageResult
from edgesft.quality import decoding_schema
from edgesft.runfolder import EXPORT_STAGES, ArtifactRecord, RunFolder
from edgesft.support import SOFT_PROMPT

RUNTIMES = {"gguf": "llama.cpp (llama-cpp-python)", "onnx": "onnxruntime-genai", "torch": "PyTorch"}
RUNTIME_PACKAGES = {"gguf": "llama-cpp-python", "onnx": "onnxruntime-genai", "torch": "torch"}


def skip(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> str | None:
    if not recipe.bench.enabled:
        return "bench.enabled is false"
    if recipe.train.method == "prompt_tuning":
        return SOFT_PROMPT
    return None


def external_inputs(recipe: Recipe) -> dict[str, Any]:
    """The machine the figures are measured on (CPU, cores, resolved threads, library versions): a run
    folder copied or cached onto another machine re-measures instead of reporting the first one's speeds."""
    return {"machine": fingerprint(recipe.bench.latency.threads or default_threads())}


def reference_stage(manifests: dict[str, dict[str, Any]]) -> str:
    """The tuned float model: merge's output, else the training stage's (full-weight methods)."""
    for name in ("merge", "train"):
        if manifests.get(name, {}).get("info", {}).get("model"):
            return name
    raise EdgesftError("stage bench: no tuned model folder (merge or train) to measure against")


def _runtime(kind: str) -> str:
    from importlib import metadata

    try:
        return f"{RUNTIMES[kind]} {metadata.version(RUNTIME_PACKAGES[kind])}"
    except metadata.PackageNotFoundError:
        return RUNTIMES[kind]


def targets(inputs: StageInputs, with_torch: bool) -> list[ArtifactRecord]:
    """Every artifact to measure (the torch models only ``with_torch``), with what earlier stages recorded
    about it."""
    found = RunFolder(inputs.run_dir, inputs.upstream).artifacts().values()
    return [r for r in found if with_torch or r.kind != "torch"]


def scored_sequences(tok: Any, rows: list[Any], max_length: int) -> list[dict[str, Any]]:
    """Validation rows as the training loss sees them: ids, and per answer token the position whose logits
    predict it."""
    out = []
    for row in rows:
        ids, labels = encode_conversation(tok, row.messages)
        ids, labels = ids[:max_length], labels[:max_length]
        targets_at = [t for t in range(1, len(ids)) if labels[t] != -100]
        out.append(
            {"ids": ids, "positions": [t - 1 for t in targets_at], "targets": [ids[t] for t in targets_at]}
        )
    return out


def write_reference(model_path: Path, sequences: list[dict[str, Any]], folder: Path, threads: int) -> None:
    """Log-probabilities of the tuned fp32 model at every scored position (``ref_<i>.npy``)."""
    from edgesft.runtimes.torch_rt import TorchArtifact
    from edgesft.verify import log_softmax

    folder.mkdir(parents=True, exist_ok=True)
    model = TorchArtifact(model_path, threads=threads)
    for i, seq in enumerate(sequences):
        logits = np.asarray(model.logits(seq["ids"]))[np.asarray(seq["positions"], dtype=int)]
        save_npy(folder / f"ref_{i}.npy", log_softmax(logits).astype(np.float32))
    model.close()


def bandwidth_bound(
    path: Path,
    config: dict[str, Any],
    depths: list[int],
    new_tokens: int,
    bandwidth_gb_s: float,
    decode: dict[str, Any],
) -> dict[str, Any]:
    """Bytes a decode step reads at each depth, the tokens/s that bandwidth allows, and the measured share.

    A timed run decodes ``new_tokens`` tokens from depth d, so its steps read the KV cache at d + n/2 on
    average."""
    weights = weight_bytes(path)
    kv = kv_bytes_per_position(config, kv_element_bytes(path))
    bound: dict[str, Any] = {}
    for d in depths:
        per_token = int(weights + kv * (max(d, 1) + new_tokens / 2))
        limit = bandwidth_gb_s * 1e9 / per_token
        measured = decode.get(str(d), {}).get("tok_s", {}).get("median")
        bound[str(d)] = {
            "bytes_per_token": per_token,
            "bound_tok_s": round(limit, 2),
            "fraction": round(measured / limit, 4) if measured else None,
        }
    return {"weight_bytes": weights, "kv_bytes_per_position": kv, "bound": bound}


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    cfg = recipe.bench
    t_start = time.perf_counter()
    threads = cfg.latency.threads or default_threads()
    machine = machine_info()
    try:
        bandwidth = float(call("edgesft.machine:memory_bandwidth", {"threads": threads}, timeout=300))
    except IsolatedFailure as e:
        raise IsolatedFailure(f"stage bench: measuring memory bandwidth failed: {e}", e.kind) from None
    machine.update(bandwidth_gb_s=round(bandwidth, 2), bandwidth_threads=threads)
    print(f"  {machine['cpu_model']}, {threads} threads, memory read bandwidth {bandwidth:.1f} GB/s")

    ref = reference_stage(inputs.upstream)
    ref_path = inputs.stage_dir(ref)
    source_config = _model_config(inputs)
    data_dir = inputs.stage_dir("data")
    val = load_rows(data_dir / "val.jsonl")[: cfg.quality.val_rows]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref_path / inputs.info(ref).get("tokenizer", "tokenizer"))
    sequences = scored_sequences(tok, val, recipe.data.max_length)
    seq_file = inputs.work_dir / "sequences.json"
    seq_file.write_text(json.dumps(sequences))
    reference_dir = inputs.work_dir / "reference"
    if sequences:
        print(f"  reference log-probs of the tuned model ({ref}) on {len(sequences)} validation rows")
        write_reference(ref_path, sequences, reference_dir, threads)
    test_file = data_dir / "test.jsonl"
    split = load_rows(test_file)
    test_rows = len(split[: cfg.quality.test_rows])
    primary = RunFolder(inputs.run_dir, inputs.upstream).primary()
    primary_rows = len(split[: cfg.quality.primary_test_rows]) if cfg.quality.primary_test_rows else 0
    quality_req = {
        "sequences": str(seq_file),
        "reference_dir": str(reference_dir) if sequences else None,
        "test_file": str(test_file),
        "test_rows": test_rows,
        "task": recipe.eval.task,
        "max_new_tokens": cfg.quality.max_new_tokens or recipe.eval.max_new_tokens,
        "schema": decoding_schema(recipe, data_dir),  # answers constrained as the model stages measured
    }
    latency_cfg = cfg.latency.model_dump()
    records: dict[str, Any] = {}
    unmeasured: list[str] = []  # measurements that crashed or hung: retried on the next run
    answered_more = None  # the primary's test rows, once it answered more than the others
    for t in targets(inputs, cfg.torch):
        path = t.path
        rec: dict[str, Any] = {
            "kind": t.kind,
            "runtime": _runtime(t.kind),
            "stage": t.stage,
            "precision": t.precision,
            "path": t.relpath,
            "size_bytes": t.size_bytes,
            "status": "ok",
            "error": None,
            "verified": t.verified,
            "fallback_tensors": t.fallback_tensors,
            "params": t.params,
        }
        records[t.key] = rec
        if t.status != "ok" or t.size_bytes is None or not path.exists():
            missing = f"{t.relpath} is missing or not among its stage's outputs"
            rec.update(status="failed", error=t.error or missing, size_bytes=None)
            print(f"  {t.key}: not measured ({rec['error']})")
            continue
        quality = quality_req
        more = primary is not None and t.key == primary.key and primary_rows > test_rows
        if more:
            quality = {**quality_req, "test_rows": primary_rows, "common_rows": test_rows}
        t0 = time.perf_counter()
        try:
            got = call(
                "edgesft.benchmark:bench_artifact",
                {"artifact": str(path), "threads": threads, "latency": latency_cfg, "quality": quality},
                timeout=cfg.timeout_s,
            )
        except IsolatedFailure as e:
            rec.update(status={"crash": "crashed", "timeout": "timeout"}.get(e.kind, "failed"), error=str(e))
            if e.transient:
                unmeasured.append(t.key)
            print(f"  {t.key}: {rec['status'].upper()}: {e}")
            continue
        rec.update(got)
        config = _torch_config(path) if t.kind == "torch" else source_config
        rec["bandwidth"] = bandwidth_bound(
            path,
            config,
            cfg.latency.decode_depths,
            cfg.latency.decode_tokens,
            bandwidth,
            rec["latency"]["decode"],
        )
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        if more:
            answered_more = primary_rows
        print("  " + summary_line(t.key, rec))
    report = {
        "machine": machine,
        "threads": threads,
        "reference_stage": ref,
        "val_rows": len(sequences),
        "test_rows": test_rows,
        "primary": primary.key if primary is not None else None,
        "primary_test_rows": answered_more,
        "artifacts": records,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_json(out_dir / "bench.json", report)
    return StageResult(
        metrics=report,
        info={"reference_stage": ref},
        # (an artifact the export stages did not make is their failure, retried there)
        failures=unmeasured,
    )


def _torch_config(path: Path) -> dict[str, Any]:
    from edgesft.runtimes.torch_rt import model_and_tokenizer_dirs

    config = read_json(model_and_tokenizer_dirs(path)[0] / "config.json")
    assert isinstance(config, dict)
    return config


def _model_config(inputs: StageInputs) -> dict[str, Any]:
    """config.json of the model the artifacts came from (the shapes that set the KV cache size)."""
    from edgesft.pipeline import last_model_stage

    found = RunFolder(inputs.run_dir, inputs.upstream).artifacts().values()
    exported = (r.source_stage for r in found if r.kind in EXPORT_STAGES and r.source_stage)
    source = next(exported, None) or last_model_stage(inputs.upstream)
    config = read_json(inputs.stage_dir(source) / inputs.info(source)["model"] / "config.json")
    assert isinstance(config, dict)
    return config


def summary_line(key: str, rec: dict[str, Any]) -> str:
    lat, q = rec.get("latency", {}), rec.get("quality", {})
    parts = [f"{rec['size_bytes'] / 2**20:.1f} MiB"]
    for d, v in lat.get("decode", {}).items():
        parts.append(f"decode@{d} {v['tok_s']['median']:.1f} tok/s")
    for length, v in lat.get("prefill", {}).items():
        parts.append(f"TTFT@{length} {1000 * v['ttft_s']['median']:.0f} ms")
    b0 = rec.get("bandwidth", {}).get("bound", {}).get("0", {})
    if b0.get("fraction"):
        parts.append(f"{100 * b0['fraction']:.0f}% of bandwidth bound")
    if q.get("val_perplexity"):
        parts.append(f"ppl {q['val_perplexity']:.3f}")
    if q.get("kl_mean") is not None:
        parts.append(f"KL {q['kl_mean']:.4f}")
    test = q.get("test") or {}
    if "exact_match" in test:
        parts.append(f"exact {100 * test['exact_match']:.1f}")
    return f"{key}: " + ", ".join(parts)
