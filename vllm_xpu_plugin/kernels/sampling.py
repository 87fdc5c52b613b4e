"""Sampling kernels: the greedy pick of the plugin's sampler."""

from __future__ import annotations

import torch

from vllm_xpu_plugin import device


def greedy_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)`` (int64; first maximal index on ties, NaN counts as max)."""
    if device.is_cpu_mode() and logits.dtype == torch.float32 and logits.dim() == 2:
        # torch's CPU argmax is a scalar loop: 1.8 ms for 16 x 49152 fp32 logits on one
        # core; numpy's is vectorized (0.15 ms) with the same tie and NaN rules.
        return torch.from_numpy(logits.detach().contiguous().numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)
