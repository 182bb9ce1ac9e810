"""The report's tables and figure formatting, shared by the Markdown and the HTML page."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edgesft.quality import POINT_METRICS
from edgesft.report.data import QUALITY_AXES, decode_speed, dig, quality_value

METRIC_LABELS = {
    "exact_match": "exact match",
    "intent_accuracy": "intent",
    "slot_f1": "slot F1",
    "valid_json": "valid JSON",
}


@dataclass
class Table:
    """One table of the report, laid out once for both pages."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    note: str = ""


def num(x: Any, digits: int | None = None) -> str:
    """A figure at a readable precision; '–' for a missing one."""
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "–"
    if digits is not None:
        return f"{x:,.{digits}f}"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1 or ax == 0:
        return f"{x:.2f}"
    return f"{x:.3g}"


def sig(x: Any) -> str:
    """Three significant digits, for small figures such as KL divergences."""
    return f"{x:.3g}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def pct(x: Any) -> str:
    """A fraction as a percentage with one decimal."""
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def mib(n: Any) -> str:
    """Bytes as MiB; '–' for a size that is not known."""
    return num(n / 2**20, 1 if n >= 10 * 2**20 else 2) if isinstance(n, (int, float)) else "–"


def measured_keys(artifacts: dict[str, dict[str, Any]], *path: str) -> list[str]:
    """The depths or prompt lengths measured by any artifact, in numeric order."""
    found: set[str] = set()
    for a in artifacts.values():
        found.update((dig(a, *path) or {}).keys())
    return sorted(found, key=lambda k: int(k) if k.isdigit() else math.inf)


def median(a: dict[str, Any], *path: str) -> float | None:
    """The median of the statistics at ``path`` of an artifact's figures."""
    v = dig(a, *path, "median")
    return float(v) if isinstance(v, (int, float)) else None


def artifact_label(report: dict[str, Any], key: str) -> str:
    """An artifact key as the tables and plots show it: the primary one is marked."""
    return f"{key} (primary)" if key == report.get("primary") else key


