"""A worker whose model runner times each engine step, for benchmarks/step_profile.py.

Injected with ``vllm.LLM(..., worker_cls="benchmarks.timed_worker.TimedWorker")``; the
product is not patched. Per ``execute_model`` call it records:

- ``start`` / ``end``: the call itself (input preparation + forward + sampling +
  bookkeeping);
- ``forward``: the model's forward and ``compute_logits`` (the device work of the step);
- ``sample``: the sampler;
- the batch: requests and scheduled tokens.

The time from one call's start to the next call's start is the engine step; what is not
``forward`` in it is host overhead: scheduling, input preparation, sampling, output
processing and the engine's inter-process messaging.

``profile_decode_steps(batch, steps)`` arms torch.profiler (CPU, record_shapes) for the next
``steps`` steady decode steps at ``batch`` requests; ``get_profile()`` returns their ops.
"""

from __future__ import annotations

import time

from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

from vllm_xpu_plugin import device
from vllm_xpu_plugin.worker.model_runner import (
    XPUPluginModelRunner,
    _PackedLinearMethod,
    _PackedLMHeadMethod,
)
from vllm_xpu_plugin.worker.xpu_worker import XPUPluginWorker


class _TimedModel:
    """Delegates to the model; adds the time of ``__call__`` and ``compute_logits``."""

    def __init__(self, model, runner: TimedModelRunner) -> None:
        self._model = model
        self._runner = runner

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self._model(*args, **kwargs)
        device.synchronize()
        self._runner._forward_s += time.perf_counter() - t0
        return out

    def compute_logits(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self._model.compute_logits(*args, **kwargs)
        device.synchronize()
        self._runner._forward_s += time.perf_counter() - t0
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)


class TimedModelRunner(XPUPluginModelRunner):
    """The plugin's runner plus per-step timestamps (see module docstring)."""

    def _init_timing(self) -> None:
        self.step_records: list[dict] = []
        self._forward_s = 0.0
        self._sample_s = 0.0
        self._profile_plan: tuple[int, int] | None = None  # (batch, steps left)
        self._profiler = None
        self._profile_result: dict | None = None

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
        self.model = _TimedModel(self.model, self)

    def set_prepacked_gemms(self, enabled: bool) -> int:
        for module, packed, plain in self._gemm_methods:
            module.quant_method = packed if enabled else plain
        return len(self._gemm_methods)

    def _sample(self, logits, spec_decode_metadata):
        t0 = time.perf_counter()
        out = super()._sample(logits, spec_decode_metadata)
        device.synchronize()
        self._sample_s += time.perf_counter() - t0
        return out

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        self._forward_s = self._sample_s = 0.0
        num_reqs = len(scheduler_output.num_scheduled_tokens)
        profiling = self._profile_step_begin(num_reqs, scheduler_output.total_num_scheduled_tokens)
        start = time.perf_counter()
        out = super().execute_model(scheduler_output, intermediate_tensors)
        end = time.perf_counter()
        if profiling:
            self._profile_step_end(end - start)
        self.step_records.append(dict(
            start=start, end=end, forward=self._forward_s, sample=self._sample_s,
            num_reqs=num_reqs, num_tokens=scheduler_output.total_num_scheduled_tokens))
        return out


    # ---------------------------------------------------------------- op profile

    def profile_decode_steps(self, batch: int, steps: int) -> None:
        self._profile_plan = (batch, steps)
        self._profile_result = None
        self._profile_step_s: list[float] = []

    def _profile_step_begin(self, num_reqs: int, num_tokens: int) -> bool:
        if self._profile_plan is None:
            return False
        batch, _ = self._profile_plan
        if not num_reqs == num_tokens == batch:
            return False  # only steady decode steps at the batch asked for
        if self._profiler is None:
            import torch

            self._profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            self._profiler.__enter__()
        return True

    def _profile_step_end(self, seconds: float) -> None:
        batch, left = self._profile_plan
        self._profile_step_s.append(seconds)
        if left > 1:
            self._profile_plan = (batch, left - 1)
            return
        prof, self._profiler, self._profile_plan = self._profiler, None, None
        prof.__exit__(None, None, None)
        steps = len(self._profile_step_s)
        ops = []
        for e in prof.key_averages(group_by_input_shape=True):
            if e.self_cpu_time_total <= 0:
                continue
            ops.append(dict(name=e.key, shapes=str(e.input_shapes)[:120],
                            calls_per_step=e.count / steps,
                            self_ms_per_step=e.self_cpu_time_total / 1e3 / steps))
        ops.sort(key=lambda o: -o["self_ms_per_step"])
        self._profile_result = dict(
            batch=batch, steps=steps,
            execute_ms_per_step=1e3 * sum(self._profile_step_s) / steps,
            ops_self_ms_per_step=sum(o["self_ms_per_step"] for o in ops), ops=ops)

    def get_profile(self) -> dict | None:
        return self._profile_result


class TimedWorker(XPUPluginWorker):

    def init_device(self) -> None:
        super().init_device()
        # The plugin's worker builds XPUPluginModelRunner; make it the timed subclass
        # (same state, the subclass only adds methods and the records it creates here).
        self.model_runner.__class__ = TimedModelRunner
        self.model_runner._init_timing()

    def set_prepacked_gemms(self, enabled: bool) -> int:
        """Switch the CPU-mode prepacked GEMMs on/off; returns how many layers have them."""
        return self.model_runner.set_prepacked_gemms(enabled)

    def profile_decode_steps(self, batch: int, steps: int) -> None:
        """Profile the next ``steps`` steady decode steps at ``batch`` requests (ops)."""
        self.model_runner.profile_decode_steps(batch, steps)

    def get_profile(self) -> dict | None:
        return self.model_runner.get_profile()

    def reset_step_records(self) -> None:
        self.model_runner.step_records = []

    def get_step_records(self) -> list[dict]:
        return list(self.model_runner.step_records)

    def weight_shapes(self) -> list[dict]:
        """Every parameter of the loaded model: name, shape, bytes (for the floor)."""
        model = self.model_runner.model._model
        return [dict(name=n, shape=list(p.shape), bytes=p.numel() * p.element_size(),
                     dtype=str(p.dtype)) for n, p in model.named_parameters()]
