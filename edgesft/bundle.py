"""The deployment bundle: Ollama Modelfile, README and runner scripts, filled from ``export/templates``."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "export_templates"
_SYS, _USR = "EDGESFTSYSTEMTEXT", "EDGESFTPROMPTTEXT"


def _render(tok: Any, messages: list[dict[str, str]]) -> str:
    from edgesft.chat import render

    return render(tok, messages, add_generation_prompt=True)


def ollama_template(tok: Any) -> tuple[str | None, str | None, str]:
    """(Go TEMPLATE, default SYSTEM, note) equivalent to the tokenizer's chat template for one system and
    one user turn, derived by rendering marker messages; (None, None, why) when the template has no such
    simple shape. The result is checked by rendering it back (:func:`render_go_template`)."""
    try:
        with_sys = _render(tok, [{"role": "system", "content": _SYS}, {"role": "user", "content": _USR}])
        no_sys = _render(tok, [{"role": "user", "content": _USR}])
    except Exception as e:  # a template that rejects a system turn, for instance
        return None, None, f"the chat template cannot be rendered with a system turn ({e})"
    if with_sys.count(_SYS) != 1 or with_sys.count(_USR) != 1 or no_sys.count(_USR) != 1:
        return None, None, "the chat template repeats or drops message text"
    head, tail = with_sys.split(_USR)
    head_nosys, tail_nosys = no_sys.split(_USR)
    if tail != tail_nosys:
        return None, None, "the assistant header depends on the system turn"
    # The user header is the longest common suffix of what precedes the prompt with and without a system turn.
    k = 0
    while k < min(len(head), len(head_nosys)) and head[-1 - k] == head_nosys[-1 - k]:
        k += 1
    user_header = head[len(head) - k :]
    if default_block := head_nosys[: len(head_nosys) - k]:
        # With a default system prompt the common suffix also swallows the end of the system block: the
        # user header starts at the last special token before the role name.
        specials = [t for t in tok.all_special_tokens + list(tok.get_added_vocab()) if t]
        starts = [i for i in range(len(user_header)) if any(user_header.startswith(t, i) for t in specials)]
        starts = [i for i in starts if "user" in user_header[i:]]
        if starts:
            k -= starts[-1]
            user_header = user_header[starts[-1] :]
    sys_block = head[: len(head) - k]
    default_block = head_nosys[: len(head_nosys) - k]
    if _SYS not in sys_block:
        return None, None, "the system text is not inside a system block"
    pre, post = sys_block.split(_SYS)
    default_system = None
    if default_block:
        if not (default_block.startswith(pre) and default_block.endswith(post)):
            return None, None, "the template adds text without a system turn that is not a system block"
        default_system = default_block[len(pre) : len(default_block) - len(post)]
    eos = tok.eos_token or ""
    template = (
        "{{ if .System }}" + pre + "{{ .System }}" + post + "{{ end }}"
        + user_header + "{{ .Prompt }}" + tail + "{{ .Response }}" + eos
    )  # fmt: skip
    for system, user in (("Be brief.", "Hi"), (default_system, "Wake me at 7")):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        if render_go_template(template, system or "", user) != _render(tok, messages) + eos:
            return None, None, "the derived Ollama template does not reproduce the chat template"
    return template, default_system, "derived from the chat template and checked by rendering"


def render_go_template(template: str, system: str, prompt: str, response: str = "") -> str:
    """Render the subset of Go template syntax :func:`ollama_template` writes (one ``if .System`` block)."""
    out = template
    if system:
        out = out.replace("{{ if .System }}", "").replace("{{ end }}", "", 1)
    else:
        start, end = out.index("{{ if .System }}"), out.index("{{ end }}")
        out = out[:start] + out[end + len("{{ end }}") :]
    return (
        out.replace("{{ .System }}", system)
        .replace("{{ .Prompt }}", prompt)
        .replace("{{ .Response }}", response)
    )


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('text contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(gguf_name: str, tok: Any, stop_ids: list[int], context_length: int, note: str) -> str:
    """An Ollama Modelfile for ``gguf_name`` next to it: template, stop tokens and greedy defaults."""
    template, default_system, why = ollama_template(tok)
    lines = [f"# {note}", f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f"TEMPLATE {_quote(template)}")
    else:
        lines.append(f"# No TEMPLATE: {why}; Ollama falls back to the GGUF's tokenizer.chat_template.")
    if default_system:
        lines.append(f"SYSTEM {_quote(default_system)}")
    stops = []
    for i in stop_ids:
        text = tok.convert_ids_to_tokens(int(i))
        if text and text not in stops:
            stops.append(text)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {context_length}"]
    return "\n".join(lines) + "\n"


MODELFILE_PARAMETERS = {
    "mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "repeat_last_n", "repeat_penalty", "temperature",
    "seed", "stop", "num_predict", "top_k", "top_p", "min_p",
}  # fmt: skip
MODELFILE_INSTRUCTIONS = {
    "FROM",
    "PARAMETER",
    "TEMPLATE",
    "SYSTEM",
    "ADAPTER",
    "LICENSE",
    "MESSAGE",
    "REQUIRES",
}


def check_modelfile(text: str, folder: Path) -> list[str]:
    """Problems in a Modelfile by Ollama's documented grammar (instructions, parameters, triple quotes, FROM
    target present, balanced template actions)."""
    problems: list[str] = []
    lines = text.splitlines()
    i = 0
    seen_from = False
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() not in MODELFILE_INSTRUCTIONS:
            problems.append(f"line {i}: unknown instruction {word!r}")
            continue
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body and i < len(lines):
                body += "\n" + lines[i]
                i += 1
            if '"""' not in body:
                problems.append(f"line {i}: unterminated triple-quoted value")
            elif word.upper() == "TEMPLATE":
                body = body[: body.index('"""')]
                if body.count("{{ if") + body.count("{{- if") != body.count("{{ end }}") + body.count(
                    "{{- end }}"
                ):
                    problems.append(f"line {i}: unbalanced if/end in TEMPLATE")
        if word.upper() == "FROM":
            seen_from = True
            target = rest.strip()
            if target.startswith("./") and not (folder / target[2:]).exists():
                problems.append(f"line {i}: FROM {target} does not exist")
        if word.upper() == "PARAMETER":
            name = rest.split(" ", 1)[0]
            if name not in MODELFILE_PARAMETERS:
                problems.append(f"line {i}: unknown parameter {name!r}")
    if not seen_from:
        problems.append("no FROM instruction")
    return problems


def fill(template_name: str, **values: Any) -> str:
    """A template from export/templates with ``$name`` placeholders filled (string.Template syntax)."""
    text = (TEMPLATES / template_name).read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})
