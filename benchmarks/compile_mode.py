"""Eager vs torch.compile (docs/compile.md): offline throughput and engine start time.

SmolLM2-135M-Instruct bf16, 16 prompts x 128 generated tokens (greedy, ignore_eos):

1. cold: one compiled engine with an empty VLLM_CACHE_ROOT (nothing cached): engine start
   time and the compile time vLLM logs ("torch.compile takes X s in total");
2. interleaved: an eager and a compiled engine (vLLM's compile cache as it is) in one
   process, their generate calls alternating ``--rounds`` times, so both see the same
   machine load; tok/s per call, start time per engine, greedy outputs compared.

(VLLM_DISABLE_COMPILE_CACHE=1 cannot give the cold case: vLLM 0.11's inductor hook then fails
with "'NoneType' object is not iterable", see docs/compile.md.)

    OMP_NUM_THREADS=2 python -m benchmarks.compile_mode [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUM_PROMPTS = 16
MAX_TOKENS = 128
MODES = {
    "eager": ({"level": 0}, {}),
    "compiled-cold": ({"level": 3}, {"VLLM_CACHE_ROOT": ""}),  # a fresh directory per run
    "compiled-cached": ({"level": 3}, {}),
}
INTERLEAVED_ROUNDS = int(os.environ.get("INTERLEAVED_ROUNDS", "3"))
_COMPILE_LOG = re.compile(r"torch\.compile takes ([\d.]+) s in total")


def _prompts_and_params():
    from vllm import SamplingParams

    prompts = [f"Question {i}: tell me about the number {i * 7} and why it matters."
               for i in range(NUM_PROMPTS)]
    return prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


def _build(compilation_config: dict):
    from vllm import LLM, SamplingParams

    from tests.fixtures.smollm2 import build_smollm2

    started = time.perf_counter()
    llm = LLM(str(build_smollm2()), dtype="bfloat16", compilation_config=compilation_config,
              max_model_len=512, max_num_seqs=NUM_PROMPTS, seed=0)
    start_s = time.perf_counter() - started
    llm.generate(["warm-up", "warm-up two"], SamplingParams(temperature=0, max_tokens=4),
                 use_tqdm=False)
    return llm, start_s


def _timed_generate(llm) -> tuple[float, list[list[int]]]:
    prompts, params = _prompts_and_params()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    gen_s = time.perf_counter() - t0
    return gen_s, [list(o.outputs[0].token_ids) for o in outs]


def _child(mode: str) -> None:
    sys.path.insert(0, str(REPO))
    if mode == "interleaved":
        # Both engines in this process, generate calls alternating: the fairest A/B on a
        # machine whose load changes from minute to minute.
        engines = {}
        for name in ("eager", "compiled-cached"):
            llm, start_s = _build(MODES[name][0])
            engines[name] = llm
            print("START " + json.dumps({"mode": name, "start_s": round(start_s, 2)}),
                  flush=True)
        for round_ in range(1, INTERLEAVED_ROUNDS + 1):
            for name, llm in engines.items():
                gen_s, outputs = _timed_generate(llm)
                tokens = sum(len(o) for o in outputs)
                print("RESULT " + json.dumps({
                    "mode": name, "round": round_, "gen_s": round(gen_s, 3),
                    "tok_per_s": round(tokens / gen_s, 1), "outputs": outputs}), flush=True)
        return
    llm, start_s = _build(MODES[mode][0])
    gen_s, outputs = _timed_generate(llm)
    tokens = sum(len(o) for o in outputs)
    print("RESULT " + json.dumps({
        "mode": mode, "start_s": round(start_s, 2), "gen_s": round(gen_s, 3),
        "tok_per_s": round(tokens / gen_s, 1), "outputs": outputs}), flush=True)


def _run(mode: str, rounds: int) -> tuple[list[dict], list[dict], list[float]]:
    """(START records, RESULT records, compile times vLLM logged) of one child process."""
    env = dict(os.environ, VLLM_XPU_PLUGIN_DEVICE="cpu", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", INTERLEAVED_ROUNDS=str(rounds),
               # Level 3 compiles only with the switch on (eager is the plugin's default);
               # the eager engine asks for level 0.
               VLLM_XPU_PLUGIN_COMPILE="1",
               **MODES.get(mode, ({}, {}))[1])
    env.setdefault("OMP_NUM_THREADS", "2")
    with tempfile.TemporaryDirectory(prefix="compile-mode-cache-") as fresh_cache:
        if env.get("VLLM_CACHE_ROOT") == "":
            env["VLLM_CACHE_ROOT"] = fresh_cache
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.compile_mode", "--child", mode], cwd=REPO,
            env=env, capture_output=True, text=True, timeout=3600)
    records = {tag: [json.loads(ln[len(tag) + 1:]) for ln in proc.stdout.splitlines()
                     if ln.startswith(tag + " ")] for tag in ("START", "RESULT")}
    if proc.returncode or not records["RESULT"]:
        raise RuntimeError(f"{mode} run failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    logged = [float(x) for x in _COMPILE_LOG.findall(proc.stdout + proc.stderr)]
    return records["START"], records["RESULT"], logged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved generate rounds")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-cold", action="store_true", help="only the interleaved A/B")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    load_before = [round(x, 2) for x in os.getloadavg()]
    # 1. Cold compile: a fresh vLLM cache directory, one compiled engine.
    cold = [None]
    if not args.skip_cold:
        _, cold, cold_logged = _run("compiled-cold", 1)
        cold[0].pop("outputs")
        cold[0]["vllm_compile_s"] = cold_logged[-1] if cold_logged else None
        print(json.dumps(cold[0]), flush=True)
    # 2. Eager and compiled engines (vLLM's default compile cache, warm after the first run
    #    on this machine) in one process, generate calls interleaved.
    starts, runs, logged = _run("interleaved", args.rounds)
    reference = runs[0]["outputs"]
    for r in runs:
        outputs = r.pop("outputs")
        r["outputs_equal_first_eager"] = outputs == reference
        print(json.dumps(r), flush=True)
    summary = {
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "2"),
        "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cold_compiled_engine": cold[0], "interleaved_engine_starts": starts,
        "interleaved_vllm_compile_s": logged, "interleaved_runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "interleaved_runs"}))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