def build_tables(report: dict[str, Any]) -> dict[str, Table]:
    """Every table of the report by name (environment, stages, quality_by_stage, artifacts, latency,
    artifact_quality)."""
    env = report["environment"]
    arts: dict[str, dict[str, Any]] = report["artifacts"]
    tables: dict[str, Table] = {}

    env_rows = [
        ["CPU", str(env.get("cpu_model") or "–")],
        [
            "cores (physical / logical)",
            f"{env.get('physical_cores') or '–'} / {env.get('logical_cpus') or '–'}",
        ],
        ["memory (GB)", num(env.get("memory_gb"), 1)],
    ]
    if env.get("bandwidth_gb_s") is not None:
        threads = env.get("bandwidth_threads")
        env_rows.append(
            [
                "memory read bandwidth (GB/s)",
                num(env["bandwidth_gb_s"], 1) + (f", {threads} threads" if threads else ""),
            ]
        )
    bench = report.get("bench") or {}
    if bench.get("threads"):
        env_rows.append(["benchmark threads", str(bench["threads"])])
    env_rows += [["platform", env["platform"]], ["python", env["python"]]]
    env_rows += [[lib, v] for lib, v in env["libraries"].items()]
    source = (
        "measured by the bench stage" if env.get("source") == "bench" else "the machine that built the report"
    )
    tables["environment"] = Table("Environment", ["", ""], env_rows, note=f"Machine figures: {source}.")

    stage_rows = [[s["name"], num(s["duration_s"], 1), str(s["finished"] or "–")] for s in report["stages"]]
    total = sum(s["duration_s"] or 0 for s in report["stages"])
    stage_rows.append(["total", num(total, 1), ""])
    tables["stages"] = Table("Stages", ["stage", "duration (s)", "finished"], stage_rows, {1})

    q_rows = []
    for q in report["quality_by_stage"]:
        test = q["test"] or {}
        q_rows.append(
            [
                "base (untuned)" if q["stage"] == "base" else q["stage"],
                num(q["params_total"], 0) if q["params_total"] is not None else "–",
                num(q["val_loss"], 4),
                num(q["val_perplexity"]),
                *(pct(test.get(m)) for m in POINT_METRICS),
                num(test.get("n"), 0),
            ]
        )
    tables["quality_by_stage"] = Table(
        "Quality after each stage",
        [
            "stage",
            "params",
            "val loss",
            "val ppl",
            *(f"{METRIC_LABELS[m]} %" for m in POINT_METRICS),
            "test n",
        ],
        q_rows,
        set(range(1, 9)),
        note="Task metrics on the test split with greedy decoding; base is the untuned model.",
    )

    bench_ran = any(a.get("latency") for a in arts.values())
    art_headers = ["artifact", "status", "precision", "size (MiB)", "verified", "fallback tensors"]
    if bench_ran:
        art_headers += ["threads", "load (s)", "peak RSS (MiB)"]
    art_rows = []
    for key, a in arts.items():
        row = [
            artifact_label(report, key),
            str(a["status"]),
            str(a.get("precision") or "–"),
            mib(a.get("size_bytes")),
            str(a.get("verified") or "–"),
            num(a.get("fallback_tensors"), 0),
        ]
        if bench_ran:
            row += [
                num(dig(a, "latency", "threads"), 0),
                num(dig(a, "latency", "load_s")),
                num(dig(a, "latency", "peak_rss_mb")),
            ]
        art_rows.append(row)
    note = "" if bench_ran else "No bench stage in this run: size, precision and verification only."
    tables["artifacts"] = Table("Artifacts", art_headers, art_rows, {3, 5, 6, 7, 8}, note)

    # Latency in a table of its own: one row per artifact that ran, columns per measured depth and length.
    depths = measured_keys(arts, "latency", "decode")
    lengths = measured_keys(arts, "latency", "prefill")
    lat_headers = [
        "artifact",
        *(f"decode tok/s @{d}" for d in depths),
        *(f"% of bound @{d}" for d in depths),
        *(f"TTFT ms @{n}" for n in lengths),
        *(f"prefill tok/s @{n}" for n in lengths),
    ]
    lat_rows = []
    for key, a in arts.items():
        if a["status"] != "ok" or not a.get("latency"):
            continue
        ttft = [median(a, "latency", "prefill", n, "ttft_s") for n in lengths]
        lat_rows.append(
            [
                artifact_label(report, key),
                *(num(median(a, "latency", "decode", d, "tok_s")) for d in depths),
                *(pct(dig(a, "bandwidth", "bound", d, "fraction")) for d in depths),
                *(num(t * 1000 if t is not None else None) for t in ttft),
                *(num(median(a, "latency", "prefill", n, "tok_s")) for n in lengths),
            ]
        )
    tables["latency"] = Table(
        "Artifacts: latency",
        lat_headers,
        lat_rows,
        set(range(1, len(lat_headers))),
        "Medians over repeated runs (min, max and n in report.json). @d: decode at context depth d; "
        "% of bound: decode speed over (memory bandwidth / bytes read per token); TTFT: time to first token "
        "for an n-token prompt.",
    )

    test_keys = [
        m for m in POINT_METRICS if any(dig(a, "quality", "test", m) is not None for a in arts.values())
    ]
    quality_rows = []
    for key, a in arts.items():
        q = a.get("quality") or {}
        test = q.get("test") or {}
        quality_rows.append(
            [
                artifact_label(report, key),
                num(q.get("val_perplexity")),
                sig(q.get("kl_mean")),
                sig(q.get("kl_p99")),
                pct(q.get("top1_agreement")),
                *(pct(test.get(m)) for m in test_keys),
                num(test.get("n"), 0),
            ]
        )
        first = test.get("first_rows")
        if isinstance(first, dict):  # the primary on the rows the others answered (primary_test_rows)
            blank = ["", "", "", ""]
            label = f"{artifact_label(report, key)}, first {first.get('n')} rows"
            quality_rows.append(
                [label, *blank, *(pct(first.get(m)) for m in test_keys), num(first.get("n"), 0)]
            )
    ref = bench.get("reference_stage") or "the PyTorch model"
    tables["artifact_quality"] = Table(
        "Artifacts: quality",
        [
            "artifact",
            "val ppl",
            "KL mean",
            "KL p99",
            "top-1 agreement %",
            *(f"{METRIC_LABELS[m]} %" for m in test_keys),
            "test n",
        ],
        quality_rows,
        set(range(1, 6 + len(test_keys))),
        f"KL divergence (nats) and top-1 agreement against {ref}, in each artifact's own runtime.",
    )
    return tables


def pareto_lines(report: dict[str, Any]) -> list[str]:
    """One line per artifact on the Pareto front: its decode speed and quality."""
    axis = next((a for a in QUALITY_AXES if a.name == report["quality_metric"]), None)
    if axis is None:
        return []
    lines = []
    for key in report["pareto"]:
        a = report["artifacts"][key]
        speed, quality = num(decode_speed(a)), num(quality_value(a, axis))
        lines.append(f"{artifact_label(report, key)}: {speed} tok/s, {axis.label} {quality}")
    return lines


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per artifact that did not benchmark (or export) ok, with its error."""
    return [
        f"{k}: {a['status']}: {a.get('error') or ''}".rstrip(": ")
        for k, a in report["artifacts"].items()
        if a["status"] != "ok"
    ]
