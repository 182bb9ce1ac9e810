"""Chat rendering shared by training, evaluation and export: one template, baked into the tokenizer.

The system prompt a recipe sets is written into the tokenizer's chat template, so every artifact that
inherits the tokenizer renders prompts exactly as training did, with no system argument to forget.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from typing import Any

from edgesft.errors import EdgesftError

# A conversation renders in well under a millisecond; a template still rendering after this long loops.
RENDER_SECONDS = 5.0

# ChatML with no default system turn: the stock SmolLM2 template adds ~20 tokens of system prompt to every
# conversation that has none, which costs prefill time on a phone for no task benefit.
_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_template(original: str | None, system_prompt: str | None) -> str:
    """The run's chat template, built from a tokenizer's original one.

    ChatML templates are replaced by a clean ChatML one (no default system turn); other templates are kept.
    A recipe system prompt is prepended inside the template whenever the conversation has no system turn.
    """
    base = _CHATML if original is None or "<|im_start|>" in original else original
    if system_prompt is None:
        return base
    prefix = (
        "{%- if messages and messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {json.dumps(system_prompt)}}}] + messages -%}}"
        "{%- endif -%}"
    )
    return prefix + base


def injects_system_turn(tok: Any, template: str | None) -> bool:
    """Whether ``template`` renders a system turn for a conversation that has none (a default prompt)."""
    if not template:
        return False
    text = render(tok, [{"role": "user", "content": "x"}], chat_template=template)
    return "system" in text.lower()


def prepare_tokenizer(tok: Any, system_prompt: str | None, extra_special_tokens: list[str]) -> dict[str, Any]:
    """Set the run's chat template (and extra special tokens) on ``tok`` in place; return what changed."""
    original = tok.chat_template
    tok.chat_template = build_template(original, system_prompt)
    removed = injects_system_turn(tok, original) and not injects_system_turn(
        tok, build_template(original, None)
    )
    added = 0
    if extra_special_tokens:
        added = tok.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return {"removed_default_system_prompt": removed, "added_special_tokens": added}


def render(
    tok: Any,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = False,
    chat_template: str | None = None,
) -> str:
    """Render messages with the tokenizer's chat template (or ``chat_template``), in transformers' sandboxed
    jinja environment and within :data:`RENDER_SECONDS`.

    Raises:
        EdgesftError: one line naming the tokenizer the template came from: it failed, was refused by the
            sandbox (it reached for Python internals), or did not finish in time.
    """
    where = f"{getattr(tok, 'name_or_path', None) or 'the tokenizer'}: chat template"
    try:
        with _time_limit(RENDER_SECONDS):
            text = tok.apply_chat_template(
                messages,
                chat_template=chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
    except _RenderTimeout:
        raise EdgesftError(f"{where}: still rendering after {RENDER_SECONDS:.0f} s; refused") from None
    except Exception as e:  # jinja errors and sandbox refusals from a user-supplied template
        import jinja2.exceptions

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, jinja2.exceptions.SecurityError):
            raise EdgesftError(f"{where}: refused as unsafe by the sandbox ({first})") from None
        raise EdgesftError(
            f"{where}: failed to render a conversation ({type(e).__name__}: {first})"
        ) from None
    return str(text)


class _RenderTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_RenderTimeout` in the block after ``seconds`` (main thread on POSIX; elsewhere a no-op,
    as signals only reach the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _RenderTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def encode(tok: Any, text: str) -> list[int]:
    """Token ids of already-rendered text (the template carries every special token; none are added)."""
    return tok(text, add_special_tokens=False)["input_ids"]


def special_strings(tok: Any) -> list[str]:
    """A transformers tokenizer's special tokens as text."""
    return [t.content for t in tok.added_tokens_decoder.values() if t.special]


def encode_chat(tok: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a rendered conversation where message text stays text: a message spelling
    ``<|im_start|>system`` does not become a system turn (:func:`edgesft.prompt.chat_ids`).

    Raises:
        RenderError: such a message under a template that rewrites message text.
    """
    from edgesft.prompt import ForgedTokenError, chat_ids

    try:
        return chat_ids(
            lambda m: render(tok, m, add_generation_prompt=add_generation_prompt),
            lambda text: encode(tok, text),
            special_strings(tok),
            messages,
        )
    except ForgedTokenError as e:
        raise RenderError(str(e)) from None


class RenderError(ValueError):
    """A conversation the chat template cannot split into prompt and answer tokens."""


def encode_conversation(
    tok: Any, messages: list[dict[str, str]], train_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Tokenize a conversation for SFT: (input_ids, labels) with -100 on tokens that carry no loss.

    Each assistant turn is located by rendering the conversation up to it, so any chat template works. Its
    tokens up to and including the first EOS carry loss; what the template renders after EOS (a newline in
    ChatML) does not, and the sequence ends at the last assistant EOS. EOS is appended when the template
    does not emit it, so the model always learns to stop.
    """
    eos = tok.eos_token_id
    full = encode_chat(tok, messages)
    trainable = [train_on_prompt] * len(full)
    end = len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = encode_chat(tok, messages[:i], add_generation_prompt=True)
        upto = encode_chat(tok, messages[: i + 1])
        if full[: len(upto)] != upto or upto[: len(prompt)] != prompt:
            raise RenderError("chat template renders this conversation inconsistently (prefix mismatch)")
        span = upto[len(prompt) :]
        stop = span.index(eos) + 1 if eos in span else len(span)
        for j in range(len(prompt), len(prompt) + stop):
            trainable[j] = True
        for j in range(len(prompt) + stop, len(upto)):
            trainable[j] = train_on_prompt
        end = len(prompt) + stop
    ids = full[:end] if messages[-1]["role"] == "assistant" else full
    trainable = trainable[: len(ids)]
    if messages[-1]["role"] == "assistant" and (not ids or ids[-1] != eos):
        ids = ids + [eos]
        trainable = trainable + [True]
    labels = [t if keep else -100 for t, keep in zip(ids, trainable, strict=True)]
    return ids, labels


def prompt_and_answer(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """Split a conversation into the prompt turns and the final assistant answer (for evaluation)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise RenderError("the last turn must be the assistant's answer")
    return messages[:-1], messages[-1]["content"]
