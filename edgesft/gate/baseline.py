"""Baseline files (``edgesft bench RUN --save-baseline``): every artifact's deterministic figures and, for
the gated ones, decode time normalized by the reference workload (:mod:`edgesft.gate.worker`), round by round.

:class:`Baseline` is the file's type. A wrong or hand-edited file fails to load with one line naming the
file and the first key that does not hold what :func:`save_baseline` writes there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from edgesft import __version__
from edgesft.config import CheckConfig
from edgesft.errors import EdgesftError
from edgesft.gate.facts import artifact_facts, artifact_path, load_bench, primary_key
from edgesft.gate.settings import check_settings, resolve_threads
from edgesft.gate.worker import (
    DEFAULT_TIMEOUT_S,
    LEGACY_REFERENCE,
    against_reference,
    reference_workload,
    tok_s,
)
from edgesft.io import atomic_write_json, path_size

SCHEMA = "edgesft.baseline/2"
LEGACY_SCHEMA = "edgesft.baseline/1"
"""Baselines whose rounds were all normalized by :data:`~edgesft.gate.worker.LEGACY_REFERENCE` (one fixed
64 MiB workload, no warm runs); they still load, and a check times against that workload the same way."""


# --------------------------------------------------------------------------------------------------------
# The file's type


def _expect(text: str, nested: bool = False) -> WrapValidator:
    """Report a value that fails its type as "expected ``text``" (the loader adds what it got).

    ``nested``: the value is an object with fields of its own; a failure inside it keeps its own location
    and message, and only a value that is not such an object at all is reported as ``text``."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as e:
            if nested and any(err["loc"] for err in e.errors()):
                raise
            raise PydanticCustomError("expected", text) from None

    return WrapValidator(validate)


# JSON numbers, where true and false are not numbers
_Number = StrictInt | StrictFloat
_Positive = Annotated[StrictInt, Field(gt=0)] | Annotated[StrictFloat, Field(gt=0)]
NumberOrNull = Annotated[_Number | None, _expect("a number or null")]
RateOrNull = Annotated[_Positive | None, _expect("a positive number or null")]
CountOrNull = Annotated[Annotated[StrictInt, Field(ge=1)] | None, _expect("a positive integer or null")]
TextOrNull = Annotated[StrictStr | None, _expect("a string or null")]
Object = Annotated[dict[str, Any], _expect("an object")]


class _Record(BaseModel):
    # Keys a later edgesft writes are kept, not refused.
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, protected_namespaces=())


class SavedReference(_Record):
    """The reference workload one artifact's rounds are normalized by
    (:func:`~edgesft.gate.worker.reference_workload`)."""

    name: TextOrNull = None
    n: Annotated[StrictInt, Field(ge=1), _expect("a positive integer")]
    """Side of the fp32 matrix."""
    repeats: Annotated[StrictInt, Field(ge=1), _expect("a positive integer")]
    """Products per timed sample."""
    warm: Annotated[StrictBool, _expect("true or false")] = True
    """Whether each timed run came right after an untimed one."""


class SavedLatency(_Record):
    """Decode timing of one gated artifact against the reference workload."""

    normalized_rounds: Annotated[
        list[_Positive], Field(min_length=1), _expect("a non-empty array of positive numbers")
    ]
    """Artifact time / reference time, one per round."""
    decode_tok_s: RateOrNull = None
    """Decode tokens per second of the median round (for reading: the gate compares normalized rounds)."""
    rounds: CountOrNull = None
    """Rounds timed."""
    reference: Annotated[SavedReference, _expect("an object", nested=True)] = Field(
        default_factory=lambda: SavedReference.model_validate(LEGACY_REFERENCE)
    )
    """The reference workload the rounds are normalized by (:func:`~edgesft.gate.worker.reference_workload` of
    the artifact's size: ``n``, ``repeats``, ``warm``); a check times against this same workload."""


class SavedQuality(_Record):
    """The quality figures a check holds an artifact to."""

    val_perplexity: NumberOrNull = None
    kl_mean: NumberOrNull = None
    test: Annotated[dict[str, NumberOrNull] | None, _expect("an object or null", nested=True)] = None
    """Task metrics (fractions) on the test split."""


class SavedArtifact(_Record):
    """One artifact's deterministic figures (:func:`edgesft.gate.facts.artifact_facts`) and, when it is
    gated, its decode timing."""

    kind: TextOrNull = None
    status: TextOrNull = None
    """The bench stage's verdict ("ok" when measured)."""
    precision: TextOrNull = None
    size_bytes: NumberOrNull = Field(None, validation_alias=AliasChoices("size_bytes", "file_bytes"))
    """Bytes on disk (baselines saved before the one size name call it ``file_bytes``)."""
    params: NumberOrNull = None
    fallback_tensors: NumberOrNull = None
    verified: TextOrNull = None
    quality: Annotated[SavedQuality | None, _expect("an object or null", nested=True)] = None
    latency: Annotated[SavedLatency | None, _expect("an object or null", nested=True)] = None


