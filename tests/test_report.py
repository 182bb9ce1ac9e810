"""The run report on a synthetic run folder: schema, Pareto front, Markdown rows, the embedded plots, and
a run without bench or prune. No model is loaded: the report reads manifests only."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from edgesft.cli import main
from edgesft.errors import EdgesftError
from edgesft.report import (
    PLOTS,
    QUALITY_AXES,
    build_report,
    pareto_front,
    primary_key,
    schema,
    screenshot,
    validate_report,
    write_report,
)
from edgesft.report.data import quality_value

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def stats(median: float, spread: float = 0.05, n: int = 5) -> dict[str, Any]:
    return {"median": median, "min": median * (1 - spread), "max": median * (1 + spread), "n": n}


def task_metrics(exact: float, n: int = 100) -> dict[str, Any]:
    return {
        "n": n,
        "exact_match": exact,
        "intent_accuracy": min(1.0, exact + 0.3),
        "slot_f1": exact + 0.1,
        "valid_json": 0.99,
        "generate_s": 12.5,
        "generated_tokens": 2400,
    }


def manifest(
    stage: str,
    started: str,
    duration: float,
    metrics: dict[str, Any],
    info: dict[str, Any],
    outputs: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "schema": 2,
        "stage": stage,
        "status": "complete",
        "config": {},
        "inputs": {},
        "outputs": {f: {"sha256": "0" * 64, "size": n} for f, n in (outputs or {}).items()},
        "versions": {"python": "3.11.7", "edgesft": "0.1.0", "torch": "2.5.1+cpu", "transformers": "4.57.1"},
        "started": f"2026-11-21T10:{started}+00:00",
        "finished": f"2026-11-21T10:{started}+00:00",
        "duration_s": duration,
        "metrics": metrics,
        "info": info,
    }


def bench_artifact(
    kind: str, precision: str, path: str, size: int, decode: float, exact: float, kl: float | None
) -> dict[str, Any]:
    return {
        "kind": kind,
        "runtime": {
            "gguf": "llama.cpp (llama-cpp-python 0.3.36)",
            "onnx": "onnxruntime-genai 0.13.2",
            "torch": "torch 2.5.1",
        }[kind],
        "stage": path.split("/")[0] if kind != "torch" else path.split("/")[1],
        "precision": precision,
        "path": path,
        "size_bytes": size,
        "status": "ok",
        "error": None,
        "verified": None if kind == "torch" else "passed",
        "fallback_tensors": 3 if kind == "gguf" else None,
        "params": 134_515_008,
        "latency": {
            "threads": 2,
            "load_s": 0.41,
            "prefill": {
                "128": {"ttft_s": stats(128 / (8 * decode)), "tok_s": stats(8 * decode)},
                "512": {"ttft_s": stats(512 / (7 * decode)), "tok_s": stats(7 * decode)},
            },
            "decode": {"0": {"tok_s": stats(decode)}, "512": {"tok_s": stats(0.85 * decode)}},
            "rss_before_load_mb": 210.0,
            "peak_rss_mb": 210.0 + size / 2**20 * 1.1,
        },
        "bandwidth": {
            "weight_bytes": size,
            "kv_bytes_per_position": 92_160,
            "bound": {
                "0": {"bytes_per_token": size, "bound_tok_s": 12e9 / size, "fraction": decode * size / 12e9},
                "512": {
                    "bytes_per_token": size + 512 * 92_160,
                    "bound_tok_s": 12e9 / (size + 512 * 92_160),
                    "fraction": 0.85 * decode * (size + 512 * 92_160) / 12e9,
                },
            },
        },
        "quality": {
            "val_perplexity": 3.1 + (kl or 0) * 10,
            "val_tokens": 6144,
            "kl_mean": kl,
            "kl_p99": None if kl is None else 4 * kl,
            "top1_agreement": None if kl is None else 1 - kl,
            "test": {
                k: v for k, v in task_metrics(exact).items() if k not in ("generate_s", "generated_tokens")
            },
            "generate_s": 40.2,
        },
    }


def curve(steps: int, start: float) -> dict[str, Any]:
    return {
        "train": [{"step": s, "loss": start / (1 + 0.1 * s)} for s in range(1, steps + 1)],
        "val": [{"step": s, "loss": start / (1 + 0.08 * s) + 0.05} for s in range(0, steps + 1, 10)],
    }


def make_run(root: Path, *, prune: bool = True, bench: bool = True) -> Path:
    """A phone-like run folder: every stage's manifest in the documented layout, no weights."""
    run = root / "runs" / "phone"
    quality = {
        "params_total": 134_515_008,
        "val_loss": 1.21,
        "val_perplexity": 3.35,
        "test": task_metrics(0.47),
    }
    stages: dict[str, dict[str, Any]] = {
        "data": manifest("data", "00:00", 2.1, {"rows": 2000}, {"base_model": "/models/smollm2"}),
        "train": manifest(
            "train",
            "00:03",
            610.0,
            {
                **quality,
                "steps": 120,
                "train_tokens_per_s": 812.4,
                "base": {"val_loss": 3.75, "val_perplexity": 42.6, "test": task_metrics(0.0)},
            },
            {"kind": "adapter"},
        ),
        "merge": manifest("merge", "10:20", 8.3, {**quality, "val_perplexity": 3.36}, {"model": "model"}),
        "gguf": manifest(
            "gguf",
            "12:40",
            41.0,
            {
                "source_stage": "merge",
                "artifacts": [
                    {
                        "file": "phone-Q4_K_M.gguf",
                        "format": "gguf",
                        "precision": "Q4_K_M",
                        "status": "ok",
                        "fallbacks": [{"tensor": "blk.0.ffn_down.weight"}] * 3,
                        "tensor_types": {"Q4_K": 150},
                    },
                    {
                        "file": "phone-Q8_0.gguf",
                        "format": "gguf",
                        "precision": "Q8_0",
                        "status": "ok",
                        "fallbacks": [],
                        "tensor_types": {"Q8_0": 150},
                    },
                ],
            },
            {},
            {"phone-Q4_K_M.gguf": 105_000_000, "phone-Q8_0.gguf": 145_000_000, "imatrix.gguf": 1_000},
        ),
        "onnx": manifest(
            "onnx",
            "13:30",
            60.0,
            {
                "source_stage": "merge",
                "artifacts": [
                    {
                        "file": "int4",
                        "format": "onnx",
                        "precision": "int4",
                        "status": "ok",
                    }
                ],
            },
            {},
            {"int4/model.onnx": 150_000_000, "int4/genai_config.json": 10_000_000},
        ),
        "verify": manifest(
            "verify",
            "14:40",
            27.4,
            {
                "artifacts": {
                    key: {
                        "status": "passed",
                        "checks": {"logits": {"top1_agreement": 0.95, "kl_mean": kl, "kl_p99": 4 * kl}},
                    }
                    for key, kl in (
                        ("gguf/phone-Q4_K_M.gguf", 0.031),
                        ("gguf/phone-Q8_0.gguf", 0.002),
                        ("onnx/int4", 0.04),
                    )
                }
            },
            {},
        ),
        "export": manifest(
            "export", "15:10", 0.4, {"primary": "phone-Q4_K_M.gguf"}, {"primary": "phone-Q4_K_M.gguf"}
        ),
    }
    if prune:
        stages["prune"] = manifest(
            "prune",
            "10:30",
            300.0,
            {**quality, "params_total": 101_000_000, "val_perplexity": 3.9, "test": task_metrics(0.41)},
            {},
        )
    if bench:
        crashed = {
            "kind": "onnx",
            "runtime": "onnxruntime-genai 0.13.2",
            "stage": "onnx",
            "precision": "int4",
            "path": "onnx/int4",
            "size_bytes": 160_000_000,
            "status": "crashed",
            "error": "onnxruntime-genai exited with signal 11",
            "verified": "passed",
            "fallback_tensors": None,
            "params": None,
        }
        payload = {
            "machine": {
                "cpu_model": "Intel(R) Xeon(R) Test CPU @ 2.00GHz",
                "physical_cores": 2,
                "logical_cpus": 4,
                "memory_gb": 16.0,
                "bandwidth_gb_s": 12.0,
                "bandwidth_threads": 2,
            },
            "threads": 2,
            "reference_stage": "merge",
            "val_rows": 48,
            "test_rows": 100,
            "seconds": 212.4,
            "artifacts": {
                "gguf/phone-Q4_K_M.gguf": bench_artifact(
                    "gguf", "Q4_K_M", "gguf/phone-Q4_K_M.gguf", 105_000_000, 40.0, 0.45, 0.031
                ),
                "gguf/phone-Q8_0.gguf": bench_artifact(
                    "gguf", "Q8_0", "gguf/phone-Q8_0.gguf", 145_000_000, 30.0, 0.47, 0.002
                ),
                "torch/merge": bench_artifact("torch", "fp32", "merge/model", 538_000_000, 9.0, 0.46, 0.0),
                "onnx/int4": crashed,
            },
        }
        # the primary answered 400 rows (bench.quality.primary_test_rows), the others the first 100
        primary_test = payload["artifacts"]["gguf/phone-Q4_K_M.gguf"]["quality"]["test"]
        primary_test.update(n=400, first_rows={**primary_test, "n": 100, "exact_match": 0.44})
        payload["primary_test_rows"] = 400
        stages["bench"] = manifest("bench", "15:20", 212.4, payload, {})
        (run / "bench").mkdir(parents=True)
        (run / "bench" / "bench.json").write_text(json.dumps(payload))
    for name, m in stages.items():
        (run / name).mkdir(parents=True, exist_ok=True)
        (run / name / "manifest.json").write_text(json.dumps(m))
    (run / "train" / "loss_curve.json").write_text(json.dumps(curve(120, 3.4)))
    if prune:
        (run / "prune" / "heal_loss_curve.json").write_text(json.dumps(curve(40, 1.8)))
    return run


