"""Facts about the machine a process runs on: CPU, cores, memory, read bandwidth, and the one thread default.

Every stage that runs torch, llama.cpp or onnxruntime on the CPU takes its thread count from
:func:`default_threads` unless the recipe names one, so a run's stages (and ``edgesft eval``, ``edgesft
check``) agree on it. :func:`fingerprint` is what makes a measurement specific to a machine: a cached
benchmark taken on another CPU, with another thread count or other libraries, is not this machine's.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def _cpuinfo() -> list[dict[str, str]]:
    """One dict per logical CPU of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    blocks = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _cores(cpus: list[dict[str, str]], only: set[int] | None = None) -> int:
    """Distinct (physical id, core id) pairs among ``cpus`` (those numbered in ``only``); 0 where the kernel
    lists none (some VMs and ARM boards)."""
    cores = set()
    for fields in cpus:
        if "physical id" not in fields or "core id" not in fields:
            continue
        if only is not None and int(fields.get("processor", -1)) not in only:
            continue
        cores.add((fields["physical id"], fields["core id"]))
    return len(cores)


def _cpu_model(cpus: list[dict[str, str]]) -> str | None:
    for fields in cpus:
        name = fields.get("model name") or fields.get("Hardware")
        if name:
            return name
    return platform.processor() or None


def _cpu_id(cpus: list[dict[str, str]]) -> str | None:
    """Family, model and stepping: cloud VMs of different generations share one model name ("Intel(R)
    Xeon(R) Processor")."""
    for fields in cpus:
        parts = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
        if parts:
            return " ".join(parts)
    return None


def _last_level_cache_kib() -> int | None:
    """Size of CPU 0's largest cache level in KiB, from sysfs (None where it is not listed)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        unit = {"K": 1, "M": 1024, "G": 1024 * 1024}.get(text[-1:].upper())
        if unit and text[:-1].isdigit():
            sizes.append(int(text[:-1]) * unit)
    return max(sizes, default=None)


def machine_info() -> dict[str, Any]:
    """CPU model (and its family/model/stepping), last-level cache, physical cores, logical CPUs and memory
    of this machine, read from /proc and /sys (Linux).

    Physical cores are the distinct (physical id, core id) pairs of /proc/cpuinfo; where the kernel does not
    list them the logical count stands in. Memory is in GB (10^9 bytes).
    """
    cpus = _cpuinfo()
    logical = os.cpu_count()
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) * 1024 / 1e9, 2)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu_model": _cpu_model(cpus),
        "cpu_id": _cpu_id(cpus),
        "last_level_cache_kib": _last_level_cache_kib(),
        "physical_cores": _cores(cpus) or logical,
        "logical_cpus": logical,
        "memory_gb": memory_gb,
    }


# --------------------------------------------------------------------------------------------------------
# Threads


def default_threads(processes: int = 1) -> int:
    """Threads for one of ``processes`` processes working at once on this machine (the ranks of a
    distributed launch): the physical cores this process may run on, shared out evenly.

    Physical cores, not logical CPUs: hyper-threads share a core's load/store units and slow memory-bound
    decode down, and torch's own default is the physical cores too. Only the CPUs of the process's
    affinity mask count (a container or ``taskset`` limited to 4 of 64 cores gets 4).
    """
    try:
        usable: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = None
    logical = len(usable) if usable is not None else (os.cpu_count() or 1)
    physical = _cores(_cpuinfo(), usable) or logical
    return max(1, min(physical, logical) // max(processes, 1))


def set_threads(n: int | None, processes: int = 1) -> int:
    """Set torch's intra-op threads to ``n`` (None: :func:`default_threads` for ``processes``); return the
    count set."""
    import torch

    threads = n or default_threads(processes)
    torch.set_num_threads(threads)
    return threads


def fingerprint(threads: int) -> dict[str, Any]:
    """What a speed measurement depends on besides the artifact: CPU model, logical CPUs, the resolved
    thread count and the library versions (platform included: the kernel and libc are part of it)."""
    from edgesft.environment import library_versions

    info = machine_info()
    return {
        "cpu_model": info["cpu_model"],
        "logical_cpus": info["logical_cpus"],
        "threads": int(threads),
        "libraries": library_versions(),
    }


# --------------------------------------------------------------------------------------------------------
# Memory


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def rss_mb() -> float:
    """This process's resident set now (MiB)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident set so far (MiB). VmHWM, not getrusage's ru_maxrss: Linux carries a
    parent's larger ru_maxrss over fork and exec, so a child started by a big pipeline would report the
    parent's peak."""
    return _status_mb("VmHWM")


def peak_memory_mb() -> float:
    """Peak memory of this process's model work (MiB): CUDA allocations on a GPU, else the peak RSS."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(peak_rss_mb(), 1)


def memory_bandwidth(threads: int, mib: int = 512, repeats: int = 7) -> float:
    """Memory read bandwidth (GB/s): best of ``repeats`` sums over a ``mib`` MiB buffer with ``threads``
    threads (best, because the bound it feeds is an upper bound). The buffer is far larger than any cache
    this kind of machine has; torch's vectorized reduction is read-bound at this size."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 1024 * 1024 // 4, dtype=torch.float32)
    x.sum()  # page in, warm up the thread pool
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9
