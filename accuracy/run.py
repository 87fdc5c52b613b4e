"""Run accuracy configs through lm-eval's ``vllm`` backend on the plugin; check and report.

    python -m accuracy.run                             # CPU tier (accuracy/models-cpu.txt)
    python -m accuracy.run --models-file models-xpu.txt  # XPU tier (skips without an Intel GPU)
    python -m accuracy.run SmolLM2-135M-Instruct-bf16 --smoke --block-size 64
    python -m accuracy.run SmolLM2-135M-Instruct-fp32 --server http://127.0.0.1:8000 \
        --served-model SmolLM2-135M-Instruct    # a running `vllm serve` (e.g. `make serve`)

For each config and each of its block sizes: one vLLM engine (through lm-eval's ``VLLM``
model, i.e. ``simple_evaluate(model="vllm")`` with the engine built once), the config's tasks
with their limits and few-shot counts, then every expected metric is checked (|measured -
expected| <= tolerance). CPU-tier configs with a ``parity`` section are also compared sample
by sample with lm-eval's ``hf`` backend on the same weights (:mod:`accuracy.parity`). A
Markdown report (metric, expected, measured, pass/fail) is printed and written to
``--report``; the exit status is 1 when any check fails, 3 when none failed but an expected
value has no published reference (``value: null``: reported as "reference missing", not a
pass).

``--server URL`` evaluates a running ``vllm serve`` instead (lm-eval's ``local-completions``
model over the OpenAI completions API, the way users evaluate a deployment): the same tasks,
expected values and hf-parity checks, one "server" variant per config. The server must
serve the config's model with the config's dtype; the runner tokenizes with the model's
own tokenizer and sends token ids, as the ``vllm`` backend does.

``--measure-reference CONFIG`` runs the config's tasks through the ``hf`` backend and prints
the metric values to paste into the config (that is how the CPU tier's expected values were
made; each config names the exact command).
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import dataclasses
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accuracy.config import ACCURACY_DIR, AccuracyConfig, ConfigError, load_config, read_model_list
from accuracy.evaluation import CheckRow, EngineRun, evaluate, resolve_model, task_limits

DEFAULT_MODELS_FILE = ACCURACY_DIR / "models-cpu.txt"
XPU_MODELS_FILE = ACCURACY_DIR / "models-xpu.txt"


def _log(msg: str) -> None:
    print(f"[accuracy] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


def prepare_environment(tier: str) -> None:
    """Set what vLLM/lm-eval read at import time. Must run before vLLM is imported."""
    if tier == "cpu":
        # The plugin's CPU mode (IPEX CPU kernels); nothing may reach a hub.
        os.environ["VLLM_XPU_PLUGIN_DEVICE"] = "cpu"
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    # The task data is local JSONL; never let `datasets` look for it online.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def xpu_unavailable_reason() -> str | None:
    from vllm_xpu_plugin import device

    if device.xpu_usable():
        return None
    return ("no usable Intel GPU (torch.xpu.is_available() is False or the XPU build of "
            "intel-extension-for-pytorch does not import)")  # fmt: skip


def build_vllm_lm(cfg: AccuracyConfig, model_path: str, block_size: int | None):
    from lm_eval.api.registry import get_model

    args: dict[str, Any] = dict(pretrained=model_path, dtype=cfg.dtype,
                                batch_size=cfg.batch_size, max_gen_toks=cfg.max_gen_toks)
    if cfg.quantization:
        args["quantization"] = cfg.quantization
    engine = cfg.engine_for(block_size)
    kv_gb = engine.pop("cpu_kvcache_gb", None)
    args.update(engine)
    if kv_gb is None:
        return get_model("vllm")(**args)
    # The plugin's platform reads it while the engine is configured (in this process), so it
    # is set for the constructor only and other engines of the process keep their setting.
    var, saved = "VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", os.environ.get("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB")
    os.environ[var] = str(kv_gb)
    try:
        return get_model("vllm")(**args)
    finally:
        if saved is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved


def shutdown_vllm_lm(lm) -> None:
    """Stop the engine's core process now (not at interpreter exit) before the next one."""
    llm = getattr(lm, "model", None)
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None and hasattr(engine_core, "shutdown"):
        engine_core.shutdown()
    del lm, llm, engine_core
    gc.collect()


class EngineDiedError(RuntimeError):
    """The vLLM engine-core process exited while lm-eval was waiting for it."""


