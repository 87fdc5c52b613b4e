"""The int4 GEMM kernels side by side, in one run: torch's CPU int4 kernel (what CPU mode
uses, kernels/int4_gemm.py), IPEX's CPU WOQ kernel (what CPU mode used before; the Intel
GPU path's CPU build) and the dense bf16 GEMM of the same shape, per row count.

    OMP_NUM_THREADS=2 VLLM_XPU_PLUGIN_DEVICE=cpu python benchmarks/int4_gemm.py
    ... --shapes 4096x4096,11008x4096 --rows 1,16,128,512 --group-size 128

Prints ms per call (median of timed repeats, kernels interleaved), the CPU flags that pick
IPEX's code path (avx512_fp16, amx) and the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def _cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "?"
    return " ".join(f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")
                    if f in flags) or "none of avx512f/avx512_bf16/avx512_fp16/amx_bf16"


def _time(fn, seconds: float) -> float:
    fn()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 3:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


def _layer(out_f: int, in_f: int, group: int):
    """A random int4 layer in GPTQ v1 layout, built by both kernels, + its dense weight."""
    import torch

    from vllm_xpu_plugin.kernels import int4_gemm

    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (out_f, in_f), generator=gen, dtype=torch.int32)
    zeros = torch.randint(1, 16, (in_f // group, out_f), generator=gen, dtype=torch.int32)
    scales = (torch.rand(in_f // group, out_f, generator=gen) * 0.01 + 1e-3).bfloat16()
    dense = ((q.view(out_f, -1, group) - zeros.t().unsqueeze(-1))
             * scales.float().t().unsqueeze(-1)).view(out_f, in_f).bfloat16()
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    qweight = (q.t().reshape(in_f // 8, 8, out_f) << shifts.view(1, 8, 1)).sum(1, dtype=torch.int32)
    qzeros = ((zeros - 1).reshape(-1, out_f // 8, 8) << shifts).sum(-1, dtype=torch.int32)
    args = dict(fmt=int4_gemm.PackedFormat.GPTQ_GEMM, in_features=in_f, out_features=out_f,
                group_size=group)
    aten = int4_gemm.build_int4_linear(qweight=qweight.clone(), scales=scales.clone(),
                                       qzeros=qzeros.clone(), **args)
    ipex = int4_gemm.IpexInt4Linear(args["fmt"], qweight.clone(), scales.clone(),
                                    qzeros.clone(), in_f, out_f, group, None)
    return aten, ipex, dense


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,3072x576,576x1536",
                    help="OUTxIN,... (default: a 7-8B layer and two of SmolLM2's)")
    ap.add_argument("--rows", default="1,16,128,512")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=0.5, help="per kernel and row count")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    threads = int(os.environ.setdefault("OMP_NUM_THREADS", "2"))
    import torch

    torch.set_num_threads(threads)
    print(f"CPU flags: {_cpu_flags()}; threads {threads}; load {os.getloadavg()[0]:.2f} (1 min)")
    print(f"{'shape':>11} {'rows':>5} {'torch int4':>11} {'IPEX WOQ':>10} {'dense bf16':>11} "
          f"{'IPEX/torch':>10}")
    for shape in args.shapes.split(","):
        out_f, in_f = (int(v) for v in shape.split("x"))
        aten, ipex, dense = _layer(out_f, in_f, args.group_size)
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, in_f).bfloat16()
            ms = {name: _time(lambda f=f, x=x: f(x), args.seconds) for name, f in (
                ("aten", aten), ("ipex", ipex),
                ("dense", lambda x, w=dense: torch.nn.functional.linear(x, w)))}
            print(f"{shape:>11} {rows:>5} {ms['aten']:>9.3f}ms {ms['ipex']:>8.3f}ms "
                  f"{ms['dense']:>9.3f}ms {ms['ipex'] / ms['aten']:>9.1f}x")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
