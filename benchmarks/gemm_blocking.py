"""Output-block width of CPU mode's prepacked GEMM weights: a decode step's GEMMs in a row,
streaming from memory, per block width, side by side (kernels/gemm.py's choice).

    OMP_NUM_THREADS=2 python -m benchmarks.gemm_blocking [--rows 1 16 64] [--blocks 16 32 64]

SmolLM2-135M's 121 weight shapes (30 x qkv 576->960, o 576->576, gate_up 576->3072, down
1536->576, and the 576->49152 LM head), random bf16 weights, one blocked copy per width, so
that one pass reads 269 MB per width -- more than any L3 -- as a decode step does. Each pass
runs every GEMM once at the given row count; the widths alternate, ``--passes`` times; min
and median per pass, ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--passes", type=int, default=8)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    from benchmarks._common import ensure_repo_on_path, machine_info

    ensure_repo_on_path()
    from vllm_xpu_plugin.kernels import gemm

    print(f"# GEMM blocking, {machine_info(torch.get_num_threads())}", flush=True)
    gen = torch.Generator().manual_seed(0)
    plain = [(torch.randn(o, i, generator=gen) * 0.05).bfloat16() for o, i in SHAPES]
    packed = {b: [gemm.cpu_pack_linear_weight(w, block_out=b) for w in plain]
              for b in args.blocks}
    for rows in args.rows:
        xs = {i: torch.randn(rows, i, generator=gen).bfloat16() for i in (576, 1536)}
        times: dict[int, list[float]] = {b: [] for b in args.blocks}
        for p in range(args.passes + 1):
            for b in args.blocks:
                start = time.perf_counter()
                for (o, i), w in zip(SHAPES, packed[b], strict=True):
                    torch.ops.torch_ipex.tpp_linear(xs[i], w, o)
                if p:  # the first pass warms up
                    times[b].append(time.perf_counter() - start)
        print(f"rows {rows}: " + " | ".join(
            f"{b}-wide {min(t) * 1e3:.1f} / {statistics.median(t) * 1e3:.1f} ms"
            for b, t in times.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
