"""Layers: the import contracts hold (CLI over stages over library, stages independent), and what the stages
share from the library's machine module (machine facts, the one thread default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgesft import machine
from tests.conftest import ROOT


def test_the_import_contracts_hold() -> None:
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _cpus(cores: int, threads_per_core: int) -> list[dict[str, str]]:
    """/proc/cpuinfo blocks of one socket: logical CPU ``i`` on core ``i % cores``."""
    return [
        {"processor": str(i), "physical id": "0", "core id": str(i % cores), "model name": "Test CPU"}
        for i in range(cores * threads_per_core)
    ]


def test_default_threads_are_the_usable_physical_cores_shared_among_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(machine, "_cpuinfo", lambda: _cpus(4, 2))  # 4 cores, 2 hyper-threads each
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert machine.default_threads() == 4
    assert machine.default_threads(processes=2) == 2
    assert machine.default_threads(processes=8) == 1
    # a container pinned to CPUs 0 and 4: one core's two hyper-threads
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda _pid: {0, 4})
    assert machine.default_threads() == 1
    # a kernel that lists no cores (some VMs, ARM boards): the usable logical CPUs stand in
    monkeypatch.setattr(machine, "_cpuinfo", lambda: [{"processor": str(i)} for i in range(8)])
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert machine.default_threads() == 3
    assert machine.machine_info()["physical_cores"] == machine.os.cpu_count()


def test_set_threads_and_the_fingerprint() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        assert machine.set_threads(1) == 1 and torch.get_num_threads() == 1
        assert machine.set_threads(None) == machine.default_threads() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    fp = machine.fingerprint(3)
    assert fp["threads"] == 3 and fp["logical_cpus"] == machine.machine_info()["logical_cpus"]
    assert fp["cpu_model"] == machine.machine_info()["cpu_model"]
    assert {"torch", "edgesft", "python"} <= set(fp["libraries"])
