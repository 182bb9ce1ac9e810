"""Artifact runtimes: one small class per runtime with the same methods, used by verification, chat and bench.

The native runtimes (llama.cpp, onnxruntime, onnxruntime-genai) can crash on a given CPU (see the llama.cpp
note in the README), so callers run them inside a subprocess (:mod:`edgesft.isolate`) and never import them
in the pipeline's own process; only the PyTorch reference (:mod:`edgesft.runtimes.torch_rt`) runs there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Artifact(Protocol):
    """What every runtime offers. Token ids are plain ``list[int]``; logits are float32 numpy arrays."""

    kind: str  # "gguf" | "onnx" | "torch"

    def tokenize(self, text: str) -> list[int]:
        """Ids as the runtime itself tokenizes ``text`` for a prompt (special tokens parsed, BOS as the
        artifact's metadata says)."""

    def detokenize(self, ids: list[int]) -> str: ...

    def logits(self, ids: list[int]) -> Any:
        """Teacher-forced logits, shape (len(ids), vocab), from an empty KV cache."""

    def generate(self, ids: list[int], max_new_tokens: int, schema: str | None = None) -> list[int]:
        """Greedy continuation of ``ids``; stops after the artifact's end-of-generation token (included).
        With ``schema`` (JSON Schema text), decoding is constrained to answers that match it, by the
        runtime's own engine (:mod:`edgesft.answer_schema`)."""

    def eos_ids(self) -> list[int]:
        """Token ids that end generation in this runtime."""

    # Stepwise greedy decoding, what timing drives (:mod:`edgesft.runtimes.timing`): each call is one piece
    # a clock can time on its own, and end-of-generation tokens are not special, so a timed run takes every
    # step it asks for.

    def prefill(self, ids: list[int], max_new_tokens: int) -> None:
        """Start a greedy decode: ``ids`` into a fresh KV cache, with room for ``max_new_tokens`` steps after
        them; the last position's logits are then ready for :meth:`next_token`."""

    def next_token(self) -> int:
        """The greedy choice (argmax) from the logits of the last :meth:`prefill` or :meth:`step`."""

    def step(self, token: int) -> None:
        """One decode step: ``token`` into the KV cache, and its logits computed."""

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The prompt the artifact's own chat template gives."""

    def special_tokens(self) -> list[str]:
        """The text of the tokens :meth:`tokenize` parses as special."""

    def close(self) -> None: ...


def encode_chat(
    art: Artifact, messages: list[dict[str, str]], add_generation_prompt: bool = True
) -> list[int]:
    """Prompt ids of a conversation in the artifact's own runtime, with its template, its tokenizer and its
    BOS rule, where message text stays text (:func:`edgesft.prompt.chat_ids`): what chat, eval and bench
    feed every runtime."""
    from edgesft.errors import EdgesftError
    from edgesft.prompt import ForgedTokenError, prompt_ids

    try:
        return prompt_ids(
            lambda m: art.render_chat(m, add_generation_prompt), art.tokenize, art.special_tokens(), messages
        )
    except ForgedTokenError as e:
        raise EdgesftError(str(e)) from None


def artifact_kind(path: Path) -> str:
    """``gguf`` for a .gguf file, ``onnx`` for a folder with genai_config.json or *.onnx, ``torch`` for a
    Hugging Face model folder."""
    from edgesft.errors import EdgesftError

    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if path.is_dir():
        if (path / "genai_config.json").is_file() or any(path.glob("*.onnx")):
            return "onnx"
        if (path / "config.json").is_file() or (path / "model" / "config.json").is_file():
            return "torch"  # a model folder, or a stage folder holding model/ and tokenizer/
    raise EdgesftError(f"{path}: not an artifact (a .gguf file, an ONNX folder or a model folder)")


def open_artifact(path: Path, threads: int | None = None, all_logits: bool = True) -> Artifact:
    """Open an artifact in this process (callers that must survive a crash use :mod:`edgesft.isolate`).

    ``all_logits=False``: llama.cpp computes only the last position's logits, as an application does (a
    prefill that also projects every position onto the vocabulary is slower); :meth:`Artifact.logits` then
    does not work for GGUF files. The other runtimes ignore it."""
    from edgesft.errors import EdgesftError
    from edgesft.io import check_gguf, check_model_folder

    kind = artifact_kind(path)
    if kind == "gguf":
        check_gguf(path, "artifact")
    elif kind == "torch":
        check_model_folder(path / "model" if (path / "model" / "config.json").is_file() else path, "artifact")
    try:
        if kind == "gguf":
            from edgesft.runtimes.llamacpp import LlamaCppArtifact

            return LlamaCppArtifact(path, threads=threads, logits_all=all_logits)
        if kind == "onnx":
            from edgesft.runtimes.onnx_rt import OnnxArtifact

            return OnnxArtifact(path, threads=threads)
        from edgesft.runtimes.torch_rt import TorchArtifact

        return TorchArtifact(path, threads=threads)
    except EdgesftError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # the runtime's own "cannot load" errors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgesftError(
            f"{path}: the {kind} runtime cannot open it ({type(e).__name__}: {reason[:300]})"
        ) from None
