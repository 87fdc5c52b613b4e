"""CPU mode: the engine's OpenMP threads spin between parallel regions while the machine
is otherwise idle, and sleep at once while other processes want the cores.

Why: a decode step opens ~300 OpenMP parallel regions. Measured (AMD EPYC VM, 2 vCPUs, 2
threads, SmolLM2-135M bf16, offline 16 x 128 tokens, three engines in one run with their
generate calls alternating, 2026-12-02, ``benchmarks/engine_env_ab.py --same-process``):

=========================  ==========  ===========================
wait policy                 quiet       one busy neighbour process
=========================  ==========  ===========================
``OMP_WAIT_POLICY=PASSIVE``  298 tok/s   307 tok/s
``GOMP_SPINCOUNT=1000``      356 (1.19x)  254 (0.83x)
libgomp's default (spin)    401 (1.35x)  127 (0.41x)
=========================  ==========  ===========================

No fixed policy wins both, so the engine starts with libgomp's default spin and this
governor switches to (almost) passive waiting while other processes use the CPU. The switch
is libgomp's own documented rule (``GOMP_SPINCOUNT`` in the libgomp manual): when the
process has more OpenMP threads than available CPUs, every wait spins only 100 iterations
(OMP_WAIT_POLICY unset) and then sleeps. The governor creates that condition by keeping a
parked thread that owns an idle OpenMP team (its threads sleep; they use no CPU), and ends
it by letting that thread exit. No libgomp internals are touched.

The signal, sampled at most once per ``interval_s`` from the engine's step loop: the CPU
time other processes used (``/proc/stat`` busy time minus the time of this process and its
parent -- the API server or the offline driver, ``host_cpu.deployment_busy_seconds``: their
work is the engine's own), in cores. At or above ``busy_cores`` the threads yield; below
``quiet_cores`` they spin again (hysteresis in between, so a brief burst does not flip it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Optional

from vllm_xpu_plugin.host_cpu import (
    QUIET_OTHERS_CORES,
    OtherProcessesMeter,
    deployment_busy_seconds,
    machine_busy_seconds,
)
from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)

class _ParkedTeam:
    """A thread owning an idle OpenMP team of ``size`` threads (all asleep) until stopped."""

    def __init__(self, size: int) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._park, args=(size,), daemon=True,
                                        name="vllm-xpu-plugin-omp-parked-team")
        self._thread.start()
        self._ready.wait(5.0)

    def _park(self, size: int) -> None:
        import torch

        # This thread's own OpenMP setting (per thread in libgomp); the engine thread's
        # team size is not changed.
        torch.set_num_threads(size)
        # One parallel region (an element-wise op above ATen's 32768-element grain)
        # creates the team; libgomp keeps it for this thread until the thread exits.
        torch.ones(1 << 18).add_(1.0)
        self._ready.set()
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


class SpinGovernor:
    """Decides, from other processes' CPU use, whether the engine's OpenMP threads spin."""

    def __init__(self, *, interval_s: float = 1.0, busy_cores: float = 0.5,
                 quiet_cores: float = QUIET_OTHERS_CORES,
                 read_machine: Callable[[], float] = machine_busy_seconds,
                 read_own: Callable[[], float] = deployment_busy_seconds,
                 clock: Callable[[], float] = time.monotonic,
                 cpus: Optional[int] = None) -> None:
        self.interval_s = interval_s
        self.busy_cores = busy_cores
        self.quiet_cores = quiet_cores
        self._cpus = cpus or len(os.sched_getaffinity(0))
        self._parked: Optional[_ParkedTeam] = None
        self._others = OtherProcessesMeter(read_machine, read_own, clock)
        self.others_cores = 0.0
        self.switches = 0

    @property
    def yielding(self) -> bool:
        return self._parked is not None

    def tick(self) -> None:
        """Called once per engine step; reads /proc at most once per interval."""
        if self._others.seconds_since_last() < self.interval_s:
            return
        self.others_cores = self._others.cores_since_last()
        if not self.yielding and self.others_cores >= self.busy_cores:
            self._set_yielding(True)
        elif self.yielding and self.others_cores < self.quiet_cores:
            self._set_yielding(False)

    def _set_yielding(self, on: bool) -> None:
        if on:
            # More OpenMP threads than CPUs: the parked team alone exceeds the CPU count.
            self._parked = _ParkedTeam(self._cpus + 1)
        else:
            self._parked.stop()
            self._parked = None
        self.switches += 1
        logger.debug("CPU mode: other processes used %.2f cores: OpenMP threads %s",
                     self.others_cores, "sleep when idle" if on else "spin when idle")

    def close(self) -> None:
        if self._parked is not None:
            self._parked.stop()
            self._parked = None


def make_governor() -> Optional[SpinGovernor]:
    """The engine's governor, or None when it is not wanted or /proc cannot be read."""
    if not governor_wanted():
        return None
    try:
        governor = SpinGovernor()
    except OSError as exc:  # no /proc (not Linux): keep libgomp's behaviour as it is
        logger.info("CPU mode: OpenMP spin governor off (%s)", exc)
        return None
    logger.info("CPU mode: OpenMP threads spin between parallel regions while the machine "
                "is otherwise idle and sleep while other processes use >= %.2f cores "
                "(set OMP_WAIT_POLICY to choose yourself)", governor.busy_cores)
    return governor


def governor_wanted(environ=os.environ, threads: Optional[int] = None) -> bool:
    """The governor runs unless the user chose the wait policy (OMP_WAIT_POLICY or
    GOMP_SPINCOUNT set) or the engine runs on one thread (no team, nothing to wait for)."""
    import torch

    if environ.get("OMP_WAIT_POLICY") or environ.get("GOMP_SPINCOUNT"):
        return False
    return (threads or torch.get_num_threads()) > 1
