"""The settings of one check or baseline: the regression limits by precedence, and the thread count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgesft.config import CheckConfig
from edgesft.errors import EdgesftError
from edgesft.runtimes.timing import WARMUP


def check_settings(
    recipe: str | Path | None = None, stored: dict[str, Any] | None = None, **flags: Any
) -> CheckConfig:
    """CheckConfig by precedence: ``flags`` (not None) > fields the recipe sets in ``bench.check`` > the
    baseline file's stored ``check`` > defaults."""
    from pydantic import ValidationError

    values = {k: v for k, v in (stored or {}).items() if k in CheckConfig.model_fields}
    if recipe is not None:
        from edgesft.config import load_recipe

        rc = load_recipe(recipe).bench.check
        values.update({k: getattr(rc, k) for k in rc.model_fields_set})
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return CheckConfig(**values)
    except ValidationError as e:
        raise EdgesftError(
            *(f"check settings: {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        ) from None


def resolve_threads(*choices: int | None) -> int:
    """The first thread count given (flag, baseline, bench run), else the physical cores, as bench uses."""
    for n in choices:
        if n:
            return int(n)
    from edgesft.machine import default_threads

    return default_threads()


def recorded(cfg: CheckConfig, threads: int) -> dict[str, Any]:
    """The settings a check result reports."""
    return {**cfg.model_dump(), "threads": threads, "warmup": WARMUP}
