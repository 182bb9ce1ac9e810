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
    """Markdown table: which stages take which architecture (from :mod:`edgesft.support`)."""
    from edgesft.support import stage_architectures

    stages = stage_architectures()
    names = sorted({a for supported in stages.values() for a in supported})
    lines = [
        "| architecture (`model_type`) | train / merge | " + " | ".join(stages) + " |",
        "|---|---|" + "---|" * len(stages),
    ]
    for arch in names:
        cells = ["ok" if arch in supported else "refused at validate" for supported in stages.values()]
        lines.append(f"| `{arch}` | ok | " + " | ".join(cells) + " |")
    return "\n".join(lines)