class Page(HTMLParser):
    """Every <img>, every reference to another resource, and the notes standing in for missing plots."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.refs: list[str] = []
        self.missing: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href", "srcset", "poster", "data"):
            if a.get(key):
                self.refs.append(str(a[key]))
        if a.get("data-plot-missing"):
            self.missing.append(str(a["data-plot-missing"]))


def parse_page(path: Path) -> tuple[Page, str]:
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return page, text


def check_embedded(page: Page, text: str) -> dict[str, bytes]:
    """The page's plots by name, each checked to be a real, non-trivial PNG with alt text and a caption."""
    assert not re.search(
        r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    ), "the page refers to another site"
    assert all(ref.startswith("data:image/png;base64,") for ref in page.refs), page.refs
    plots = {}
    for img in page.images:
        assert img.get("alt"), img.get("data-plot")
        png = base64.b64decode(str(img["src"]).split(",", 1)[1], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        assert len(png) > 1024
        plots[str(img["data-plot"])] = png
    assert text.count("<figcaption>") == len(page.images)
    return plots


def test_report_validates_and_embeds_every_plot(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    html_path = write_report(run)
    out = run / "report"
    assert html_path == out / "report.html"
    report = json.loads((out / "report.json").read_text())

    Draft202012Validator.check_schema(schema())
    validate_report(report)
    assert report["schema"] == "edgesft.report/2"
    assert report["run"] == "phone"
    assert [s["name"] for s in report["stages"]] == [
        "data",
        "train",
        "merge",
        "prune",
        "gguf",
        "onnx",
        "verify",
        "export",
        "bench",
    ]
    assert [q["stage"] for q in report["quality_by_stage"]] == ["base", "train", "merge", "prune"]
    assert report["quality_by_stage"][0]["test"]["exact_match"] == 0.0
    assert "generate_s" not in report["quality_by_stage"][1]["test"]
    assert report["training"]["train"]["train"][0] == [1, pytest.approx(3.4 / 1.1)]
    assert set(report["training"]) == {"train", "heal"}
    env = report["environment"]
    assert env["cpu_model"].startswith("Intel") and env["bandwidth_gb_s"] == 12.0 and env["source"] == "bench"
    assert env["libraries"]["torch"] == "2.5.1+cpu"  # recorded by the run, not what is installed now
    # Only what the stages recorded: a library installed here but never recorded is not passed off as theirs.
    assert set(env["libraries"]) == {"torch", "transformers"}
    assert report["verify"]["onnx/int4"] == "passed"
    assert report["primary"] == "gguf/phone-Q4_K_M.gguf"
    # exact match 0.45 @ 40 tok/s, 0.47 @ 30, 0.46 @ 9: the torch model is slower and worse than Q8_0
    assert report["quality_metric"] == "test.exact_match"
    assert report["pareto"] == ["gguf/phone-Q4_K_M.gguf", "gguf/phone-Q8_0.gguf"]

    page, text = parse_page(html_path)
    plots = check_embedded(page, text)
    assert set(plots) == set(PLOTS)
    assert not page.missing

    md = (out / "report.md").read_text()
    for key in report["artifacts"]:
        assert re.search(rf"^\| {re.escape(key)}( \(primary\))? \|", md, re.M), key
    assert report["bench"]["primary_test_rows"] == 400
    # the front compares the primary on the rows the others answered
    axis = next(a for a in QUALITY_AXES if a.name == "test.exact_match")
    assert quality_value(report["artifacts"]["gguf/phone-Q4_K_M.gguf"], axis) == 0.44
    assert re.search(r"^\| gguf/phone-Q4_K_M\.gguf \(primary\), first 100 rows( \| ){5}44\.0 \|", md, re.M)
    rows = [line for line in md.splitlines() if line.startswith("| gguf/phone-Q4_K_M.gguf (primary) |")]
    assert len(rows) == 3  # artifacts, latency, quality
    assert rows[0].startswith("| gguf/phone-Q4_K_M.gguf (primary) | ok | Q4_K_M | 100.1 | passed | 3 |")
    assert rows[1].startswith(
        "| gguf/phone-Q4_K_M.gguf (primary) | 40.0 | 34.0 | 35.0 |"
    )  # decode @0, @512, % bound
    assert rows[2].startswith("| gguf/phone-Q4_K_M.gguf (primary) | 3.41 | 0.031 | 0.124 | 96.9 | 45.0 |")
    assert "| onnx/int4 | crashed |" in md and "signal 11" in md
    assert "## Pareto front" in md and "- gguf/phone-Q8_0.gguf: 30.0 tok/s" in md


BROKEN_REPORTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "status": lambda r: r["artifacts"]["gguf/phone-Q8_0.gguf"].update(status="exploded"),
    "n": lambda r: r["artifacts"]["torch/merge"]["latency"]["decode"]["0"]["tok_s"].pop("n"),
    "median": lambda r: r["artifacts"]["torch/merge"]["latency"]["prefill"]["128"]["ttft_s"].update(
        median="fast"
    ),
    "ok without decode figure": lambda r: r["artifacts"]["torch/merge"]["latency"]["decode"]["0"].pop(
        "tok_s"
    ),
    "fraction": lambda r: r["artifacts"]["torch/merge"]["bandwidth"]["bound"]["0"].update(fraction=-0.5),
    "error": lambda r: r["artifacts"]["onnx/int4"].update(error=None),
    "schema": lambda r: r.update(schema="edgesft.report/1"),
    "old size name": lambda r: r["artifacts"]["torch/merge"].update(
        file_bytes=r["artifacts"]["torch/merge"].pop("size_bytes")
    ),
    "environment": lambda r: r["environment"].pop("cpu_model"),
    "exact_match": lambda r: r["quality_by_stage"][0]["test"].update(exact_match=47.0),
    "extra": lambda r: r.update(surprise=1),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    built = build_report(make_run(tmp_path_factory.mktemp("schema")))
    validate_report(built)
    return built


@pytest.mark.parametrize("case", BROKEN_REPORTS)
def test_schema_rejects_broken_reports(report: dict[str, Any], case: str) -> None:
    broken = json.loads(json.dumps(report))
    BROKEN_REPORTS[case](broken)
    with pytest.raises(EdgesftError, match="report.json"):
        validate_report(broken)


def test_schema_accepts_unmeasured_figures(tmp_path: Path) -> None:
    """An artifact whose decode could not be measured has a null bandwidth fraction (bench.json as the bench
    stage writes it); a failed one may carry only part of its latency figures."""
    run = make_run(tmp_path)
    bench = json.loads((run / "bench" / "bench.json").read_text())
    q4 = bench["artifacts"]["gguf/phone-Q4_K_M.gguf"]
    q4["bandwidth"]["bound"]["0"].update(fraction=None, bound_tok_s=None)
    q4["latency"]["decode"].pop("0")
    failed = bench["artifacts"]["onnx/int4"]
    failed["latency"] = {"threads": 2, "prefill": {"128": {}}, "decode": {"0": {}}}
    failed["bandwidth"] = {
        "weight_bytes": 10,
        "bound": {"0": {"bytes_per_token": 10, "bound_tok_s": 1.0, "fraction": None}},
    }
    (run / "bench" / "bench.json").write_text(json.dumps(bench))
    write_report(run, tmp_path / "out")  # validates before it writes
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["artifacts"]["gguf/phone-Q4_K_M.gguf"]["bandwidth"]["bound"]["0"]["fraction"] is None


def test_primary_artifact_rule() -> None:
    arts = {
        "torch/merge": {"kind": "torch", "status": "ok"},
        "onnx/int4": {"kind": "onnx", "status": "ok"},
        "gguf/a.gguf": {"kind": "gguf", "status": "crashed"},
        "gguf/b.gguf": {"kind": "gguf", "status": "ok"},
    }
    assert primary_key(arts, "int4") == "onnx/int4"  # the bundle's choice, whatever its status
    assert primary_key(arts, "a.gguf") == "gguf/a.gguf"
    assert primary_key(arts, None) == "gguf/b.gguf"  # no export: the first GGUF that benchmarked ok
    assert primary_key(arts, "gone.gguf") == "gguf/b.gguf"
    assert primary_key({"torch/merge": arts["torch/merge"]}, None) == "torch/merge"
    assert primary_key({"gguf/a.gguf": arts["gguf/a.gguf"]}, None) is None


def test_pareto_front_on_known_points() -> None:
    points = {
        "fast_bad": (50.0, 0.2),
        "slow_good": (10.0, 0.9),
        "middle": (30.0, 0.6),
        "dominated": (29.0, 0.5),
        "twin": (30.0, 0.6),
        "same_speed_worse": (50.0, 0.1),
        "nan": (float("nan"), 1.0),
    }
    assert pareto_front(points) == ["fast_bad", "middle", "twin", "slow_good"]
    assert pareto_front({}) == []
    assert pareto_front({"only": (1.0, 1.0)}) == ["only"]
    # one point better on both axes dominates every other
    assert pareto_front({"a": (1.0, 1.0), "b": (2.0, 2.0), "c": (0.5, 1.5)}) == ["b"]


def test_run_without_bench_or_prune(tmp_path: Path) -> None:
    run = make_run(tmp_path, prune=False, bench=False)
    html_path = write_report(run, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    validate_report(report)
    assert [q["stage"] for q in report["quality_by_stage"]] == ["base", "train", "merge"]
    assert set(report["training"]) == {"train"}
    assert report["pareto"] == [] and report["quality_metric"] is None and report["bench"] is None
    assert report["environment"]["source"] == "report"
    q4 = report["artifacts"]["gguf/phone-Q4_K_M.gguf"]
    assert q4["size_bytes"] == 105_000_000 and q4["fallback_tensors"] == 3 and q4["verified"] == "passed"
    assert q4["quality"]["kl_mean"] == 0.031 and q4["params"] == 134_515_008  # the merge stage's
    assert report["artifacts"]["onnx/int4"]["size_bytes"] == 160_000_000  # every file of the folder
    assert report["primary"] == "gguf/phone-Q4_K_M.gguf"

    page, text = parse_page(html_path)
    plots = check_embedded(page, text)
    assert set(plots) == {"size", "stage_quality", "loss"}
    assert set(page.missing) == {"quality_vs_speed", "latency"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| gguf/phone-Q8_0.gguf | ok | Q8_0 |" in md and "No bench stage" in md


def test_minimal_run_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, prune=False, bench=False)
    for stage in ("gguf", "onnx", "verify", "export"):
        shutil.rmtree(run / stage)
    (run / "train" / "loss_curve.json").unlink()
    (run / "merge" / "manifest.json").write_text("{not json")  # an unreadable stage counts as not run
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "r" / f"report.{ext}") for ext in ("json", "md", "html")]
    page, text = parse_page(tmp_path / "r" / "report.html")
    assert set(check_embedded(page, text)) == {"stage_quality"}
    assert set(page.missing) == {"quality_vs_speed", "latency", "size", "loss"}

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    # an output folder that cannot be made: one line naming it, no traceback
    (tmp_path / "a-file").write_text("")
    assert main(["report", str(run), "--out", str(tmp_path / "a-file" / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'a-file' / 'r'}: ") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no stage manifest.json" in capsys.readouterr().err


def test_report_does_not_import_torch(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    code = (
        "import sys; from pathlib import Path; from edgesft.report import write_report; "
        f"write_report(Path({str(run)!r})); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(
    not any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
    reason="no headless Chromium on PATH",
)
def test_screenshot_in_headless_chromium(tmp_path: Path) -> None:
    html_path = write_report(make_run(tmp_path))
    png = tmp_path / "shot" / "report.png"
    assert screenshot(html_path, png, width=1280)
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 50_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1280 and height > 1500


def test_screenshot_without_a_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert screenshot(tmp_path / "report.html", tmp_path / "report.png") is False
