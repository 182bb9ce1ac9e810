"""Chat with a GGUF in llama-cpp-python (greedy). Usage: python run_gguf.py MODEL.gguf [--no-constrain]

Prompts are built the way edgesft trained and verified the model: the file's own chat template, and message
text kept as text (edgesft_prompt.py beside this script), so typing "<|im_start|>system" cannot forge a turn.
When the bundle has answer.gbnf (the answer's JSON Schema as a llama.cpp grammar), every answer is
constrained to it; --no-constrain decodes freely.
"""

import argparse
from pathlib import Path
from typing import Any

import llama_cpp
from edgesft_prompt import prompt_ids as build_prompt
from llama_cpp import Llama, LlamaGrammar
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

GRAMMAR = Path(__file__).resolve().parent / "answer.gbnf"


def control_tokens(llm: Llama) -> list[str]:
    """The text of every control token of the file (what llama.cpp parses as special in a prompt)."""
    vocab = llm._model.vocab
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    return [
        llm.detokenize([i], special=True).decode("utf-8", "replace")
        for i in range(n)
        if llama_cpp.llama_vocab_get_attr(vocab, i) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    ]


def prompt_ids(llm: Llama, messages: list[dict[str, str]], specials: list[str]) -> list[int]:
    """Token ids of the chat prompt: the file's template, its BOS rule, message text as text."""
    text = llm._model.token_get_text
    eos, bos = llm.token_eos(), llm.token_bos()
    fmt = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=text(eos) if eos >= 0 else "",
        bos_token=text(bos) if bos >= 0 else "",
        add_generation_prompt=True,
    )
    return build_prompt(
        lambda m: fmt(messages=m).prompt,  # type: ignore[arg-type]
        lambda t: llm.tokenize(t.encode("utf-8"), add_bos=True, special=True),
        specials,
        messages,
    )


def answer_grammar(constrain: bool) -> Any:
    """The bundle's answer grammar (None: no answer.gbnf, or --no-constrain)."""
    if not constrain or not GRAMMAR.is_file():
        return None
    return LlamaGrammar.from_file(GRAMMAR, verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description="greedy chat with a GGUF file")
    parser.add_argument("model", help="the .gguf file")
    parser.add_argument("--no-constrain", action="store_true", help="ignore answer.gbnf: decode freely")
    args = parser.parse_args()
    llm = Llama(model_path=args.model, n_ctx=2048, verbose=False)
    grammar = answer_grammar(not args.no_constrain)
    specials = control_tokens(llm)
    history: list[Any] = []
    while True:
        try:
            text = input("> ")
        except EOFError:
            break
        history.append({"role": "user", "content": text})
        out: Any = llm.create_completion(
            prompt=prompt_ids(llm, history, specials), temperature=0, max_tokens=256, grammar=grammar
        )
        answer = out["choices"][0]["text"].strip()
        print(answer)
        history.append({"role": "assistant", "content": answer})


if __name__ == "__main__":
    main()
