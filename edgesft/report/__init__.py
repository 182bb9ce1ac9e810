"""The run report: ``report.json`` (a versioned, schema-checked document), ``report.md`` and ``report.html``.

The report is built from the stage manifests alone (plus ``bench/bench.json``), never from the models, so
``edgesft report RUN`` rebuilds it in about a second on any machine, without importing torch, even from a run
folder copied off the device that made it. Any stage may be missing (a recipe without pruning, ONNX or the
bench stage): its rows are left out, and a plot without data is replaced by a one-line note instead of an
empty frame. Without the bench stage the artifact figures come from the export stages (size, precision,
fallback tensors) and from verify (KL and top-1 agreement against the PyTorch model).

One module per job: :mod:`~edgesft.report.data` builds and validates the document, :mod:`~.tables` lays out
the tables both pages share, :mod:`~.markdown` and :mod:`~.html` render the pages (:mod:`~.plots` draws the
HTML page's plots), and :mod:`~.screenshot` turns the page into a PNG with a headless Chromium.
"""

from __future__ import annotations

from pathlib import Path

from edgesft.errors import EdgesftError
from edgesft.io import atomic_write_json, atomic_write_text
from edgesft.report.data import (
    QUALITY_AXES,
    SCHEMA,
    build_report,
    decode_speed,
    pareto_front,
    quality_points,
    schema,
    validate_report,
)
from edgesft.report.html import render_html
from edgesft.report.markdown import render_markdown
from edgesft.report.plots import PLOTS
from edgesft.report.screenshot import screenshot
from edgesft.runfolder import bundle_primary, primary_key

__all__ = [
    "PLOTS",
    "QUALITY_AXES",
    "SCHEMA",
    "build_report",
    "bundle_primary",
    "decode_speed",
    "pareto_front",
    "primary_key",
    "quality_points",
    "render_html",
    "render_markdown",
    "schema",
    "screenshot",
    "validate_report",
    "write_report",
]


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Build, validate and write ``report.json``, ``report.md`` and ``report.html``; return the HTML path.

    ``out_dir`` defaults to ``run_dir / "report"``. Each file is replaced atomically.

    Raises:
        EdgesftError: the run folder holds no stage manifest, or ``out_dir`` cannot be made.
    """
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    validate_report(report)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission: the user's --out to fix
        raise EdgesftError(f"{out}: cannot make the report folder ({e.strerror or e})") from None
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "report.html", render_html(report))
    return out / "report.html"
