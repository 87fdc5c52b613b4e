"""RMS-norm kernels: plain and fused add + RMS norm (vLLM's RMSNorm / GemmaRMSNorm ops)."""

from __future__ import annotations

import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.kernels.cpu_threads import cpu_small_op


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim into a new tensor of x's dtype. x may be a strided view.

    ``weight`` may be fp32 while x is 16-bit (GemmaRMSNorm passes ``1 + w`` in fp32): the
    CPU kernel then multiplies in fp32 and rounds once, which is Gemma's formula.
    """
    if device.is_cpu_mode():
        # The kernel ipex.llm.functional.rms_norm dispatches to, called directly.
        return cpu_small_op(x.numel(), device.ipex_ops().rmsnorm, x, weight, eps)
    # XPU-only: the kernel takes an fp32 weight with 16-bit x (IPEX v2.8.10+xpu
    # RMSNorm.cpp:361), so Gemma's fp32 1 + w is not rounded first (docs/dev/xpu_parity.md).
    return device.ipex().llm.functional.rms_norm(x, weight, eps)  # XPU-only


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual += x`` (in place) and return ``(rms_norm(residual), residual)``.

    Same kernel call on both builds (``add_rms_norm(residual, x, ..., add_back=True)``);
    x is left unchanged and the normalized output is a new tensor.
    """
    if device.is_cpu_mode():
        # The kernel ipex.llm.functional.add_rms_norm dispatches to, called directly.
        out = cpu_small_op(x.numel(), device.ipex_ops().add_rmsnorm, x, residual, weight,
                            eps, True)
        return out, residual
    weight = weight.to(x.dtype)  # XPU-only
    out = device.ipex().llm.functional.add_rms_norm(residual, x, weight, None, eps, True)  # XPU-only
    return out, residual  # XPU-only