def _engine_processes(lm) -> list:
    core = getattr(getattr(getattr(lm, "model", None), "llm_engine", None), "engine_core", None)
    manager = getattr(getattr(core, "resources", None), "engine_manager", None)
    return list(getattr(manager, "processes", None) or [])


@contextlib.contextmanager
def engine_death_watch(lm, what: str, poll_seconds: float = 2.0):
    """Turn a dead engine-core process into an error instead of a hang.

    When the engine process dies (e.g. a kernel segfault), vLLM 0.11's synchronous client
    logs "died unexpectedly" but ``LLM.generate`` can wait forever (seen here). A watcher
    thread interrupts the main thread then; the interrupt is re-raised as EngineDiedError.
    """
    procs = _engine_processes(lm)
    died: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_seconds):
            dead = [p for p in procs if p.exitcode is not None]
            if dead:
                died.append(f"{what}: the vLLM engine process died (exit code "
                            f"{dead[0].exitcode})")  # fmt: skip
                _thread.interrupt_main()
                return

    watcher = threading.Thread(target=watch, name="accuracy-engine-watch", daemon=True)
    if procs:
        watcher.start()
    try:
        yield
    except KeyboardInterrupt:
        if died:
            raise EngineDiedError(died[0]) from None
        raise
    finally:
        stop.set()


def run_vllm(cfg: AccuracyConfig, model_path: str, block_size: int | None,
             limits: dict[str, int | None]) -> EngineRun:  # fmt: skip
    t0 = time.monotonic()
    what = f"{cfg.name} block size {block_size or 'default'}"
    _log(f"{cfg.name}: vllm backend, block size {block_size or 'default'}")
    lm = build_vllm_lm(cfg, model_path, block_size)
    try:
        with engine_death_watch(lm, what):
            tasks = evaluate(lm, cfg.tasks, limits, cfg.max_gen_toks, cfg.apply_chat_template)
    finally:
        shutdown_vllm_lm(lm)
    return EngineRun("vllm", block_size, tasks, time.monotonic() - t0)


@dataclass(frozen=True)
class ServerTarget:
    """A running ``vllm serve``: base URL (http://host:port) and the served model name."""

    url: str
    model: str


