"""ngram speculative decoding: output tokens/s and mean acceptance length, with vs without.

Runs two workloads through ``vllm.LLM`` with the plugin, each once without speculation and
once with ``{"method": "ngram", ...}``, every run in its own subprocess (a clean engine and
clean metrics), and prints the results side by side:

- ``repetitive``: the answer copies text from the prompt (code to repeat, a list to
  reproduce) -- where prompt-lookup proposals hit;
- ``open``: open-ended questions -- where they mostly miss.

Greedy decoding with ``ignore_eos`` so both runs produce the same number of tokens; the
script also reports how many outputs are identical with and without ngram (greedy
speculation must not change the text).

    OMP_NUM_THREADS=2 VLLM_XPU_PLUGIN_DEVICE=cpu python benchmarks/spec_decode.py
    python benchmarks/spec_decode.py --model /path/to/model --device xpu --num-prompts 32

Without ``--model`` the SmolLM2-135M-Instruct test fixture is built/used. Mean acceptance
length = 1 + accepted draft tokens / verification steps with drafts (vLLM's definition).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

CODE_SNIPPET = '''def merge_sorted(left, right):
    result = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            result.append(left[i])
            i += 1
        else:
            result.append(right[j])
            j += 1
    result.extend(left[i:])
    result.extend(right[j:])
    return result
'''

REPETITIVE = [
    f"Rewrite this Python function with the name merge_lists instead of merge_sorted, "
    f"changing nothing else:\n\n{CODE_SNIPPET}",
    f"Copy the following code exactly, then explain it in one sentence.\n\n{CODE_SNIPPET}",
    "Repeat this list exactly three times: apple, banana, cherry, date, elderberry, fig, "
    "grape, honeydew, kiwi, lemon, mango, nectarine.",
    "Here is a sentence: The quick brown fox jumps over the lazy dog near the river bank "
    "every morning. Write that sentence five times, one per line.",
]

OPEN = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain why the sky is blue to a ten-year-old.",
    "List some ideas for a weekend trip in the mountains and explain each one.",
    "What are the advantages and disadvantages of working from home?",
]

WORKLOADS = {"repetitive": REPETITIVE, "open": OPEN}


def run_one(args: argparse.Namespace) -> None:
    """Child process: one engine, one workload, one JSON line on stdout."""
    from vllm import LLM, SamplingParams

    speculative_config = None
    if args.ngram:
        speculative_config = {
            "method": "ngram",
            "num_speculative_tokens": args.num_speculative_tokens,
            "prompt_lookup_max": args.prompt_lookup_max,
            "prompt_lookup_min": args.prompt_lookup_min,
        }
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=2048, seed=0,
              speculative_config=speculative_config, disable_log_stats=False,
              max_num_seqs=max(8, args.num_prompts), enable_prefix_caching=False)
    tokenizer = llm.get_tokenizer()
    base = WORKLOADS[args.workload]
    questions = [base[i % len(base)] for i in range(args.num_prompts)]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                             add_generation_prompt=True, tokenize=False)
               for q in questions]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(max_tokens=8), use_tqdm=False)  # warm-up

    before = _spec_counters(llm)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    after = _spec_counters(llm)
    delta = {k: after[k] - before[k] for k in after}
    num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
    print("RESULT " + json.dumps({
        "workload": args.workload,
        "ngram": args.ngram,
        "output_tokens": num_out,
        "seconds": elapsed,
        "tokens_per_s": num_out / elapsed,
        "drafts": delta["drafts"],
        "draft_tokens": delta["draft_tokens"],
        "accepted_tokens": delta["accepted"],
        "texts": [o.outputs[0].text for o in outputs],
    }), flush=True)


def _spec_counters(llm) -> dict[str, float]:
    names = {"vllm:spec_decode_num_drafts": "drafts",
             "vllm:spec_decode_num_draft_tokens": "draft_tokens",
             "vllm:spec_decode_num_accepted_tokens": "accepted"}
    counters = dict.fromkeys(names.values(), 0.0)
    for metric in llm.get_metrics():
        if metric.name in names:
            counters[names[metric.name]] += float(metric.value)
    return counters


def run_child(args: argparse.Namespace, workload: str, ngram: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--workload", workload,
           "--model", str(args.model), "--dtype", args.dtype,
           "--num-prompts", str(args.num_prompts), "--max-tokens", str(args.max_tokens),
           "--num-speculative-tokens", str(args.num_speculative_tokens),
           "--prompt-lookup-max", str(args.prompt_lookup_max),
           "--prompt-lookup-min", str(args.prompt_lookup_min)]
    if ngram:
        cmd.append("--ngram")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"run failed: workload={workload} ngram={ngram} (rc={proc.returncode})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: SmolLM2 fixture)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default=None, choices=["cpu", "xpu"],
                    help="cpu sets VLLM_XPU_PLUGIN_DEVICE=cpu (default: as in the env)")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--num-speculative-tokens", type=int, default=4)
    ap.add_argument("--prompt-lookup-max", type=int, default=4)
    ap.add_argument("--prompt-lookup-min", type=int, default=2)
    ap.add_argument("--workloads", default="repetitive,open")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--ngram", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        run_one(args)
        return 0

    # Explicit threads: the machines this runs on are shared.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.device == "cpu":
        os.environ["VLLM_XPU_PLUGIN_DEVICE"] = "cpu"
    elif args.device == "xpu":
        os.environ.pop("VLLM_XPU_PLUGIN_DEVICE", None)
    # CPU mode reserves 4 GiB of KV cache by default; this workload needs far less.
    os.environ.setdefault("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", "1")
    if args.model is None:
        sys.path.insert(0, str(REPO_ROOT))
        from tests.fixtures.smollm2 import build_smollm2

        args.model = str(build_smollm2())

    mode = "cpu" if os.environ.get("VLLM_XPU_PLUGIN_DEVICE") == "cpu" else "xpu"
    print(f"model={args.model} dtype={args.dtype} device={mode} "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} prompts={args.num_prompts} "
          f"max_tokens={args.max_tokens} k={args.num_speculative_tokens} "
          f"lookup={args.prompt_lookup_min}..{args.prompt_lookup_max}", flush=True)
    header = (f"{'workload':<11} {'base tok/s':>10} {'ngram tok/s':>11} {'speedup':>8} "
              f"{'mean acc len':>12} {'draft acc %':>11} {'same text':>9}")
    rows = []
    for workload in args.workloads.split(","):
        base = run_child(args, workload, ngram=False)
        spec = run_child(args, workload, ngram=True)
        acc_len = 1 + spec["accepted_tokens"] / spec["drafts"] if spec["drafts"] else 1.0
        acc_rate = (100 * spec["accepted_tokens"] / spec["draft_tokens"]
                    if spec["draft_tokens"] else 0.0)
        same = sum(a == b for a, b in zip(base["texts"], spec["texts"], strict=True))
        rows.append(f"{workload:<11} {base['tokens_per_s']:>10.1f} "
                    f"{spec['tokens_per_s']:>11.1f} "
                    f"{spec['tokens_per_s'] / base['tokens_per_s']:>7.2f}x "
                    f"{acc_len:>12.2f} {acc_rate:>10.1f}% "
                    f"{same:>4}/{len(base['texts']):<4}")
        print(f"  done: {workload}", flush=True)
    print(header)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
