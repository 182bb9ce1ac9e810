"""The report's plots, drawn with matplotlib's Agg canvas into PNG bytes (no display, no files)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgesft.quality import POINT_METRICS
from edgesft.report.data import dig, quality_points
from edgesft.report.tables import METRIC_LABELS, artifact_label, measured_keys, num

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KIND_COLORS = {"gguf": "#1f77b4", "onnx": "#ff7f0e", "torch": "#2ca02c"}


@dataclass
class Plot:
    """One plot of the HTML page, or the note that stands in for it when the run has no data for it."""

    name: str
    title: str
    png: bytes | None  # None: no data; ``caption`` says why
    caption: str
    alt: str


def _figure(width: float = 9.0, height: float = 4.2, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _left_out(report: dict[str, Any], have: Iterable[str]) -> str:
    missing = sorted(set(report["artifacts"]) - set(have))
    return f" Not shown (not run or no figure): {', '.join(missing)}." if missing else ""


def _plot_quality_speed(report: dict[str, Any]) -> Plot:
    name, title = "quality_vs_speed", "Quality vs decode speed"
    arts = report["artifacts"]
    axis, points = quality_points(arts)
    if axis is None or not points:
        return Plot(
            name,
            title,
            None,
            "No artifact has both a decode speed and a quality figure (no bench stage?).",
            "",
        )
    fig, (ax,) = _figure(height=4.8)
    for key, (x, y) in points.items():
        a = arts[key]
        lo, hi = (
            dig(a, "latency", "decode", "0", "tok_s", "min"),
            dig(a, "latency", "decode", "0", "tok_s", "max"),
        )
        xerr = [[x - lo], [hi - x]] if lo is not None and hi is not None else None
        ax.errorbar(
            [x],
            [axis.sign * y],
            xerr=xerr,
            fmt="o",
            color=KIND_COLORS.get(a["kind"], "gray"),
            ms=7,
            capsize=3,
        )
        ax.annotate(
            artifact_label(report, key),
            (x, axis.sign * y),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
        )
    front = sorted(report["pareto"], key=lambda k: points[k][0])
    fx, fy = [points[k][0] for k in front], [axis.sign * points[k][1] for k in front]
    ax.step(fx, fy, where="pre", color="#d62728", lw=1.5, label="Pareto front")
    ax.scatter(fx, fy, s=170, facecolors="none", edgecolors="#d62728", lw=1.5)
    for kind, color in KIND_COLORS.items():
        if any(arts[k]["kind"] == kind for k in points):
            ax.scatter([], [], color=color, label=kind)
    ax.margins(x=0.18, y=0.15)  # room for the labels
    if axis.sign < 0:
        ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s at depth 0 (median; bars: min–max)")
    ax.set_ylabel(axis.label + (" (better: up)" if axis.sign < 0 else ""))
    ax.legend(fontsize=8, loc="best")
    _style(ax)
    caption = (
        f"Quality ({axis.label}) against decode speed at context depth 0, one point per artifact; the red "
        f"step line joins the Pareto front ({', '.join(report['pareto'])})." + _left_out(report, points)
    )
    return Plot(
        name, title, _png(fig), caption, f"Scatter plot of {axis.label} against decode tokens per second"
    )


def _plot_sizes(report: dict[str, Any]) -> Plot:
    name, title = "size", "File size per artifact"
    sizes = {k: a["size_bytes"] / 2**20 for k, a in report["artifacts"].items() if a.get("size_bytes")}
    if not sizes:
        return Plot(name, title, None, "No artifact sizes in this run (no gguf, onnx or bench stage).", "")
    keys = sorted(sizes, key=lambda k: sizes[k])
    fig, (ax,) = _figure(height=max(2.2, 0.45 * len(keys) + 1.0))
    colors = [KIND_COLORS.get(report["artifacts"][k]["kind"], "gray") for k in keys]
    bars = ax.barh([artifact_label(report, k) for k in keys], [sizes[k] for k in keys], color=colors)
    ax.bar_label(bars, labels=[num(sizes[k]) for k in keys], padding=3, fontsize=8)
    ax.set_xlabel("file size (MiB; folders: all files)")
    ax.margins(x=0.12)
    _style(ax)
    return Plot(
        name,
        title,
        _png(fig),
        "On-disk size of each artifact, coloured by format.",
        "Bar chart of artifact file sizes in MiB",
    )


def _plot_stage_quality(report: dict[str, Any]) -> Plot:
    name, title = "stage_quality", "Quality after each stage"
    rows = report["quality_by_stage"]
    metrics = [m for m in POINT_METRICS if any((r["test"] or {}).get(m) is not None for r in rows)]
    ppl = [(r["stage"], r["val_perplexity"]) for r in rows if r["val_perplexity"] is not None]
    if not rows or (not metrics and not ppl):
        return Plot(name, title, None, "No model stage recorded quality figures in this run.", "")
    fig, axes = _figure(ncols=int(bool(metrics)) + int(bool(ppl)))
    stages = [r["stage"] for r in rows]
    if metrics:
        ax = axes[0]
        width = 0.8 / len(metrics)
        for i, m in enumerate(metrics):
            vals = [100 * ((r["test"] or {}).get(m) or 0.0) for r in rows]
            xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(rows))]
            bars = ax.bar(xs, vals, width, label=METRIC_LABELS[m])
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)  # a zero is a result, make it visible
        ax.set_xticks(range(len(stages)), stages)
        ax.set_ylabel("test split (%)")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=8, ncols=2)
        _style(ax)
    if ppl:
        ax = axes[-1]
        ax.bar([s for s, _ in ppl], [v for _, v in ppl], color="#7f7f7f")
        values = [v for _, v in ppl]
        if max(values) / max(min(values), 1e-9) > 20:
            ax.set_yscale("log")
        ax.set_ylabel("validation perplexity (lower is better)")
        _style(ax)
    return Plot(
        name,
        title,
        _png(fig),
        "Task metrics on the test split and validation perplexity after each model stage "
        "(base: the untuned model).",
        "Grouped bar chart of test metrics and bar chart of validation perplexity per stage",
    )


def _plot_loss(report: dict[str, Any]) -> Plot:
    name, title = "loss", "Loss curves"
    curves = {k: c for k, c in report["training"].items() if c["train"] or c["val"]}
    if not curves:
        return Plot(name, title, None, "No loss curves in this run (train/loss_curve.json missing).", "")
    fig, axes = _figure(ncols=len(curves))
    titles = {"train": "fine-tuning", "heal": "healing after pruning"}
    for ax, (key, c) in zip(axes, curves.items(), strict=True):
        for part, style, label, color in (
            ("train", "-", "train", "#1f77b4"),
            ("val", "o-", "validation", "#ff7f0e"),
        ):
            if c[part]:
                ax.plot(
                    [p[0] for p in c[part]], [p[1] for p in c[part]], style, label=label, color=color, ms=4
                )
        ax.set_title(titles.get(key, key), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        _style(ax)
    shown = " and ".join(titles.get(k, k) for k in curves)
    return Plot(
        name,
        title,
        _png(fig),
        f"Training and validation loss: {shown}.",
        "Line plot of training and validation loss per step",
    )


def _plot_latency(report: dict[str, Any]) -> Plot:
    name, title = "latency", "Latency per artifact"
    arts = {k: a for k, a in report["artifacts"].items() if a["status"] == "ok" and a.get("latency")}
    decode = [("decode", d, "tok_s", f"decode @{d}", 1.0) for d in measured_keys(arts, "latency", "decode")]
    ttft = [("prefill", n, "ttft_s", f"TTFT @{n}", 1000.0) for n in measured_keys(arts, "latency", "prefill")]
    groups = [(g, y) for g, y in ((decode, "decode tokens/s"), (ttft, "time to first token (ms)")) if g]
    if not groups:
        return Plot(
            name, title, None, "No latency figures in this run (no bench stage, or no artifact ran).", ""
        )
    fig, axes = _figure(width=10, height=4.6, ncols=len(groups))
    keys = list(arts)
    for ax, (group, ylabel) in zip(axes, groups, strict=True):
        width = 0.8 / len(group)
        for i, (part, n, stat, label, scale) in enumerate(group):
            med, lo, hi, xs = [], [], [], []
            for j, k in enumerate(keys):
                s = dig(arts[k], "latency", part, n, stat) or {}
                if "median" not in s:
                    continue
                xs.append(j + (i - (len(group) - 1) / 2) * width)
                med.append(s["median"] * scale)
                lo.append((s["median"] - s["min"]) * scale)
                hi.append((s["max"] - s["median"]) * scale)
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=label)
        ax.set_xticks(range(len(keys)), keys, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        _style(ax)
    threads = dig(report, "bench", "threads")
    caption = (
        "Decode tokens/s at each context depth and time to first token at each prompt length (medians; "
        f"bars: min–max){f', {threads} threads' if threads else ''}." + _left_out(report, arts)
    )
    return Plot(
        name,
        title,
        _png(fig),
        caption,
        "Bar charts of decode tokens per second and time to first token per artifact",
    )


PLOTS: dict[str, Callable[[dict[str, Any]], Plot]] = {
    "quality_vs_speed": _plot_quality_speed,
    "latency": _plot_latency,
    "size": _plot_sizes,
    "stage_quality": _plot_stage_quality,
    "loss": _plot_loss,
}
