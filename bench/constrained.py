"""What constraining decoding to the answer schema costs, and what it buys, on one run folder.

For each artifact's runtime (the tuned PyTorch model, a GGUF file, the ONNX int4 folder when the run made
one), greedy answers to the first ``--rows`` test prompts are generated with and without the constraint
(``data.answer_schema``, which the run's data stage copied into ``data/answer_schema.json``): PyTorch through
llguidance, llama.cpp through the schema's GBNF grammar, onnxruntime-genai through its own guidance, i.e.
what ``edgesft`` uses everywhere (:mod:`edgesft.answer_schema`).

Speed: each artifact opens once in its own child process (fixed threads), answers every prompt once per mode
untimed (warm-up), then runs ``--rounds`` rounds of both modes, the order alternating (free, constrained;
constrained, free; ...). A mode's time in a round is the wall time of all its answers; the constraint's cost
is the median over rounds of the per-round ratio constrained / free, per answer and per generated token (a
constrained answer may be shorter or longer than a free one). Quality: exact-match, valid-JSON rate, intent
accuracy and slot F1 of the same answers with and without the constraint (greedy: every round gives the same
answers; the first round's are scored).

    python bench/constrained.py RUN [--rows 50] [--rounds 5] [--threads N] [--artifact KEY ...] [--out FILE]

Artifact keys are those of ``bench.json`` (``torch/merge``, ``gguf/phone-Q4_K_M.gguf``, ``onnx/int4``);
default: the tuned model (``torch/merge``, else ``torch/train``), the bundle's primary GGUF (else the first
GGUF) and ``onnx/int4``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = ("free", "constrained")


def importable() -> None:
    """Make ``edgesft`` and this script importable here and in the child processes the runtimes run in."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *(p for p in paths if p)])


def worker(
    artifact: str, test_file: str, rows: int, schema: str, rounds: int, threads: int, max_new_tokens: int
) -> dict[str, Any]:
    """In a child process: the artifact opened once; warm-up, then ``rounds`` interleaved rounds of free and
    constrained greedy answers to the first ``rows`` test prompts."""
    from edgesft.chat import prompt_and_answer
    from edgesft.data import load_rows
    from edgesft.runtimes import encode_chat, open_artifact

    art = open_artifact(Path(artifact), threads=threads, all_logits=False)  # as an application runs it
    test = load_rows(Path(test_file))[:rows]
    prompts = [encode_chat(art, prompt_and_answer(r.messages)[0]) for r in test]
    stops = set(art.eos_ids())
    constraint = {"free": None, "constrained": schema}

    def answer_all(mode: str) -> tuple[float, int, list[str]]:
        answers, tokens = [], 0
        t0 = time.perf_counter()
        for ids in prompts:
            new = art.generate(ids, max_new_tokens, constraint[mode])
            tokens += len(new)
            answers.append(new)
        elapsed = time.perf_counter() - t0
        texts = [art.detokenize(n[:-1] if n and n[-1] in stops else n).strip() for n in answers]
        return elapsed, tokens, texts

    first: dict[str, list[str]] = {}
    for mode in MODES:  # warm-up: every prompt once per mode (caches, the constraint's compiled grammar)
        first[mode] = answer_all(mode)[2]
    timed: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            elapsed, tokens, _ = answer_all(mode)
            timed[mode].append({"s": elapsed, "tokens": tokens})
    art.close()
    return {"kind": art.kind, "rounds": timed, "answers": first}


def default_artifacts(run: Any) -> list[str]:
    """The tuned torch model, the primary (else first) GGUF, and onnx/int4, those the run made."""
    arts = {k: r for k, r in run.artifacts().items() if r.status == "ok"}
    keys = [next((k for k in ("torch/merge", "torch/train") if k in arts), None)]
    primary = run.primary()
    ggufs = [k for k, r in arts.items() if r.kind == "gguf"]
    keys.append(primary.key if primary is not None and primary.kind == "gguf" else (ggufs or [None])[0])
    keys.append("onnx/int4" if "onnx/int4" in arts else None)
    return [k for k in keys if k]


