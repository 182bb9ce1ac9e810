"""Run a recipe's stages in order with a content-addressed cache (DVC-style).

Each stage writes ``<run_root>/<name>/<stage>/`` with its outputs and ``manifest.json``. A stage's cache key
is the sha256 of its resolved config, the output hashes of the stages it reads, the identity of its external
inputs (base model, data files) and the edgesft version; a stage folder whose manifest, key or output hashes
do not check out is a miss and is rebuilt, never an error.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgesft import __version__
from edgesft.config import Recipe
from edgesft.environment import library_versions
from edgesft.errors import EdgesftError
from edgesft.io import atomic_write_json, clean_stale_temps, path_size, read_json, sha256_file, sha256_json

MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
SCHEMA = 1


@dataclass
class StageInputs:
    """What a stage gets: the recipe, the manifests of earlier stages, and a persistent work folder."""

    recipe: Recipe
    upstream: dict[str, dict[str, Any]]
    run_dir: Path
    work_dir: Path
    external: dict[str, str] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        """Folder of an earlier stage's outputs."""
        return self.run_dir / name

    def info(self, name: str) -> dict[str, Any]:
        """The ``info`` an earlier stage recorded for the stages after it."""
        return self.upstream[name].get("info", {})


@dataclass
class StageResult:
    """What a stage returns: figures for the manifest, and pointers for later stages."""

    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its entry point, the recipe sections it depends on, and whether it runs on
    every rank of a distributed launch (training) or on rank 0 only."""

    name: str
    run: Callable[[Recipe, StageInputs, Path], StageResult]
    sections: tuple[str, ...]
    external: Callable[[Recipe], dict[str, str]] | None = None
    distributed: bool = False
    description: str = ""
    skip: Callable[[Recipe, dict[str, dict[str, Any]]], str | None] | None = None
    """Given the recipe and the manifests so far, why this stage does not apply (None: it runs)."""
    gate: Callable[[Recipe, dict[str, dict[str, Any]]], None] | None = None
    """Checks the stage's recorded figures against the recipe's limits; raises QualityGateError. Runs on
    cache hits too, so a tightened limit is enforced without re-running the stage."""


# --------------------------------------------------------------------------------------------------------
# Distributed helpers (torchrun / accelerate launch set WORLD_SIZE, RANK)


def world() -> tuple[int, int]:
    """(rank, world size) of this process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    """Join the process group of a multi-process launch (gloo on CPU, nccl on CUDA)."""
    _, size = world()
    if size <= 1:
        return
    import datetime as dt

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # Rank 0 alone runs evaluation after training while the others wait: allow a long barrier.
        dist.init_process_group(backend=backend, timeout=dt.timedelta(hours=3))


def barrier() -> None:
    _, size = world()
    if size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def is_main() -> bool:
    return world()[0] == 0


# --------------------------------------------------------------------------------------------------------
# Manifests and cache keys


GATE_FIELDS = (
    "max_quality_drop",
    "allow_failures",
    "check",
)  # limits checked on recorded figures (bench.check: by `edgesft check`): not part of any cache key


def stage_config(recipe: Recipe, spec: StageSpec) -> dict[str, Any]:
    dumped = recipe.model_dump(mode="json")
    out = {}
    for s in spec.sections:
        value: Any = dumped
        for part in s.split("."):  # "export.gguf": one subsection
            value = value[part]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in GATE_FIELDS}
        out[s] = value
    return out


def cache_key(spec: StageSpec, config: dict[str, Any], inputs: dict[str, str]) -> str:
    return sha256_json({"stage": spec.name, "config": config, "inputs": inputs, "edgesft": __version__})


