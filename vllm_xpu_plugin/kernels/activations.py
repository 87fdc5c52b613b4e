"""Activation kernels: SiLU-and-mul, GELU-and-mul (vLLM's SiluAndMul / GeluAndMul ops)."""

from __future__ import annotations

from typing import Optional

import torch

from vllm_xpu_plugin import device


def silu_and_mul(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` with ``d = x.shape[-1] // 2``, into ``out`` if
    given (else a new tensor)."""
    if device.is_cpu_mode():
        # IPEX's CPU ``silu_mul`` has no native kernel: it is
        # ``torch.compile(silu(x) * y)``, whose first call compiles for 13-46 s and every
        # new dtype / 1-token shape for ~2 s more (measured, 2 cores). The same formula
        # run eagerly gives the same numbers with no warm-up.
        d = x.shape[-1] // 2
        if out is None:  # multiply into silu's result: no extra buffer
            return torch.nn.functional.silu(x[..., :d]).mul_(x[..., d:])
        return torch.mul(torch.nn.functional.silu(x[..., :d]), x[..., d:], out=out)
    if out is None:  # XPU-only
        out = x.new_empty(x.shape[:-1] + (x.shape[-1] // 2,))  # XPU-only
    device.ipex().llm.functional.silu_and_mul(x, out)  # XPU-only
    return out


def gelu_and_mul(x: torch.Tensor, out: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``out = gelu(x[..., :d], approximate) * x[..., d:]``; approximate "none" or "tanh"."""
    if device.is_cpu_mode():
        # Same reason as silu_and_mul: IPEX CPU ``gelu_mul`` is a torch.compile wrapper.
        d = x.shape[-1] // 2
        gelu = torch.nn.functional.gelu(x[..., :d], approximate=approximate)
        return torch.mul(gelu, x[..., d:], out=out)
    device.ipex().llm.functional.gelu_and_mul(x, out, approximate)  # XPU-only
    return out
