"""``report.html``: one self-contained page (CSS inline, plots as base64 PNG, no script, no external URL)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from html import escape
from typing import Any

from edgesft.report.plots import PLOTS, Plot
from edgesft.report.tables import Table, build_tables, failure_lines, pareto_lines

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;
margin:0;background:#fff}
main{max-width:1200px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}
h3{font-size:15px;margin:18px 0 4px}
.meta{color:#555;margin:0 0 8px}.note{color:#555;font-size:13px;margin:6px 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e5e5e5;text-align:left;white-space:nowrap}
th{background:#f5f5f7;font-weight:600;white-space:normal;vertical-align:bottom}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{color:#b00020}
figure{margin:16px 0}img{max-width:100%;height:auto;display:block}
figcaption{color:#444;font-size:13px;margin-top:4px}
ul{margin:4px 0 4px 20px;padding:0}code{background:#f5f5f7;padding:1px 4px;border-radius:3px}
"""


def _html_table(t: Table, bad_rows: Sequence[bool] = (), title: bool = False) -> str:
    e = escape
    head = "".join(
        f'<th class="n">{e(h)}</th>' if i in t.numeric else f"<th>{e(h)}</th>"
        for i, h in enumerate(t.headers)
    )
    thead = f"<thead><tr>{head}</tr></thead>" if any(t.headers) else ""
    body = []
    for r, row in enumerate(t.rows):
        cls = ' class="bad"' if r < len(bad_rows) and bad_rows[r] else ""
        cells = "".join(
            f'<td class="n">{e(c)}</td>' if i in t.numeric else f"<td>{e(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    heading = f"<h3>{e(t.title)}</h3>" if title else ""
    table = f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"
    return f'{heading}<div class="scroll">{table}</div>{note}'


def _html_plot(p: Plot) -> str:
    e = escape
    if p.png is None:
        return f'<p class="note" data-plot-missing="{e(p.name)}">{e(p.title)}: {e(p.caption)}</p>'
    w, h = _png_size(p.png)
    data = base64.b64encode(p.png).decode("ascii")
    return (
        f'<figure><img data-plot="{e(p.name)}" alt="{e(p.alt)}" width="{w}" height="{h}" '
        f'src="data:image/png;base64,{data}">'
        f"<figcaption><b>{e(p.title)}.</b> {e(p.caption)}</figcaption></figure>"
    )


def render_html(report: dict[str, Any]) -> str:
    """``report.html``: one self-contained page, the tables of :func:`render_markdown` and the plots."""
    e = escape
    tables = build_tables(report)
    plots = {name: make(report) for name, make in PLOTS.items()}
    bad = [a["status"] != "ok" for a in report["artifacts"].values()]
    parts = [
        f"<h1>edgesft report: {e(report['run'])}</h1>",
        f'<p class="meta">Generated {e(report["generated"])} by edgesft {e(report["edgesft"])} from '
        f"<code>{e(report['run_dir'])}</code>"
        + (f"; primary artifact <code>{e(report['primary'])}</code>." if report["primary"] else ".")
        + "</p>",
        "<h2>Artifacts</h2>",
    ]
    if report["artifacts"]:
        parts.append(_html_table(tables["artifacts"], bad))
        if tables["latency"].rows:
            parts.append(_html_table(tables["latency"], title=True))
        parts.append(_html_table(tables["artifact_quality"], bad, title=True))
        failures = failure_lines(report)
        if failures:
            parts.append(
                '<p class="note">Failed artifacts:</p><ul>'
                + "".join(f"<li>{e(f)}</li>" for f in failures)
                + "</ul>"
            )
    else:
        parts.append('<p class="note">No artifacts in this run.</p>')
    parts += ["<h2>Quality vs speed</h2>", _html_plot(plots["quality_vs_speed"])]
    lines = pareto_lines(report)
    if lines:
        parts.append("<p>Pareto front:</p><ul>" + "".join(f"<li>{e(x)}</li>" for x in lines) + "</ul>")
    parts += [_html_plot(plots["latency"]), _html_plot(plots["size"])]
    parts += ["<h2>Quality after each stage</h2>"]
    if report["quality_by_stage"]:
        parts.append(_html_table(tables["quality_by_stage"]))
    parts += [_html_plot(plots["stage_quality"]), "<h2>Training</h2>", _html_plot(plots["loss"])]
    parts += [
        "<h2>Stages</h2>",
        _html_table(tables["stages"]),
        "<h2>Environment</h2>",
        _html_table(tables["environment"]),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>edgesft report: {e(report['run'])}</title><style>{CSS}</style></head>\n"
        "<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n"
    )


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    w, h = struct.unpack(">II", png[16:24])
    return int(w), int(h)
