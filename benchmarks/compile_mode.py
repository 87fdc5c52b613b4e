"""Eager vs torch.compile (docs/compile.md): offline throughput and engine start time.

SmolLM2-135M-Instruct bf16, 16 prompts x 128 generated tokens (greedy, ignore_eos), one
engine per run in its own process, runs interleaved round by round:

    eager | compiled (cold: an empty VLLM_CACHE_ROOT) | compiled (vLLM's compile cache warm)

(VLLM_DISABLE_COMPILE_CACHE=1 cannot give the cold case: vLLM 0.11's inductor hook then fails
with "'NoneType' object is not iterable", see docs/compile.md.)

Each run reports tok/s of the generate call, engine start time (LLM(...) constructor) and the
compile time vLLM logs ("torch.compile takes X s in total"); greedy outputs of every run are
compared with the first eager run's.

    OMP_NUM_THREADS=2 python -m benchmarks.compile_mode [--rounds 2] [--json out.json]
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
INTERLEAVED_ROUNDS = 3
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


def _run(mode: str) -> dict:
    env = dict(os.environ, VLLM_XPU_PLUGIN_DEVICE="cpu", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", **MODES[mode][1])
    with tempfile.TemporaryDirectory(prefix="compile-mode-cache-") as fresh_cache:
        if env.get("VLLM_CACHE_ROOT") == "":
            env["VLLM_CACHE_ROOT"] = fresh_cache
        return _run_child(mode, env)


def _run_child(mode: str, env: dict) -> dict:
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_mode", "--child", mode],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    logged = _COMPILE_LOG.findall(proc.stdout + proc.stderr)
    result["vllm_compile_s"] = float(logged[-1]) if logged else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    results, reference = [], None
    for round_ in range(1, args.rounds + 1):
        for mode in args.modes.split(","):
            r = _run(mode)
            r["round"] = round_
            reference = reference or (r["outputs"] if mode == "eager" else None)
            r["outputs_equal_eager"] = None if reference is None else r["outputs"] == reference
            outputs = r.pop("outputs")
            r["same_tokens_as_eager"] = (None if reference is None else
                                         sum(a == b for o, p in zip(outputs, reference, strict=True)
                                             for a, b in zip(o, p, strict=False)))
            results.append(r)
            print(json.dumps(r), flush=True)
    load = os.getloadavg()
    summary = {"omp_num_threads": os.environ.get("OMP_NUM_THREADS", "2"),
               "loadavg_after": [round(x, 2) for x in load], "runs": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
