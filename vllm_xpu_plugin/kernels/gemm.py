"""GEMM kernels: CPU mode's linear layers on weights prepacked for IPEX's TPP GEMM, and the
per-shape choice between that GEMM and torch's (oneDNN) by a short measurement at load time."""

from __future__ import annotations

import time
from typing import Optional

import torch

from vllm_xpu_plugin import device, envs
from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)

# ---- CPU-mode GEMMs on prepacked weights (used by worker/model_runner.py) ------------
# torch's bf16 F.linear on CPU hands oneDNN the plain [out, in] weight on every call; at
# decode sizes that costs more than the GEMM. IPEX's TPP GEMM reads a weight blocked once
# at load time. Where torch's GEMM catches up depends on the CPU and the shape. Measured
# (F.linear time / TPP time, bf16, 2 threads):
#   AMX Xeon (2026-11, SmolLM2-135M's 121 GEMMs): 16 rows 2.7x, 64 rows 1.5x, 160 rows
#   1.0x, 512 rows 0.9x;
#   AMD EPYC, AVX512-BF16, no AMX (2026-12-02, load 1.3): 576->960 512 rows 1.19x,
#   576->3072 128 rows 1.07x, 576->49152 (LM head) 256 rows 0.94x, 512 rows 0.78x.
# So the switch point is measured per weight shape when the model is loaded
# (choose_max_rows), unless VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS fixes it. At <= 64 rows TPP
# won by >= 1.3x on both machines: that is never measured.

CPU_PACKED_GEMM_MAX_ROWS = 128  # the rule when nothing was measured for a shape
ALWAYS_PACKED_ROWS = 64
TUNED_ROWS = (128, 256, 512, 1024)  # measured in this order until torch's GEMM wins
_TUNE_OUT_FEATURES = 1024  # measure on this many output channels (a slice) at most
_TUNE_REPEATS = 3
_TUNE_CALL_BUDGET_S = 0.05  # stop climbing when one call takes longer than this

_max_rows_by_shape: dict[tuple[int, int, torch.dtype], int] = {}


# Output channels per block of the prepacked weight. IPEX blocks by 16 (its
# Apply_TPPLinear_weight_prepack); wider blocks give each GEMM call a longer contiguous
# stretch of weight to stream from memory. Measured (AMD EPYC, AVX512-BF16, no AMX, 2
# threads, PASSIVE, 2026-12-02, load ~1): SmolLM2-135M's 121 GEMMs in a row (269 MB, so
# from DRAM, not cache) at 16 rows 26.2-27.7 ms with 16-wide blocks vs 18.9-24.8 with
# 64-wide (1.1-1.4x; 32-wide in between); at 1 and 4 rows within noise; at 64 rows 62 vs
# 51 ms; in the engine 1.14x. In cache (one shape in a loop) only the LM head differs
# (3.6 vs 2.5 ms), so the gain is in streaming the weights, which a short load-time
# measurement cannot see. So it is a rule, by CPU kind, from same-process engine A/Bs
# (benchmarks/engine_env_ab.py, SmolLM2-135M bf16 offline, 2 threads, quiet):
#   AVX512-BF16, no AMX (AMD EPYC, 2026-12-02 06:13): 64-wide 1.14x (8/8 pairs);
#   AVX2 only (AMD EPYC, 2026-12-02 16:46): 16-wide 1.06x (64.4 vs 68.6 tok/s, 3/4 pairs);
#   AMX: IPEX's TPP GEMM runs AMX tiles and was never measured with wider blocks (no AMX
#   machine was available since), so it keeps IPEX's own 16.
# benchmarks/gemm_blocking.py measures it; VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK fixes it.
WIDE_BLOCK_CHOICES = (64, 32, 16)  # the widest that divides the output channels
IPEX_BLOCK = 16
_PACKED_BLOCK_IN = 64  # input channels per block (IPEX's own choice)


def _block_rule() -> tuple[tuple[int, ...], str]:
    """(output-channel block widths to try, widest first; why) on this machine:
    VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK, or the rule above for its CPU kind."""
    fixed = envs.VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK
    if fixed:
        return (fixed,), "VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK"
    if device.cpu_has_bf16_instructions() and not device.cpu_has_amx():
        return (WIDE_BLOCK_CHOICES,
                "widest of 64/32/16 that divides, measured faster with AVX512-BF16 and no AMX")
    return (IPEX_BLOCK,), "IPEX's 16 (AVX2-only or AMX CPU)"


def packed_block_rule() -> str:
    """How the block width was chosen, for the load log line."""
    return _block_rule()[1]


def packed_block_out(out_features: int) -> int:
    """Output channels per block for this many output channels: the first width of the
    rule that divides them, else IPEX's 16."""
    for block in _block_rule()[0]:
        if out_features % block == 0:
            return block
    return IPEX_BLOCK


