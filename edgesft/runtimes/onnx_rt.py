"""ONNX folders (genai_config.json + model.onnx): onnxruntime-genai for text, plain onnxruntime for logits.

Tokenizing, detokenizing, chat rendering and generation go through onnxruntime-genai, which is what a
device runs. Teacher-forced logits come from one plain onnxruntime forward pass over the whole sequence
from an empty KV cache: onnxruntime-genai only exposes the logits of its current step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgesft.errors import EdgesftError


class OnnxArtifact:
    """An ONNX model folder as written by :mod:`edgesft.onnx_export` or onnxruntime-genai's builder."""

    kind = "onnx"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        # onnxruntime-genai dlopens the onnxruntime package's libonnxruntime: fail here, readably, without it.
        import onnxruntime  # noqa: F401
        import onnxruntime_genai as og

        self.folder = Path(folder)
        config_path = self.folder / "genai_config.json"
        try:
            self._genai = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EdgesftError(f"{self.folder}: no readable genai_config.json ({e})") from e
        self.threads = threads
        config = og.Config(str(self.folder))
        if threads:
            options = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self._og = og
        self._model = og.Model(config)
        self._tokenizer = og.Tokenizer(self._model)
        self._session: Any = None
        self._gen: Any = None  # the generator of the decode prefill started

    # ---- text

    def tokenize(self, text: str) -> list[int]:
        """onnxruntime-genai's tokenizer: special tokens parsed, BOS as tokenizer.json's post-processor says."""
        return [int(t) for t in self._tokenizer.encode(text)]

    def special_tokens(self) -> list[str]:
        """The special added tokens of the folder's tokenizer.json, which onnxruntime-genai parses."""
        try:
            added = json.loads((self.folder / "tokenizer.json").read_text(encoding="utf-8")).get(
                "added_tokens"
            )
        except (OSError, ValueError) as e:
            raise EdgesftError(f"{self.folder}: no readable tokenizer.json ({e})") from e
        return [t["content"] for t in added or [] if t.get("special") and t.get("content")]

    def detokenize(self, ids: list[int]) -> str:
        """onnxruntime-genai's decode, which drops special tokens (like ``skip_special_tokens=True``)."""
        return str(self._tokenizer.decode(np.asarray(ids, dtype=np.int32)))

    def eos_ids(self) -> list[int]:
        eos = self._genai["model"]["eos_token_id"]
        return [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]

    def declared_eos_id(self) -> int:
        """The first ``model.eos_token_id`` of genai_config.json (where generation_config's main EOS goes)."""
        return self.eos_ids()[0]

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """onnxruntime-genai's own ``Tokenizer.apply_chat_template`` (0.13.2 has it), which renders the
        ``chat_template`` of tokenizer_config.json the way the device runtime does."""
        return str(
            self._tokenizer.apply_chat_template(
                json.dumps(messages, ensure_ascii=False), add_generation_prompt=add_generation_prompt
            )
        )

    # ---- model

    def logits(self, ids: list[int]) -> Any:
        """Logits (len(ids), vocab) from one onnxruntime pass over ``ids`` with an empty KV cache.

        Works on optimum graphs (MultiHeadAttention-style, position_ids input) and on builder graphs
        (GroupQueryAttention, no position_ids): every input is built from the session's own names and types.
        A graph that returns only the last position's logits (the builder's ``prune_lm_head``) is scored
        token by token through onnxruntime-genai's generator instead (:meth:`_logits_stepwise`).
        """
        if not ids:
            return np.zeros((0, int(self._genai["model"]["vocab_size"])), dtype=np.float32)
        session = self._ort_session()
        n = len(ids)
        decoder = self._genai["model"]["decoder"]
        feeds: dict[str, Any] = {}
        for inp in session.get_inputs():
            dtype = _NP_TYPES.get(inp.type)
            if dtype is None:
                raise EdgesftError(f"{self.folder}: input {inp.name} has unsupported type {inp.type}")
            if inp.name == "input_ids":
                feeds[inp.name] = np.asarray([ids], dtype=dtype)
            elif inp.name == "attention_mask":
                feeds[inp.name] = np.ones((1, n), dtype=dtype)
            elif inp.name == "position_ids":
                feeds[inp.name] = np.arange(n, dtype=dtype)[None, :]
            elif inp.name.startswith("past_key_values."):
                shape = inp.shape
                heads = shape[1] if isinstance(shape[1], int) else decoder["num_key_value_heads"]
                size = shape[3] if isinstance(shape[3], int) else decoder["head_size"]
                feeds[inp.name] = np.zeros((1, heads, 0, size), dtype=dtype)
            else:
                raise EdgesftError(f"{self.folder}: graph input {inp.name!r} is not one edgesft can feed")
        logits = session.run(["logits"], feeds)[0]
        if logits.shape[1] != n:
            return self._logits_stepwise(ids)
        return np.ascontiguousarray(logits[0], dtype=np.float32)

    def _logits_stepwise(self, ids: list[int]) -> Any:
        """Logits of every position through onnxruntime-genai, one token per step (KV cache reused)."""
        self.prefill(ids[:1], len(ids) - 1)
        rows = [self._last_logits()]
        for t in ids[1:]:
            self.step(t)
            rows.append(self._last_logits())
        return np.stack(rows)

    def generate(self, ids: list[int], max_new_tokens: int, schema: str | None = None) -> list[int]:
        """Greedy continuation through onnxruntime-genai; the EOS token that stopped it is included. With
        ``schema``, onnxruntime-genai's own guidance (llguidance) constrains it (``set_guidance``), in the
        compact JSON form the answers are trained in (:func:`edgesft.answer_schema.guidance_text`)."""
        og = self._og
        context = int(self._genai["model"]["context_length"])
        if len(ids) >= context:
            raise EdgesftError(f"{self.folder}: prompt of {len(ids)} tokens fills the context ({context})")
        if max_new_tokens <= 0 or not ids:
            return []
        params = og.GeneratorParams(self._model)
        params.set_search_options(
            do_sample=False, num_beams=1, max_length=min(len(ids) + max_new_tokens, context)
        )
        if schema is not None:
            from edgesft.answer_schema import guidance_text

            params.set_guidance("json_schema", guidance_text(schema))
        gen = og.Generator(self._model, params)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        new: list[int] = []
        while not gen.is_done() and len(new) < max_new_tokens:
            gen.generate_next_token()
            new.append(int(gen.get_next_tokens()[0]))
        return new

    def prefill(self, ids: list[int], max_new_tokens: int) -> None:
        """A fresh onnxruntime-genai generator, sized for ``ids`` and ``max_new_tokens`` more, fed ``ids``.

        Tokens go in with ``append_tokens`` and the caller picks each next one, rather than through the
        generator's own search (``generate_next_token``): the search would stop at an end-of-generation
        token and picks inside the call; this way a step is the forward pass alone, as in llama.cpp and
        PyTorch, and the run takes every step it is asked for (``append_tokens`` resets the search's done
        state)."""
        og = self._og
        context = int(self._genai["model"]["context_length"])
        if len(ids) + max_new_tokens > context:
            raise EdgesftError(
                f"{self.folder}: {len(ids)} prompt tokens and {max_new_tokens} more exceed the context ({context})"
            )
        params = og.GeneratorParams(self._model)
        # max_length sizes the KV cache the generator allocates: what this decode needs and one spare position
        length = min(len(ids) + max_new_tokens + 1, context)
        params.set_search_options(do_sample=False, num_beams=1, max_length=length)
        self._gen = og.Generator(self._model, params)
        self._gen.append_tokens(np.asarray(ids, dtype=np.int32))

    def next_token(self) -> int:
        return int(np.argmax(self._last_logits()))

    def step(self, token: int) -> None:
        self._gen.append_tokens(np.asarray([token], dtype=np.int32))

    def _last_logits(self) -> Any:
        """The last position's logits of the last prefill or step (the graph may return every position's)."""
        out = np.asarray(self._gen.get_output("logits"), dtype=np.float32)
        return out.reshape(-1, out.shape[-1])[-1]

    def close(self) -> None:
        self._gen = None
        self._session = None
        self._tokenizer = None
        self._model = None

    # ---- helpers

    def _ort_session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = int(self.threads)
                options.inter_op_num_threads = 1
            options.log_severity_level = 3
            onnx_file = self.folder / self._genai["model"]["decoder"].get("filename", "model.onnx")
            self._session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        return self._session


_NP_TYPES: dict[str, Any] = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}
