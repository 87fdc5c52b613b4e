"""The host CPU, without torch: its feature flags (CPU mode picks kernel settings by them
through ``device``, and the doctor reports them, including when torch itself is broken) and
its load from other processes (the spin governor and the load-time kernel measurements)."""

from __future__ import annotations

import functools
import os
import time


@functools.cache
def cpu_flags() -> frozenset:
    """The feature flags of the host's first CPU (/proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


# ---- the host's load: how much CPU other processes use ---------------------------------
# Read by the OpenMP spin governor (worker/cpu_spin_governor.py) and by the load-time
# kernel measurements, which must not trust a timing taken while other processes competed
# for the cores (kernels/attention.py).

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds(path: str = "/proc/stat") -> float:
    """CPU seconds all processes of this machine spent busy (user, nice, system, irq,
    softirq; not idle, iowait or the hypervisor's steal)."""
    with open(path) as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def own_busy_seconds(path: str = "/proc/self/stat") -> float:
    """CPU seconds (user + system) of this process, all its threads."""
    with open(path) as f:
        after_name = f.read().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / _CLOCK_TICKS


def deployment_busy_seconds() -> float:
    """CPU seconds of this engine's own deployment: this process and its parent.

    The parent is the API server under ``vllm serve`` and the driver of an offline ``LLM``;
    both wake when the engine does (detokenizing, streaming, scheduling the next call), so
    their CPU use is the engine's own work, not a neighbour's. Nothing further up is
    counted: a harness or a user's program that starts the engine may run real competitors
    of its own.
    """
    total = own_busy_seconds()
    parent = os.getppid()
    if parent > 1:  # 1 (or 0): orphaned or a container's init, not a vLLM process
        try:
            total += own_busy_seconds(f"/proc/{parent}/stat")
        except OSError:  # the parent exited between getppid() and the read
            pass
    return total


class OtherProcessesLoad:
    """``with OtherProcessesLoad() as load: ...`` -- afterwards ``load.cores`` is the CPU
    other processes (not this one or its parent) used meanwhile, in cores; 0.0 where /proc
    cannot be read. Resolution: one clock tick (10 ms) over the block's duration."""

    def __init__(self) -> None:
        self.cores = 0.0
        self._start: tuple[float, float, float] | None = None

    def __enter__(self) -> OtherProcessesLoad:
        try:
            self._start = (time.monotonic(), machine_busy_seconds(), deployment_busy_seconds())
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        try:
            machine, own = machine_busy_seconds(), deployment_busy_seconds()
        except OSError:
            return
        then, machine0, own0 = self._start
        elapsed = max(time.monotonic() - then, 1e-3)
        self.cores = max(0.0, (machine - machine0) - (own - own0)) / elapsed
