"""Attention kernels: KV-cache write, variable-length causal attention over the paged KV
cache, and variable-length attention without a cache (encoder-only models).

The KV-cache tensors are in :func:`vllm_xpu_plugin.device.kv_cache_layout`."""

from __future__ import annotations

import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.kernels.cpu_threads import cpu_small_op


def attention_head_sizes() -> list[int]:
    """Head sizes the paged-attention kernels are known to handle on this device."""
    if device.is_cpu_mode():
        # Measured: the CPU kernels match a plain-torch reference for every head size
        # 1-259 and every multiple of 4 up to 1096, in fp32, bf16 and fp16.
        return [*range(1, 257), *range(260, 1025, 4)]
    # XPU-only: the list vLLM 0.11 enforces for the same IPEX varlen kernel on XPU.
    return [32, 64, 96, 128, 160, 192, 224, 256]


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_cache_dtype: str = "auto",
) -> None:
    """Store token i's key/value [num_tokens, num_kv_heads, head_size] (strided views
    allowed) at slot ``slot_mapping[i]``: block ``slot // block_size``, offset
    ``slot % block_size``. kv_cache_dtype: :func:`device.kv_cache_kernel_dtype` of the
    user's ``--kv-cache-dtype`` ("auto", or "fp8_e5m2" on a float8_e5m2 cache: the kernel
    rounds each element into it, unscaled).

    Every slot must be >= 0: the CPU kernel does not skip vLLM's padding slot -1, it
    writes out of bounds (measured: heap corruption).
    """
    if device.is_cpu_mode():
        # reshape_and_cache is the CPU kernel for the HND block layout; called directly (what
        # PagedAttention.reshape_and_cache runs), it wants int32 slots.
        if slot_mapping.dtype != torch.int32:
            slot_mapping = slot_mapping.to(torch.int32)
        cpu_small_op(key.numel(), device.ipex_ops().reshape_and_cache, key, value,
                      key_cache, value_cache, slot_mapping, kv_cache_dtype, 1.0, 1.0)
    else:
        # XPU-only: the NHD block layout is the "flash" variant's (as in vLLM 0.11 on XPU).
        device.ipex().llm.modules.PagedAttention.reshape_and_cache_flash(
            key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, 1.0, 1.0
        )


def paged_attention_varlen(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_kv: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_kv: int,
    scale: float,
    block_table: torch.Tensor,
    window_left: int = -1,
    softcap: float = -1.0,
    kv_cache_dtype: str = "auto",
) -> None:
    """Causal attention of a batch of variable-length queries over their paged KV cache.

    out/query: [num_tokens, num_heads, head_size] (query may be a strided view; out must
    be contiguous). Sequence i's queries are rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``
    and are the LAST tokens of its ``cu_seqlens_kv[i+1] - cu_seqlens_kv[i]`` cached
    tokens (the causal mask is aligned bottom-right). cu_seqlens_* and block_table are
    int32 (the CPU kernel rejects int64). num_heads may be a multiple of num_kv_heads
    (GQA/MQA). window_left: a query at position p sees keys p - window_left .. p
    (-1: unbounded). softcap: logits -> softcap * tanh(logits / softcap); -1 disables
    it (0 does not: measured wrong results on CPU). kv_cache_dtype: as for
    :func:`write_kv_cache` (the kernels read an fp8 cache back into the query's dtype).
    """
    window_right = 0 if window_left >= 0 else -1
    if device.is_cpu_mode():
        # The kernel PagedAttention.flash_attn_varlen_func dispatches to, called directly.
        device.ipex_ops().flash_attn_varlen_func(
            out, query, key_cache, value_cache, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q,
            max_seqlen_kv, scale, True, block_table, None, window_left, window_right,
            kv_cache_dtype, 1.0, 1.0, softcap)
        return
    query = query.contiguous()  # XPU-only: vLLM 0.11 hands the XPU kernel a contiguous q
    device.ipex().llm.modules.PagedAttention.flash_attn_varlen_func(  # XPU-only
        out,
        query,
        key_cache,
        value_cache,
        cu_seqlens_q,
        cu_seqlens_kv,
        max_seqlen_q,
        max_seqlen_kv,
        scale,
        True,  # is_causal: the only mode the kernels implement
        block_table,
        None,  # alibi_slopes: unsupported, rejected when the backend is built
        window_size_left=window_left,
        window_size_right=window_right,
        kv_cache_dtype=kv_cache_dtype,
        k_scale=1.0,
        v_scale=1.0,
        softcap=softcap,
    )


