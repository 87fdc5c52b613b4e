"""A worker whose model runner times each engine step, for benchmarks/step_profile.py.

Injected with ``vllm.LLM(..., worker_cls="benchmarks.timed_worker.TimedWorker")``; the
product is not patched. What is recorded per ``execute_model`` call (start/end, input
preparation, forward + logits, sampling, bookkeeping, the batch) and how host overhead is
derived from it: benchmarks/peer_step_timing.py, shared with the vLLM CPU backend's timed
worker (benchmarks/peer_timed_worker.py) so both sides measure the same intervals.

``profile_decode_steps(batch, steps)`` arms torch.profiler (CPU, record_shapes) for the next
``steps`` steady decode steps at ``batch`` requests; ``get_profile()`` returns their ops.
``set_prepacked_gemms(enabled)`` switches the CPU-mode prepacked GEMMs (A/B on one engine).
"""

from __future__ import annotations

from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

from benchmarks.peer_step_timing import StepTimingMixin, StepTimingWorkerMixin
from vllm_xpu_plugin import device
from vllm_xpu_plugin.worker.model_runner import (
    XPUPluginModelRunner,
    _PackedLinearMethod,
    _PackedLMHeadMethod,
)
from vllm_xpu_plugin.worker.xpu_worker import XPUPluginWorker


class TimedModelRunner(StepTimingMixin, XPUPluginModelRunner):
    """The plugin's runner plus per-step timestamps (see module docstring)."""

    def _timing_sync(self) -> None:
        device.synchronize()

    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        # The product's prepacked GEMM methods (CPU mode) and the plain ones they replaced,
        # so that a benchmark can switch between them on the same engine (A/B).
        self._gemm_methods = []
        for module in self.model.modules():
            method = getattr(module, "quant_method", None)
            if isinstance(method, (_PackedLinearMethod, _PackedLMHeadMethod)):
                plain = (UnquantizedLinearMethod() if isinstance(method, _PackedLinearMethod)
                         else UnquantizedEmbeddingMethod())
                self._gemm_methods.append((module, method, plain))
        self.wrap_model_for_timing()

    def set_prepacked_gemms(self, enabled: bool) -> int:
        for module, packed, plain in self._gemm_methods:
            module.quant_method = packed if enabled else plain
        return len(self._gemm_methods)


class TimedWorker(StepTimingWorkerMixin, XPUPluginWorker):

    def init_device(self) -> None:
        super().init_device()
        # The plugin's worker builds XPUPluginModelRunner; make it the timed subclass
        # (same state, the subclass only adds methods and the records it creates here).
        self.model_runner.__class__ = TimedModelRunner
        self.model_runner._init_timing()

    def set_prepacked_gemms(self, enabled: bool) -> int:
        """Switch the CPU-mode prepacked GEMMs on/off; returns how many layers have them."""
        return self.model_runner.set_prepacked_gemms(enabled)