def tokenizer_adds_bos(model_path: str) -> bool:
    """Whether the model's tokenizer prepends BOS by default (as vLLM does for a text prompt
    and lm-eval's hf backend does for generation prompts). lm-eval's API models never add it
    unless told: without this, a BOS-adding model's greedy texts differ from the hf run."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    ids = tok("a").input_ids
    return tok.bos_token_id is not None and bool(ids) and ids[0] == tok.bos_token_id


def build_server_lm(cfg: AccuracyConfig, model_path: str, server: ServerTarget):
    from lm_eval.api.registry import get_model

    return get_model("local-completions")(
        add_bos_token=tokenizer_adds_bos(model_path),
        base_url=f"{server.url.rstrip('/')}/v1/completions", model=server.model,
        tokenizer=model_path, tokenizer_backend="huggingface", tokenized_requests=True,
        max_gen_toks=cfg.max_gen_toks, max_length=cfg.engine.get("max_model_len", 2048),
        num_concurrent=1, max_retries=1, batch_size=1, timeout=600)


def run_server(cfg: AccuracyConfig, model_path: str, server: ServerTarget,
               limits: dict[str, int | None]) -> EngineRun:  # fmt: skip
    t0 = time.monotonic()
    _log(f"{cfg.name}: server {server.url} (model {server.model})")
    lm = build_server_lm(cfg, model_path, server)
    tasks = evaluate(lm, cfg.tasks, limits, cfg.max_gen_toks, cfg.apply_chat_template)
    return EngineRun("server", None, tasks, time.monotonic() - t0)


# --------------------------------------------------------------------------- checks


def check_expected(cfg: AccuracyConfig, run: EngineRun) -> list[CheckRow]:
    rows = []
    variant = f"{run.backend} bs={run.block_size or 'default'}"
    for t in cfg.tasks:
        task_run = run.tasks[t.name]
        for m in t.metrics:
            measured = task_run.metrics.get(m.name)
            shown = "missing" if measured is None else f"{measured:.4f}"
            label = f"{t.name} (n={task_run.n})"
            if m.value is None:  # nothing published to compare with: reported, never a pass
                rows.append(CheckRow(cfg.name, variant, label, m.name, "reference missing",
                                     shown, "", False, reference_missing=True))
                continue
            ok = measured is not None and abs(measured - m.value) <= m.tolerance + 1e-12
            rows.append(CheckRow(cfg.name, variant, label, m.name, f"{m.value:.4f}", shown,
                                 f"±{m.tolerance:.4f}", ok))
    return rows


def markdown_report(rows: list[CheckRow], title: str, notes: list[str]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "| config | engine | task | metric | expected | measured | tolerance | result |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        result = "pass" if r.passed else "reference missing" if r.reference_missing else "**FAIL**"
        lines.append(f"| {r.config} | {r.variant} | {r.task} | {r.metric} | {r.expected} | "
                     f"{r.measured} | {r.tolerance} | {result} |")
    passed, failed, missing = outcome_counts(rows)
    summary = f"**{passed} passed, {failed} failed"
    summary += f", {missing} reference missing**" if missing else "**"
    lines += ["", summary, ""]
    return "\n".join(lines)


def outcome_counts(rows: list[CheckRow]) -> tuple[int, int, int]:
    """(passed, failed, reference missing) over report rows."""
    missing = sum(r.reference_missing for r in rows)
    passed = sum(r.passed for r in rows)
    return passed, len(rows) - passed - missing, missing


def exit_status(rows: list[CheckRow]) -> int:
    """0: every check passed; 1: a check failed (or nothing was checked); 3: none failed but
    some expected values have no published reference (not a pass: nothing was compared)."""
    passed, failed, missing = outcome_counts(rows)
    if failed or not rows:
        return 1
    return 3 if missing else 0


def tasks_with_data(cfg: AccuracyConfig, smoke: bool) -> tuple[AccuracyConfig, str]:
    """(cfg without the BIG-bench tasks where their data cannot be had here, a note saying
    so). Only a smoke run (parity checks) goes on without them; a full run, whose expected
    values include theirs, stops with the reason."""
    from accuracy.evaluation import data_dir
    from accuracy.prepare_data import bigbench_unavailable

    why = bigbench_unavailable(data_dir())
    missing = [t for t in cfg.tasks if t.name.startswith("offline_bigbench_")]
    if not why or not missing:
        return cfg, ""
    names = ", ".join(t.name for t in missing)
    if not smoke:
        raise ConfigError(f"{cfg.name}: no data for {names}: {why}")
    kept = tuple(t for t in cfg.tasks if t not in missing)
    return (dataclasses.replace(cfg, tasks=kept),
            f"{cfg.name}: not run, no data here: {names} ({why})")


def run_config(cfg: AccuracyConfig, smoke: bool = False, block_sizes: tuple[int, ...] = (),
               parity: bool = True, server: ServerTarget | None = None,
               ) -> tuple[list[CheckRow], list[str]]:  # fmt: skip
    """Run one config (all its block sizes, or ``block_sizes``; or once against ``server``);
    return rows and notes."""
    from accuracy import parity as parity_mod

    model_path = resolve_model(cfg.model)
    cfg, left_out = tasks_with_data(cfg, smoke)
    limits = task_limits(cfg, smoke)
    variants = [b for b in cfg.variants() if not block_sizes or b in block_sizes]
    if server is not None:
        variants = [None]
    if not variants:
        raise ConfigError(f"{cfg.path}: none of block sizes {block_sizes} is configured")
    rows: list[CheckRow] = []
    notes: list[str] = [left_out] if left_out else []
    reference = None
    if parity and cfg.parity is not None:
        reference = parity_mod.hf_reference(cfg, model_path, limits)
        notes.append(f"{cfg.name}: hf reference {reference.seconds:.0f}s"
                     f"{' (cached)' if reference.cached else ''}")  # fmt: skip
    for block_size in variants:
        if server is not None:
            run = run_server(cfg, model_path, server, limits)
        else:
            run = run_vllm(cfg, model_path, block_size, limits)
        notes.append(f"{cfg.name}: {run.backend} bs={block_size or 'default'} "
                     f"{run.seconds:.0f}s")
        if not smoke:
            rows += check_expected(cfg, run)
        if reference is not None:
            rows += parity_mod.compare(cfg, run, reference)
    return rows, notes


# --------------------------------------------------------------------------- CLI


def served_model(url: str) -> str:
    """The first model a running server lists at /v1/models."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models", timeout=30) as resp:
        return json.loads(resp.read())["data"][0]["id"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run lm-eval accuracy configs on the plugin.")
    ap.add_argument("configs", nargs="*", help="config names or paths (default: --models-file)")
    ap.add_argument("--models", "--models-file", dest="models_file", default=None,
                    help=f"list of configs (default: {DEFAULT_MODELS_FILE.name}, or "
                    "models-xpu.txt with --device xpu)")
    ap.add_argument("--device", choices=("cpu", "xpu"), default=None,
                    help="the tier to run (default: the configs' tier)")
    ap.add_argument("--smoke", action="store_true",
                    help="short subset: each task's smoke_limit; parity checks only")
    ap.add_argument("--block-size", type=int, action="append", default=[],
                    help="run only these block sizes (repeatable)")
    ap.add_argument("--no-parity", action="store_true", help="skip the hf-backend comparison")
    ap.add_argument("--report", type=Path, default=None, help="also write the report here")
    ap.add_argument("--server", default=None, metavar="URL",
                    help="evaluate a running `vllm serve` at URL (http://host:port) with "
                    "lm-eval's local-completions model instead of building an engine")
    ap.add_argument("--served-model", default=None,
                    help="with --server: the served model name (default: the first of "
                    "/v1/models)")
    ap.add_argument("--measure-reference", action="store_true",
                    help="run the configs' tasks on lm-eval's hf backend and print the values")
    args = ap.parse_args(argv)

    try:
        default_list = XPU_MODELS_FILE if args.device == "xpu" else DEFAULT_MODELS_FILE
        paths = ([Path(c) for c in args.configs] if args.configs
                 else read_model_list(args.models_file or default_list))  # fmt: skip
        configs = [load_config(p) for p in paths]
    except ConfigError as e:
        print(f"accuracy: error: {e}", file=sys.stderr)
        return 2
    tiers = {c.tier for c in configs}
    if len(tiers) != 1:
        print("accuracy: error: one tier per run (vLLM picks its platform once per process); "
              f"got {sorted(tiers)}", file=sys.stderr)  # fmt: skip
        return 2
    tier = tiers.pop()
    if args.device and args.device != tier:
        print(f"accuracy: error: --device {args.device} but the configs are {tier}-tier",
              file=sys.stderr)
        return 2
    server = None
    if args.server:
        try:
            server = ServerTarget(args.server, args.served_model or served_model(args.server))
        except OSError as e:
            print(f"accuracy: error: --server {args.server}: {e}", file=sys.stderr)
            return 2
    if tier == "xpu" and server is None:
        reason = xpu_unavailable_reason()
        if reason:
            print(f"accuracy: XPU tier skipped: {reason}")
            return 0
        if os.environ.get("VLLM_XPU_PLUGIN_DEVICE", "").strip().lower() == "cpu":
            print("accuracy: error: XPU tier but VLLM_XPU_PLUGIN_DEVICE=cpu selects CPU mode; "
                  "unset it", file=sys.stderr)  # fmt: skip
            return 2
    prepare_environment(tier)

    if args.measure_reference:
        from accuracy import parity as parity_mod

        for cfg in configs:
            print(parity_mod.measure_reference_yaml(cfg, resolve_model(cfg.model)))
        return 0

    t0 = time.monotonic()
    rows: list[CheckRow] = []
    notes: list[str] = []
    for cfg in configs:
        try:
            r, n = run_config(cfg, smoke=args.smoke, block_sizes=tuple(args.block_size),
                              parity=not args.no_parity, server=server)  # fmt: skip
        except EngineDiedError as e:
            print(f"accuracy: error: {e}", file=sys.stderr)
            r, n = [CheckRow(cfg.name, "vllm", "all tasks", "engine ran to the end", "yes",
                             str(e), "", False)], []  # fmt: skip
        except ConfigError as e:  # e.g. a task whose data cannot be had here
            print(f"accuracy: error: {e}", file=sys.stderr)
            r, n = [CheckRow(cfg.name, "-", "all tasks", "data for every task", "yes",
                             str(e), "", False)], []  # fmt: skip
        rows += r
        notes += n
    notes.append(f"total {time.monotonic() - t0:.0f}s, OMP_NUM_THREADS="
                 f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    report = markdown_report(rows, f"Accuracy report ({tier} tier)", notes)
    print(report)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report)
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
