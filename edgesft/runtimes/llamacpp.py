"""A GGUF file in llama.cpp, through llama-cpp-python (import only inside a subprocess: see the package doc)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


class LlamaCppArtifact:
    """llama.cpp with all-position logits; greedy decoding is argmax over llama.cpp's own logits."""

    kind = "gguf"

    def __init__(self, path: Path, threads: int | None = None, n_ctx: int = 2048, logits_all: bool = True):
        """``logits_all=False`` keeps only the last position's logits, as an application would run it (timing
        opens it so; teacher-forced :meth:`logits` needs ``True``)."""
        from llama_cpp import Llama

        self.path = Path(path)
        n = threads or min(4, os.cpu_count() or 1)
        self.llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=n,
            n_threads_batch=n,
            logits_all=logits_all,
            verbose=False,
        )
        self._vocab = self.llm._model.vocab
        self._lltok: Any = None  # llguidance's view of the vocabulary, for constrained decoding
        self._eos = self.eos_ids()
        self._mask: Any = None

    # The Artifact protocol --------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        # add_bos=True asks llama.cpp to add what the file's add_bos_token flag says; special=True parses
        # control tokens such as <|im_start|> the way a chat prompt needs.
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)]

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8", "replace")

    def special_tokens(self) -> list[str]:
        """The text of every control token, which ``tokenize`` parses out of text."""
        import llama_cpp

        n = llama_cpp.llama_vocab_n_tokens(self._vocab)
        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        return [
            self.llm.detokenize([i], special=True).decode("utf-8", "replace")
            for i in range(n)
            if llama_cpp.llama_vocab_get_attr(self._vocab, i) & control
        ]

    def logits(self, ids: list[int]) -> Any:
        self.prefill(ids, 0)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32, copy=True)

    def generate(self, ids: list[int], max_new_tokens: int, schema: str | None = None) -> list[int]:
        """Greedy: argmax over llama.cpp's logits; with ``schema``, each step's logits are first masked to the
        tokens that keep the answer valid, by llguidance on this file's own vocabulary (the engine the
        PyTorch path and onnxruntime-genai use).

        Not llama.cpp's grammar sampler: llama-cpp-python 0.3.36's schema-to-GBNF converter drops integer
        ``minimum``/``maximum`` (a planted ``maximum: 9`` let ``3333333333333333`` through) and allows
        whitespace the answers never have, and its sampler cost 6-9 ms of CPU per step on the phone schema
        against ~0.5 ms for llguidance. The bundle still ships the GBNF for llama-cli users."""
        import llama_cpp

        matcher = self._matcher(schema) if schema is not None else None
        self.prefill(ids, max_new_tokens)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = self.next_token() if matcher is None else self._constrained_token(matcher)
            out.append(nxt)
            if llama_cpp.llama_vocab_is_eog(self._vocab, nxt):
                break
            if matcher is not None:
                matcher.consume_token(nxt)
            self.step(nxt)
        return out

    def _matcher(self, schema: str) -> Any:
        """An llguidance matcher for ``schema`` in its start state (the vocabulary is read once per file)."""
        import llguidance
        import llguidance.llamacpp

        from edgesft.answer_schema import COMPACT

        if self._lltok is None:
            self._lltok = llguidance.llamacpp.lltokenizer_from_vocab(
                self._vocab, n_vocab=self.llm.n_vocab(), eos_token=self._eos
            )
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=COMPACT)
        return llguidance.LLMatcher(self._lltok, grammar)

    def _constrained_token(self, matcher: Any) -> int:
        """The argmax among the tokens ``matcher`` allows (an end-of-generation token once the answer is
        complete or the matcher has failed)."""
        import llguidance.numpy as lln

        if matcher.is_stopped() or matcher.is_error():
            return int(self._eos[0])
        if self._mask is None:
            self._mask = lln.allocate_token_bitmask(1, self.llm.n_vocab())
        lln.fill_next_token_bitmask(matcher, self._mask, 0)
        logits = self._last_logits()
        # bit i % 32 of int32 word i // 32 is bit i % 8 of byte i // 8 (little-endian): one unpack, no copy
        # of the logits (llguidance's numpy helper expands the mask 32-fold and writes -inf into a copy)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: logits.shape[0]].astype(bool)
        return int(np.flatnonzero(allowed)[np.argmax(logits[allowed])])

    def prefill(self, ids: list[int], max_new_tokens: int) -> None:
        """``ids`` into a fresh KV cache (the context is ``n_ctx`` long whatever ``max_new_tokens`` is)."""
        self.llm.reset()
        self.llm.eval(ids)

    def next_token(self) -> int:
        return int(np.argmax(self._last_logits()))

    def step(self, token: int) -> None:
        self.llm.eval([token])

    def _last_logits(self) -> Any:
        """Logits of the last evaluated position (a view into llama.cpp's buffer: use before the next eval).
        Without ``logits_all`` llama-cpp-python stores no scores, so they are read from the context."""
        if self.llm._logits_all:
            return self.llm.scores[self.llm.n_tokens - 1]
        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.llm.n_vocab(),))

    def eos_ids(self) -> list[int]:
        import llama_cpp

        n = llama_cpp.llama_vocab_n_tokens(self._vocab)
        return [i for i in range(n) if llama_cpp.llama_vocab_is_eog(self._vocab, i)]

    def declared_eos_id(self) -> int:
        """The file's ``tokenizer.ggml.eos_token_id``."""
        return int(self.llm.token_eos())

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The file's ``tokenizer.chat_template`` rendered by llama-cpp-python's Jinja2 formatter, the path
        ``create_chat_completion`` takes."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the GGUF has no tokenizer.chat_template")
        token = self.llm._model.token_get_text
        eos = self.llm.token_eos()
        bos = self.llm.token_bos()
        fmt = Jinja2ChatFormatter(
            template=template,
            eos_token=token(eos) if eos >= 0 else "",
            bos_token=token(bos) if bos >= 0 else "",
            add_generation_prompt=add_generation_prompt,
        )
        return fmt(messages=messages).prompt  # type: ignore[arg-type]

    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata)

    def close(self) -> None:
        self.llm.close()
