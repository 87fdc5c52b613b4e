"""KV-cache capacity: how many tokens and concurrent sequences fit in a memory budget.

    python -m vllm_xpu_plugin.capacity MODEL_DIR --kv-cache-gb 4 [--dtype bfloat16]
        [--kv-cache-dtype auto|fp8|fp8_e5m2] [--block-size 64] [--seq-len 4096]
        [--tensor-parallel-size 1] [--json]

The budget is what the KV cache gets: in CPU mode ``VLLM_XPU_PLUGIN_CPU_KVCACHE_GB``; on an
Intel GPU what vLLM's startup log reports as "KV cache gets N GiB" (card memory x
``--gpu-memory-utilization`` minus the profiled peak of weights and activations), or the
value given to ``--kv-cache-memory``. Computed from the checkpoint's config.json alone (no
weights loaded) with the paged layout the plugin allocates: per layer and block, keys and
values of ``block_size`` tokens x KV heads (per tensor-parallel rank) x head size.
``tests/test_capacity.py`` checks the block count against what the engine allocates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_FP8_KV = ("fp8", "fp8_e5m2", "fp8_e4m3")


@dataclass(frozen=True)
class Capacity:
    num_layers: int
    num_kv_heads_per_rank: int
    head_size: int
    kv_bytes_per_element: int
    kv_bytes_per_token: int  # all layers, keys and values, one rank
    block_size: int
    num_blocks: int  # what the engine allocates (vLLM reserves one as its null block)
    tokens: int  # usable: (num_blocks - 1) x block_size
    seq_len: int
    concurrent_sequences: int  # of seq_len tokens each, all resident at once


def _text_config(model_dir: str | Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    return getattr(config, "text_config", None) or config


def kv_bytes_per_element(dtype: str, kv_cache_dtype: str, config=None) -> int:
    if kv_cache_dtype in _FP8_KV:
        return 1
    if kv_cache_dtype not in ("auto", *_DTYPE_BYTES):
        raise ValueError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}")
    name = dtype if kv_cache_dtype == "auto" else kv_cache_dtype
    if name == "auto":
        name = str(getattr(config, "torch_dtype", None) or "bfloat16").replace("torch.", "")
    return _DTYPE_BYTES[name]


def capacity(model_dir: str | Path, budget_bytes: int, dtype: str = "auto",
             kv_cache_dtype: str = "auto", block_size: int = 64, seq_len: int = 0,
             tensor_parallel_size: int = 1) -> Capacity:
    cfg = _text_config(model_dir)
    num_heads = cfg.num_attention_heads
    num_kv_heads = getattr(cfg, "num_key_value_heads", None) or num_heads
    head_size = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
    # vLLM replicates KV heads when there are fewer than ranks.
    kv_heads_per_rank = max(1, num_kv_heads // tensor_parallel_size)
    element = kv_bytes_per_element(dtype, kv_cache_dtype, cfg)
    per_token = 2 * cfg.num_hidden_layers * kv_heads_per_rank * head_size * element
    num_blocks = budget_bytes // (per_token * block_size)
    seq_len = seq_len or getattr(cfg, "max_position_embeddings", block_size)
    usable = max(num_blocks - 1, 0)
    return Capacity(cfg.num_hidden_layers, kv_heads_per_rank, head_size, element, per_token,
                    block_size, num_blocks, usable * block_size, seq_len,
                    usable // math.ceil(seq_len / block_size))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_xpu_plugin.capacity",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a checkpoint directory (its config.json is read)")
    ap.add_argument("--kv-cache-gb", type=float, required=True,
                    help="GiB the KV cache gets (per rank)")
    ap.add_argument("--dtype", default="auto", choices=("auto", *_DTYPE_BYTES))
    ap.add_argument("--kv-cache-dtype", default="auto",
                    choices=("auto", *_DTYPE_BYTES, *_FP8_KV))
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=0,
                    help="tokens per sequence (default: the model's max positions)")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        cap = capacity(args.model, int(args.kv_cache_gb * (1 << 30)), args.dtype,
                       args.kv_cache_dtype, args.block_size, args.seq_len,
                       args.tensor_parallel_size)
    except (OSError, ValueError) as e:
        print(f"capacity: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(cap)))
        return 0
    print(f"{args.model}: {cap.num_layers} layers x {cap.num_kv_heads_per_rank} KV heads x "
          f"head size {cap.head_size}, {cap.kv_bytes_per_element} byte(s) per KV element "
          f"-> {cap.kv_bytes_per_token / 1024:.1f} KiB per token")
    print(f"{args.kv_cache_gb:g} GiB: {cap.num_blocks} blocks of {cap.block_size} tokens, "
          f"{cap.tokens:,} tokens, {cap.concurrent_sequences} concurrent sequences of "
          f"{cap.seq_len} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