class _StoredCheck(CheckConfig):
    # A setting a later edgesft adds is ignored here, not refused: check_settings reads the known ones.
    model_config = ConfigDict(extra="ignore")


class Baseline(_Record):
    """A baseline file (``schema`` :data:`SCHEMA`, checked before the rest)."""

    schema_version: StrictStr = Field(validation_alias="schema")
    """:data:`SCHEMA`, or :data:`LEGACY_SCHEMA` for a file saved before the reference was sized per artifact."""
    run: TextOrNull = None
    """Name of the run folder it was saved from."""
    created: TextOrNull = None
    edgesft: TextOrNull = None
    """edgesft version that saved it."""
    machine: Object = Field(default_factory=dict)
    """The bench stage's machine record (CPU model, cores, memory)."""
    threads: CountOrNull = None
    """Threads every timed runtime used."""
    decode_tokens: CountOrNull = None
    """Tokens decoded per timed round."""
    check: Annotated[_StoredCheck, _expect("an object", nested=True)] = Field(default_factory=_StoredCheck)
    """The check settings it was saved with."""
    reference_workload: Object = Field(default_factory=dict)
    """Schema 1 only: the one reference workload every artifact's rounds were normalized by."""
    artifacts: Annotated[
        dict[str, Annotated[SavedArtifact, _expect("an object", nested=True)]],
        _expect("an object", nested=True),
    ]

    def facts(self) -> dict[str, dict[str, Any]]:
        """Every artifact's figures as the file has them, as :func:`edgesft.gate.compare.compare_facts` takes
        them (a figure the file lacks stays missing: it is nothing to hold a run to)."""
        return {key: a.model_dump(exclude_unset=True) for key, a in self.artifacts.items()}

    def latency(self) -> dict[str, SavedLatency]:
        """The saved decode timing of every gated artifact."""
        return {key: a.latency for key, a in self.artifacts.items() if a.latency is not None}


def load_baseline(path: Path) -> Baseline:
    """A baseline file; a wrong or hand-edited one is one line naming it and the key."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EdgesftError(f"{path}: unreadable baseline ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict) or data.get("schema") not in (SCHEMA, LEGACY_SCHEMA):
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise EdgesftError(f"{path}: not an edgesft baseline (schema {found!r}, expected {SCHEMA!r})")
    try:
        return Baseline.model_validate(data)
    except ValidationError as e:
        raise EdgesftError(f"{path}: {_problem(e.errors()[0])}") from None


def _problem(err: ErrorDetails) -> str:
    where = ".".join(map(str, err["loc"]))
    if err["type"] == "missing":
        return f"{where}: missing"
    if err["type"] == "expected":
        return f"{where}: expected {err['msg']}, got {_json_kind(err['input'])}"
    return f"{where}: {err['msg']}"


def _json_kind(value: Any) -> str:
    """A JSON value as an error message shows it: as written when short, else what kind it is."""
    text = json.dumps(value)
    if len(text) <= 40:
        return text
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "an array"
    return text[:37] + "..."


# --------------------------------------------------------------------------------------------------------
# Saving


def save_baseline(
    run: Path,
    dest: Path,
    recipe: str | Path | None = None,
    rounds: int | None = None,
    threads: int | None = None,
    artifacts: list[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time the gated artifacts of ``run`` against the reference workload and write the baseline to ``dest``
    (atomically) with every artifact's deterministic figures; returns what was written."""
    run = Path(run)
    bench = load_bench(run, "RUN")
    cfg = check_settings(recipe, None, rounds=rounds, artifacts=artifacts)
    n_threads = resolve_threads(threads, cfg.threads, bench.get("threads"))
    facts = artifact_facts(run, bench)
    gated = cfg.artifacts or [primary_key(run, bench)]
    for key in gated:
        if facts.get(key, {}).get("status") != "ok":
            ok = ", ".join(k for k, f in facts.items() if f["status"] == "ok")
            raise EdgesftError(f"RUN: {key} did not benchmark ok in {run} (artifacts: {ok or 'none'})")
    for key in gated:
        path = artifact_path(run, bench, key)
        workload = reference_workload(facts[key].get("size_bytes") or path_size(path))
        log(
            f"  timing {key} against the reference workload ({workload['name']}): {cfg.rounds} rounds, "
            f"{n_threads} threads"
        )
        norm, secs = against_reference(path, workload, n_threads, cfg.rounds, cfg.decode_tokens, timeout_s)
        facts[key]["latency"] = {
            "normalized_rounds": [float(f"{x:.6g}") for x in norm],
            "decode_tok_s": tok_s(secs),
            "rounds": cfg.rounds,
            "reference": workload,
        }
    record = {
        "schema": SCHEMA,
        "run": run.resolve().name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "edgesft": __version__,
        "machine": bench.get("machine", {}),
        "threads": n_threads,
        "decode_tokens": cfg.decode_tokens,
        "check": cfg.model_dump(),
        "artifacts": facts,
    }
    atomic_write_json(Path(dest), record)
    return record