def cpu_pack_linear_weight(weight: torch.Tensor,
                           block_out: Optional[int] = None) -> Optional[torch.Tensor]:
    """``weight`` [out, in] blocked for IPEX's TPP GEMM as [out / block_out, in / 64, ...]
    (a new tensor; ``weight`` is left as it is), or None when TPP does not take it (dtype
    not bf16/fp32, out % 16, in % 64). ``block_out``: default :func:`packed_block_out`."""
    if weight.dim() != 2 or weight.dtype not in (torch.bfloat16, torch.float32):
        return None
    out_features, in_features = weight.shape
    if out_features % 16 or in_features % _PACKED_BLOCK_IN:
        return None
    block_out = block_out or packed_block_out(out_features)
    if out_features % block_out:
        return None
    from intel_extension_for_pytorch.nn.utils._weight_prepack import (
        TPPLinear_weight_prepack,
        block,
    )

    holder = torch.nn.Linear(in_features, out_features, bias=False, device="meta")
    # IPEX's own blocking; it overwrites the tensor it is given, hence the copy.
    holder.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
    TPPLinear_weight_prepack(holder, block_out, _PACKED_BLOCK_IN, weight.dtype)
    block(holder)
    return holder.weight.detach()


def _shape_key(weight: torch.Tensor) -> tuple[int, int, torch.dtype]:
    return (weight.shape[0], weight.shape[1], weight.dtype)


def packed_gemm_max_rows(weight: torch.Tensor) -> int:
    """Rows up to which ``cpu_linear`` uses the prepacked GEMM for this weight's shape."""
    return _max_rows_by_shape.get(_shape_key(weight), CPU_PACKED_GEMM_MAX_ROWS)


def decide_max_rows(timings: list[tuple[int, float, float]]) -> int:
    """The switch point from (rows, TPP seconds, torch seconds) measured at increasing row
    counts: the largest measured row count up to which TPP never lost."""
    best = ALWAYS_PACKED_ROWS
    for rows, packed_s, torch_s in sorted(timings):
        if packed_s > torch_s:
            break
        best = rows
    return best


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure_max_rows(weight: torch.Tensor, packed: torch.Tensor) -> tuple[int, list]:
    """Time TPP and torch's GEMM alternately on (a slice of) this weight at TUNED_ROWS;
    returns (switch point, [(rows, tpp s, torch s), ...])."""
    out_features, in_features = weight.shape
    # The prepacked layout is [out / block, in / 64, ..., block, (2)]: slicing its first dim
    # is a narrower weight.
    block_out = packed.shape[3]
    out_slice = min(out_features, _TUNE_OUT_FEATURES)
    out_slice -= out_slice % block_out
    w = weight[:out_slice]
    p = packed[: out_slice // block_out].contiguous()
    timings = []
    gen = torch.Generator().manual_seed(0)
    for rows in TUNED_ROWS:
        x = torch.randn(rows, in_features, generator=gen).to(weight.dtype)
        tpp, ref = torch.ops.torch_ipex.tpp_linear, torch.nn.functional.linear
        tpp(x, p, out_slice), ref(x, w)  # warm-up (oneDNN primitive creation, caches)
        packed_s = torch_s = float("inf")
        # Interleaved, so a busy neighbour hits both; the minimum, since other processes
        # only ever add time.
        for _ in range(_TUNE_REPEATS):
            packed_s = min(packed_s, _seconds(tpp, x, p, out_slice))
            torch_s = min(torch_s, _seconds(ref, x, w))
        timings.append((rows, packed_s, torch_s))
        if packed_s > torch_s or min(packed_s, torch_s) > _TUNE_CALL_BUDGET_S:
            break
    return decide_max_rows(timings), timings


def choose_max_rows(weight: torch.Tensor, packed: torch.Tensor) -> int:
    """Decide (once per weight shape and dtype) up to how many rows this shape uses the
    prepacked GEMM: VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS if set, else measured."""
    key = _shape_key(weight)
    if key not in _max_rows_by_shape:
        fixed = envs.VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS
        if fixed is not None:
            _max_rows_by_shape[key] = fixed
        else:
            start = time.perf_counter()
            rows, timings = measure_max_rows(weight, packed)
            _max_rows_by_shape[key] = rows
            logger.debug("CPU GEMM %dx%d %s: prepacked up to %d rows (%.2f s; %s)",
                         key[0], key[1], key[2], rows, time.perf_counter() - start,
                         ", ".join(f"{r}: {t * 1e3:.2f}/{o * 1e3:.2f} ms"
                                   for r, t, o in timings))
    return _max_rows_by_shape[key]


def chosen_max_rows() -> dict[tuple[int, int, torch.dtype], int]:
    """What was decided so far, per (out, in, dtype) (for the load-time log line)."""
    return dict(_max_rows_by_shape)


def cpu_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    packed_weight: torch.Tensor,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: up to the shape's switch point on the prepacked
    weight, above it on torch's GEMM."""
    rows = x.numel() // x.shape[-1]
    if rows > packed_gemm_max_rows(weight):
        return torch.nn.functional.linear(x, weight, bias)
    x = x.contiguous()
    out_features = weight.shape[0]
    if bias is None:
        return torch.ops.torch_ipex.tpp_linear(x, packed_weight, out_features)
    return torch.ops.torch_ipex.tpp_linear_bias(x, packed_weight, bias, out_features)
