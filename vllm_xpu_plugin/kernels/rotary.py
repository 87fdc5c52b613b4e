"""Rotary-embedding kernels (vLLM's RotaryEmbedding ops)."""

from __future__ import annotations

from typing import Optional

import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.kernels.cpu_threads import cpu_small_op


def rotary_kernel_table(cos_sin_cache: torch.Tensor, head_size: int) -> torch.Tensor:
    """vLLM's ``cos_sin_cache`` ([max_positions, rotary_dim] = cat(cos, sin)) as this
    device's rotary kernel reads it. Build it once per cache (it depends on nothing else).

    XPU: the cache itself. CPU: fp32 [max_positions, head_size] = cat(sin, cos), each
    padded to head_size // 2 (the kernel reads only the first rotary_dim // 2 of each; the
    values are the cache's, so results are bit-identical to converting per call).
    """
    if not device.is_cpu_mode():
        return cos_sin_cache  # XPU-only
    cos, sin = cos_sin_cache.float().chunk(2, dim=-1)
    half = head_size // 2
    if cos.shape[-1] != half:
        cos = torch.nn.functional.pad(cos, (0, half - cos.shape[-1]), value=1.0)
        sin = torch.nn.functional.pad(sin, (0, half - sin.shape[-1]), value=0.0)
    return torch.cat((sin, cos), dim=-1).contiguous()


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: Optional[torch.Tensor],
    head_size: int,
    kernel_table: torch.Tensor,
    is_neox: bool,
    rotary_dim: int,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Rotary embedding of vLLM's layout; returns the rotated ``(query, key)``.

    positions: [num_tokens]; query/key: [num_tokens, heads * head_size] (or already
    [num_tokens, heads, head_size]), strided views allowed; key may be None.
    kernel_table: :func:`rotary_kernel_table` of the layer's cos_sin_cache.
    Only the first ``rotary_dim`` channels of each head are rotated. Callers must use the
    returned tensors (as with vLLM's forward_native): the CPU kernel writes new tensors
    and leaves query/key as they are; the XPU kernel rotates them in place.
    """
    num_tokens = positions.numel()
    if num_tokens == 0:
        return query, key
    if device.is_cpu_mode():
        # One kernel call per tensor and nothing else: the kernel picks each token's
        # sin/cos row from the whole table by position (decode step of SmolLM2-135M at
        # batch 16: 2 ops per layer instead of ~12; see docs/performance.md).
        rope = device.ipex_ops().rotary_position_embedding
        offset = rotary_dim // 2 if is_neox else 1
        positions = positions.view(1, num_tokens)

        def rotate(x: torch.Tensor) -> torch.Tensor:
            heads = x.numel() // (num_tokens * head_size)
            out, _, _ = cpu_small_op(x.numel(), rope, x.view(1, num_tokens, heads, head_size),
                                      kernel_table, positions, heads, head_size, offset,
                                      rotary_dim)
            return out.view(x.shape)

        return rotate(query), (rotate(key) if key is not None else None)
    # XPU-only: the kernel takes no key=None; rotate a 1-head scratch key and drop it.
    k = key if key is not None else query.new_zeros(num_tokens, head_size)  # XPU-only
    device.ipex().llm.functional.rotary_embedding_batched(  # XPU-only
        positions.flatten(), query, k, head_size, kernel_table, is_neox, rotary_dim
    )
    return query, key  # XPU-only
