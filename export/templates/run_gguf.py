"""Chat with a GGUF in llama-cpp-python (greedy). Usage: python run_gguf.py MODEL.gguf"""

import sys
from typing import Any

from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], n_ctx=2048, verbose=False)
history: list[Any] = []
while True:
    try:
        text = input("> ")
    except EOFError:
        break
    history.append({"role": "user", "content": text})
    out: Any = llm.create_chat_completion(messages=history, temperature=0, max_tokens=256)
    answer = out["choices"][0]["message"]["content"]
    print(answer)
    history.append({"role": "assistant", "content": answer})