def hash_outputs(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            out[f.relative_to(folder).as_posix()] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    return out


def outputs_digest(manifest: dict[str, Any]) -> str:
    return sha256_json(manifest.get("outputs", {}))


def load_valid_manifest(folder: Path, key: str | None = None) -> dict[str, Any] | None:
    """The stage's manifest if the folder is complete and intact (and matches ``key``), else None."""
    m = read_json(folder / MANIFEST)
    if not isinstance(m, dict) or m.get("status") != "complete" or m.get("schema") != SCHEMA:
        return None
    if key is not None and m.get("cache_key") != key:
        return None
    outputs = m.get("outputs")
    if not isinstance(outputs, dict):
        return None
    for rel, meta in outputs.items():
        f = folder / rel
        try:
            if not f.is_file() or f.stat().st_size != meta["size"] or sha256_file(f) != meta["sha256"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return m


# --------------------------------------------------------------------------------------------------------
# Running


def select_stages(
    names: list[str], from_stage: str | None, until_stage: str | None
) -> tuple[list[str], set[str]]:
    """Stages to visit (through ``until_stage``) and those forced to re-run (``from_stage`` onward)."""
    for flag, value in (("--from", from_stage), ("--until", until_stage)):
        if value is not None and value not in names:
            raise EdgesftError(f"{flag} {value}: unknown stage (stages: {', '.join(names)})")
    visit = names[: names.index(until_stage) + 1] if until_stage else list(names)
    forced: set[str] = set()
    if from_stage:
        if from_stage not in visit:
            raise EdgesftError(f"--from {from_stage} comes after --until {until_stage}")
        forced = set(visit[visit.index(from_stage) :])
    return visit, forced


def run_pipeline(
    recipe: Recipe,
    stages: dict[str, StageSpec],
    force: bool = False,
    from_stage: str | None = None,
    until_stage: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run (or reuse) each stage in order; return the manifests by stage name."""
    names = list(stages)
    visit, forced = select_stages(names, from_stage, until_stage)
    if force:
        forced = set(visit)
    run_dir = recipe.run_dir
    with contextlib.ExitStack() as held:
        if is_main():
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EdgesftError(
                    f"run_root: cannot create the run folder {run_dir} ({e.strerror})"
                ) from None
            # Before anything is cleaned or written: a second run on this folder must not touch the first's
            # temp folders, and must not mark a stage complete with the other run's half of its outputs.
            held.enter_context(run_lock(run_dir))
            clean_stale_temps(run_dir, names)
        barrier()
        return _run_stages(recipe, stages, visit, forced, run_dir, log)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (``.lock``, an OS file lock released when the process ends,
    however it ends); a second holder gets a one-line error naming the first."""
    import fcntl

    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            raise EdgesftError(
                f"{run_dir}: another edgesft run is using this run folder ({holder}); wait for it to finish, "
                "or run elsewhere (--root, or name=...)"
            ) from None
        os.ftruncate(fd, 0)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {platform.node()}, since {started}".encode())
        yield
    finally:
        os.close(fd)


def _run_stages(
    recipe: Recipe,
    stages: dict[str, StageSpec],
    visit: list[str],
    forced: set[str],
    run_dir: Path,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    manifests: dict[str, dict[str, Any]] = {}
    for name in visit:
        spec = stages[name]
        reason = spec.skip(recipe, manifests) if spec.skip else None
        if reason:
            log(f"[{name}] skipped: {reason}")
            continue
        config = stage_config(recipe, spec)
        external = spec.external(recipe) if spec.external else {}
        inputs = {f"stage:{u}": outputs_digest(m) for u, m in manifests.items()}
        inputs.update(external)
        key = cache_key(spec, config, inputs)
        folder = run_dir / name
        cached = None if name in forced else load_valid_manifest(folder, key)
        barrier()  # every rank has decided before rank 0 may replace the folder
        if cached is not None:
            log(f"[{name}] cache hit: {folder} (config and inputs unchanged)")
            manifests[name] = cached
        else:
            why = "forced" if name in forced else ("changed" if (folder / MANIFEST).exists() else "new")
            log(f"[{name}] running ({why}) -> {folder}")
            manifests[name] = _run_stage(recipe, spec, config, inputs, key, manifests, run_dir, log)
        if spec.gate is not None and is_main():
            spec.gate(recipe, manifests)
    return manifests


# Below this much free space a failed write is taken for a full disk, whatever the library said (native
# code reports it as "basic_ios::clear", safetensors and torch as their own write errors).
_LOW_SPACE = 64 << 20


def _disk_full(error: BaseException, tmp: Path, run_dir: Path, stage: str) -> EdgesftError | None:
    """A one-line error for a stage that failed because the disk filled up (None: it did not)."""
    import errno

    from edgesft.isolate import IsolatedFailure

    if isinstance(error, KeyboardInterrupt | SystemExit):
        return None
    if isinstance(error, EdgesftError) and not isinstance(error, IsolatedFailure):
        return None  # edgesft's own verdict (a quality gate, a bad input) stands, whatever the free space
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return None
    enospc = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not enospc and free >= _LOW_SPACE:
        return None
    written = path_size(tmp) if tmp.exists() else 0
    where = getattr(error, "filename", None) or run_dir
    return EdgesftError(
        f"stage {stage}: the disk is full writing {where} ({free / 2**20:.1f} MiB free after the stage had "
        f"written {written / 2**20:.1f} MiB; it needs more than that); nothing of the stage was kept"
    )


def last_model_stage(manifests: dict[str, dict[str, Any]]) -> str:
    """The latest stage so far whose output is a plain model folder (``info.model``)."""
    for name in reversed(list(manifests)):
        if manifests[name].get("info", {}).get("model"):
            return name
    raise EdgesftError("no earlier stage produced a model folder")


def _run_stage(
    recipe: Recipe,
    spec: StageSpec,
    config: dict[str, Any],
    inputs: dict[str, str],
    key: str,
    upstream: dict[str, dict[str, Any]],
    run_dir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    folder = run_dir / spec.name
    # Deterministic temp name so that every rank of a distributed launch writes into the same folder.
    tmp = run_dir / f".{spec.name}.{key[:16]}.tmp"
    work = run_dir / ".work" / spec.name
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if (work / "cache_key").is_file() and (work / "cache_key").read_bytes() != key.encode():
            shutil.rmtree(work, ignore_errors=True)  # checkpoints of another config: never resume them
        work.mkdir(parents=True, exist_ok=True)
        (work / "cache_key").write_text(key)
    barrier()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    stage_inputs = StageInputs(recipe, dict(upstream), run_dir, work, dict(inputs))
    if spec.distributed or is_main():
        try:
            result = spec.run(recipe, stage_inputs, tmp)
        except BaseException as e:
            full = _disk_full(e, tmp, run_dir, spec.name)
            if is_main():
                shutil.rmtree(tmp, ignore_errors=True)
            if full is not None:
                raise full from None
            raise
    else:
        result = StageResult()
    barrier()
    manifest: dict[str, Any] = {}
    if is_main():
        manifest = {
            "schema": SCHEMA,
            "stage": spec.name,
            "status": "complete",
            "cache_key": key,
            "config": config,
            "inputs": inputs,
            "outputs": hash_outputs(tmp),
            "versions": library_versions(),
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - t0, 2),
            "metrics": result.metrics,
            "info": result.info,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        old = run_dir / f".{spec.name}.old-{os.getpid()}"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        log(f"[{spec.name}] done in {manifest['duration_s']:.1f}s")
    barrier()
    if not is_main():
        manifest = load_valid_manifest(folder, key) or {}
    return manifest
