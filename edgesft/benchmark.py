"""Latency, footprint and quality of one artifact in its own runtime (run :func:`bench_artifact` in a child).

Latency follows llama-bench's split: time to first token and prefill speed at fixed prompt lengths, decode
speed at fixed context depths (the KV cache already holds that many tokens). Runs are timed as
:mod:`edgesft.runtimes.timing` times every run (its prompts, outside the clock; the next token picked outside
it; end-of-generation tokens not special). Every figure is warm-up runs, then ``repeats`` timed runs,
reported as median, min, max and n. Load time is opening the artifact with the runtime library already
imported.

Memory: the child's resident set after the runtime library is imported and before the artifact is opened,
and its peak after the timed runs (the quality pass afterwards allocates logits and would inflate it).

The bandwidth bound: a decode step must read every weight the step uses once (all layers, the LM head; an
untied input embedding only one row) plus the KV cache at that depth, so decode tokens/s can at best be
memory read bandwidth / bytes per token; :func:`edgesft.machine.memory_bandwidth` measures that bandwidth.

Quality, on the same rows for every artifact: answer perplexity and KL divergence against the tuned fp32
model, teacher-forced on validation rows tokenized once by the HF tokenizer (verify has proved every
artifact's tokenizer gives the same ids), and task metrics from greedy answers to test rows, prompted with
the artifact's own chat template: what a user of the device gets.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgesft.machine import peak_rss_mb, rss_mb


def stats(values: list[float]) -> dict[str, Any]:
    """Median, min, max and count of a list of timings."""
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
    }


# --------------------------------------------------------------------------------------------------------
# Bytes a decode step reads


def weight_bytes(path: Path) -> int:
    """Bytes of weights one decode step reads: every tensor, except that an input embedding separate from the
    LM head is read one row at a time (so not counted)."""
    from edgesft.runtimes import artifact_kind

    kind = artifact_kind(path)
    if kind == "gguf":
        return _gguf_weight_bytes(path)
    if kind == "onnx":
        return _onnx_weight_bytes(path)
    return _torch_weight_bytes(path)


def _gguf_weight_bytes(path: Path) -> int:
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:  # untied: token_embd is only looked up
        total -= tensors.get("token_embd.weight", 0)
    return total


def _onnx_graph(folder: Path) -> Any:
    """The decoder graph of an ONNX folder, without its external weights."""
    import onnx

    genai = json.loads((folder / "genai_config.json").read_text())
    filename = genai["model"]["decoder"].get("filename", "model.onnx")
    return onnx.load(str(folder / filename), load_external_data=False).graph


def _onnx_weight_bytes(folder: Path) -> int:
    from onnx import TensorProto, helper

    graph = _onnx_graph(folder)
    sizes: dict[str, int] = {}
    for init in graph.initializer:
        external = {e.key: e.value for e in init.external_data}
        if init.data_location == TensorProto.EXTERNAL and "length" in external:
            sizes[init.name] = int(external["length"])
        elif init.raw_data:
            sizes[init.name] = len(init.raw_data)
        else:
            n = int(np.prod(init.dims)) if init.dims else 1
            sizes[init.name] = n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    total = sum(sizes.values())
    # The embedding lookup: the Gather (or GatherBlockQuantized) fed by input_ids. Its table, when nothing
    # else reads it (an untied or separately quantized LM head), is read one row per token.
    for node in graph.node:
        if node.op_type.startswith("Gather") and "input_ids" in node.input:
            for name in node.input:
                if name in sizes and users.get(name) == 1:
                    total -= sizes[name]
    return total


def _torch_weight_bytes(path: Path) -> int:
    from safetensors import safe_open

    from edgesft.runtimes.torch_rt import model_and_tokenizer_dirs

    model_dir, _ = model_and_tokenizer_dirs(path)
    config = json.loads((model_dir / "config.json").read_text())
    total, embed = 0, 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                sl = st.get_slice(name)
                n = int(np.prod(sl.get_shape())) * 4  # loaded as fp32
                total += n
                if name.endswith("embed_tokens.weight"):
                    embed = n
    # Tied: the file stores the matrix once and the LM head reads all of it. Untied: the lookup reads a row.
    return total if config.get("tie_word_embeddings", False) else total - embed


def kv_bytes_per_position(config: dict[str, Any], element_bytes: int) -> int:
    """KV cache bytes per token of context: keys and values of every layer."""
    from edgesft.models import head_dim

    kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim(config) * element_bytes


def kv_element_bytes(path: Path) -> int:
    """Bytes per cached key/value element: llama.cpp's default F16 cache, the ONNX graph's past-KV input
    type, fp32 for PyTorch."""
    from edgesft.runtimes import artifact_kind

    kind = artifact_kind(path)
    if kind == "gguf":
        return 2
    if kind == "torch":
        return 4
    import onnx

    for inp in _onnx_graph(path).input:
        if inp.name.startswith("past_key_values"):
            return 2 if inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else 4
    return 4


# --------------------------------------------------------------------------------------------------------
# In the child process


def measure_latency(art: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Prefill at each prompt length, decode at each depth: ``cfg["warmup"]`` rounds of every run untimed,
    then ``cfg["repeats"]`` timed rounds (``cfg``: BenchLatency)."""
    from edgesft.runtimes.timing import TimedRun, filler_ids, timed_run

    n = int(cfg["decode_tokens"])
    lengths = [int(x) for x in cfg["prompt_lengths"]]
    depths = [int(x) for x in cfg["decode_depths"]]
    # (prompt, decoded tokens) of each figure: prefill at a length, decode after a prompt as long as the depth
    runs = {("prefill", x): (filler_ids(art, x), 0) for x in lengths}
    runs.update({("decode", d): (filler_ids(art, d), n) for d in depths})
    for _ in range(int(cfg["warmup"])):
        for ids, tokens in runs.values():
            timed_run(art, ids, tokens)
    timed: dict[tuple[str, int], list[TimedRun]] = {key: [] for key in runs}
    for _ in range(int(cfg["repeats"])):
        for key, (ids, tokens) in runs.items():
            timed[key].append(timed_run(art, ids, tokens))
    return {
        "prefill": {
            str(x): {
                "ttft_s": stats([r.prefill_s for r in timed["prefill", x]]),
                "tok_s": stats([r.prefill_tok_s for r in timed["prefill", x]]),
            }
            for x in lengths
        },
        "decode": {str(d): {"tok_s": stats([r.decode_tok_s for r in timed["decode", d]])} for d in depths},
    }


