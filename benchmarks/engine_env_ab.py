"""A/B of engine environment settings: offline throughput of each candidate in a fresh
engine process, quiet and with busy neighbours, in one run, side by side.

    OMP_NUM_THREADS=2 python -m benchmarks.engine_env_ab \\
        --candidate "block 16:VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK=16" --candidate "default:" \\
        [--neighbours 0 1] [--repeats 3] [--rounds 2] [--same-process]

Each ``--candidate`` is ``LABEL:NAME=VALUE,NAME=VALUE`` (nothing after the colon: the
shipped defaults); a NAME starting with ``--`` is an engine argument instead of an
environment variable (``"fp32:--dtype=float32"``; the workload's default is bfloat16).
Workload and method as ``benchmarks/wait_policy.py`` (SmolLM2-135M bf16, 16 prompts x 128
tokens, greedy; median of ``--repeats`` timed generations after a warm-up); the candidates alternate within each round, ``--rounds`` times per condition,
so a change in the machine's load hits every candidate. The first candidate is the
baseline of the ratio column.

``--same-process``: one engine per candidate, all alive in one driver process (each
engine process started with its candidate's environment), their generate calls
alternating ``--rounds`` x ``--repeats`` times: the steadiest A/B on a noisy VM, since
every candidate sees the same seconds of the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks._common import ensure_repo_on_path, machine_info, resolve_model
from benchmarks.wait_policy import WORKLOAD, _run, _start_neighbours, _stop, run_worker

SAME_PROCESS_WORKER = WORKLOAD + r"""
model, repeats, candidates = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
base_env = dict(os.environ)
llms = []
for label, env in candidates:
    os.environ.clear(); os.environ.update(base_env); os.environ.update(env)
    llms.append((label, LLM(model, **engine_args())))
os.environ.clear(); os.environ.update(base_env)
for _, llm in llms:
    llm.generate(prompts[:2], warm_up, use_tqdm=False)
rates = {label: [] for label, _ in llms}
outputs = {}
for _ in range(repeats):
    for label, llm in llms:
        rate, outs = timed_generate(llm)
        rates[label].append(rate)
        outputs[label] = [list(o.outputs[0].token_ids) for o in outs]
first = next(iter(outputs.values()))
print("SAME", json.dumps({label: outputs[label] == first for label in outputs}))
print("RATES", json.dumps(rates))
"""


def _run_same_process(model: str, candidates, repeats: int) -> tuple[dict, dict]:
    got = run_worker(SAME_PROCESS_WORKER,
                     [model, str(repeats), json.dumps([[label, e] for label, e in candidates])],
                     {}, 3600)
    return got["RATES"], got["SAME"]


def parse_candidate(text: str) -> tuple[str, dict[str, str]]:
    label, _, assignments = text.partition(":")
    env, engine = {}, {}
    for item in filter(None, (a.strip() for a in assignments.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} is not NAME=VALUE")
        if name.startswith("--"):  # an engine argument, e.g. --dtype=float32
            engine[name[2:].replace("-", "_")] = value
        else:
            env[name] = value
    if engine:
        env["BENCH_ENGINE_ARGS"] = json.dumps(engine)
    return label.strip() or "default", env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", type=parse_candidate, action="append", required=True)
    ap.add_argument("--model", default=None, help="default: the SmolLM2 fixture")
    ap.add_argument("--neighbours", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--same-process", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    ensure_repo_on_path()
    model = str(resolve_model(args.model))
    print(f"# engine env A/B, {machine_info(int(os.environ['OMP_NUM_THREADS']))}", flush=True)
    rates: dict[tuple[int, str], list[float]] = {}
    loads: dict[int, list[float]] = {}
    for n in args.neighbours:
        neighbours = _start_neighbours(n)
        try:
            time.sleep(2 if n else 0)
            if args.same_process:
                loads.setdefault(n, []).append(os.getloadavg()[0])
                got, same = _run_same_process(model, args.candidate,
                                              args.rounds * args.repeats)
                loads[n].append(os.getloadavg()[0])
                for label, r in got.items():
                    rates[(n, label)] = r
                    print(f"  neighbours={n} {label}: {statistics.median(r):.1f} tok/s "
                          f"{[round(x) for x in r]}; greedy tokens = first candidate's: "
                          f"{same[label]}", flush=True)
            for _ in range(0 if args.same_process else args.rounds):
                for label, env in args.candidate:
                    # The plugin's own CPU-mode default (libgomp's spin with the spin
                    # governor) applies unless a candidate sets OMP_WAIT_POLICY /
                    # GOMP_SPINCOUNT: _run clears the caller's.
                    loads.setdefault(n, []).append(os.getloadavg()[0])
                    got = _run(model, env, args.repeats)
                    rates.setdefault((n, label), []).extend(got)
                    print(f"  neighbours={n} {label}: {statistics.median(got):.1f} tok/s "
                          f"{[round(r) for r in got]} (load {loads[n][-1]:.1f})", flush=True)
        finally:
            _stop(neighbours)
    base_label = args.candidate[0][0]
    print("\n| neighbours | candidate | tok/s (median of all runs) | vs first | 1-min load |")
    print("|---|---|---|---|---|")
    for n in args.neighbours:
        base = statistics.median(rates[(n, base_label)])
        for label, _ in args.candidate:
            rate = statistics.median(rates[(n, label)])
            print(f"| {n} | {label} | {rate:.1f} | {rate / base:.2f}x | "
                  f"{min(loads[n]):.1f}-{max(loads[n]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
