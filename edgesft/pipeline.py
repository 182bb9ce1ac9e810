"""Run a recipe's stages in order with a content-addressed cache (DVC-style).

Each stage writes ``<run_root>/<name>/<stage>/`` with its outputs and ``manifest.json``. The contract:

- A stage declares the recipe sections it reads (``StageSpec.sections``) and the earlier stages it reads
  (``StageSpec.reads``, plus the latest model folder where ``reads_model``); it gets only those: the recipe
  through a :class:`RecipeView` that refuses any other section, and only the manifests of the stages it reads.
- Its cache key is the sha256 of those sections, the output digests *and* ``info`` of the stages it reads, the
  identity of its external inputs (base model files, data files, the machine for bench), the source of the
  edgesft modules it runs (:func:`code_identity`) and the library versions. Changing a recipe field re-runs
  exactly the stages that read it, and those that read their changed outputs.
- A stage folder whose manifest, key or output hashes do not check out is a miss and is rebuilt, never an
  error. A stage that ends with failed artifacts is ``partial``: later stages use what it made, and the next
  run retries it (a cache hit needs ``complete``).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgesft.config import Recipe
from edgesft.environment import library_versions
from edgesft.errors import EdgesftError
from edgesft.io import atomic_write_json, clean_stale_temps, path_size, read_json, sha256_file, sha256_json

MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
SCHEMA = 2  # 2: the key covers upstream info, code identity and library versions; status may be partial
COMPLETE, PARTIAL = "complete", "partial"
STAGE_ORDER = ("data", "train", "merge", "prune", "gguf", "onnx", "verify", "export", "bench")
"""The registry's order (edgesft.stages.STAGES, checked by a test), for readers of a run folder that must not
import the stages."""


class UndeclaredRead(RuntimeError):
    """A stage read a recipe section or an earlier stage it did not declare (a bug in edgesft: the cache key
    would not cover what the stage depends on)."""


class RecipeView:
    """The recipe as one stage sees it: the sections it declared (``"export.gguf"``: one subsection), and
    the recipe's helpers (``run_dir``, ``resolve_path``). Reading any other section raises UndeclaredRead."""

    def __init__(self, recipe: Any, sections: tuple[str, ...], stage: str, prefix: str = ""):
        self._recipe = recipe
        self._sections = sections
        self._stage = stage
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._recipe, name)
        if name.startswith("_") or name not in type(self._recipe).model_fields:
            return value  # a helper or private attribute, not a recipe section
        path = f"{self._prefix}{name}"
        if path in self._sections or any(path.startswith(f"{s}.") for s in self._sections):
            return value
        inner = tuple(s for s in self._sections if s.startswith(f"{path}."))
        if inner:
            return RecipeView(value, inner, self._stage, f"{path}.")
        raise UndeclaredRead(
            f"stage {self._stage} read recipe.{path}, which is not among its sections "
            f"({', '.join(self._sections) or 'none'}): declare it in edgesft/stages/__init__.py"
        )


