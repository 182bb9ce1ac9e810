"""Stage ``export``: the deployment bundle a deployer copies to the device.

Hard links (copies where links fail) of every GGUF and ONNX artifact, an Ollama ``Modelfile`` for the
primary GGUF, a ``README.md`` with the exact commands for llama.cpp, llama-cpp-python, Ollama and
onnxruntime-genai plus Android/iOS notes, and the runner scripts from ``export/templates``. When the data
declared an answer schema: its copy ``answer_schema.json`` and, beside a GGUF, ``answer.gbnf`` (the schema as
a llama.cpp grammar); the runners constrain answers to them by default. The stage's
``manifest.json`` is the bundle manifest: sha256 and size of every file (``outputs``) and, per artifact, its
precision, size, verification status and parity figures (``metrics.artifacts``).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgesft import __version__
from edgesft import prompt as prompt_module
from edgesft.answer_schema import GRAMMAR_FILE, SCHEMA_FILE, schema_text
from edgesft.bundle import TEMPLATES, check_modelfile, fill, modelfile
from edgesft.config import Recipe
from edgesft.errors import EdgesftError
from edgesft.io import atomic_write_text, link_or_copy, link_tree
from edgesft.isolate import call
from edgesft.models import default_context_length, generation_eos_ids, head_dim
from edgesft.pipeline import StageInputs, StageResult, last_model_stage
from edgesft.runfolder import (
    EXPORT_STAGES,
    ArtifactRecord,
    RunFolder,
    choose_primary,
    find_named,
    pareto_primary,
)


def skip(recipe: Recipe, manifests: dict[str, dict[str, Any]]) -> str | None:
    return None if any(s in manifests for s in EXPORT_STAGES) else "no gguf or onnx stage ran"


def _human(n: float | None) -> str:
    return f"{n / 2**20:.1f} MiB" if n is not None else "-"


def run(recipe: Recipe, inputs: StageInputs, out_dir: Path) -> StageResult:
    from transformers import AutoTokenizer

    found = RunFolder(inputs.run_dir, inputs.upstream).artifacts().values()
    made = [r for r in found if r.kind in EXPORT_STAGES and r.status == "ok"]
    if not made:
        raise EdgesftError("stage export: no artifact was produced (see the gguf and onnx stages)")
    for r in made:
        (link_tree if r.path.is_dir() else link_or_copy)(r.path, out_dir / str(r.file))
    entries = [_entry(r) for r in made]
    source = made[-1].source_stage or last_model_stage(inputs.upstream)
    primary, choice = _primary(recipe, made)
    if choice.get("reason"):
        print(f"  primary: {choice['reason']}", flush=True)
    src_dir = inputs.stage_dir(source)
    tok = AutoTokenizer.from_pretrained(src_dir / inputs.info(source)["model"])
    config = json.loads((src_dir / inputs.info(source)["model"] / "config.json").read_text())
    ctx = default_context_length(config)
    ggufs = [e for e in entries if e["format"] == "gguf"]
    onnxs = [e for e in entries if e["format"] == "onnx"]
    gguf_name = (primary.file if primary.kind == "gguf" else ggufs[0]["file"]) if ggufs else None
    if gguf_name:
        stop_ids = sorted(
            set([tok.eos_token_id] + generation_eos_ids(src_dir / inputs.info(source)["model"]))
        )
        text = modelfile(
            gguf_name, tok, stop_ids, ctx, f"Ollama Modelfile made by edgesft {__version__} for {recipe.name}"
        )
        problems = check_modelfile(text, out_dir)
        if problems:
            raise EdgesftError(f"stage export: the generated Modelfile is invalid: {'; '.join(problems)}")
        atomic_write_text(out_dir / "Modelfile", text)
        shutil.copy2(TEMPLATES / "run_gguf.py", out_dir / "run_gguf.py")
    if onnxs:
        shutil.copy2(TEMPLATES / "run_onnx.py", out_dir / "run_onnx.py")
    if gguf_name or onnxs:
        # The runners build prompts as edgesft does (message text never forges a control token) with the
        # same standard-library module, shipped beside them.
        shutil.copy2(Path(prompt_module.__file__), out_dir / "edgesft_prompt.py")
    schema_notes = _ship_schema(inputs.stage_dir("data") / SCHEMA_FILE, out_dir, gguf_name, recipe.name)
    n_kv = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    kv_per_token = 2 * int(config["num_hidden_layers"]) * n_kv * head_dim(config) * 2
    quality = inputs.upstream[source].get("metrics", {})
    readme = fill(
        "README.md.tmpl",
        name=recipe.name or "model",
        version=__version__,
        source_stage=source,
        created=datetime.now(UTC).strftime("%Y-%m-%d"),
        artifact_rows="\n".join(_row(e) for e in entries),
        quality=_quality_text(quality),
        gguf=gguf_name or "(no GGUF in this bundle)",
        onnx=onnxs[0]["file"] if onnxs else "(no ONNX in this bundle)",
        context_length=ctx,
        kv_bytes_per_token=kv_per_token,
        kv_mib=f"{kv_per_token * ctx / 2**20:.0f}",
        schema_notes=schema_notes,
    )
    atomic_write_text(out_dir / "README.md", readme)
    return StageResult(
        metrics={
            "source_stage": source,
            "primary": primary.file,
            "primary_choice": choice,
            "artifacts": entries,
        },
        info={"primary": primary.file, "source_stage": source},
    )


def _ship_schema(source: Path, out_dir: Path, gguf_name: str | None, name: str | None) -> str:
    """Copy the data's answer schema into the bundle and, with a GGUF, write its llama.cpp grammar; return
    the README's section on them ("" without a schema)."""
    if not source.is_file():
        return ""
    shutil.copy2(source, out_dir / SCHEMA_FILE)
    if gguf_name:
        text = schema_text(json.loads(source.read_text(encoding="utf-8")))
        try:  # llama-cpp-python's converter; it imports llama.cpp, which runs in a child process only
            grammar = call("edgesft.answer_schema:gbnf", {"schema": text}, timeout=300)
        except EdgesftError as e:
            raise EdgesftError(
                f"stage export: cannot write {SCHEMA_FILE} as a llama.cpp grammar: {e}"
            ) from None
        atomic_write_text(out_dir / GRAMMAR_FILE, str(grammar) + "\n")
    notes = fill("schema.md.tmpl")
    if gguf_name:
        notes += fill("schema_gguf.md.tmpl", gguf=gguf_name, name=name or "model")
    return notes + "\n"


