"""Chat with an ONNX folder in onnxruntime-genai (greedy). Usage: python run_onnx.py FOLDER"""

import json
import sys
from typing import Any

import onnxruntime_genai as og

model = og.Model(sys.argv[1])
tokenizer = og.Tokenizer(model)
history: list[Any] = []
while True:
    try:
        text = input("> ")
    except EOFError:
        break
    history.append({"role": "user", "content": text})
    prompt = tokenizer.apply_chat_template(json.dumps(history), add_generation_prompt=True)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=2048)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode(prompt))
    new: list[int] = []
    while not generator.is_done() and len(new) < 256:
        generator.generate_next_token()
        new.append(generator.get_next_tokens()[0])
    answer = tokenizer.decode(new).strip()
    print(answer)
    history.append({"role": "assistant", "content": answer})
