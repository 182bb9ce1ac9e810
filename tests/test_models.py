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


def test_gguf_add_bos_flag_is_honoured(tmp_path: Path) -> None:
    """A GGUF that asks for BOS gets it from the rebuilt tokenizer; SmolLM2's (add_bos false) does not."""
    import shutil

    from gguf import GGUFReader, GGUFWriter

    from edgesft.models import embedded_gguf, tokenizer_from_gguf

    reader = GGUFReader(str(embedded_gguf()))
    writer = GGUFWriter(str(tmp_path / "bos.gguf"), arch="llama")

    def value(key: str):
        return reader.fields[key].contents()

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(value("tokenizer.ggml.pre"))
    writer.add_token_list(value("tokenizer.ggml.tokens"))
    writer.add_token_types(value("tokenizer.ggml.token_type"))
    writer.add_token_merges(value("tokenizer.ggml.merges"))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with_bos = tokenizer_from_gguf(tmp_path / "bos.gguf")
    without = tokenizer_from_gguf(embedded_gguf())
    assert with_bos.encode("hi") == [1, *without.encode("hi")]
    with_bos.save_pretrained(tmp_path / "saved")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "saved").encode("hi")[0] == 1
    shutil.rmtree(tmp_path / "saved")
