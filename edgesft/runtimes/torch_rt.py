"""A Hugging Face model folder (or a stage folder holding ``model/`` and ``tokenizer/``) in PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def model_and_tokenizer_dirs(path: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a model folder or of a stage folder that holds both."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        tok = path / "tokenizer" if (path / "tokenizer" / "tokenizer.json").is_file() else path / "model"
        return path / "model", tok
    return path, path


class TorchArtifact:
    """fp32 PyTorch on the CPU: the reference every exported artifact is compared with."""

    kind = "torch"

    def __init__(self, path: Path, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        model_dir, tok_dir = model_and_tokenizer_dirs(path)
        self.path = Path(path)
        self.tok = AutoTokenizer.from_pretrained(tok_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, use_safetensors=True
        )
        self.model.eval()
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen is not None and gen.eos_token_id is not None else self.tok.eos_token_id
        self._eos = sorted({int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None})
        self._past: Any = None  # the KV cache and last logits of the decode prefill started
        self._last: Any = None

    def tokenize(self, text: str) -> list[int]:
        return [int(i) for i in self.tok.encode(text)]

    def special_tokens(self) -> list[str]:
        from edgesft.chat import special_strings

        return special_strings(self.tok)

    def detokenize(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids))

    def logits(self, ids: list[int]) -> Any:
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]))
        return out.logits[0].float().numpy().astype(np.float32)

    def generate_with_margins(
        self, ids: list[int], max_new_tokens: int, schema: str | None = None
    ) -> tuple[list[int], list[float]]:
        """Greedy tokens and, per step, the gap between the top-2 logits (how close the choice was; with a
        ``schema``, of the logits the constraint left)."""
        import torch
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList()
        if schema is not None:
            from edgesft.answer_schema import logits_processor

            processors.append(logits_processor(self.tok, schema, 1, len(ids), self._eos))
        with torch.no_grad():
            out: Any = self.model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self._eos,
                pad_token_id=self.tok.pad_token_id if self.tok.pad_token_id is not None else self._eos[0],
                output_scores=True,
                return_dict_in_generate=True,
                logits_processor=processors,
            )
        new = [int(t) for t in out.sequences[0, len(ids) :]]
        margins = []
        for step in out.scores:
            top = torch.topk(step[0].float(), 2).values
            margins.append(float(top[0] - top[1]))
        return new, margins

    def generate(self, ids: list[int], max_new_tokens: int, schema: str | None = None) -> list[int]:
        return self.generate_with_margins(ids, max_new_tokens, schema)[0]

    def prefill(self, ids: list[int], max_new_tokens: int) -> None:
        import torch

        with torch.no_grad():
            # logits_to_keep=1: only the last position goes through the LM head, as llama.cpp and
            # onnxruntime-genai run a prompt (the head is ~20% of SmolLM2's prefill FLOPs).
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        self._past, self._last = out.past_key_values, out.logits[0, -1]

    def next_token(self) -> int:
        return int(self._last.argmax())

    def step(self, token: int) -> None:
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([[token]]), past_key_values=self._past, use_cache=True)
        self._past, self._last = out.past_key_values, out.logits[0, -1]

    def eos_ids(self) -> list[int]:
        return list(self._eos)

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        from edgesft.chat import render

        return render(self.tok, messages, add_generation_prompt=add_generation_prompt)

    def close(self) -> None:
        self._past = self._last = None
        del self.model