def _entry(r: ArtifactRecord) -> dict[str, Any]:
    """The bundle manifest's record of one artifact."""
    return {
        "file": r.file,
        "format": r.kind,
        "precision": r.precision,
        "exporter": r.exporter,
        "size_bytes": r.size_bytes,
        "sha256": r.sha256,
        "verification": r.verified or "not verified",
        "failed_checks": list(r.failed_checks),
        "top1_agreement": r.top1_agreement,
        "kl_mean": r.kl_mean,
        "fallback_tensors": r.fallback_tensors,
    }


def _primary(recipe: Recipe, made: list[ArtifactRecord]) -> tuple[ArtifactRecord, dict[str, Any]]:
    """``export.primary`` (a file name or a precision), else with ``export.max_size_mib`` the Pareto
    choice (:func:`pareto_primary`), else the one rule of :func:`choose_primary`; with how it was chosen."""
    want, budget = recipe.export.primary, recipe.export.max_size_mib
    names = ", ".join(str(r.file) for r in made)
    if want is not None:
        chosen = find_named(made, want)
        if chosen is None:
            raise EdgesftError(f"export.primary: {want!r} is not among the artifacts ({names})")
        return chosen, {"rule": "export.primary"}
    if budget is not None:
        pick = pareto_primary(made, int(budget * 2**20))
        if pick is None:
            sizes = ", ".join(
                f"{r.file} {_human(r.size_bytes)} ({r.verified or 'not verified'})" for r in made
            )
            raise EdgesftError(
                f"export.max_size_mib: no artifact that passed verify is within {budget:g} MiB ({sizes})"
            )
        front = [{"file": r.file, "size_bytes": r.size_bytes, "kl_mean": r.kl_mean} for r in pick.front]
        return pick.chosen, {"rule": "pareto", "reason": pick.reason, "front": front}
    chosen = choose_primary(made)
    if chosen is None:
        raise EdgesftError(f"stage export: no artifact to lead with among {names}")
    return chosen, {"rule": "first quantized GGUF"}


def _row(e: dict[str, Any]) -> str:
    runtime = "llama.cpp" if e["format"] == "gguf" else "onnxruntime-genai"
    top1 = f"{e['top1_agreement']:.3f}" if e["top1_agreement"] is not None else "-"
    kl = f"{e['kl_mean']:.4f}" if e["kl_mean"] is not None else "-"
    return f"| `{e['file']}` | {runtime} | {e['precision']} | {_human(e['size_bytes'])} | {e['verification']} | {top1} | {kl} |"


def _quality_text(m: dict[str, Any]) -> str:
    test = m.get("test", {}) if isinstance(m.get("test"), dict) else {}
    parts = []
    for key, label in (
        ("exact_match", "exact-match"),
        ("intent_accuracy", "intent"),
        ("valid_json", "valid JSON"),
    ):
        if key in test:
            parts.append(f"{label} {100 * test[key]:.1f}%")
    if "slot_f1" in test:
        parts.append(f"slot F1 {test['slot_f1']:.3f}")
    if "val_perplexity" in m:
        parts.append(f"validation perplexity {m['val_perplexity']:.3f}")
    return ", ".join(parts) or "not measured"
