"""The train stage on the tiny model: every method learns, resume after a kill, DDP on CPU, eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgesft.config import LoraSection, load_recipe
from edgesft.io import sha256_file
from edgesft.pipeline import run_pipeline
from edgesft.stages import STAGES
from tests.conftest import ROOT, write_recipe

METHOD_SETTINGS = {
    "qlora": {"learning_rate": 5e-3},
    "lora": {"learning_rate": 5e-3},
    "dora": {"learning_rate": 5e-3},
    "full": {"learning_rate": 2e-3},
    "freeze": {"learning_rate": 5e-3, "trainable_layers": 1},
    "prompt_tuning": {"learning_rate": 0.3},
    "output_layer": {"learning_rate": 5e-3},
}


def _train(tmp_path: Path, **train: object) -> dict:
    recipe = load_recipe(write_recipe(tmp_path, train=train))
    return run_pipeline(recipe, STAGES, log=lambda _m: None)["train"]


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_each_method_lowers_the_loss(tmp_path: Path, method: str) -> None:
    m = _train(tmp_path, method=method, max_steps=8, eval_steps=8, **METHOD_SETTINGS[method])
    # Validation loss on the same rows before (step 0) and after training: per-batch training loss on a
    # random model is too noisy to compare.
    curve = json.loads((tmp_path / "runs" / "t" / "train" / "loss_curve.json").read_text())["val"]
    assert curve[0]["step"] == 0
    first, last = curve[0]["loss"], curve[-1]["loss"]
    assert last < first, f"{method}: validation loss {first:.4f} -> {last:.4f}"
    metrics, info = m["metrics"], m["info"]
    assert metrics["method"] == method and metrics["steps"] == 8
    assert 0 < metrics["params_trainable"] < metrics["params_total"] or method == "full"
    assert metrics["train_tokens_per_s"] > 0 and metrics["peak_memory_mb"] > 0
    assert "exact_match" in metrics["test"] and metrics["val_perplexity"] > 1
    out = tmp_path / "runs" / "t" / "train"
    if info["kind"] == "adapter":
        assert (out / "adapter" / "adapter_config.json").is_file()
    else:
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(out / "model")


def test_early_stopping_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    # A threshold no improvement reaches: every evaluation after the first counts against the patience, so
    # the loop stops at the second checkpoint whatever the losses of the random model do.
    m = _train(
        tmp_path, max_steps=30, eval_steps=2, early_stopping_patience=1, early_stopping_threshold=100.0
    )["metrics"]
    assert m["early_stopped"] and m["steps"] == 4
    assert m["best_step"] in (2, 4) and m["best_val_loss"] is not None


def _cli(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgesft.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_resume_after_kill_reaches_the_same_weights(tmp_path: Path) -> None:
    train = {"max_steps": 12, "eval_steps": 4, "save_steps": 4, "logging_steps": 1}
    straight = write_recipe(tmp_path / "a", train=train)
    assert _cli(["run", str(straight)]).returncode == 0
    resumed = write_recipe(tmp_path / "b", train=train)
    killed = _cli(["run", str(resumed)], env={"EDGESFT_FAULT_AFTER_STEP": "8"})
    assert killed.returncode == 137
    run_dir = tmp_path / "b" / "runs" / "t"
    assert not (run_dir / "train" / "manifest.json").exists()
    assert (run_dir / ".work" / "train" / "checkpoints" / "checkpoint-8").is_dir()
    again = _cli(["run", str(resumed)])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[data] cache hit" in again.stdout
    a = json.loads((tmp_path / "a" / "runs" / "t" / "train" / "manifest.json").read_text())["metrics"]
    b = json.loads((run_dir / "train" / "manifest.json").read_text())["metrics"]
    assert b["resumed_from_step"] == 8 and a["resumed_from_step"] is None
    for name in ("adapter/adapter_model.safetensors", "loss_curve.json"):
        assert sha256_file(tmp_path / "a" / "runs" / "t" / "train" / name) == sha256_file(
            run_dir / "train" / name
        )
    assert b["val_loss"] == a["val_loss"]
    assert not (run_dir / ".work" / "train").exists()  # checkpoints cleaned after success


# Loops that a resume once got wrong, on a tiny random model (4 blocks, 256 tokens) with dropout on, so that
# the RNG state matters; 24 examples make short epochs. Kill points: the first checkpoint (the first
# evaluation after a resume), one in the middle of the second epoch (the data order of a later epoch), the
# last checkpoint (one step too many), one where early stopping has counted an evaluation without
# improvement, and the one where early stopping ends the loop. A threshold no evaluation can beat makes
# early stopping count every evaluation after the first, whatever the losses: the loop stops at step 9.
RESUME_CASES: dict[str, dict[str, Any]] = {
    "lora_epochs": {
        "kills": [3, 9, 15],
        "loop": {"lr_scheduler": "constant", "batch_size": 2, "grad_accum": 2, "max_steps": 15},
    },
    "distill_early_stopping": {
        "kills": [6, 9],
        "loop": {
            "batch_size": 4,
            "max_steps": 30,
            "early_stopping_patience": 2,
            "early_stopping_threshold": 100.0,
        },
    },
}


def _resume_case(case: str, work: Path) -> dict[str, Any]:
    """Run (or resume, when ``work`` holds checkpoints) one of :data:`RESUME_CASES`; the weights' sha256,
    the loss curve and the loop's figures."""
    import random
    from types import SimpleNamespace

    import torch
    from peft import get_peft_model

    from edgesft.training import Distillation, LoopSettings, fit, lora_config, loss_curve, weights_sha256
    from tests.conftest import tiny_model

    def examples(n: int, seed: int) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            k = rng.randint(6, 30)
            ids = [rng.randint(3, 255) for _ in range(k)]
            out.append({"input_ids": ids, "labels": [-100] * (k // 3) + ids[k // 3 :], "length": k})
        return out

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order in every process
    try:
        model = tiny_model("llama", seed=0, attention_dropout=0.1)
        distill = None
        if case == "lora_epochs":
            torch.manual_seed(0)
            model = get_peft_model(model, lora_config(LoraSection(r=4, alpha=8, dropout=0.1), False, []))
        else:
            distill = Distillation(tiny_model("llama", seed=1).requires_grad_(False), 2.0, 0.5)
        loop = {
            "learning_rate": 5e-3,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.1,
            "grad_accum": 1,
            "epochs": 1.0,
            "eval_steps": 3,
            "save_steps": None,
            "early_stopping_patience": None,
            "early_stopping_threshold": 0.0,
            "logging_steps": 1,
            "optimizer": "adamw_torch",
            "weight_decay": 0.01,
            "max_grad_norm": 1.0,
            "dtype": "float32",
            "gradient_checkpointing": False,
            "tensorboard": False,
            **RESUME_CASES[case]["loop"],
        }
        tok = SimpleNamespace(pad_token_id=0)
        fitted = fit(
            LoopSettings(**loop), model, tok, examples(24, 1), examples(8, 2), work, work, 3, True, distill
        )
        return {"sha256": weights_sha256(fitted.model), "curve": loss_curve(fitted.state), **fitted.metrics}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_killed_at_a_checkpoint_resumes_to_the_same_weights(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgesft.training import FAULT_ENV

    monkeypatch.delenv(FAULT_ENV, raising=False)
    straight = _resume_case(case, tmp_path / "straight")
    assert straight["resumed_from_step"] is None
    if case == "distill_early_stopping":
        assert straight["early_stopped"] and straight["steps"] == 9
    for step in RESUME_CASES[case]["kills"]:
        work = tmp_path / f"killed-{step}"
        code = f"from pathlib import Path; from tests.test_train import _resume_case; _resume_case({case!r}, Path({str(work)!r}))"
        killed = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, FAULT_ENV: str(step)},
            timeout=300,
        )
        assert killed.returncode == 137, killed.stderr[-2000:]
        assert max(int(d.name.split("-")[1]) for d in (work / "checkpoints").glob("checkpoint-*")) == step
        resumed = _resume_case(case, work)
        assert resumed["resumed_from_step"] == step
        assert resumed["sha256"] == straight["sha256"], f"killed after step {step}: other weights"
        assert resumed["curve"] == straight["curve"], f"killed after step {step}: another loss curve"
        assert resumed["steps"] == straight["steps"] and resumed["best_step"] == straight["best_step"]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_agree(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, train={"max_steps": 4, "eval_steps": 4, "threads": 1})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "edgesft.cli",
            "run",
            str(recipe),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "runs" / "t" / "train" / "manifest.json").read_text())["metrics"]
    assert m["world_size"] == 2
    sums = m["rank_param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]


def test_eval_command_on_a_stage_and_a_model(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    assert _cli(["run", str(recipe)]).returncode == 0
    data = ROOT / "recipes" / "data" / "ci_smoke" / "test.jsonl"
    out = _cli(
        ["eval", str(tmp_path / "runs" / "t" / "train"), "--data", str(data), "--max-rows", "3", "--json"]
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["metrics"]["n"] == 3 and len(result["samples"]) == 3
    for key in ("exact_match", "intent_accuracy", "slot_f1", "valid_json", "perplexity"):
        assert key in result["metrics"]
    plain = _cli(["eval", "tiny-llama", "--data", str(data), "--max-rows", "2"])
    assert plain.returncode == 0 and "exact_match" in plain.stdout
    bad = _cli(["eval", "tiny-llama", "--data", str(tmp_path / "none.jsonl")])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--data: file not found" in bad.stderr


def test_extra_special_tokens_and_packing(tmp_path: Path) -> None:
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            model={"base": "tiny-llama", "extra_special_tokens": ["<|tool|>"]},
            data={"packing": True},
        )
    )
    m = run_pipeline(recipe, STAGES, log=lambda _m: None)["train"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "runs" / "t" / "train" / "tokenizer")
    assert tok.convert_tokens_to_ids("<|tool|>") == 49152
    assert m["metrics"]["steps"] == 6
    cfg = json.loads((tmp_path / "runs" / "t" / "train" / "adapter" / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"] == {"embed_tokens": [49152]}


@pytest.mark.slow
def test_ci_smoke_recipe_end_to_end_then_all_cache_hits(tmp_path: Path) -> None:
    first = _cli(["run", "recipes/ci-smoke.yaml", "--root", str(tmp_path)])
    assert first.returncode == 0, first.stderr[-2000:]
    table = first.stdout[first.stdout.index("stage  ") :].split("\nreport: ")[0].splitlines()
    assert "exact" in table[0] and [row.split()[0] for row in table[1:]] == [
        "base",
        "train",
        "merge",
        "prune",
    ]
    manifest = json.loads((tmp_path / "ci-smoke" / "train" / "manifest.json").read_text())
    assert manifest["metrics"]["method"] == "qlora" and manifest["status"] == "complete"
    merge = json.loads((tmp_path / "ci-smoke" / "merge" / "manifest.json").read_text())
    assert set(merge["metrics"]["qlora_val_loss"]) == {"original", "nf4"}
    prune = json.loads((tmp_path / "ci-smoke" / "prune" / "manifest.json").read_text())
    assert prune["metrics"]["removed_fraction"] >= 0.3 and prune["metrics"]["heal"]["steps"] > 0
    verify = json.loads((tmp_path / "ci-smoke" / "verify" / "verify.json").read_text())["artifacts"]
    assert set(verify) == {"gguf/ci-smoke-Q4_K_M.gguf", "onnx/int4"}
    assert all(r["status"] == "passed" for r in verify.values())
    assert (tmp_path / "ci-smoke" / "export" / "Modelfile").is_file()
    bench = json.loads((tmp_path / "ci-smoke" / "bench" / "bench.json").read_text())
    assert set(bench["artifacts"]) == {
        "torch/merge",
        "torch/prune",
        "gguf/ci-smoke-Q4_K_M.gguf",
        "onnx/int4",
    }
    for key, rec in bench["artifacts"].items():
        assert rec["status"] == "ok", (key, rec.get("error"))
        assert rec["latency"]["decode"]["0"]["tok_s"]["median"] > 0
        assert rec["latency"]["prefill"]["512"]["tok_s"]["n"] == 3
        assert rec["bandwidth"]["bound"]["0"]["fraction"] > 0
        assert rec["quality"]["test"]["n"] == 16 and rec["quality"]["val_perplexity"] > 1
    assert bench["artifacts"]["torch/merge"]["quality"]["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert "report: " in first.stdout
    report = json.loads((tmp_path / "ci-smoke" / "report" / "report.json").read_text())
    assert report["run"] == "ci-smoke" and report["pareto"]
    assert (tmp_path / "ci-smoke" / "report" / "report.html").stat().st_size > 10_000
    second = _cli(["run", "recipes/ci-smoke.yaml", "--root", str(tmp_path)])
    assert second.returncode == 0
    assert second.stdout.count("cache hit") == 9 and "running" not in second.stdout


def test_qlora_layers_keep_their_gradient_after_a_validation_pass(tmp_path: Path) -> None:
    """bitsandbytes repacks a 4-bit layer for an inference kernel on its first eval-mode forward (on AVX512-BF16
    CPUs); that kernel has no backward and adds biases in place. After a validation pass, gradients must
    still flow through every frozen 4-bit layer, biases included."""
    import torch
    from transformers import AutoTokenizer

    from edgesft.config import TrainConfig
    from edgesft.models import ModelConfig, copy_tokenizer_files, resolve_model
    from edgesft.stages.train import build_qlora
    from tests.conftest import tiny_model

    tok_dir = resolve_model(ModelConfig(base="tiny-llama")).path
    tok = AutoTokenizer.from_pretrained(tok_dir)
    base = tmp_path / "base"
    tiny_model("llama", vocab_size=len(tok), attention_bias=True).save_pretrained(base)
    copy_tokenizer_files(tok_dir, base)
    cfg = TrainConfig(method="qlora", lora={"r": 8, "alpha": 16, "dropout": 0.0})
    model, _ = build_qlora(base, tok, cfg, "float32")
    ids = torch.tensor([[1, 5, 9, 14, 3]])

    def lora_b_grads() -> list[Any]:
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for n, p in model.named_parameters() if "lora_B" in n]

    model.train()
    before = lora_b_grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # the validation pass
    model.train()
    after = lora_b_grads()
    assert before and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before, after, strict=True))
