"""The host CPU, without torch: its feature flags (CPU mode picks kernel settings by them
through ``device``, and the doctor reports them, including when torch itself is broken) and
its load from other processes (the spin governor and the load-time kernel measurements)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable


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


# Below this, other processes leave the cores to the engine: the spin governor spins again,
# and a load-time kernel timing is trusted.
QUIET_OTHERS_CORES = 0.25


class OtherProcessesMeter:
    """Other processes' CPU use (the machine's busy time minus this deployment's) between
    readings, in cores. The readers and clock are injectable (tests drive them); the
    constructor's first reading raises OSError where /proc cannot be read."""

    def __init__(self, read_machine: Callable[[], float] = machine_busy_seconds,
                 read_own: Callable[[], float] = deployment_busy_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read_machine, self._read_own, self._clock = read_machine, read_own, clock
        self._last = (clock(), read_machine(), read_own())

    def seconds_since_last(self) -> float:
        return self._clock() - self._last[0]

    def cores_since_last(self) -> float:
        """Other processes' cores since the previous reading; this becomes the previous."""
        now, machine, own = self._clock(), self._read_machine(), self._read_own()
        then, machine0, own0 = self._last
        self._last = (now, machine, own)
        return max(0.0, (machine - machine0) - (own - own0)) / max(now - then, 1e-3)


class OtherProcessesLoad:
    """``with OtherProcessesLoad() as load: ...`` -- afterwards ``load.cores`` is the CPU
    other processes (not this one or its parent) used meanwhile, in cores; 0.0 where /proc
    cannot be read. Resolution: one clock tick (10 ms) over the block's duration."""

    def __init__(self) -> None:
        self.cores = 0.0
        self._meter: OtherProcessesMeter | None = None

    def __enter__(self) -> OtherProcessesLoad:
        try:
            self._meter = OtherProcessesMeter()
        except OSError:
            self._meter = None
        return self

    def __exit__(self, *exc) -> None:
        if self._meter is None:
            return
        try:
            self.cores = self._meter.cores_since_last()
        except OSError:
            pass
