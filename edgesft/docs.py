"""Documentation generated from the config classes, so the README and the code cannot drift apart."""

from __future__ import annotations

from edgesft.config import Recipe, section_fields


def recipe_reference() -> str:
    """Markdown table of every recipe field: dotted name, type, default and meaning."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, type_name, default, desc in section_fields(Recipe):
        lines.append(f"| `{name}` | {type_name.replace('|', '∣')} | `{default}` | {desc.replace('|', '∣')} |")
    return "\n".join(lines)