def score(art: Any, sequences: list[dict[str, Any]], reference_dir: str | None) -> dict[str, Any]:
    """Answer perplexity of teacher-forced ``sequences`` ({ids, positions, targets}); with reference log-probs
    (``reference_dir/ref_<i>.npy``, rows at ``positions``): mean and p99 KL(reference || artifact) and top-1
    agreement."""
    from edgesft.verify import log_prob_agreement, log_softmax

    nll, kls, agree = [], [], []
    for i, seq in enumerate(sequences):
        pos, targets = np.asarray(seq["positions"]), np.asarray(seq["targets"])
        if pos.size == 0:
            continue
        lq = log_softmax(np.asarray(art.logits(seq["ids"]))[pos])
        nll.append(-lq[np.arange(pos.size), targets])
        if reference_dir is not None:
            lp = np.load(Path(reference_dir) / f"ref_{i}.npy").astype(np.float64)
            width = min(lp.shape[1], lq.shape[1])  # a vocabulary padded for alignment has extra columns
            kl, same = log_prob_agreement(lp[:, :width], lq[:, :width])
            kls.append(kl)
            agree.append(same)
    out: dict[str, Any] = {"val_perplexity": None, "val_tokens": 0}
    if nll:
        all_nll = np.concatenate(nll)
        out.update(val_perplexity=float(np.exp(min(all_nll.mean(), 50.0))), val_tokens=int(all_nll.size))
    if kls:
        kl = np.concatenate(kls)
        out.update(
            kl_mean=float(kl.mean()),
            kl_p99=float(np.percentile(kl, 99)),
            top1_agreement=float(np.concatenate(agree).mean()),
        )
    return out


