"""Recipe loading: every kind of bad input gives a one-line error with its path, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesft.cli import main
from edgesft.config import Recipe, load_recipe, section_fields
from edgesft.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["phone", "laptop", "ci-smoke"])
def test_shipped_recipes_validate_and_open_with_a_comment_block(name: str) -> None:
    path = ROOT / "recipes" / f"{name}.yaml"
    recipe = load_recipe(path)
    assert recipe.name == name
    head = path.read_text().splitlines()[:3]
    assert all(line.startswith("#") for line in head)
    assert "edgesft run" in path.read_text().split("\n\n")[0]


def _errors(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(RecipeError) as exc:
        load_recipe(path, overrides)
    return exc.value.problems


def test_missing_file(tmp_path: Path) -> None:
    (err,) = _errors(tmp_path / "nope.yaml")
    assert "nope.yaml: recipe file not found" in err


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ntrain:\n  method: lora\n   bad: [1, 2\n")
    (err,) = _errors(p)
    assert err.startswith(f"{p}:4: YAML syntax error") or err.startswith(f"{p}:5: YAML syntax error")


def test_unknown_key_did_you_mean_with_line(tmp_path: Path, recipe_file: Path) -> None:
    text = recipe_file.read_text().replace("learning_rate:", "learnig_rate:")
    recipe_file.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "learnig_rate" in t)
    (err,) = _errors(recipe_file)
    assert f"{recipe_file}:{line}: train.learnig_rate: unknown key 'learnig_rate'" in err
    assert "did you mean 'learning_rate'?" in err


def test_wrong_type_and_out_of_range_reported_together(recipe_file: Path) -> None:
    text = (
        recipe_file.read_text()
        .replace("batch_size: 8", "batch_size: eight")
        .replace("learning_rate: 0.003", "learning_rate: -1")
    )
    recipe_file.write_text(text)
    errs = _errors(recipe_file)
    assert len(errs) == 2
    assert any("train.batch_size: Input should be a valid integer" in e and "'eight'" in e for e in errs)
    assert any("train.learning_rate: Input should be greater than 0" in e for e in errs)


def test_bad_enum_value(recipe_file: Path) -> None:
    (err,) = _errors(recipe_file, ["train.method=lorra"])
    assert err.startswith("override: train.method: must be")
    assert "'qlora'" in err


def test_stage_combination_that_cannot_work(recipe_file: Path) -> None:
    errs = _errors(
        recipe_file, ["data.val_fraction=0", "train.early_stopping_patience=2", "eval.max_new_tokens=500"]
    )
    assert any("train.early_stopping_patience: early stopping needs a validation split" in e for e in errs)
    assert any("eval.max_new_tokens: must be below data.max_length" in e for e in errs)


def test_loftq_needs_a_4bit_base(recipe_file: Path) -> None:
    errs = _errors(recipe_file, ["train.method=lora", "train.lora.init=loftq"])
    assert any(
        e.startswith("override: train.lora.init: loftq corrects a 4-bit base; train.method 'lora'")
        for e in errs
    )
    errs = _errors(recipe_file, ["prune.heal.lora.init=loftq"])  # healing adapts a float model
    assert any(e.startswith("override: prune.heal.lora.init: unknown key 'init'") for e in errs)
    assert (
        load_recipe(recipe_file, ["train.method=qlora", "train.lora.init=loftq"]).train.lora.init == "loftq"
    )


def test_a_loftq_adapter_merges_into_the_nf4_base_only(recipe_file: Path) -> None:
    errs = _errors(recipe_file, ["train.method=qlora", "train.lora.init=loftq", "merge.qlora_base=original"])
    assert any(
        e.startswith("override: merge.qlora_base: a loftq adapter corrects the nf4 base") for e in errs
    )
    errs = _errors(recipe_file, ["train.method=qlora", "train.lora.init=loftq", "merge.train_weight=0.5"])
    assert any(e.startswith("override: merge.train_weight: a loftq adapter carries") for e in errs)


def test_hidden_size_alone_is_something_to_prune(recipe_file: Path) -> None:
    overrides = ["prune.enabled=true", "prune.width.mlp=false"]
    assert any("nothing to prune" in e for e in _errors(recipe_file, overrides))
    recipe = load_recipe(recipe_file, [*overrides, "prune.width.hidden_size=48"])
    assert recipe.prune.width.hidden_size == 48


def test_missing_data_file_named(recipe_file: Path) -> None:
    (err,) = _errors(recipe_file, ["data.test=missing.jsonl"])
    assert "data.test: file not found" in err and "missing.jsonl" in err


def test_overrides_apply_with_yaml_types(recipe_file: Path) -> None:
    r = load_recipe(
        recipe_file,
        ["train.max_steps=9", "train.lora.r=4", "data.packing=true", "model.system_prompt=Be brief."],
    )
    assert (r.train.max_steps, r.train.lora.r, r.data.packing) == (9, 4, True)
    assert r.model.system_prompt == "Be brief."


def test_unknown_override_key(recipe_file: Path) -> None:
    (err,) = _errors(recipe_file, ["train.lr=0.1"])
    assert err.startswith("override: train.lr: unknown key 'lr'")


def test_malformed_override(recipe_file: Path) -> None:
    (err,) = _errors(recipe_file, ["train.max_steps"])
    assert "expected key.path=value" in err


def test_cli_exit_code_2_and_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  methd: lora\n  batch_size: 0\n")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines)
    assert any("train.methd: unknown key 'methd' (did you mean 'method'?)" in line for line in lines)
    assert any("train.batch_size" in line for line in lines)


def test_every_field_has_a_docstring() -> None:
    rows = section_fields(Recipe)
    assert len(rows) > 50
    missing = [name for name, _, _, desc in rows if not desc]
    assert not missing


def test_recipe_reference_doc_is_what_the_config_classes_generate() -> None:
    from edgesft.docs import REGENERATE, recipe_reference_page

    committed = ROOT / "docs" / "recipe-reference.md"
    assert committed.is_file(), f"docs/recipe-reference.md is missing; run `{REGENERATE}`"
    assert committed.read_text(encoding="utf-8") == recipe_reference_page(), (
        f"docs/recipe-reference.md is stale (a recipe field changed); run `{REGENERATE}` and commit it"
    )
    for name, *_ in section_fields(Recipe):  # the generator itself covers every field
        assert f"| `{name}` |" in committed.read_text(encoding="utf-8"), name
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/recipe-reference.md" in readme  # linked from the guide


def _cli_commands() -> list[str]:
    """Subcommand names as argparse registers them (edgesft.cli.build_parser), not a hand-kept list."""
    import argparse

    from edgesft.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_readme_documents_every_stage_and_cli_command() -> None:
    import re

    from edgesft.stages import STAGES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for stage in STAGES:
        assert f"`{stage}`" in readme, f"README lacks stage {stage}"
    commands = _cli_commands()
    assert {"run", "validate", "check", "recipe-reference"} <= set(commands)
    for cmd in commands:
        assert f"edgesft {cmd}" in readme, f"README does not document `edgesft {cmd}`"
    # The README's CLI table lists exactly the parser's commands: none missing, none removed from the code.
    section = readme.split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `edgesft ([a-z-]+)", section, flags=re.M)
    assert sorted(documented) == sorted(commands)


def test_overrides_after_options_are_accepted(recipe_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(recipe_file), "train.max_steps=3"]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["run", str(recipe_file), "--until", "data", "--bogus"])
    assert exc.value.code == 2
    assert main(["validate", str(recipe_file), "train.lr=1"]) == 2
    assert "train.lr: unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_removed_optimum_exporter_is_one_line_with_the_replacement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(
        "export:\n  onnx:\n    variants:\n      - name: int4\n        exporter: optimum\n        precision: int4\n"
    )
    assert main([command, str(p), f"run_root={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {p}:5: export.onnx.variants.0.exporter: exporter 'optimum' was removed")
    assert "use exporter: genai_builder" in line
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_doctor_names_every_library_cuda_and_the_llama_cpp_build(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edgesft.environment import LIBRARIES

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for lib in ("torch", "transformers", "peft", "bitsandbytes", "onnxruntime", "onnxruntime-genai"):
        assert lib in LIBRARIES and report["versions"][lib]
    assert report["versions"]["llama-cpp-python"] and report["versions"]["gguf"]
    assert isinstance(report["cuda"]["available"], bool)
    assert "AVX" in report["llama_cpp"]["system_info"] or "CPU" in report["llama_cpp"]["system_info"]
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "transformers" in text and "CUDA:" in text and "llama.cpp build:" in text


def test_readme_lists_the_supported_architectures() -> None:
    from edgesft.docs import architectures_table

    assert architectures_table() in (ROOT / "README.md").read_text()


def test_validate_refuses_stages_that_cannot_take_the_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from edgesft.prune import SUPPORTED_MODEL_TYPES

    def model_folder(model_type: str) -> Path:
        folder = tmp_path / f"{model_type}-model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        return folder

    # An encoder: no stage takes it, and each enabled one says so on its own line.
    model = model_folder("bert")
    recipe = ROOT / "recipes" / "ci-smoke.yaml"
    assert main(["validate", str(recipe), f"model.base={model}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "prune.enabled: prune: architecture 'bert' is not supported (supported: " in lines[0]
    assert "); set prune.enabled: false" in lines[0]
    supported = lines[0].split("(supported: ")[1].split(")")[0].split(", ")
    assert sorted(supported) == sorted(SUPPORTED_MODEL_TYPES)
    assert "export.gguf.enabled: gguf: architecture 'bert'" in lines[1]
    assert "export.onnx.enabled: onnx: architecture 'bert'" in lines[2]
    ok = [
        f"model.base={model}",
        "prune.enabled=false",
        "export.gguf.enabled=false",
        "export.onnx.enabled=false",
    ]
    assert main(["validate", str(recipe), *ok]) == 0
    # Prune and ONNX take qwen3.
    qwen3 = [f"model.base={model_folder('qwen3')}", "export.gguf.enabled=false"]
    assert main(["validate", str(recipe), *qwen3]) == 0
    # ONNX: a SentencePiece tokenizer that puts a BOS before every text is refused (onnxruntime-genai drops it)
    mistral = model_folder("mistral")
    (mistral / "tokenizer.model").write_bytes(b"")
    (mistral / "tokenizer.json").write_text(
        json.dumps(
            {"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}]}}
        )
    )
    spm = [f"model.base={mistral}", "export.gguf.enabled=false"]
    assert main(["validate", str(recipe), *spm]) == 2
    assert "onnxruntime-genai 0.18's tokenizer drops the BOS" in capsys.readouterr().err


def test_per_quant_output_types_name_quants_they_apply_to() -> None:
    from edgesft.config import GgufConfig

    g = GgufConfig.model_validate({"quants": ["Q4_0", "Q4_K_M"], "output_types": {"Q4_0": "Q4_0"}})
    assert (g.output_type_of("Q4_0"), g.output_type_of("Q4_K_M")) == ("Q4_0", None)
    g = GgufConfig.model_validate(
        {"quants": ["Q4_0", "Q8_0"], "output_type": "Q6_K", "output_types": {"Q4_0": "Q4_0"}}
    )
    assert (g.output_type_of("Q4_0"), g.output_type_of("Q8_0")) == ("Q4_0", "Q6_K")
    with pytest.raises(ValueError, match="output_types: Q4_0 not in quants"):
        GgufConfig.model_validate({"quants": ["Q4_K_M"], "output_types": {"Q4_0": "Q4_0"}})
