"""The committed lock (requirements-lock.txt) against pyproject.toml and the environment it installed."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "requirements-lock.txt"


def _lock() -> dict[str, list[tuple[str, str]]]:
    """name -> [(version, marker)] (a package may be pinned once per Python-version split)."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # every entry is one exact pin
        assert spec.operator == "==", line
        pins.setdefault(canonicalize_name(req.name), []).append((spec.version, str(req.marker or "")))
    return pins


def _pinned_here(pins: list[tuple[str, str]]) -> str | None:
    env = default_environment()
    for version, marker in pins:
        if not marker or Requirement(f"x; {marker}").marker.evaluate(env):  # type: ignore[union-attr]
            return version
    return None


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_pyproject_dependency_is_pinned_within_its_range() -> None:
    pins = _lock()
    for req in _pyproject_requirements():
        version = _pinned_here(pins.get(canonicalize_name(req.name), []))
        assert version is not None, f"{req.name} is in pyproject.toml but not in {LOCK.name}"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} not in {req}"


def test_the_lock_is_on_transformers_5_without_optimum() -> None:
    pins = _lock()
    assert _pinned_here(pins["transformers"]).split(".")[0] == "5"  # type: ignore[union-attr]
    assert "optimum" not in pins and "optimum-onnx" not in pins


def test_this_environment_was_installed_from_the_lock() -> None:
    # install.sh installs through the lock; CI runs in the venv it made. torch may be the user's own build.
    wrong = []
    for name, entries in _lock().items():
        version = _pinned_here(entries)
        if version is None or name == "torch":
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a pin for another platform, or a constraint nothing here asks for (torch's CUDA wheels)
        if Version(installed) != Version(version):
            wrong.append(f"{name} {installed} (lock: {version})")
    assert not wrong, "installed versions differ from the lock: " + ", ".join(wrong)
