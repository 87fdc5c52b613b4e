"""Encoder-only attention (attn_type ENCODER_ONLY) for the IPEX backend.

BERT/RoBERTa/XLM-R embedders and cross-encoders attend bidirectionally within each prompt
and keep no KV cache: vLLM's ``EncoderOnlyAttention`` layer wraps the platform's backend
(``create_encoder_only_attention_backend``) with a metadata builder that sets
``causal=False``, and its model runner leaves those layers out of the KV-cache spec
(``get_kv_cache_spec`` skips them; ``may_add_encoder_only_layers_to_kv_cache_config`` gives
them a group with a dummy block table). Each step's K/V are then the whole prompt, so the
batch runs on IPEX's non-paged varlen kernel (``kernels.attention.varlen_attention``).

That needs every prompt whole in one step. vLLM turns chunked prefill off for pooling
models unless the pooling type is LAST, so the combination "encoder-only layers + chunked
prefill" is refused when the model is built instead of attending over partial prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from vllm_xpu_plugin.kernels import attention as attention_kernels

if TYPE_CHECKING:
    from vllm_xpu_plugin.attention.ipex_attn import IPEXAttentionImpl, IPEXAttentionMetadata


def reject_unsupported(prefix: str, sliding_window: Optional[int],
                       logits_soft_cap: Optional[float]) -> None:
    """Raise one line naming the first encoder-only option the kernel path cannot do."""
    if sliding_window is not None and sliding_window < 1:
        raise NotImplementedError(
            f"{prefix}encoder-only attention with a sliding window of {sliding_window} is "
            "not supported")
    if logits_soft_cap:
        raise NotImplementedError(
            f"{prefix}encoder-only attention with a logits soft cap is not supported")
    _reject_chunked_prefill(prefix)


def _reject_chunked_prefill(prefix: str) -> None:
    from vllm.config import get_current_vllm_config

    scheduler_config = get_current_vllm_config().scheduler_config
    if scheduler_config is not None and scheduler_config.chunked_prefill_enabled:
        raise NotImplementedError(
            f"{prefix}encoder-only attention needs each prompt whole in one step, but "
            "chunked prefill is on (vLLM enables it for LAST pooling); pass "
            "--no-enable-chunked-prefill or use CLS/MEAN pooling")


def forward(
    impl: IPEXAttentionImpl,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    output: torch.Tensor,
    attn_metadata: IPEXAttentionMetadata,
) -> None:
    """query/output [num_tokens, num_heads, head_size], key/value [num_tokens, num_kv_heads,
    head_size]: the batch's whole prompts, without padding rows."""
    # Whole prompts: each request's keys are its queries (query_start_loc for both).
    cu_seqlens = attn_metadata.query_start_loc
    max_len = attn_metadata.max_query_len
    # A local layer's window w (ModernBERT: local_attention // 2) means |i - j| <= w, as in
    # transformers' ModernBERT mask (vLLM's FlashAttention backend uses w - 1).
    window = -1 if impl.sliding_window is None else impl.sliding_window
    attention_kernels.varlen_attention(
        output, query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, impl.scale,
        causal=False, window=window)
