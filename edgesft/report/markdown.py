"""``report.md``: the report's tables in GitHub-flavoured Markdown."""

from __future__ import annotations

from typing import Any

from edgesft.report.tables import Table, build_tables, failure_lines, pareto_lines


def _md_table(t: Table) -> list[str]:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in t.headers) + " |",
        "|" + "|".join("---:" if i in t.numeric else "---" for i in range(len(t.headers))) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the report's tables in GitHub-flavoured Markdown."""
    tables = build_tables(report)
    out = [
        f"# edgesft report: {report['run']}",
        "",
        f"Generated {report['generated']} by edgesft {report['edgesft']} from `{report['run_dir']}`"
        + (f"; primary artifact `{report['primary']}`." if report["primary"] else "."),
    ]
    for name in ("environment", "stages", "quality_by_stage", "artifacts", "latency", "artifact_quality"):
        t = tables[name]
        out += ["", f"## {t.title}", ""]
        if name == "quality_by_stage" and not t.rows:
            out.append("No model stage in this run.")
            continue
        if name in ("artifacts", "artifact_quality") and not t.rows:
            out.append("No artifacts in this run.")
            continue
        if name == "latency" and not t.rows:
            out.append("No latency figures (no bench stage, or no artifact ran).")
            continue
        out += _md_table(t)
        if t.note:
            out += ["", t.note]
    failures = failure_lines(report)
    if failures:
        out += ["", "Failed artifacts:", ""] + [f"- {f}" for f in failures]
    out += ["", "## Pareto front", ""]
    lines = pareto_lines(report)
    if lines:
        out.append(f"Quality ({report['quality_metric']}) vs decode tokens/s at depth 0, both maximized:")
        out += [""] + [f"- {line}" for line in lines]
    else:
        out.append("No benchmarked artifact with both a decode speed and a quality figure.")
    return "\n".join(out) + "\n"