def summarize(got: dict[str, Any], refs: list[str], task: str) -> dict[str, Any]:
    """Medians per mode, median per-round ratios constrained / free, and the task metrics of each mode."""
    from edgesft.metrics import TASKS

    rounds = got["rounds"]
    out: dict[str, Any] = {"kind": got["kind"]}
    for mode in MODES:
        times = [r["s"] for r in rounds[mode]]
        per_token = [r["s"] / max(r["tokens"], 1) for r in rounds[mode]]
        out[mode] = {
            "s_median": statistics.median(times),
            "ms_per_answer": 1000 * statistics.median(times) / len(refs),
            "ms_per_token": 1000 * statistics.median(per_token),
            "tokens": rounds[mode][0]["tokens"],
            "metrics": dict(TASKS[task](got["answers"][mode], refs)),
        }
    pairs = list(zip(rounds["constrained"], rounds["free"], strict=True))
    out["ratio_per_answer"] = statistics.median(c["s"] / f["s"] for c, f in pairs)
    out["ratio_per_token"] = statistics.median(
        (c["s"] / max(c["tokens"], 1)) / (f["s"] / max(f["tokens"], 1)) for c, f in pairs
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder (runs/NAME) whose data declared data.answer_schema")
    ap.add_argument("--rows", type=int, default=50, help="test prompts answered per mode and round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="threads of every runtime (default: cores)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's eval.max_new_tokens")
    ap.add_argument("--artifact", action="append", default=None, help="artifact key (repeatable)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per artifact")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"constrained-{date.today()}.json"))
    args = ap.parse_args()

    importable()
    from edgesft.answer_schema import load_schema, schema_text
    from edgesft.chat import prompt_and_answer
    from edgesft.data import load_rows
    from edgesft.environment import library_versions
    from edgesft.errors import EdgesftError
    from edgesft.isolate import call
    from edgesft.machine import default_threads, machine_info
    from edgesft.runfolder import RunFolder, artifact_schema

    run_dir = Path(args.run)
    run = RunFolder(run_dir)
    if run.manifest("data") is None:
        sys.exit(f"error: {run_dir}: not a run folder (no data stage)")
    try:
        schema_file = artifact_schema(run_dir / "data")
        if schema_file is None:
            sys.exit(f"error: {run_dir}: the run's data declared no answer schema (data.answer_schema)")
        schema = schema_text(load_schema(schema_file))
        keys = args.artifact or default_artifacts(run)
        paths = {k: run.verified_path(k) for k in keys}  # sha256 against the stage manifests
    except EdgesftError as e:
        sys.exit(f"error: {e}")
    config = (run.manifest("train") or {}).get("config", {})
    eval_cfg = config.get("eval", {})
    task = eval_cfg.get("task", "json")
    max_new = args.max_new_tokens or int(eval_cfg.get("max_new_tokens", 64))
    threads = args.threads or default_threads()
    test_file = run_dir / "data" / "test.jsonl"
    test = load_rows(test_file)[: args.rows]
    refs = [prompt_and_answer(r.messages)[1] for r in test]
    print(
        f"{run_dir}: {len(test)} test prompts, {args.rounds} rounds, {threads} threads, "
        f"{max_new} new tokens at most, schema {schema_file}",
        flush=True,
    )

    results: dict[str, Any] = {}
    for key, path in paths.items():
        t0 = time.perf_counter()
        got = call(
            "bench.constrained:worker",
            {
                "artifact": str(path),
                "test_file": str(test_file),
                "rows": len(test),
                "schema": schema,
                "rounds": args.rounds,
                "threads": threads,
                "max_new_tokens": max_new,
            },
            timeout=args.timeout,
        )
        results[key] = summarize(got, refs, task)
        print(f"  {key}: measured in {time.perf_counter() - t0:.0f} s", flush=True)

    head = f"{'artifact':28s} {'free ms/ans':>11s} {'cons ms/ans':>11s} {'x/answer':>8s} {'x/token':>8s}"
    print("\n" + head + f" {'exact free':>10s} {'exact cons':>10s} {'json free':>9s} {'json cons':>9s}")
    for key, r in results.items():
        f, c = r["free"], r["constrained"]
        em = (f["metrics"].get("exact_match", 0.0), c["metrics"].get("exact_match", 0.0))
        vj = (f["metrics"].get("valid_json", float("nan")), c["metrics"].get("valid_json", float("nan")))
        print(
            f"{key:28s} {f['ms_per_answer']:11.1f} {c['ms_per_answer']:11.1f} {r['ratio_per_answer']:8.3f} "
            f"{r['ratio_per_token']:8.3f} {100 * em[0]:9.1f}% {100 * em[1]:9.1f}% {100 * vj[0]:8.1f}% "
            f"{100 * vj[1]:8.1f}%"
        )
    record = {
        "script": "bench/constrained.py",
        "date": str(date.today()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": str(run_dir.resolve()),
        "schema": str(schema_file),
        "settings": {"rows": len(test), "rounds": args.rounds, "threads": threads, "max_new_tokens": max_new},
        "machine": {**machine_info(), "platform": platform.platform()},
        "versions": library_versions(),
        "artifacts": results,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
