"""The answer's JSON Schema (``data.answer_schema``): reading and checking it, checking data rows against it,
and constraining greedy decoding to it.

The data stage checks the schema (draft 2020-12, with jsonschema) and that llguidance can compile it, checks
every row's final answer against it, and writes a copy (:data:`SCHEMA_FILE`) into its outputs, where every
later stage finds it. Constrained decoding is one engine per runtime, each given the same schema text:

- PyTorch (evaluation, bench, chat): llguidance, one matcher per row of a batched greedy ``generate``; each
  step's logits are masked to the tokens that keep the answer valid before the argmax, and once the answer
  is complete only end-of-generation can follow (:func:`logits_processor`).
- onnxruntime-genai: its own llguidance (``GeneratorParams.set_guidance("json_schema", ...)``).
- llama.cpp: llguidance on the GGUF's own vocabulary, masking llama.cpp's logits each step
  (:mod:`edgesft.runtimes.llamacpp`: llama-cpp-python's GBNF converter drops integer bounds, and its
  grammar sampler is ~15x slower per step). The export bundle ships the GBNF too (:data:`GRAMMAR_FILE`),
  for llama-cli and llama-server users.

llguidance allows whitespace between JSON tokens unless told otherwise; :data:`COMPACT` asks for the compact
form answers are trained in (a schema's own ``x-guidance`` options take precedence).
"""

from __future__ import annotations

import json
import weakref
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesft.errors import DataError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

SCHEMA_FILE = "answer_schema.json"
"""The schema's copy in the data stage's outputs and in the export bundle."""
GRAMMAR_FILE = "answer.gbnf"
"""The bundle's llama.cpp grammar of the schema."""
FIELD = "data.answer_schema"
COMPACT: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
"""llguidance's JSON options: no whitespace between tokens, as ``json.dumps(separators=(",", ":"))``."""