class Upstream(dict):  # type: ignore[type-arg]
    """The manifests of the stages a stage declared it reads; asking for another one raises UndeclaredRead
    (``get`` of a declared stage that was skipped gives the default, as for a plain dict)."""

    def __init__(self, manifests: dict[str, dict[str, Any]], declared: tuple[str, ...], stage: str):
        reads = set(declared)
        super().__init__({k: v for k, v in manifests.items() if k in reads})
        self.declared = declared
        self.stage = stage

    def _check(self, name: object) -> None:
        if name not in self.declared:
            raise UndeclaredRead(
                f"stage {self.stage} read the stage {name}, which it does not declare it reads "
                f"({', '.join(self.declared) or 'none'})"
            )

    def __getitem__(self, name: str) -> dict[str, Any]:
        self._check(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        self._check(name)
        return super().get(name, default)

    def __contains__(self, name: object) -> bool:
        self._check(name)
        return super().__contains__(name)


@dataclass
class StageInputs:
    """What a stage gets: its view of the recipe, the manifests of the stages it reads, and a persistent
    work folder."""

    recipe: Any
    upstream: dict[str, dict[str, Any]]
    run_dir: Path
    work_dir: Path
    external: dict[str, str] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        """Folder of an earlier stage's outputs."""
        if isinstance(self.upstream, Upstream):
            self.upstream._check(name)
        return self.run_dir / name

    def info(self, name: str) -> dict[str, Any]:
        """The ``info`` an earlier stage recorded for the stages after it."""
        return self.upstream[name].get("info", {})

    def source_model(self) -> tuple[str, Path]:
        """(stage name, model folder) of the latest model stage read (``StageSpec.reads_model``)."""
        source = last_model_stage(self.upstream)
        return source, self.stage_dir(source) / self.info(source)["model"]


@dataclass
class StageResult:
    """What a stage returns: figures for the manifest, and pointers for later stages."""

    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """Artifacts the stage could not make for a reason that may pass (a crash, a hang: their errors are in
    ``metrics``): the stage is ``partial``, and retried on the next run. A deterministic failure is a result."""


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its entry point, the recipe sections it depends on, and whether it runs on
    every rank of a distributed launch (training) or on rank 0 only."""

    name: str
    run: Callable[[Any, StageInputs, Path], StageResult]
    sections: tuple[str, ...]
    reads: tuple[str, ...] = ()
    """Earlier stages whose outputs this stage reads (those that ran: a skipped one is simply absent)."""
    reads_model: bool = False
    """Also reads the latest earlier stage whose output is a model folder (:func:`last_model_stage`)."""
    external: Callable[[Recipe], dict[str, Any]] | None = None
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


def stage_reads(spec: StageSpec, manifests: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The earlier stages ``spec`` reads in this run: its declared ones that ran, and the model stage."""
    names = [n for n in spec.reads if n in manifests]
    if spec.reads_model:
        model = last_model_stage(manifests)
        if model not in names:
            names.append(model)
    return tuple(names)


def stage_key(
    recipe: Recipe, spec: StageSpec, manifests: dict[str, dict[str, Any]]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(cache key, config, inputs) of ``spec`` after the stages in ``manifests``."""
    config = stage_config(recipe, spec)
    inputs: dict[str, Any] = {
        f"stage:{u}": {
            "outputs": outputs_digest(manifests[u]),
            "info": sha256_json(manifests[u].get("info", {})),
        }
        for u in stage_reads(spec, manifests)
    }
    if spec.external:
        inputs.update(spec.external(recipe))
    key = sha256_json(
        {
            "stage": spec.name,
            "config": config,
            "inputs": inputs,
            "code": code_identity(spec.run.__module__),
            "libraries": library_identity(),
        }
    )
    return key, config, inputs


@functools.cache
def library_identity() -> dict[str, str]:
    # Read once per process (importlib.metadata parses every package's METADATA: ~50 ms a call); the OS
    # build does not enter the key: a run folder copied to another machine stays a cache hit (bench alone
    # keys on the machine, through its external inputs).
    return {k: v for k, v in library_versions().items() if k != "platform"}


@functools.cache
def code_identity(module: str) -> str:
    """sha256 of the source of ``module`` and every edgesft module it imports, directly or not (imports
    inside functions included), plus the package's non-Python files (templates, schemas).

    What a stage runs is its code as much as its config: an edited edgesft module must re-run the stages
    that use it, and only those (a report template change keeps training cached).
    """
    package = Path(__file__).resolve().parent
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or not (name == "edgesft" or name.startswith("edgesft.")):
            continue
        rel = Path(*name.split(".")[1:])
        found = [
            f for f in (package / rel / "__init__.py", (package / rel).with_suffix(".py")) if f.is_file()
        ]
        if not found:  # an attribute imported from a module, not a module
            continue
        seen[name] = found[0]
        todo.extend(_edgesft_imports(name, found[0]))
    # A package's __init__ runs before its modules; its own source counts, not the modules it imports (the
    # stage registry imports every stage).
    for name in list(seen):
        for i in range(1, name.count(".") + 1):
            parent = ".".join(name.split(".")[:i])
            seen.setdefault(parent, package.joinpath(*parent.split(".")[1:], "__init__.py"))
    h = hashlib.sha256()
    for f in sorted(seen.values()) + _package_data(package):
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _package_data(package: Path) -> list[Path]:
    """Files the package reads rather than imports: schemas, and the bundle templates (a linked folder whose
    runner scripts are copied, never imported). Hidden files (editor swap files) and bytecode stay out."""
    found = []
    for root, dirs, names in os.walk(package, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
        in_templates = Path(root).name == "export_templates"
        for n in names:
            if n.startswith(".") or n.endswith(".pyc") or (n.endswith(".py") and not in_templates):
                continue
            found.append(Path(root) / n)
    return sorted(found)


def _edgesft_imports(name: str, path: Path) -> list[str]:
    """Modules named by the import statements of one edgesft module (``from edgesft import x`` may name a
    submodule or an attribute: both are listed, and a name that is no module is dropped by the caller)."""
    found: list[str] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append(base)
            found.extend(f"{base}.{a.name}" for a in node.names)
    return found


def hash_outputs(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            out[f.relative_to(folder).as_posix()] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    return out


def outputs_digest(manifest: dict[str, Any]) -> str:
    return sha256_json(manifest.get("outputs", {}))


def load_valid_manifest(
    folder: Path, key: str | None = None, statuses: tuple[str, ...] = (COMPLETE, PARTIAL)
) -> dict[str, Any] | None:
    """The stage's manifest if the folder is intact (every output byte for byte as recorded), its status is
    one of ``statuses`` and it matches ``key``; else None."""
    m = read_json(folder / MANIFEST)
    if not isinstance(m, dict) or m.get("status") not in statuses or m.get("schema") != SCHEMA:
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
        key, config, inputs = stage_key(recipe, spec, manifests)
        folder = run_dir / name
        cached = None if name in forced else load_valid_manifest(folder, key, statuses=(COMPLETE,))
        barrier()  # every rank has decided before rank 0 may replace the folder
        if cached is not None:
            log(f"[{name}] cache hit: {folder} (config and inputs unchanged)")
            manifests[name] = cached
        else:
            log(f"[{name}] running ({_why(name in forced, folder, key)}) -> {folder}")
            upstream = Upstream(manifests, (*spec.reads, *stage_reads(spec, manifests)), name)
            manifests[name] = _run_stage(recipe, spec, config, inputs, key, upstream, run_dir, log)
        if spec.gate is not None and is_main():
            spec.gate(recipe, manifests)
    return manifests


def _why(forced: bool, folder: Path, key: str) -> str:
    if forced:
        return "forced"
    old = read_json(folder / MANIFEST)
    if not isinstance(old, dict):
        return "new"
    if old.get("cache_key") == key and old.get("status") == PARTIAL:
        failed = old.get("failures") or []
        return f"retrying {len(failed)} failed artifact(s): {', '.join(map(str, failed))}"
    return "changed"


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
    upstream: Upstream,
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
    view = RecipeView(recipe, spec.sections, spec.name)
    stage_inputs = StageInputs(view, upstream, run_dir, work, dict(inputs))
    if spec.distributed or is_main():
        try:
            result = spec.run(view, stage_inputs, tmp)
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
            "status": PARTIAL if result.failures else COMPLETE,
            "failures": list(result.failures),
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
        failed = (
            f"; {len(result.failures)} artifact(s) failed, retried on the next run" if result.failures else ""
        )
        log(f"[{spec.name}] done in {manifest['duration_s']:.1f}s{failed}")
    barrier()
    if not is_main():
        manifest = load_valid_manifest(folder, key) or {}
    return manifest
