"""A run folder as one typed view: its stage manifests, every artifact it made, the primary one, and the
integrity check of an artifact's files against the manifest of the stage that wrote them.

An artifact is a torch model folder (the ``merge`` and ``prune`` stages), a GGUF file or an ONNX folder.
Every reader of "this run's artifacts" (verify, bench, export, the report, ``edgesft chat``/``eval``/
``bench``) gets them from :meth:`RunFolder.artifacts` as :class:`ArtifactRecord` values instead of reading
the stage manifests itself, and the primary artifact from one rule, :func:`choose_primary`.

Sizes come from the producing stage's manifest ``outputs`` (the bytes the pipeline hashed), so an artifact
that was not made or is not listed there has no size (``None``), never 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesft.errors import EdgesftError
from edgesft.io import read_json, sha256_file
from edgesft.pipeline import COMPLETE, MANIFEST, PARTIAL, STAGE_ORDER

TORCH_STAGES = ("merge", "prune")
"""Stages whose output is a float PyTorch model folder measured as an artifact (``torch/<stage>``)."""
EXPORT_STAGES = ("gguf", "onnx")
"""Stages whose ``metrics.artifacts`` list exported files (GGUF) or folders (ONNX)."""
FLOAT_GGUF = ("F32", "F16", "BF16")
GGUF_EXPORTER = "edgesft + llama.cpp quantizer"


@dataclass(frozen=True)
class OutputFile:
    """One file of an artifact as its stage's manifest records it (``rel``: relative to the stage folder;
    ``sha256`` or ``size`` None where the manifest entry is malformed)."""

    rel: str
    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class ArtifactRecord:
    """One artifact of a run, and what the stages recorded about it."""

    key: str
    """``gguf/<file>``, ``onnx/<folder>`` or ``torch/<stage>``: the key of bench.json and report.json."""
    kind: str
    """``gguf``, ``onnx`` or ``torch``."""
    stage: str
    """The stage folder that holds it."""
    path: Path
    """The file or folder (for a torch model: its stage folder, which holds ``model/`` and ``tokenizer/``)."""
    file: str | None = None
    """Its name inside the stage folder; None for a torch model (the whole stage folder)."""
    precision: str | None = None
    size_bytes: int | None = None
    """Bytes on disk (a torch model: its safetensors); None when it was not made or is not in the manifest."""
    params: int | None = None
    """Parameters of the weights (the source stage's ``params_total`` for an exported artifact)."""
    source_stage: str | None = None
    """The model stage its weights come from."""
    status: str = "ok"
    """``ok``, or ``failed`` when its stage could not make it (``error`` says why)."""
    error: str | None = None
    verified: str | None = None
    """The verify stage's verdict (``passed``, ``failed``, ``crashed``, ``timeout``); None: not verified."""
    failed_checks: tuple[str, ...] = ()
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None
    fallback_tensors: int | None = None
    """GGUF tensors that fell back to another quant type; None for other kinds."""
    exporter: str | None = None
    files: tuple[OutputFile, ...] = ()

    @property
    def relpath(self) -> str:
        """The path relative to the run folder, as bench.json and report.json write it."""
        return f"{self.stage}/{self.file}" if self.file else self.stage

    @property
    def sha256(self) -> str | None:
        """The manifest's sha256 of a single-file artifact (a GGUF); None for a folder."""
        if len(self.files) == 1 and self.files[0].rel == self.file:
            return self.files[0].sha256
        return None

    @classmethod
    def from_figures(
        cls, key: str, figures: Mapping[str, Any], run_dir: Path | None = None
    ) -> ArtifactRecord:
        """A record from a bench.json or report.json entry (the figures those documents keep per artifact)."""
        kind, _, name = key.partition("/")
        run_dir = run_dir if run_dir is not None else Path()
        stage = str(figures.get("stage") or (name if kind == "torch" else kind))
        return cls(
            key=key,
            kind=str(figures.get("kind") or kind),
            stage=stage,
            path=run_dir / str(figures.get("path") or key),
            file=None if kind == "torch" else name,
            precision=figures.get("precision"),
            size_bytes=figures.get("size_bytes"),
            params=figures.get("params"),
            status=str(figures.get("status") or "unknown"),
            error=figures.get("error"),
            verified=figures.get("verified"),
            fallback_tensors=figures.get("fallback_tensors"),
        )


def bundle_primary(export_manifest: Any) -> str | None:
    """The primary artifact's name (a GGUF file or an ONNX folder) the export stage's manifest records."""
    info = export_manifest.get("info") if isinstance(export_manifest, dict) else None
    name = info.get("primary") if isinstance(info, dict) else None
    return name if isinstance(name, str) and name else None


def find_named(records: Iterable[ArtifactRecord], name: str) -> ArtifactRecord | None:
    """The artifact ``name`` stands for: its key or file name, else the first of that precision."""
    records = list(records)
    for matches in (
        lambda r: name in (r.key, r.file),
        lambda r: r.precision is not None and r.precision == name,
    ):
        found = next((r for r in records if matches(r)), None)
        if found is not None:
            return found
    return None


def choose_primary(records: Iterable[ArtifactRecord], name: str | None = None) -> ArtifactRecord | None:
    """The one rule for a run's primary artifact: what the report marks, ``edgesft chat RUN/export`` opens,
    the export bundle's Modelfile names and ``edgesft check`` gates by default.

    ``name`` (the export bundle's recorded primary, or the recipe's ``export.primary``) picks the artifact it
    names (:func:`find_named`) whatever its status: a primary that failed later stays the primary, so that
    its failure shows. Otherwise, among the artifacts whose status is ok: the first quantized GGUF (what a
    device runs), else the first GGUF, else the first ONNX folder, else the first torch model. None when
    none is ok.
    """
    records = list(records)
    if name:
        found = find_named(records, name)
        if found is not None:
            return found
    ok = [r for r in records if r.status == "ok"]
    for rank in (
        lambda r: r.kind == "gguf" and (r.precision or "").upper() not in FLOAT_GGUF,
        lambda r: r.kind == "gguf",
        lambda r: r.kind == "onnx",
        lambda r: r.kind == "torch",
    ):
        found = next((r for r in ok if rank(r)), None)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class ParetoChoice:
    """The primary artifact picked from the size/quality trade-off, and why."""

    chosen: ArtifactRecord
    front: tuple[ArtifactRecord, ...]
    """The verified artifacts no other verified one beats on both size and mean KL, smallest first."""
    reason: str


def pareto_primary(records: Iterable[ArtifactRecord], max_size_bytes: int | None) -> ParetoChoice | None:
    """Quality first within the size budget: among the artifacts that passed verify with a measured size and
    mean KL (against the model they came from), the lowest KL whose size is within ``max_size_bytes``
    (ties: the smaller file). None when no verified artifact fits the budget; ``max_size_bytes`` None: no
    budget, so the lowest KL of all."""
    measured = [
        r
        for r in records
        if r.status == "ok" and r.verified == "passed" and r.size_bytes is not None and r.kl_mean is not None
    ]

    def beaten(r: ArtifactRecord) -> bool:
        return any(
            o is not r
            and o.size_bytes <= r.size_bytes  # type: ignore[operator]
            and o.kl_mean <= r.kl_mean  # type: ignore[operator]
            and (o.size_bytes, o.kl_mean) != (r.size_bytes, r.kl_mean)
            for o in measured
        )

    front = tuple(sorted((r for r in measured if not beaten(r)), key=lambda r: r.size_bytes or 0))
    fits = [r for r in front if max_size_bytes is None or (r.size_bytes or 0) <= max_size_bytes]
    if not fits:
        return None
    chosen = min(fits, key=lambda r: (r.kl_mean, r.size_bytes))
    budget = "no size budget" if max_size_bytes is None else f"size budget {max_size_bytes / 2**20:.1f} MiB"
    reason = (
        f"lowest mean KL within the {budget}: {chosen.file} (KL {chosen.kl_mean:.4f}, "
        f"{(chosen.size_bytes or 0) / 2**20:.1f} MiB) of {len(front)} on the size/KL front"
    )
    return ParetoChoice(chosen, front, reason)


def primary_key(entries: Mapping[str, Mapping[str, Any]], name: str | None) -> str | None:
    """:func:`choose_primary` among bench.json or report.json entries (by key), on their own statuses: the
    key of the primary artifact, None when none is ok. ``name``: the export bundle's recorded primary."""
    chosen = choose_primary((ArtifactRecord.from_figures(k, a) for k, a in entries.items()), name)
    return chosen.key if chosen else None


def output_files(manifest: Mapping[str, Any], under: str | None = None) -> tuple[OutputFile, ...]:
    """The files a stage manifest's ``outputs`` list, those at or below ``under`` only when given."""
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        return ()
    found = []
    for rel, meta in outputs.items():
        if under is not None and rel != under and not rel.startswith(f"{under}/"):
            continue
        meta = meta if isinstance(meta, dict) else {}
        sha, size = meta.get("sha256"), meta.get("size")
        found.append(
            OutputFile(
                str(rel),
                sha if isinstance(sha, str) else None,
                size if isinstance(size, int) and not isinstance(size, bool) else None,
            )
        )
    return tuple(found)


def check_files(stage_dir: Path, files: Iterable[OutputFile], stage: str) -> None:
    """Each file as the stage's manifest records it: present, the same size, then the same sha256.

    Raises:
        EdgesftError: one line naming the first file that is missing or differs.
    """
    for f in files:
        path = stage_dir / f.rel
        if f.sha256 is None or f.size is None:
            raise EdgesftError(
                f"{path}: the {stage} stage's manifest records no sha256 and size for it; re-run the stage"
            )
        if not path.is_file():
            raise EdgesftError(f"{path}: missing (the {stage} stage's manifest lists it); re-run the stage")
        size = path.stat().st_size
        if size != f.size:
            raise EdgesftError(
                f"{path}: {size} bytes, the {stage} stage's manifest records {f.size}: it changed after "
                "the stage wrote it; re-run the stage"
            )
        if sha256_file(path) != f.sha256:
            raise EdgesftError(
                f"{path}: sha256 differs from the {stage} stage's manifest: it changed after the stage "
                "wrote it; re-run the stage"
            )


def _valid(manifest: Any) -> bool:
    return isinstance(manifest, dict) and manifest.get("status") in (COMPLETE, PARTIAL)


def _dict(obj: Any, *keys: str) -> dict[str, Any]:
    """``obj[k1][k2]...`` when every level is a dict, else an empty dict."""
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else {}


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class RunFolder:
    """A run folder (``runs/<name>``): its stage manifests and its artifacts.

    ``manifests`` gives the stage manifests instead of reading them (a stage passes the manifests it
    declared it reads, so that it sees no other stage).
    """

    def __init__(self, run_dir: Path, manifests: Mapping[str, dict[str, Any]] | None = None):
        self.run_dir = Path(run_dir)
        # items() of a stage's Upstream gives the stages it holds without asking for any other
        self._manifests = None if manifests is None else dict(manifests.items())
        self._artifacts: dict[str, ArtifactRecord] | None = None
        self._checked: set[str] = set()

    def manifests(self) -> dict[str, dict[str, Any]]:
        """Stage manifests whose status is complete or partial, in pipeline order; folders the registry does
        not know come last, by start time. An unreadable or unfinished manifest is a stage that did not run.

        Output hashes are not checked here (that reads every weight file): :meth:`verify` does, per artifact.
        """
        if self._manifests is None:
            found: dict[str, dict[str, Any]] = {}
            if self.run_dir.is_dir():
                # hidden folders are the pipeline's temp and replaced folders, never a stage's
                for folder in sorted(
                    p for p in self.run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                ):
                    m = read_json(folder / MANIFEST)
                    if isinstance(m, dict) and _valid(m):
                        found[folder.name] = m
            order = [n for n in STAGE_ORDER if n in found]
            extra = sorted(
                (n for n in found if n not in STAGE_ORDER), key=lambda n: str(found[n].get("started", ""))
            )
            self._manifests = {n: found[n] for n in order + extra}
        return self._manifests

    def manifest(self, stage: str) -> dict[str, Any] | None:
        return self.manifests().get(stage)

    def artifacts(self) -> dict[str, ArtifactRecord]:
        """Every artifact by key: the torch models (merge, prune), then each GGUF file and ONNX folder the
        export stages recorded, failed ones included (``status`` failed, with their ``error``)."""
        if self._artifacts is None:
            found = [r for s in TORCH_STAGES if (r := self._torch(s)) is not None]
            for stage in EXPORT_STAGES:
                m = self.manifest(stage)
                for entry in _dict(m, "metrics").get("artifacts") or []:
                    name = entry.get("file") if isinstance(entry, dict) else None
                    # a plain name inside the stage folder, never a path out of it
                    if isinstance(name, str) and name == Path(name).name and not name.startswith("."):
                        found.append(self._exported(stage, m or {}, entry))
            self._artifacts = {r.key: r for r in found}
        return self._artifacts

    def primary(self) -> ArtifactRecord | None:
        """The primary artifact (:func:`choose_primary`, with the export bundle's recorded choice)."""
        return choose_primary(self.artifacts().values(), bundle_primary(self.manifest("export")))

    def verify(self, record: ArtifactRecord) -> Path:
        """Check the artifact's files against its stage's manifest (size, then sha256); return its path.

        Raises:
            EdgesftError: one line naming the file that is missing or changed, or the artifact its stage did
                not make or did not record.
        """
        if record.status != "ok":
            raise EdgesftError(f"{record.path}: the {record.stage} stage did not make it ({record.error})")
        if not record.files:
            raise EdgesftError(
                f"{record.path}: not among the outputs of {self.run_dir / record.stage / MANIFEST}; "
                "re-run the stage"
            )
        if record.key not in self._checked:
            check_files(self.run_dir / record.stage, record.files, record.stage)
            self._checked.add(record.key)
        return record.path

    def verified_path(self, key: str) -> Path:
        """The path of the artifact ``key``, checked with :meth:`verify`."""
        record = self.artifacts().get(key)
        if record is None:
            known = ", ".join(self.artifacts()) or "none"
            raise EdgesftError(f"{self.run_dir}: no artifact {key} in this run (artifacts: {known})")
        return self.verify(record)

    # ----------------------------------------------------------------------------------------------------

    def _verdict(self, key: str) -> dict[str, Any]:
        return _dict(self.manifest("verify"), "metrics", "artifacts", key)

    def _params(self, stage: str | None) -> int | None:
        return _int(_dict(self.manifest(stage), "metrics").get("params_total")) if stage else None

    def _torch(self, stage: str) -> ArtifactRecord | None:
        m = self.manifest(stage)
        info = _dict(m, "info")
        model, tok = info.get("model"), info.get("tokenizer")
        if m is None or not isinstance(model, str) or not model:
            return None
        dirs = [d for d in (model, tok) if isinstance(d, str) and d]
        files = tuple(f for d in dict.fromkeys(dirs) for f in output_files(m, d))
        weights = [f.size for f in files if f.rel.startswith(f"{model}/") and f.rel.endswith(".safetensors")]
        size = sum(w for w in weights if w is not None) if weights and None not in weights else None
        return ArtifactRecord(
            key=f"torch/{stage}",
            kind="torch",
            stage=stage,
            path=self.run_dir / stage,
            precision="fp32",
            size_bytes=size,
            params=self._params(stage),
            source_stage=stage,
            files=files,
        )

    def _exported(self, stage: str, m: dict[str, Any], entry: dict[str, Any]) -> ArtifactRecord:
        name = entry["file"]
        key = f"{stage}/{name}"
        ok = entry.get("status", "ok") == "ok"
        files = output_files(m, name) if ok else ()
        sizes = [f.size for f in files]
        verdict = self._verdict(key)
        logits = _dict(verdict, "checks", "logits")
        fallbacks = entry.get("fallbacks")
        source = _dict(m, "metrics").get("source_stage")
        source = source if isinstance(source, str) else None
        return ArtifactRecord(
            key=key,
            kind=stage,
            stage=stage,
            path=self.run_dir / stage / name,
            file=name,
            precision=entry.get("precision"),
            size_bytes=sum(s for s in sizes if s is not None) if sizes and None not in sizes else None,
            params=self._params(source),
            source_stage=source,
            status="ok" if ok else "failed",
            error=None if ok else str(entry.get("error") or f"the {stage} stage did not make it"),
            verified=verdict.get("status"),
            failed_checks=tuple(verdict.get("failed_checks") or ()),
            kl_mean=_number(logits.get("kl_mean")),
            kl_p99=_number(logits.get("kl_p99")),
            top1_agreement=_number(logits.get("top1_agreement")),
            fallback_tensors=len(fallbacks) if stage == "gguf" and isinstance(fallbacks, list) else None,
            exporter=entry.get("exporter") or (GGUF_EXPORTER if stage == "gguf" else None),
            files=files,
        )


def artifact_schema(artifact: Path) -> Path | None:
    """The answer schema that goes with an artifact (:mod:`edgesft.answer_schema`): the export bundle's copy
    beside it, or the data stage's of the run it belongs to; checked against the manifest that lists it.
    None: the artifact belongs to no bundle or run, or its data declared no schema.

    Raises:
        EdgesftError: the schema file differs from its manifest.
    """
    from edgesft.answer_schema import SCHEMA_FILE

    path = Path(artifact).resolve()
    for folder in [path, *path.parents][:4]:
        bundle = read_json(folder / MANIFEST) if folder.is_dir() else None
        if isinstance(bundle, dict) and bundle.get("stage") == "export":
            files = output_files(bundle, SCHEMA_FILE)
            if not files:
                return None
            check_files(folder, files, "export")
            return folder / SCHEMA_FILE
        data = read_json(folder / "data" / MANIFEST)
        if isinstance(data, dict) and data.get("stage") == "data":
            files = output_files(data, SCHEMA_FILE)
            if not files:
                return None
            check_files(folder / "data", files, "data")
            return folder / "data" / SCHEMA_FILE
    return None


def resolve_artifact(target: str | Path) -> Path:
    """The artifact a command-line argument names, checked against the manifest of the stage that wrote it
    when it belongs to a run (size, then sha256 of each of its files, :func:`check_files`).

    A run folder stands for its primary artifact, an export bundle for the primary it names, a stage folder
    for its model (every output its manifest lists is checked); a file or folder inside a stage folder is
    checked when that stage's manifest lists it. A path outside any run is returned unchecked.

    Raises:
        EdgesftError: no such path, a bundle that names no primary, or a file that differs from its manifest.
    """
    path = Path(target)
    if not path.exists():
        raise EdgesftError(f"{target}: no such file or folder")
    manifest = read_json(path / MANIFEST) if path.is_dir() else None
    if isinstance(manifest, dict) and manifest.get("stage") == "export":
        primary = bundle_primary(manifest)
        if primary is None or "/" in primary or primary.startswith(".") or not (path / primary).exists():
            raise EdgesftError(f"{path / MANIFEST}: names no primary artifact in this folder")
        check_files(path, output_files(manifest, primary), "export")
        return path / primary
    if isinstance(manifest, dict):  # a stage folder: its model
        check_files(path, output_files(manifest), str(manifest.get("stage") or path.name))
        return path
    parent = read_json(path.parent / MANIFEST)
    if isinstance(parent, dict):  # in a stage folder or a bundle
        stage = str(parent.get("stage") or path.parent.name)
        check_files(path.parent, output_files(parent, path.name), stage)
        return path
    if path.is_dir() and not (path / MANIFEST).exists():
        run = RunFolder(path)
        if run.manifests():  # a run folder
            chosen = run.primary()
            if chosen is None:
                raise EdgesftError(f"{path}: no artifact of this run was made")
            return run.verify(chosen)
    return path
