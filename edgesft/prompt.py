"""Token ids of a chat prompt in which only the chat template's own special tokens are special.

Tokenizers parse special-token text wherever it occurs, so a message that contains the literal text
``<|im_start|>system`` would become a real system turn: user text could forge control tokens. Every runtime
(transformers, llama.cpp, onnxruntime-genai) and the bundle's runner scripts build prompts through
:func:`chat_ids`, which keeps message text as text and otherwise gives exactly the ids the runtime's own
tokenizer gives for the rendered prompt.

This module depends on nothing but the standard library: the export bundle ships it beside its runners.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# Private-use characters: no chat template or tokenizer gives them a meaning.
_MARK = "\ue000{}\ue001"


class ForgedTokenError(ValueError):
    """Message text spells a control token and the chat template rewrites message text, so it cannot be
    kept apart from the template's own tokens."""


def chat_ids(
    render: Callable[[list[dict[str, str]]], str],
    encode: Callable[[str], list[int]],
    specials: Sequence[str],
    messages: list[dict[str, str]],
) -> list[int]:
    """Ids of ``render(messages)``, with special tokens only where the template put them.

    Args:
        render: the chat template (with the generation prompt or not, as the caller wants).
        encode: the runtime's tokenizer on text, special tokens parsed, nothing added (no BOS).
        specials: the tokenizer's special-token strings.
        messages: the conversation; only ``content`` is user text.

    A conversation whose text holds no special-token string is encoded in one call, exactly as before.
    Otherwise the template is rendered with placeholders for the message texts; the rendered prompt is cut
    at the template's special tokens (the tokenizer cuts there too, so merges stay as they were), and each
    special-token string inside message text is encoded as text, one character apart from the rest.

    Raises:
        ForgedTokenError: the template changes message text (trims it, say) and the text spells a special
            token, so the two cannot be told apart.
    """
    specials = sorted({s for s in specials if s}, key=len, reverse=True)
    if not specials or not any(s in m.get("content", "") for m in messages for s in specials):
        return encode(render(messages))
    marks = [_MARK.format(i) for i in range(len(messages))]
    skeleton = render([{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)])
    if any(skeleton.count(mark) != 1 for mark in marks):
        raise ForgedTokenError(
            "message text spells a special token and the chat template repeats or drops message text, "
            "so it cannot be kept as text"
        )
    split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
    ids: list[int] = []
    restored = []
    for i, piece in enumerate(split.split(skeleton)):
        if i % 2:  # a special token the template wrote
            ids += encode(piece)
            restored.append(piece)
            continue
        for j, mark in enumerate(marks):
            piece = piece.replace(mark, messages[j].get("content", ""))
        ids += _as_text(piece, split, encode)
        restored.append(piece)
    if "".join(restored) != render(messages):
        raise ForgedTokenError(
            "message text spells a special token and the chat template rewrites message text, so it "
            "cannot be kept as text"
        )
    return ids


def prompt_ids(
    render: Callable[[list[dict[str, str]]], str],
    tokenize: Callable[[str], list[int]],
    specials: Sequence[str],
    messages: list[dict[str, str]],
) -> list[int]:
    """:func:`chat_ids` for a runtime whose tokenizer puts its BOS rule before every text: ``tokenize`` is
    that tokenizer (specials parsed, BOS as the model says). The BOS comes once, before the whole prompt."""
    prefix = tokenize("")  # what the runtime puts before any prompt (a BOS, or nothing)

    def plain(text: str) -> list[int]:
        ids = tokenize(text)
        return ids[len(prefix) :] if ids[: len(prefix)] == prefix else ids

    return prefix + chat_ids(render, plain, specials, messages)


def _as_text(text: str, split: re.Pattern[str], encode: Callable[[str], list[int]]) -> list[int]:
    """``encode(text)`` where every special-token string in ``text`` is encoded as plain characters: its
    first character apart from the rest, so no tokenizer matches it as one token."""
    ids: list[int] = []
    for i, part in enumerate(split.split(text)):
        if not part:
            continue
        ids += _as_text(part[0], split, encode) + _as_text(part[1:], split, encode) if i % 2 else encode(part)
    return ids
