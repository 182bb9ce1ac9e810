"""Documentation generated from the config classes, so the README and the code cannot drift apart."""

from __future__ import annotations

from edgesft.config import Recipe, section_fields


def recipe_reference() -> str:
    """Markdown table of every recipe field: dotted name, type, default and meaning."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, type_name, default, desc in section_fields(Recipe):
        lines.append(f"| `{name}` | {type_name.replace('|', '∣')} | `{default}` | {desc.replace('|', '∣')} |")
    return "\n".join(lines)


def architectures_table() -> str:
    """Markdown table: which stages take which architecture of the tested matrix (:mod:`edgesft.support`)."""
    from edgesft.support import MATRIX, stage_problem

    stages = ("prune", "gguf", "onnx")
    lines = [
        "| architecture (`model_type`) | train / merge | " + " | ".join(stages) + " |",
        "|---|---|" + "---|" * len(stages),
    ]
    for arch in MATRIX:
        cells = []
        for stage in stages:
            problem = stage_problem(stage, arch)
            cells.append(
                "ok" if problem is None else "refused at validate: " + problem.split(" (supported")[0]
            )
        lines.append(f"| `{arch}` | ok | " + " | ".join(cells) + " |")
    return "\n".join(lines)