def load_schema(path: Path, field: str = FIELD) -> dict[str, Any]:
    """A JSON Schema file, checked against the draft 2020-12 meta-schema.

    Raises:
        DataError: one line naming the file (and ``field``): unreadable, not JSON, not an object, or not a
            valid schema.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{field}: file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{field}: {path} is a folder, not a JSON Schema file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {field}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise DataError(f"{path}: {field}: cannot read ({e.strerror or e})") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: {field}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: {field}: invalid JSON (nested too deeply)") from None
    if not isinstance(schema, dict):
        raise DataError(f"{path}: {field}: a JSON Schema must be an object, got {type(schema).__name__}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        at = "/".join(str(p) for p in e.absolute_path)
        raise DataError(
            f"{path}: {field}: not a valid JSON Schema (draft 2020-12){f' at {at}' if at else ''}: "
            f"{_short(e.message)}"
        ) from None
    return schema


def check_compiles(schema: dict[str, Any], tok: Any, where: str) -> None:
    """That llguidance can constrain decoding to ``schema`` with the tokenizer ``tok`` (some valid schemas,
    such as remote ``$ref``, are beyond it): checked once, by the data stage, before any training.

    Raises:
        DataError: one line naming ``where`` and llguidance's reason.
    """
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text(schema), defaults=COMPACT)
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, _lltokenizer(tok, None, None)
    )
    if failed:
        reason = _short(messages[0] if messages else "no reason given")
        raise DataError(f"{where}: {FIELD}: llguidance cannot constrain decoding to it: {reason}")


def schema_text(schema: dict[str, Any]) -> str:
    """The schema as the runtimes take it: compact JSON text."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def guidance_text(schema: str) -> str:
    """The schema text with :data:`COMPACT` as its ``x-guidance`` defaults (its own options win), for an
    llguidance that reads only the schema (onnxruntime-genai's)."""
    value = json.loads(schema)
    if isinstance(value, dict):
        own = value.get("x-guidance")
        value["x-guidance"] = {**COMPACT, **(own if isinstance(own, dict) else {})}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def stage_schema(data_dir: Path) -> str | None:
    """The schema text the data stage wrote (None: the recipe declares none)."""
    path = data_dir / SCHEMA_FILE
    return schema_text(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


# --------------------------------------------------------------------------------------------------------
# Checking answers


class AnswerChecker:
    """Checks an answer string against the schema; :meth:`problem` says what is wrong, in one line."""

    def __init__(self, schema: dict[str, Any], name: str):
        from jsonschema import Draft202012Validator

        self.validator = Draft202012Validator(schema)
        self.name = name

    def problem(self, answer: str) -> str | None:
        """None when ``answer`` is JSON that matches the schema; else what is wrong."""
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as e:
            return f"the answer is not JSON ({e.msg} at column {e.colno}), so it cannot match {self.name}"
        except RecursionError:
            return "the answer is not JSON (nested too deeply)"
        from jsonschema.exceptions import best_match

        error = best_match(self.validator.iter_errors(value))
        if error is None:
            return None
        error = _explain(error)
        at = "/".join(str(p) for p in error.absolute_path)
        return f"the answer does not match {self.name}{f' at {at}' if at else ''}: {_short(error.message)}"

    def __call__(self, messages: list[dict[str, str]]) -> str | None:
        return self.problem(messages[-1]["content"])


def _explain(error: Any) -> Any:
    """The error that says why, inside an ``anyOf``/``oneOf`` of alternatives told apart by a ``const`` or
    ``enum`` (a discriminated union, like one branch per intent): the error of the one alternative whose
    discriminators match; for a value no alternative names, the discriminator's allowed values."""
    from jsonschema.exceptions import ValidationError, best_match

    while error.validator in ("anyOf", "oneOf") and error.context:
        branches: dict[Any, list[Any]] = defaultdict(list)
        for e in error.context:
            branches[e.relative_schema_path[0]].append(e)
        kinds = [[e for e in errs if e.validator in ("const", "enum")] for errs in branches.values()]
        matching = [errs for errs, k in zip(branches.values(), kinds, strict=True) if not k]
        if len(matching) == 1:
            error = best_match(matching[0])
            continue
        if matching or not all(kinds):
            break
        paths = {tuple(e.absolute_path) for k in kinds for e in k}
        if len(paths) != 1:
            break
        allowed: list[Any] = []
        for k in kinds:
            for e in k:
                values = [e.validator_value] if e.validator == "const" else list(e.validator_value)
                allowed += [v for v in values if v not in allowed]
        first = kinds[0][0]
        return ValidationError(
            f"{first.instance!r} is not one of {', '.join(map(repr, allowed))}", path=first.absolute_path
        )
    return error


def _short(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------
# Constrained decoding in PyTorch (llguidance)

_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _lltokenizer(tok: Any, n_vocab: int | None, eos_ids: tuple[int, ...] | None) -> Any:
    """llguidance's tokenizer for a transformers tokenizer (~0.3 s to build for a 49k vocabulary: cached per
    tokenizer object, vocabulary width and EOS ids)."""
    import llguidance.hf

    cache = _TOKENIZERS.setdefault(tok, {})
    key = (n_vocab, eos_ids)
    if key not in cache:
        eos = list(eos_ids) if eos_ids else None
        cache[key] = llguidance.hf.from_tokenizer(tok, n_vocab=n_vocab, eos_token=eos)
    return cache[key]


def logits_processor(tok: Any, schema: str, batch: int, prompt_width: int, eos_ids: list[int]) -> Any:
    """A transformers ``LogitsProcessor`` for a batched greedy ``generate`` (left-padded prompts of
    ``prompt_width`` tokens): one llguidance matcher per row; each step masks every token the row's answer
    cannot continue with under ``schema``; a row whose answer is complete (or whose matcher failed) can only
    end (``eos_ids``)."""
    import llguidance
    import llguidance.torch as llt
    from transformers import LogitsProcessor

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=COMPACT)
    eos = tuple(int(e) for e in eos_ids)

    class SchemaConstraint(LogitsProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            self.matchers: list[Any] = []
            self.done = [False] * batch
            self.mask: Any = None

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            width = scores.shape[-1]
            if not self.matchers:
                lltok = _lltokenizer(tok, width, eos)
                self.matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(batch)]
                self.mask = llt.allocate_token_bitmask(batch, width)
            elif input_ids.shape[1] > prompt_width:  # each row's last token is the one picked last step
                for j, m in enumerate(self.matchers):
                    if not self.done[j]:
                        t = int(input_ids[j, -1])
                        self.done[j] = t in eos or not m.consume_token(t)
            forced = []
            for j, m in enumerate(self.matchers):
                if self.done[j] or m.is_stopped() or m.is_error():
                    forced.append(j)
                else:
                    llt.fill_next_token_bitmask(m, self.mask, j)
            apply_bitmask(scores, self.mask)
            for j in forced:
                scores[j] = float("-inf")
                scores[j, list(eos)] = 0.0
            return scores

    return SchemaConstraint()


def apply_bitmask(scores: Any, mask: Any) -> None:
    """Set every logit whose bit in llguidance's token bitmask (int32 words, bit ``i % 32`` of word ``i // 32``)
    is clear to -inf, in place. The same operation as ``llguidance.torch.apply_token_bitmask_inplace``, run
    eagerly: that one is ``torch.compile``'d, and its first call compiled for 18 s on a 2-core CPU."""
    import torch

    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((mask.unsqueeze(-1) >> bits) & 1).flatten(1).bool()
    width = scores.shape[-1]
    if allowed.shape[1] < width:
        allowed = torch.nn.functional.pad(allowed, (0, width - allowed.shape[1]), value=False)
    scores.masked_fill_(~allowed[:, :width].to(scores.device), float("-inf"))


# --------------------------------------------------------------------------------------------------------
# llama.cpp


def gbnf(schema: str) -> str:
    """The schema as a llama.cpp GBNF grammar, by llama-cpp-python's converter (what
    ``LlamaGrammar.from_json_schema`` uses). Imports llama-cpp-python: call it in a child process
    (:func:`edgesft.isolate.call`), as every llama.cpp use.

    The converter (0.3.36) does not carry integer ``minimum``/``maximum`` into the grammar: bounded integers
    come out as any integer. llama.cpp's own C++ converter (``llama-server``'s ``json_schema``, ``llama-cli
    -j``) keeps them."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(schema))
