"""Accuracy-suite configs (``accuracy/configs/<name>.yaml``): loading and validation.

A config names one model and how to serve it, and the tasks with their expected metric
values. Every mistake in a config is reported as one line naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ACCURACY_DIR = Path(__file__).resolve().parent
CONFIG_DIR = ACCURACY_DIR / "configs"
TASK_DIR = ACCURACY_DIR / "tasks"
TIERS = ("cpu", "xpu")
DTYPES = ("bfloat16", "float16", "float32", "auto")
# Engine options a config may pass to vllm.LLM (through lm-eval's vllm backend).
ENGINE_KEYS = (
    "block_size",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "enforce_eager",
    "seed",
    # "fp8" / "fp8_e5m2": the fp8 KV-cache config (SmolLM2-135M-Instruct-bf16-fp8kv).
    "kv_cache_dtype",
    # CPU mode only: the KV cache's size in GiB (VLLM_XPU_PLUGIN_CPU_KVCACHE_GB; the plugin's
    # default, 4, lets the OOM killer take engines on a small shared machine).
    "cpu_kvcache_gb",
)


class ConfigError(ValueError):
    """A config file that cannot be run; the message is one line naming file and key."""


@dataclass(frozen=True)
class MetricSpec:
    name: str  # lm-eval's "<metric>,<filter>" key, e.g. "acc,none" or "exact_match,strict-match"
    value: float | None  # None: no published reference; reported as "reference missing"
    tolerance: float  # absolute; the check passes when |measured - value| <= tolerance


@dataclass(frozen=True)
class TaskSpec:
    name: str
    num_fewshot: int
    limit: int | None
    metrics: tuple[MetricSpec, ...]
    smoke_limit: int | None = None  # the default test suite's short subset


@dataclass(frozen=True)
class ParitySpec:
    """Agreement required between the plugin and lm-eval's ``hf`` backend on the same
    weights, sample by sample (CPU tier)."""

    loglik_atol: float
    loglik_rtol: float
    accuracy_points: float
    generation_prefix_agreement: float


@dataclass(frozen=True)
class AccuracyConfig:
    path: Path
    name: str
    tier: str
    model: str
    dtype: str
    quantization: str | None
    tasks: tuple[TaskSpec, ...]
    engine: dict[str, Any] = field(default_factory=dict)
    block_sizes: tuple[int, ...] = ()
    batch_size: int | str = "auto"
    max_gen_toks: int = 256
    apply_chat_template: bool = False  # chat-formatted prompts, few-shot as turns
    parity: ParitySpec | None = None
    reference: str = ""  # where the expected values come from (a citation or a command)

    def engine_for(self, block_size: int | None) -> dict[str, Any]:
        engine = dict(self.engine)
        if block_size is not None:
            engine["block_size"] = block_size
        return engine

    def variants(self) -> tuple[int | None, ...]:
        """Block sizes to run: the config's list, or just the engine's setting."""
        return self.block_sizes or (self.engine.get("block_size"),)


def _need(raw: dict, key: str, where: str, types: type | tuple[type, ...]):
    if key not in raw:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, types):  # no key here is a bool
        raise ConfigError(f"{where}: {key!r} must be {types}, got {value!r}")
    return value


def _metric(raw: Any, where: str) -> MetricSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each metric must be a mapping with name/value/tolerance")
    name = _need(raw, "name", where, str)
    if "value" not in raw:
        raise ConfigError(f"{where} {name}: missing key 'value' (null: reference missing)")
    value = raw["value"]
    if value is not None:
        value = float(_need(raw, "value", f"{where} {name}", (int, float)))
    tol = float(_need(raw, "tolerance", f"{where} {name}", (int, float)))
    if "," not in name:
        raise ConfigError(f"{where}: metric {name!r} must be lm-eval's 'metric,filter' key")
    if tol < 0:
        raise ConfigError(f"{where}: metric {name!r} tolerance must be >= 0")
    return MetricSpec(name, value, tol)


def _task(raw: Any, where: str) -> TaskSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each task must be a mapping")
    name = _need(raw, "name", where, str)
    where = f"{where} task {name!r}"
    fewshot = _need(raw, "num_fewshot", where, int)
    limit = raw.get("limit")
    smoke = raw.get("smoke_limit")
    for key, val in (("limit", limit), ("smoke_limit", smoke)):
        if val is not None and (not isinstance(val, int) or val <= 0):
            raise ConfigError(f"{where}: {key!r} must be a positive integer or null")
    metrics = _need(raw, "metrics", where, list)
    if not metrics:
        raise ConfigError(f"{where}: 'metrics' is empty: nothing would be checked")
    return TaskSpec(name, fewshot, limit, tuple(_metric(m, where) for m in metrics), smoke)


def load_config(path: Path | str) -> AccuracyConfig:
    path = Path(path)
    if not path.is_file() and not path.suffix:
        path = CONFIG_DIR / f"{path}.yaml"
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{where}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a YAML mapping")
    tier = _need(raw, "tier", where, str)
    if tier not in TIERS:
        raise ConfigError(f"{where}: tier {tier!r} must be one of {TIERS}")
    dtype = _need(raw, "dtype", where, str)
    if dtype not in DTYPES:
        raise ConfigError(f"{where}: dtype {dtype!r} must be one of {DTYPES}")
    engine = raw.get("engine") or {}
    if not isinstance(engine, dict):
        raise ConfigError(f"{where}: 'engine' must be a mapping")
    unknown = sorted(set(engine) - set(ENGINE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown engine option(s) {unknown}; known: {ENGINE_KEYS}")
    block_sizes = raw.get("block_sizes") or []
    if not isinstance(block_sizes, list) or not all(
        isinstance(b, int) and b > 0 for b in block_sizes
    ):
        raise ConfigError(f"{where}: 'block_sizes' must be a list of positive integers")
    tasks = _need(raw, "tasks", where, list)
    if not tasks:
        raise ConfigError(f"{where}: 'tasks' is empty")
    parity = None
    if raw.get("parity") is not None:
        p = raw["parity"]
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: 'parity' must be a mapping")
        pw = f"{where} parity"
        parity = ParitySpec(
            loglik_atol=float(_need(p, "loglik_atol", pw, (int, float))),
            loglik_rtol=float(_need(p, "loglik_rtol", pw, (int, float))),
            accuracy_points=float(_need(p, "accuracy_points", pw, (int, float))),
            generation_prefix_agreement=float(
                _need(p, "generation_prefix_agreement", pw, (int, float))
            ),
        )
    if not str(raw.get("reference", "")).strip():
        raise ConfigError(f"{where}: 'reference' must say where the expected values come from")
    quant = raw.get("quantization")
    if quant is not None and not isinstance(quant, str):
        raise ConfigError(f"{where}: 'quantization' must be a string or null")
    return AccuracyConfig(
        path=path,
        name=_need(raw, "name", where, str),
        tier=tier,
        model=_need(raw, "model", where, str),
        dtype=dtype,
        quantization=quant,
        tasks=tuple(_task(t, where) for t in tasks),
        engine=dict(engine),
        block_sizes=tuple(block_sizes),
        batch_size=raw.get("batch_size", "auto"),
        max_gen_toks=int(raw.get("max_gen_toks", 256)),
        apply_chat_template=bool(raw.get("apply_chat_template", False)),
        parity=parity,
        reference=str(raw.get("reference", "")),
    )


def read_model_list(path: Path | str) -> list[Path]:
    """Config paths from a list file (one name or path per line, ``#`` comments)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = ACCURACY_DIR / path
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        cand = Path(line)
        if not cand.is_absolute():
            cand = CONFIG_DIR / (line if line.endswith(".yaml") else f"{line}.yaml")
        if not cand.is_file():
            raise ConfigError(f"{path}: lists {line!r} but {cand} does not exist")
        out.append(cand)
    if not out:
        raise ConfigError(f"{path}: lists no configs")
    return out
