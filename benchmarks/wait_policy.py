"""Which OpenMP wait policy should CPU mode ship? Each candidate on a quiet machine and with a
neighbour, in one run, side by side (issue 15).

    OMP_NUM_THREADS=2 python -m benchmarks.wait_policy [--neighbours 0 1] [--repeats 3]

Workload: offline ``vllm.LLM.generate``, SmolLM2-135M-Instruct bf16, 16 prompts x 128 tokens
(greedy, ignore_eos), 2 engine threads; each candidate in a fresh interpreter (OpenMP reads
its environment once), the generation timed ``--repeats`` times after one warm-up, the
median reported. "Neighbours" are busy-loop processes this script starts and stops (each
takes one core, as an API server, a client or another job would); the condition with 0
neighbours is only quiet if nothing else runs: the 1-minute load average is printed with
every row. Candidates run interleaved within each condition.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks._common import ensure_repo_on_path, machine_info, resolve_model

# name -> environment for the engine. OMP_WAIT_POLICY="" disables the plugin's default and
# leaves libgomp's own (it warns once about the empty value): spin ~300k iterations, then
# sleep. GOMP_SPINCOUNT bounds that spin.
CANDIDATES: dict[str, dict[str, str]] = {
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "libgomp default": {"OMP_WAIT_POLICY": ""},
    "GOMP_SPINCOUNT=100": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "100"},
    "GOMP_SPINCOUNT=300": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "300"},
    "GOMP_SPINCOUNT=1000": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=3000": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "3000"},
    "GOMP_SPINCOUNT=10000": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=100000": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "100000"},
}

# The workload, shared with benchmarks/engine_env_ab.py's same-process driver.
WORKLOAD = r"""
import json, os, sys, time
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
ENGINE_ARGS = dict(dtype="bfloat16", max_model_len=512, max_num_seqs=16, seed=0)

def engine_args():
    # A candidate's engine arguments (benchmarks/engine_env_ab.py: "--dtype=float32"),
    # handed over in the environment the candidate's engine starts with.
    return {**ENGINE_ARGS, **json.loads(os.environ.get("BENCH_ENGINE_ARGS", "{}"))}
prompts = [TokensPrompt(prompt_token_ids=[1] + [100 + 7 * i + j for j in range(64)])
           for i in range(16)]
params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
warm_up = SamplingParams(temperature=0, max_tokens=8)

def timed_generate(llm):
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    return sum(len(o.outputs[0].token_ids) for o in outs) / dt, outs
"""

WORKER = WORKLOAD + r"""
model, repeats = sys.argv[1], int(sys.argv[2])
llm = LLM(model, **engine_args())
llm.generate(prompts[:2], warm_up)
print("RATES", json.dumps([timed_generate(llm)[0] for _ in range(repeats)]))
"""


def run_worker(code: str, args: list[str], env_extra: dict[str, str],
               timeout: float) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter with the caller's environment minus its OpenMP
    wait policy (the plugin's own default then applies) plus ``env_extra``; return the JSON
    of each ``TAG {...}`` line it prints, by tag."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    env.update(env_extra)
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    done = subprocess.run([sys.executable, "-c", code, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    results = {}
    for line in done.stdout.splitlines():
        tag, _, payload = line.partition(" ")
        if tag.isupper() and payload.startswith(("{", "[")):
            results[tag] = json.loads(payload)
    return results


def _run(model: str, env_extra: dict[str, str], repeats: int) -> list[float]:
    return run_worker(WORKER, [model, str(repeats)], env_extra, 1800)["RATES"]


def _start_neighbours(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:  # only the processes this script started, by their PID
        p.kill()
        p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: the SmolLM2 fixture")
    ap.add_argument("--neighbours", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES),
                    choices=list(CANDIDATES))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    ensure_repo_on_path()
    model = str(resolve_model(args.model))
    info = machine_info(int(os.environ["OMP_NUM_THREADS"]))
    print(f"# wait policy, {info}")
    rows = []
    for n in args.neighbours:
        neighbours = _start_neighbours(n)
        try:
            time.sleep(2 if n else 0)
            for name in args.candidates:
                load = os.getloadavg()[0]
                rates = _run(model, CANDIDATES[name], args.repeats)
                rows.append((n, name, statistics.median(rates), rates, load))
                print(f"  neighbours={n} {name}: {statistics.median(rates):.1f} tok/s "
                      f"{[round(r) for r in rates]} (load {load:.1f})", flush=True)
        finally:
            _stop(neighbours)
    print("\n| neighbours | candidate | tok/s (median) | vs PASSIVE | load at start |")
    print("|---|---|---|---|---|")
    base = {n: r for n, name, r, _, _ in rows if name == "PASSIVE"}
    for n, name, rate, _, load in rows:
        ratio = f"{rate / base[n]:.2f}x" if n in base else "-"
        print(f"| {n} | {name} | {rate:.1f} | {ratio} | {load:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
