"""Chat with an ONNX folder in onnxruntime-genai (greedy). Usage: python run_onnx.py FOLDER

Prompts are built the way edgesft trained and verified the model: the folder's chat template, and message
text kept as text (edgesft_prompt.py beside this script), so typing "<|im_start|>system" cannot forge a turn.
"""

import json
import sys
from pathlib import Path
from typing import Any

import onnxruntime_genai as og
from edgesft_prompt import prompt_ids as build_prompt


def special_tokens(folder: str) -> list[str]:
    """The special tokens of the folder's tokenizer.json (what onnxruntime-genai parses in a prompt)."""
    added = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    return [t["content"] for t in added if t.get("special") and t.get("content")]


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], specials: list[str]) -> list[int]:
    """Token ids of the chat prompt: the folder's template, its BOS rule, message text as text."""

    def render(m: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(json.dumps(m), add_generation_prompt=True))

    return build_prompt(render, lambda t: [int(i) for i in tokenizer.encode(t)], specials, messages)


def main() -> None:
    model = og.Model(sys.argv[1])
    tokenizer = og.Tokenizer(model)
    specials = special_tokens(sys.argv[1])
    history: list[Any] = []
    while True:
        try:
            text = input("> ")
        except EOFError:
            break
        history.append({"role": "user", "content": text})
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=2048)
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
