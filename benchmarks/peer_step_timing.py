"""Per-step timing of a vLLM V1 model runner, shared by the plugin's timed worker
(benchmarks/timed_worker.py) and the vLLM CPU backend's (benchmarks/peer_timed_worker.py).

Imports vLLM's scheduler and never the plugin, so the peer (vLLM's own CPU backend, in its
own venv, where the plugin is not installed) can load it. Both sides then measure the *same*
intervals of ``GPUModelRunner.execute_model`` (the code both runners inherit), per call:

- ``start`` / ``end``: the call (input preparation + forward + sampling + bookkeeping);
- ``prep``: ``_update_states`` + ``_prepare_inputs`` + ``_preprocess`` (persistent batch
  update, input ids / positions / attention metadata, model inputs);
- ``forward``: the model's forward and ``compute_logits`` (the device work of the step);
- ``sample``: the sampler;
- ``bookkeep``: ``_bookkeeping_sync`` (sampled ids to lists, request state);
- the batch: requests and scheduled tokens.

and, when the engine runs :class:`TimedScheduler` (``scheduler_cls=...``; the scheduler and
a TP=1 worker share the engine-core process, which is how the two meet):

- ``schedule``: the ``Scheduler.schedule()`` call that produced this step;
- ``update``: ``Scheduler.update_from_output()`` after it (request state, stop checks,
  the engine-core outputs).

The time from one call's start to the next call's start is the engine step; everything in
it that is not ``forward`` is host overhead: the runner's own share above plus, outside the
runner, scheduling, output processing and the engine's inter-process messaging.
"""

from __future__ import annotations

import time

from vllm.v1.core.sched.scheduler import Scheduler

# Handed from the scheduler to the runner within the engine-core process: the last
# schedule() duration, and the step record that update_from_output() completes.
_SCHEDULER_HANDOFF: dict = {"schedule": None, "record": None}


class TimedScheduler(Scheduler):
    """vLLM's scheduler, timing ``schedule`` and ``update_from_output``."""

    def schedule(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super().schedule(*args, **kwargs)
        _SCHEDULER_HANDOFF["schedule"] = time.perf_counter() - t0
        return out

    def update_from_output(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super().update_from_output(*args, **kwargs)
        record = _SCHEDULER_HANDOFF["record"]
        if record is not None:
            record["update"] = time.perf_counter() - t0
            _SCHEDULER_HANDOFF["record"] = None
        return out


class TimedModel:
    """Delegates to the model; adds the time of ``__call__`` and ``compute_logits`` to the
    runner's forward time (the runner's ``_timing_sync`` waits for the device first)."""

    def __init__(self, model, runner) -> None:
        self._model = model
        self._runner = runner

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self._model(*args, **kwargs)
        self._runner._timing_sync()
        self._runner._forward_s += time.perf_counter() - t0
        return out

    def compute_logits(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self._model.compute_logits(*args, **kwargs)
        self._runner._timing_sync()
        self._runner._forward_s += time.perf_counter() - t0
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)


def _timed(attr: str, method: str):
    """A runner method that adds its own duration to ``self.<attr>``."""

    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return getattr(super(StepTimingMixin, self), method)(*args, **kwargs)
        finally:
            setattr(self, attr, getattr(self, attr) + time.perf_counter() - t0)

    wrapper.__name__ = method
    return wrapper


class StepTimingMixin:
    """Put in front of a vLLM V1 model runner class (``class R(StepTimingMixin, Runner)``);
    call :meth:`_init_timing` once, and wrap the model with :meth:`wrap_model_for_timing`
    after it is loaded."""

    def _init_timing(self) -> None:
        self.step_records: list[dict] = []
        self._forward_s = self._sample_s = self._prep_s = self._bookkeep_s = 0.0
        self._profile_plan: tuple[int, int] | None = None  # (batch, steps left)
        self._profiler = None
        self._profile_result: dict | None = None
        self._profile_step_s: list[float] = []

    def _timing_sync(self) -> None:
        """Wait for the device (CPU: nothing to wait for)."""

    def wrap_model_for_timing(self) -> None:
        if not isinstance(self.model, TimedModel):
            self.model = TimedModel(self.model, self)

    _update_states = _timed("_prep_s", "_update_states")
    _prepare_inputs = _timed("_prep_s", "_prepare_inputs")
    _preprocess = _timed("_prep_s", "_preprocess")
    _bookkeeping_sync = _timed("_bookkeep_s", "_bookkeeping_sync")

    def _sample(self, logits, spec_decode_metadata):
        t0 = time.perf_counter()
        out = super()._sample(logits, spec_decode_metadata)
        self._timing_sync()
        self._sample_s += time.perf_counter() - t0
        return out

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        self._forward_s = self._sample_s = self._prep_s = self._bookkeep_s = 0.0
        num_reqs = len(scheduler_output.num_scheduled_tokens)
        num_tokens = scheduler_output.total_num_scheduled_tokens
        profiling = self._profile_step_begin(num_reqs, num_tokens)
        start = time.perf_counter()
        out = super().execute_model(scheduler_output, intermediate_tensors)
        end = time.perf_counter()
        if profiling:
            self._profile_step_end(end - start)
        record = dict(start=start, end=end, forward=self._forward_s, sample=self._sample_s,
                      prep=self._prep_s, bookkeep=self._bookkeep_s, num_reqs=num_reqs,
                      num_tokens=num_tokens)
        if _SCHEDULER_HANDOFF["schedule"] is not None:
            record["schedule"] = _SCHEDULER_HANDOFF["schedule"]
            _SCHEDULER_HANDOFF["schedule"] = None
            _SCHEDULER_HANDOFF["record"] = record
        self.step_records.append(record)
        return out

    # ---------------------------------------------------------------- op profile

    def profile_decode_steps(self, batch: int, steps: int) -> None:
        self._profile_plan = (batch, steps)
        self._profile_result = None
        self._profile_step_s = []

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


class StepTimingWorkerMixin:
    """The worker's side: ``collective_rpc`` entry points over a StepTimingMixin runner."""

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
        model = self.model_runner.model
        model = getattr(model, "_model", model)
        return [dict(name=n, shape=list(p.shape), bytes=p.numel() * p.element_size(),
                     dtype=str(p.dtype)) for n, p in model.named_parameters()]
