"""Decode step of a small mixture-of-experts model vs a dense model with the same active
parameters, through the plugin (CPU mode unless on an Intel GPU), plus the MoE model's
resident-memory ratio (docs/moe.md).

    python -m benchmarks.moe_step [--dtype bfloat16] [--layers 8] [--rounds 5]

Models (random weights, built once into the cache by tests/fixtures/tiny_models.py): a
Qwen3-MoE with SmolLM2-135M's width (hidden 576, 9 query / 3 KV heads of 64) and 8 experts
of width 1536, top-2; the dense model is Qwen3 with the same attention and an MLP of width
2 x 1536 (= the MoE's active expert width). Vocabulary 768 (the tiny tokenizer's).

Decode step = (time of generate(max_tokens=1 + N) - time of generate(max_tokens=1)) / N
at batch 1 and 16, both engines alive, measured round by round alternately (median).
Resident memory = bytes of every distinct tensor storage the loaded model holds
(parameters, buffers, the runner's prepacked GEMM weights) over the checkpoint's
safetensors bytes; the experts' share is reported on its own.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

from benchmarks._common import (
    add_thread_args,
    describe_machine,
    ensure_cpu_mode,
    ensure_repo_on_path,
    format_table,
    machine_info,
    pin_threads,
)

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, EXPERT_WIDTH, NUM_EXPERTS, TOP_K = 576, 9, 3, 64, 1536, 8, 2
PROMPT_LEN = 32
TARGET_VS_DENSE = 1.3


def _build(layers: int, dtype: str):
    from tests.fixtures.tiny_models import build_tiny_model

    common = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  head_dim=HEAD_DIM, num_hidden_layers=layers)
    moe = build_tiny_model("qwen3-moe", dtype=dtype, num_experts=NUM_EXPERTS,
                           num_experts_per_tok=TOP_K, moe_intermediate_size=EXPERT_WIDTH,
                           **common)
    dense = build_tiny_model("qwen3-embedding", dtype=dtype,
                             intermediate_size=TOP_K * EXPERT_WIDTH, **common)
    return moe, dense


def resident_bytes(model) -> dict[str, int]:
    """Distinct storages held by the model: all, and the FusedMoE expert weights alone."""
    import torch

    seen: dict[int, int] = {}
    experts = 0

    def add(t) -> int:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return 0
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen:
            return 0
        seen[key] = storage.nbytes()
        return seen[key]

    for module in model.modules():
        for name, t in list(module.named_parameters(recurse=False)) + list(
                module.named_buffers(recurse=False)):
            n = add(t)
            if name in ("w13_weight", "w2_weight"):
                experts += n
        method = getattr(module, "quant_method", None)
        for value in vars(method).values() if method is not None else ():
            add(value)
        kernel = getattr(module, "ipex_experts", None)
        for value in vars(kernel).values() if kernel is not None else ():
            add(value)
    return {"total": sum(seen.values()), "experts": experts}


def _llm(model_dir, dtype):
    from vllm import LLM

    return LLM(model=str(model_dir), dtype=dtype, max_model_len=512, max_num_seqs=16,
               seed=0, enable_prefix_caching=False, kv_cache_memory_bytes=256 << 20)


def _timed(llm, prompts, max_tokens) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return time.perf_counter() - start


def _checkpoint_bytes(model_dir) -> int:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16, help="decode steps per timed generate")
    ap.add_argument("--cpu-expert-layout", default="vnni", choices=["vnni", "tpp"],
                    help="CPU bf16/fp16 experts: fused_experts (vnni) or per-expert TPP")
    add_thread_args(ap)
    args = ap.parse_args(argv)
    threads = pin_threads(args.threads, args.omp_wait_policy)
    ensure_cpu_mode()
    ensure_repo_on_path()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engines in this process
    import random

    from vllm_xpu_plugin.kernels import moe as moe_kernels

    moe_kernels.CPU_LOWP_LAYOUT = args.cpu_expert_layout
    info = machine_info(threads)
    moe_dir, dense_dir = _build(args.layers, args.dtype)
    engines = {"moe": _llm(moe_dir, args.dtype), "dense": _llm(dense_dir, args.dtype)}
    memory = engines["moe"].apply_model(resident_bytes)[0]
    ckpt = _checkpoint_bytes(moe_dir)
    rng = random.Random(0)
    rows = []
    steps = {}
    for batch in (1, 16):
        prompts = [[rng.randrange(5, 768) for _ in range(PROMPT_LEN)] for _ in range(batch)]
        samples = {name: [] for name in engines}
        for llm in engines.values():  # warm-up
            _timed(llm, prompts, 1 + args.steps)
        for _ in range(args.rounds):
            for name, llm in engines.items():
                short = _timed(llm, prompts, 1)
                long = _timed(llm, prompts, 1 + args.steps)
                samples[name].append((long - short) / args.steps)
        for name in engines:
            steps[(name, batch)] = statistics.median(samples[name])
        ratio = steps[("moe", batch)] / steps[("dense", batch)]
        rows.append([batch, f"{steps[('moe', batch)] * 1e3:.2f}",
                     f"{steps[('dense', batch)] * 1e3:.2f}", f"{ratio:.2f}x",
                     "met" if ratio <= TARGET_VS_DENSE else "NOT met"])
    for llm in engines.values():
        llm.llm_engine.engine_core.shutdown()
    del engines
    gc.collect()

    print(describe_machine(info))
    print(f"MoE: Qwen3-MoE {args.layers} layers, hidden {HIDDEN}, {NUM_EXPERTS} experts x "
          f"{EXPERT_WIDTH}, top-{TOP_K}; dense: same attention, MLP {TOP_K * EXPERT_WIDTH}; "
          f"{args.dtype}, prompt {PROMPT_LEN}, {args.steps} steps, median of {args.rounds}; "
          f"CPU expert layout {args.cpu_expert_layout}")
    print(format_table(["batch", "MoE step ms", "dense step ms", "MoE/dense",
                        f"target <= {TARGET_VS_DENSE}x"], rows))
    import torch

    # The checkpoint's expert tensors: gate, up and down of every expert of every layer.
    expert_ckpt = (args.layers * NUM_EXPERTS * 3 * HIDDEN * EXPERT_WIDTH
                   * torch.empty(0, dtype=getattr(torch, args.dtype)).element_size())
    print(format_table(
        ["resident memory", "bytes", "checkpoint bytes", "ratio", "target <= 1.05x"],
        [["whole model", memory["total"], ckpt, f"{memory['total'] / ckpt:.3f}x",
          "met" if memory["total"] <= 1.05 * ckpt else "NOT met"],
         ["expert weights", memory["experts"], expert_ckpt,
          f"{memory['experts'] / expert_ckpt:.3f}x",
          "met" if memory["experts"] <= 1.05 * expert_ckpt else "NOT met"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
