"""Parity with an independent engine: lm-eval's ``hf`` backend (transformers) on the same
weights and the same task documents, compared sample by sample with the plugin's run.

- Log-likelihood tasks: every choice's log-likelihood must agree within
  ``loglik_atol + loglik_rtol * |ll_hf|`` (dtype-dependent, set per config), and the accuracy
  over all of a config's multiple-choice samples within ``accuracy_points``.
- Generation tasks: the mean, over documents, of the common-prefix length of the two greedy
  generations divided by the longer one must reach ``generation_prefix_agreement``, and the
  exact-match scores must agree within ``accuracy_points`` or one sample.

The hf run is the slow part; its results are cached in
``$VLLM_XPU_PLUGIN_CACHE/accuracy/hf-reference/`` under a key made of everything that
determines them (weights' build id, dtype, the YAMLs of the config's tasks, data build,
limits, few-shot counts, generation length, library versions), so a changed input is never
served a stale reference, and an unrelated task YAML (another tier's) does not invalidate it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from accuracy.config import TASK_DIR, AccuracyConfig, ConfigError
from accuracy.evaluation import CheckRow, EngineRun, TaskRun, evaluate

HF_BATCH_SIZE = 8
# Per-sample fields kept in the cached reference (the rest, e.g. the full document, is
# recomputable and large).
_SAMPLE_KEYS = ("doc_id", "filter", "resps", "filtered_resps", "target")
_SAMPLE_METRICS = ("acc", "acc_norm", "exact_match")


@dataclass
class Reference:
    tasks: dict[str, TaskRun]
    seconds: float
    cached: bool


def _model_identity(model_path: str) -> str:
    """The fixture's build id when there is one, else config.json plus weight file sizes."""
    path = Path(model_path)
    marker = path / ".build-complete.json"
    if marker.is_file():
        return json.loads(marker.read_text()).get("build_id", marker.read_text())
    parts = [(path / "config.json").read_text() if (path / "config.json").is_file() else ""]
    parts += [f"{p.name}:{p.stat().st_size}" for p in sorted(path.glob("*.safetensors"))]
    return "\n".join(parts)


def task_yaml_texts(task_names: list[str], task_dir: Path = TASK_DIR) -> dict[str, str]:
    """The YAML files that define ``task_names`` (``<task>.yaml`` under ``task_dir``, plus
    what they ``include:``), by path relative to ``task_dir``."""
    out: dict[str, str] = {}
    for name in task_names:
        found = sorted(task_dir.rglob(f"{name}.yaml"))
        if len(found) != 1:
            raise ConfigError(f"task {name!r}: expected one {name}.yaml under {task_dir}, "
                              f"found {len(found)}")  # fmt: skip
        pending = [found[0]]
        while pending:
            path = pending.pop()
            rel = str(path.relative_to(task_dir))
            if rel in out:
                continue
            out[rel] = path.read_text()
            for line in out[rel].splitlines():
                if line.startswith("include:"):
                    pending.append(path.parent / line.split(":", 1)[1].strip())
    return out


