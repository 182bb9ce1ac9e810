"""Chat with an ONNX folder in onnxruntime-genai (greedy). Usage: python run_onnx.py FOLDER [--no-constrain]

Prompts are built the way edgesft trained and verified the model: the folder's chat template, and message
text kept as text (edgesft_prompt.py beside this script), so typing "<|im_start|>system" cannot forge a turn.
When the bundle has answer_schema.json, every answer is constrained to it by onnxruntime-genai's guidance
(compact JSON, as trained); --no-constrain decodes freely.
"""

import argparse
import json
from pathlib import Path
from typing import Any

import onnxruntime_genai as og
from edgesft_prompt import prompt_ids as build_prompt

SCHEMA = Path(__file__).resolve().parent / "answer_schema.json"
# llguidance's JSON options: no whitespace between tokens (the schema's own "x-guidance" options win)
COMPACT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def special_tokens(folder: str) -> list[str]:
    """The special tokens of the folder's tokenizer.json (what onnxruntime-genai parses in a prompt)."""
    added = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    return [t["content"] for t in added if t.get("special") and t.get("content")]


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], specials: list[str]) -> list[int]:
    """Token ids of the chat prompt: the folder's template, its BOS rule, message text as text."""

    def render(m: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(json.dumps(m), add_generation_prompt=True))

    return build_prompt(render, lambda t: [int(i) for i in tokenizer.encode(t)], specials, messages)


def guidance(constrain: bool) -> str | None:
    """The bundle's answer schema as onnxruntime-genai's json_schema guidance (None: none, or
    --no-constrain)."""
    if not constrain or not SCHEMA.is_file():
        return None
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    schema["x-guidance"] = {**COMPACT, **schema.get("x-guidance", {})}
    return json.dumps(schema)


def main() -> None:
    parser = argparse.ArgumentParser(description="greedy chat with an ONNX folder")
    parser.add_argument("folder", help="the ONNX model folder (genai_config.json, model.onnx, tokenizer)")
    parser.add_argument(
        "--no-constrain", action="store_true", help="ignore answer_schema.json: decode freely"
    )
    args = parser.parse_args()
    model = og.Model(args.folder)
    tokenizer = og.Tokenizer(model)
    specials = special_tokens(args.folder)
    schema = guidance(not args.no_constrain)
    history: list[Any] = []
    while True:
        try:
            text = input("> ")
        except EOFError:
            break
        history.append({"role": "user", "content": text})
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=2048)
        if schema is not None:
            params.set_guidance("json_schema", schema)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt_ids(tokenizer, history, specials))
        new: list[int] = []
        while not generator.is_done() and len(new) < 256:
            generator.generate_next_token()
            new.append(generator.get_next_tokens()[0])
        answer = tokenizer.decode(new).strip()
        print(answer)
        history.append({"role": "assistant", "content": answer})


if __name__ == "__main__":
    main()
