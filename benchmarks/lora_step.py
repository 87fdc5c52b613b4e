"""Multi-LoRA decode step: batch 16 with 4 rank-16 adapters mixed with base requests vs the
same batch without LoRA (issue 13: target <= 1.3x), one run, one table.

    python -m benchmarks.lora_step [--model DIR] [--dtype bfloat16] [--threads 2]

Three measurements, each the median engine step over the steady decode steps (every
request decoding one token; benchmarks/timed_worker.py timestamps them):

- ``no LoRA``: an engine without ``--enable-lora``, 16 requests;
- ``LoRA engine, base only``: the LoRA engine (max_loras 4, max_lora_rank 16), the same 16
  requests without adapters (the wrapper skips its kernels on such steps);
- ``LoRA engine, 4 adapters + base``: 12 requests over 4 rank-16 adapters (q/v/o/down, the
  PEFT adapters of tests/fixtures/lora_adapters.py) interleaved with 4 base requests.

The ratio is each step over the ``no LoRA`` step. Default model: SmolLM2-135M-Instruct
(the test fixture). The machine line (CPU, threads, load average) is printed with it;
numbers from a loaded machine are not comparable with an idle one.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402

TARGET_RATIO = 1.3
BATCH = 16
NUM_ADAPTERS = 4
RANK = 16


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: SmolLM2 fixture)")
    _common.add_thread_args(ap)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per variant")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    return ap.parse_args(argv)


def _engine(model: Path, args, lora: bool):
    from vllm import LLM

    extra = dict(enable_lora=True, max_loras=NUM_ADAPTERS, max_lora_rank=RANK) if lora else {}
    return LLM(model=str(model), dtype=args.dtype, seed=0, enable_prefix_caching=False,
               max_model_len=args.input_len + args.output_len + 16, max_num_seqs=BATCH,
               worker_cls="benchmarks.timed_worker.TimedWorker", **extra)


def _decode_step(llm, prompts, lora_requests, args) -> float:
    from vllm import SamplingParams

    from benchmarks.step_profile import summarize

    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    llm.collective_rpc("reset_step_records")
    llm.generate(prompts, params, lora_request=lora_requests, use_tqdm=False)
    return summarize(llm.collective_rpc("get_step_records")[0], BATCH)["step"]


def _shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def main(argv=None) -> int:
    args = parse_args(argv)
    model, info = _common.start_model_run(args)
    import torch
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from tests.fixtures.lora_adapters import AdapterSpec, build_adapter

    config = json.loads((model / "config.json").read_text())
    gen = torch.Generator().manual_seed(0)
    prompts = [TokensPrompt(prompt_token_ids=torch.randint(
        3, config["vocab_size"], (args.input_len,), generator=gen).tolist())
        for _ in range(BATCH)]
    adapters = [LoRARequest(f"r{RANK}-{i}", i + 1, str(build_adapter(
        model, AdapterSpec(rank=RANK, alpha=2.0 * RANK, seed=100 + i))))
        for i in range(NUM_ADAPTERS)]
    # Every fourth request is base; the others cycle through the adapters.
    mixed = [None if i % 4 == 3 else adapters[(i - i // 4) % NUM_ADAPTERS]
             for i in range(BATCH)]
    print(f"# LoRA decode step: {model.name} {args.dtype}, batch {BATCH} "
          f"({sum(r is not None for r in mixed)} LoRA rows over {NUM_ADAPTERS} rank-{RANK} "
          f"adapters, {sum(r is None for r in mixed)} base), {args.input_len} in / "
          f"{args.output_len} out\n# {_common.describe_machine(info)}", flush=True)

    steps: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    llm = _engine(model, args, lora=True)
    llm.generate(prompts[:4], lora_request=adapters, use_tqdm=False)  # warm-up, loads all 4
    for _ in range(args.rounds):
        steps.setdefault("LoRA engine, 4 adapters + base", []).append(
            _decode_step(llm, prompts, mixed, args))
        steps.setdefault("LoRA engine, base only", []).append(
            _decode_step(llm, prompts, None, args))
    _shutdown(llm)
    llm = _engine(model, args, lora=False)
    llm.generate(prompts[:4], use_tqdm=False)
    for _ in range(args.rounds):
        steps.setdefault("no LoRA", []).append(_decode_step(llm, prompts, None, args))
    _shutdown(llm)

    import statistics

    median = {k: statistics.median(v) for k, v in steps.items()}
    base = median["no LoRA"]
    order = ["no LoRA", "LoRA engine, base only", "LoRA engine, 4 adapters + base"]
    rows = [[k, median[k] * 1e3, median[k] / base, " ".join(f"{s * 1e3:.1f}" for s in steps[k])]
            for k in order]
    print(_common.format_table(["variant", "decode step ms", "x no LoRA", "rounds ms"], rows))
    ratio = median[order[-1]] / base
    print(f"mixed LoRA step / no-LoRA step: {ratio:.2f}x (target <= {TARGET_RATIO}x: "
          f"{_common.verdict(ratio <= TARGET_RATIO)}); {time.perf_counter() - t0:.0f} s")
    print(f"# load after: {_common.describe_machine(_common.machine_info(args.threads))}")
    if args.json:
        _common.save_json({"machine": info, "steps_s": steps, "median_s": median,
                           "ratio": ratio, "args": vars(args)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