def reference_key(cfg: AccuracyConfig, model_path: str, limits: dict[str, int | None]) -> str:
    import lm_eval
    import torch
    import transformers

    from accuracy.prepare_data import build_id

    payload = {
        "model": _model_identity(model_path),
        "dtype": cfg.dtype,
        "tasks": [(t.name, t.num_fewshot, limits[t.name]) for t in cfg.tasks],
        "task_yamls": task_yaml_texts([t.name for t in cfg.tasks]),
        "data": build_id(),
        "max_gen_toks": cfg.max_gen_toks,
        "versions": [lm_eval.__version__, transformers.__version__, torch.__version__],
        "batch_size": HF_BATCH_SIZE,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _reference_path(cfg: AccuracyConfig, key: str) -> Path:
    from tests.fixtures._cache import cache_root

    return cache_root() / "accuracy" / "hf-reference" / f"{cfg.name}-{key}.json"


def _slim(sample: dict) -> dict:
    out = {k: sample[k] for k in _SAMPLE_KEYS if k in sample}
    out.update({k: sample[k] for k in _SAMPLE_METRICS if k in sample})
    return out


def run_hf(cfg: AccuracyConfig, model_path: str, limits: dict[str, int | None]) -> dict:
    from lm_eval.api.registry import get_model

    lm = get_model("hf")(pretrained=model_path, dtype=cfg.dtype, device="cpu",
                         batch_size=HF_BATCH_SIZE)  # fmt: skip
    return evaluate(lm, cfg.tasks, limits, cfg.max_gen_toks, cfg.apply_chat_template)


def hf_reference(cfg: AccuracyConfig, model_path: str,
                 limits: dict[str, int | None]) -> Reference:  # fmt: skip
    key = reference_key(cfg, model_path, limits)
    path = _reference_path(cfg, key)
    if path.is_file():
        raw = json.loads(path.read_text())
        tasks = {n: TaskRun(t["metrics"], t["samples"], t["n"]) for n, t in raw["tasks"].items()}
        return Reference(tasks, raw["seconds"], cached=True)
    print(f"[accuracy] {cfg.name}: hf backend reference ({path.name})", file=sys.stderr)
    t0 = time.monotonic()
    tasks = run_hf(cfg, model_path, limits)
    seconds = time.monotonic() - t0
    slim = {n: {"metrics": t.metrics, "samples": [_slim(s) for s in t.samples], "n": t.n}
            for n, t in tasks.items()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tasks": slim, "seconds": seconds}))
    tmp.rename(path)
    return Reference({n: TaskRun(t["metrics"], t["samples"], t["n"]) for n, t in slim.items()},
                     seconds, cached=False)  # fmt: skip


# --------------------------------------------------------------------------- comparison


def _by_doc(samples: list[dict]) -> dict[int, dict]:
    """One sample per document (generation tasks log one per filter; resps are shared)."""
    out: dict[int, dict] = {}
    for s in samples:
        out.setdefault(int(s["doc_id"]), s)
    return out


def _is_loglikelihood(sample: dict) -> bool:
    first = sample["resps"][0][0]
    return isinstance(first, (list, tuple)) and isinstance(first[0], (int, float))


def _common_prefix_fraction(a: str, b: str) -> float:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n / max(len(a), len(b), 1)


def loglik_deltas(vllm_samples: list[dict], hf_samples: list[dict], atol: float,
                  rtol: float) -> tuple[float, int, int]:  # fmt: skip
    """(max abs(Δll), number of choices outside tolerance, number of choices compared)."""
    v, h = _by_doc(vllm_samples), _by_doc(hf_samples)
    if set(v) != set(h):
        raise AssertionError(f"different documents: vllm {sorted(v)[:5]}…, hf {sorted(h)[:5]}…")
    worst, outside, count = 0.0, 0, 0
    for doc_id, hs in h.items():
        lv = [float(r[0][0]) for r in v[doc_id]["resps"]]
        lh = [float(r[0][0]) for r in hs["resps"]]
        if len(lv) != len(lh):
            raise AssertionError(f"doc {doc_id}: {len(lv)} vs {len(lh)} choices")
        for a, b in zip(lv, lh, strict=True):
            d = abs(a - b)
            worst = max(worst, d)
            outside += d > atol + rtol * abs(b)
            count += 1
    return worst, outside, count


def generation_agreement(vllm_samples: list[dict], hf_samples: list[dict]) -> float:
    v, h = _by_doc(vllm_samples), _by_doc(hf_samples)
    if set(v) != set(h):
        raise AssertionError("different documents in the vllm and hf runs")
    fractions = [_common_prefix_fraction(str(v[d]["resps"][0][0]), str(h[d]["resps"][0][0]))
                 for d in h]  # fmt: skip
    return sum(fractions) / len(fractions)


def _mean_metric(samples: list[dict], metric: str) -> tuple[float, int]:
    docs = _by_doc(samples)
    vals = [float(s[metric]) for s in docs.values() if metric in s]
    return (sum(vals) / len(vals) if vals else float("nan")), len(vals)


def compare(cfg: AccuracyConfig, run: EngineRun, ref: Reference) -> list[CheckRow]:
    assert cfg.parity is not None
    p = cfg.parity
    variant = f"parity vs hf, bs={run.block_size or 'default'}"
    rows: list[CheckRow] = []
    mc_hits_v = mc_hits_h = mc_n = 0.0
    for t in cfg.tasks:
        vs, hs = run.tasks[t.name].samples, ref.tasks[t.name].samples
        label = f"{t.name} (n={run.tasks[t.name].n})"
        if _is_loglikelihood(vs[0]):
            worst, outside, count = loglik_deltas(vs, hs, p.loglik_atol, p.loglik_rtol)
            rows.append(CheckRow(
                cfg.name, variant, label, "per-choice loglik vs hf",
                f"abs(Δ) ≤ {p.loglik_atol:g} + {p.loglik_rtol:g}·abs(ll)",
                f"max abs(Δ) {worst:.4f}; {outside}/{count} outside", "", outside == 0))  # fmt: skip
            av, n = _mean_metric(vs, "acc")
            ah, _ = _mean_metric(hs, "acc")
            rows.append(CheckRow(
                cfg.name, variant, label, "acc vs hf (info)", f"{ah:.4f}", f"{av:.4f}",
                "pooled below", True))  # fmt: skip
            mc_hits_v += av * n
            mc_hits_h += ah * n
            mc_n += n
        else:
            agree = generation_agreement(vs, hs)
            rows.append(CheckRow(
                cfg.name, variant, label, "greedy text common prefix vs hf",
                f"≥ {p.generation_prefix_agreement:.2f}", f"{agree:.3f}", "",
                agree >= p.generation_prefix_agreement))  # fmt: skip
            em_v, n = _mean_metric(vs, "exact_match")
            em_h, _ = _mean_metric(hs, "exact_match")
            tol = max(p.accuracy_points / 100, 1 / max(n, 1))
            rows.append(CheckRow(
                cfg.name, variant, label, "exact_match vs hf", f"{em_h:.4f}", f"{em_v:.4f}",
                f"±{tol:.4f}", abs(em_v - em_h) <= tol + 1e-12))  # fmt: skip
    if mc_n:
        av, ah = mc_hits_v / mc_n, mc_hits_h / mc_n
        tol = p.accuracy_points / 100
        rows.append(CheckRow(
            cfg.name, variant, f"all multiple-choice tasks (n={int(mc_n)})", "acc vs hf",
            f"{ah:.4f}", f"{av:.4f}", f"±{tol:.4f}", abs(av - ah) <= tol + 1e-12))  # fmt: skip
    return rows


def measure_reference_yaml(cfg: AccuracyConfig, model_path: str) -> str:
    """The hf backend's values for the config's tasks at their full limits, as YAML."""
    limits = {t.name: t.limit for t in cfg.tasks}
    ref = hf_reference(cfg, model_path, limits)
    lines = [f"# {cfg.name}: lm-eval hf backend, dtype {cfg.dtype} "
             f"({ref.seconds:.0f}s{', cached' if ref.cached else ''})"]  # fmt: skip
    for t in cfg.tasks:
        run = ref.tasks[t.name]
        lines.append(f"- name: {t.name}  # n={run.n}")
        for m in t.metrics:
            lines.append(f"    {m.name}: {run.metrics.get(m.name, float('nan')):.4f}")
    return "\n".join(lines)