def varlen_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_kv: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_kv: int,
    scale: float,
    causal: bool,
    window: int = -1,
) -> None:
    """Attention of a batch of variable-length sequences over their own K/V, without a KV
    cache (IPEX's non-paged ``ipex.llm.functional.varlen_attention``).

    out/query: [num_tokens, num_heads, head_size]; key/value: [num_kv_tokens, num_kv_heads,
    head_size] (strided views allowed). Sequence i is rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``
    of query and ``cu_seqlens_kv[i]:cu_seqlens_kv[i+1]`` of key/value; cu_seqlens_* are int32
    [num_seqs + 1]. ``causal=False`` is bidirectional (encoder-only models). num_heads may be
    a multiple of num_kv_heads. ``window`` (non-causal only): query i sees keys j with
    ``|i - j| <= window`` (ModernBERT's local layers); -1: unbounded.
    """
    if window >= 0 and causal:
        raise ValueError("varlen_attention: a window is implemented for causal=False only")
    if device.is_cpu_mode():
        if window >= 0:
            # IPEX's CPU varlen kernel asserts window == -1 (IPEX 2.8): the same padded
            # SDPA it runs, with the band in the mask.
            _cpu_windowed_varlen_attention(out, query, key, value, cu_seqlens_q,
                                           max_seqlen_q, scale, window)
            return
        # The CPU implementation pads to max_seqlen and runs torch SDPA with its default
        # scale 1/sqrt(head_size): it ignores softmax_scale (read in IPEX 2.8's
        # _IPEXVarlenScaledDotProductCPU), so another scale is folded into the query.
        default_scale = query.shape[-1] ** -0.5
        if abs(scale - default_scale) > 1e-6 * default_scale:
            query = query * (scale / default_scale)
        device.ipex().llm.functional.varlen_attention(
            query, key, value, out, cu_seqlens_q, cu_seqlens_kv, None, max_seqlen_q,
            max_seqlen_kv, 0.0, scale, False, causal, False, None)
        return
    # XPU-only: contiguous q/k/v, as vLLM 0.11's ipex_ops.varlen_attention hands the kernel.
    device.ipex().llm.functional.varlen_attention(  # XPU-only
        query.contiguous(), key.contiguous(), value.contiguous(), out, cu_seqlens_q,
        cu_seqlens_kv, None, max_seqlen_q, max_seqlen_kv, 0.0, scale, False, causal, False,
        None, window_size_left=window, window_size_right=window if window >= 0 else -1,
        softcap=-1.0)  # XPU-only; -1: IPEX's "off" values


def _cpu_windowed_varlen_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    window: int,
) -> None:
    """CPU mode, non-causal with a symmetric window, self-attention (q and k/v share
    cu_seqlens): padded to max_seqlen, one SDPA call with a boolean band mask."""
    num_seqs = cu_seqlens.numel() - 1
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.long)
    pos = torch.arange(max_seqlen)
    valid = pos[None, :] < lens[:, None]  # [seqs, max_seqlen]

    def padded(t: torch.Tensor, heads: int) -> torch.Tensor:
        buf = t.new_zeros(num_seqs, max_seqlen, heads, t.shape[-1])
        buf[valid] = t
        return buf.transpose(1, 2)  # [seqs, heads, max_seqlen, head_size]

    heads, kv_heads = query.shape[1], key.shape[1]
    q = padded(query, heads)
    k = padded(key, kv_heads).repeat_interleave(heads // kv_heads, dim=1)
    v = padded(value, kv_heads).repeat_interleave(heads // kv_heads, dim=1)
    band = (pos[:, None] - pos[None, :]).abs() <= window
    mask = band[None, None] & valid[:, None, None, :]
    # Padding query rows may see no key (NaN rows); they are dropped below.
    result = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                              scale=scale)
    out.copy_(result.transpose(1, 2)[valid])
