"""Machine ceilings measured in the same run as the thing they bound.

- :func:`copy_bandwidth`: a STREAM-like copy (``b.copy_(a)``) over arrays larger than
  the last-level cache; bytes moved = read a + write b (STREAM's convention, no
  write-allocate traffic counted).
- :func:`matmul_flops`: achieved FLOP/s of ``torch.nn.functional.linear`` for given
  ``(K, N)`` weight shapes at a large token count (compute-bound), i.e. the best rate the
  model's own GEMM shapes reach on this machine with this dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from benchmarks._common import compare


def copy_bandwidth(mib: int = 512, rounds: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write), median of ``rounds``."""
    n = mib * (1 << 20) // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page before timing
    seconds = compare({"copy": lambda: dst.copy_(src)}, rounds=rounds, min_round_s=0.0,
                      warmup=1)["copy"]
    return 2 * n * 4 / seconds


def matmul_flops(shapes: Sequence[tuple[int, int]], dtype: torch.dtype, tokens: int = 1024,
                 rounds: int = 3) -> float:
    """Achieved FLOP/s of ``F.linear`` over the weight shapes ``(in, out)`` together,
    with ``tokens`` rows (large enough to be compute-bound)."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen).to(dtype) * 0.02 for k, n in shapes]
    inputs = {k: torch.randn(tokens, k, generator=gen).to(dtype) for k, _ in shapes}

    def run() -> None:
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    seconds = compare({"gemm": run}, rounds=rounds, min_round_s=0.0, warmup=1)["gemm"]
    flops = sum(2 * tokens * k * n for k, n in shapes)
    return flops / seconds
