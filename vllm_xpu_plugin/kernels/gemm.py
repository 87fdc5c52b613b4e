"""GEMM kernels: CPU mode's linear layers on weights prepacked for IPEX's TPP GEMM."""

from __future__ import annotations

from typing import Optional

import torch

# ---- CPU-mode GEMMs on prepacked weights (used by worker/model_runner.py) ------------
# torch's bf16 F.linear on CPU hands oneDNN the plain [out, in] weight on every call; at
# decode sizes that costs more than the GEMM. IPEX's TPP GEMM reads a weight blocked once
# at load time. Measured (SmolLM2-135M's 121 GEMMs, bf16, 2 threads, interleaved A/B,
# benchmarks/): 16 rows 2.7x faster, 1 row 1.5x, 64 rows 1.5x, 160 rows even, 512 rows
# 0.9x -- so rows above CPU_PACKED_GEMM_MAX_ROWS (prefill) keep torch's GEMM.

CPU_PACKED_GEMM_MAX_ROWS = 128


def cpu_pack_linear_weight(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """``weight`` [out, in] blocked for IPEX's TPP GEMM (a new tensor; ``weight`` is left as
    it is), or None when TPP does not take it (dtype not bf16/fp32, out % 16, in % 64)."""
    if weight.dim() != 2 or weight.dtype not in (torch.bfloat16, torch.float32):
        return None
    out_features, in_features = weight.shape
    if out_features % 16 or in_features % 64:
        return None
    from intel_extension_for_pytorch.nn.utils._weight_prepack import (
        Apply_TPPLinear_weight_prepack,
    )

    holder = torch.nn.Linear(in_features, out_features, bias=False, device="meta")
    # IPEX's own blocking; it overwrites the tensor it is given, hence the copy.
    holder.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
    Apply_TPPLinear_weight_prepack(holder, dtype=weight.dtype)
    if holder.tpp_fallback:
        return None
    return holder.weight.detach()


def cpu_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    packed_weight: torch.Tensor,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: small batches on the prepacked weight, large on torch's."""
    rows = x.numel() // x.shape[-1]
    if rows > CPU_PACKED_GEMM_MAX_ROWS:
        return torch.nn.functional.linear(x, weight, bias)
    x = x.contiguous()
    out_features = weight.shape[0]
    if bias is None:
        return torch.ops.torch_ipex.tpp_linear(x, packed_weight, out_features)
    return torch.ops.torch_ipex.tpp_linear_bias(x, packed_weight, bias, out_features)