def answer_rows(
    art: Any, rows: list[Any], task: str, max_new_tokens: int, schema: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Greedy answers in the artifact's runtime, prompted with its own chat template (constrained to
    ``schema`` by the runtime's own engine, when given); task metrics."""
    from edgesft.chat import prompt_and_answer
    from edgesft.runtimes import encode_chat

    stops = set(art.eos_ids())
    answers = []
    t0 = time.perf_counter()
    tokens = 0
    for row in rows:
        prompt, _ = prompt_and_answer(row.messages)
        new = art.generate(encode_chat(art, prompt), max_new_tokens, schema)
        tokens += len(new)
        if new and new[-1] in stops:
            new = new[:-1]
        answers.append(art.detokenize(new).strip())
    metrics = task_scores(task, rows, answers)
    metrics.update(generate_s=round(time.perf_counter() - t0, 2), generated_tokens=tokens)
    return metrics, answers


def task_scores(task: str, rows: list[Any], answers: list[str]) -> dict[str, Any]:
    """Task metrics of ``answers`` against the reference answers of ``rows`` (the same length)."""
    from edgesft.chat import prompt_and_answer
    from edgesft.metrics import TASKS

    return dict(TASKS[task](answers, [prompt_and_answer(r.messages)[1] for r in rows]))


def _torch_answers(
    art: Any, rows: list[Any], task: str, max_new_tokens: int, schema: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """PyTorch's own way: batched ``generate``, as the train/merge/prune stages measure."""
    from edgesft.evaluate import task_metrics

    metrics, samples = task_metrics(
        art.model, art.tok, rows, task, max_new_tokens, batch_size=32, progress=False, schema=schema
    )
    return metrics, [s["prediction"] for s in samples]


def _import_runtime(kind: str) -> None:
    """Import the runtime library so that load time is opening the artifact, not importing the library."""
    import importlib

    for module in {"gguf": ["llama_cpp"], "onnx": ["onnxruntime", "onnxruntime_genai"]}.get(
        kind, ["torch", "transformers"]
    ):
        importlib.import_module(module)


def bench_artifact(
    artifact: str,
    threads: int,
    latency: dict[str, Any] | None,
    quality: dict[str, Any] | None,
) -> dict[str, Any]:
    """Run in a child process (:func:`edgesft.isolate.call`): latency then quality of one artifact.

    ``quality``: {"sequences": file of scored sequences (JSON), "reference_dir": folder of reference
    log-probs or null, "test_file": JSONL of test rows, "test_rows": n, "task", "max_new_tokens", and
    optionally "schema": the answer schema's text, which greedy answers are constrained to, and
    "common_rows": the rows every artifact answers, when this one answers more (``test.first_rows``)}.
    """
    from edgesft.runtimes import artifact_kind, open_artifact
    from edgesft.runtimes.timing import open_for_timing

    path = Path(artifact)
    out: dict[str, Any] = {}
    _import_runtime(artifact_kind(path))
    if latency is not None:
        before = rss_mb()
        t0 = time.perf_counter()
        art = open_for_timing(path, threads)
        out["latency"] = {"threads": threads, "load_s": round(time.perf_counter() - t0, 4)}
        out["latency"].update(measure_latency(art, latency))
        out["latency"].update(rss_before_load_mb=round(before, 1), peak_rss_mb=round(peak_rss_mb(), 1))
        if quality is not None and art.kind != "gguf":
            scorer: Any = art  # the same instance serves teacher-forced logits
        else:
            art.close()
            scorer = None
    else:
        scorer = None
    if quality is not None:
        from edgesft.data import load_rows

        art = scorer or open_artifact(path, threads=threads)
        sequences = json.loads(Path(quality["sequences"]).read_text())
        q = score(art, sequences, quality.get("reference_dir"))
        rows = load_rows(Path(quality["test_file"]))[: quality["test_rows"]]
        if rows:
            task, limit, schema = quality["task"], quality["max_new_tokens"], quality.get("schema")
            answer = _torch_answers if art.kind == "torch" else answer_rows
            q["test"], answers = answer(art, rows, task, limit, schema)
            common = quality.get("common_rows")
            if common and common < len(rows):  # the primary, on the rows the others answered
                q["test"]["first_rows"] = task_scores(task, rows[:common], answers[:common])
        out["quality"] = q
        art.close()
    return out


def native_sequences(art: Any, rows: list[Any]) -> list[dict[str, Any]]:
    """Rows tokenized by the artifact itself (no HF tokenizer needed): the answer's tokens, up to and
    including the first end-of-generation token, are the scored targets, as the training loss has them."""
    from edgesft.chat import prompt_and_answer
    from edgesft.runtimes import encode_chat

    stops = set(art.eos_ids())
    out = []
    for row in rows:
        prompt, _ = prompt_and_answer(row.messages)
        head = encode_chat(art, prompt)
        ids = encode_chat(art, row.messages, add_generation_prompt=False)
        if ids[: len(head)] != head:
            continue  # the template renders the prompt differently inside the full chat: no clean split
        end = next((t for t in range(len(head), len(ids)) if ids[t] in stops), len(ids) - 1)
        targets_at = list(range(len(head), end + 1))
        out.append(
            {
                "ids": ids[: end + 1],
                "positions": [t - 1 for t in targets_at],
                "targets": [ids[t] for t in targets_at],
            }
        )
    return out


def eval_artifact(
    artifact: str,
    data_file: str,
    task: str,
    max_rows: int | None,
    max_new_tokens: int,
    threads: int,
    schema: str | None = None,
) -> dict[str, Any]:
    """``edgesft eval`` on a GGUF file or an ONNX folder (run in a child process): task metrics from greedy
    answers (constrained to ``schema``, the answer schema's text, when given) and answer perplexity, both in
    the artifact's own runtime."""
    from edgesft.data import ReadReport, read_rows
    from edgesft.runtimes import open_artifact

    rows = read_rows([Path(data_file)], "auto", "fail", ReadReport())[:max_rows]
    art = open_artifact(Path(artifact), threads=threads)
    metrics, answers = answer_rows(art, rows, task, max_new_tokens, schema)
    sequences = native_sequences(art, rows)
    scored = score(art, sequences, None)
    art.close()
    if scored["val_perplexity"] is not None:
        metrics.update(perplexity=scored["val_perplexity"], scored_tokens=scored["val_tokens"])
    samples = [{"source": r.source, "prediction": a} for r, a in zip(rows, answers, strict=True)]
    return {"metrics": metrics, "samples": samples}
