"""model.base resolution: tiny model, local folders, hub ids offline, bad paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesft.config import ModelConfig, TinyModelConfig
from edgesft.errors import EdgesftError
from edgesft.models import resolve_model


def test_tiny_model_is_cached_and_loads_with_stock_transformers() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = resolve_model(ModelConfig(base="tiny-llama"))
    b = resolve_model(ModelConfig(base="tiny-llama"))
    assert a == b
    model = AutoModelForCausalLM.from_pretrained(a.path)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    tok = AutoTokenizer.from_pretrained(a.path)
    assert len(tok) == model.config.vocab_size == 49152
    other = resolve_model(ModelConfig(base="tiny-llama", tiny=TinyModelConfig(layers=3)))
    assert other.path != a.path and other.identity != a.identity


def test_local_folder_identity_follows_content(tmp_path: Path) -> None:
    import shutil

    src = resolve_model(ModelConfig(base="tiny-llama")).path
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    r1 = resolve_model(ModelConfig(base=str(folder)))
    assert r1.path == folder.resolve() and r1.source.startswith("folder:")
    (folder / "generation_config.json").write_text('{"eos_token_id": 2}')
    assert resolve_model(ModelConfig(base=str(folder))).identity != r1.identity


def test_bad_model_paths_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgesftError, match="not a Hugging Face model folder"):
        resolve_model(ModelConfig(base=str(tmp_path / "empty")))
    with pytest.raises(EdgesftError, match="GGUF file not found"):
        resolve_model(ModelConfig(base=str(tmp_path / "x.gguf")))
    with pytest.raises(EdgesftError, match="not 'smollm2-135m-instruct'"):
        resolve_model(ModelConfig(base="no-such-model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EdgesftError, match="cannot fetch 'someone/nothing-here' from the hub"):
        resolve_model(ModelConfig(base="someone/nothing-here"))
