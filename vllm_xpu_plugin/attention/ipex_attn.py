"""vLLM v1 attention backend on IPEX PagedAttention kernels.

Decoder self-attention: every batch - decodes, prefills, chunked prefills and prefix-cache hits, mixed in any
order - takes one path: the new tokens' K/V are written into the paged cache, then one
``flash_attn_varlen_func`` call attends each sequence's queries over its whole cached
context. No batch reordering is needed.

CPU mode only: a decode-only batch (one query per sequence) of a layer without window,
soft cap or fp8 cache may run on IPEX's single-query kernel instead, when it was measured
faster on this machine (kernels/attention.py: 3.5-7x on an AMD EPYC without AMX, 0.85-1.8x
on an AMX Xeon). The Intel GPU path keeps the one varlen call, as vLLM's XPU backend.

Encoder-only attention (BERT-style embedders and cross-encoders, attn_type ENCODER_ONLY):
bidirectional over each whole prompt, no KV cache, on IPEX's non-paged varlen kernel
(attention/encoder_only.py). vLLM's EncoderOnlyAttention layer subclasses this backend with a
builder that marks the metadata non-causal, and its runner gives those layers no KV cache.

Per-device kernel calls and the KV-cache layout live in ``vllm_xpu_plugin.device``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from vllm.attention.backends.abstract import (
    AttentionBackend,
    AttentionImpl,
    AttentionLayer,
    AttentionType,
)
from vllm.config import VllmConfig
from vllm.v1.attention.backends.utils import (
    AttentionCGSupport,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from vllm.v1.kv_cache_interface import AttentionSpec

from vllm_xpu_plugin import device
from vllm_xpu_plugin.attention import encoder_only
from vllm_xpu_plugin.kernels import attention as attention_kernels
from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class IPEXAttentionBackend(AttentionBackend):
    # The Attention layer allocates the output and the kernel writes into it.
    accept_output_buffer: bool = True

    @staticmethod
    def get_name() -> str:
        # A _Backend member name, so vLLM maps it to _Backend.IPEX (layer.backend) like
        # any in-tree backend; nothing in vLLM 0.11 branches on IPEX.
        return "IPEX"

    @staticmethod
    def get_impl_cls() -> type[IPEXAttentionImpl]:
        return IPEXAttentionImpl

    @staticmethod
    def get_metadata_cls() -> type[IPEXAttentionMetadata]:
        return IPEXAttentionMetadata

    @staticmethod
    def get_builder_cls() -> type[IPEXAttentionMetadataBuilder]:
        return IPEXAttentionMetadataBuilder

    @classmethod
    def get_supported_dtypes(cls) -> list[torch.dtype]:
        return list(SUPPORTED_DTYPES)

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return attention_kernels.attention_head_sizes()

    @classmethod
    def validate_head_size(cls, head_size: int) -> None:
        supported = cls.get_supported_head_sizes()
        if head_size not in supported:
            raise ValueError(
                f"head size {head_size} is not supported by the IPEX attention kernels on "
                f"{device.device_type()}; supported head sizes: {_describe_sizes(supported)}"
            )

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_size: int,
        cache_dtype_str: str = "auto",
    ) -> tuple[int, ...]:
        return device.kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    def get_kv_cache_stride_order() -> tuple[int, ...]:
        # Allocate exactly get_kv_cache_shape(), contiguous: the kernels index raw
        # memory, and a permuted view of another layout gives silently wrong results.
        return (0, 1, 2, 3, 4)


@dataclass
class IPEXAttentionMetadata:
    """One batch's attention inputs; the first fields are named as vLLM's
    FlashAttentionMetadata so generic vLLM code reading them works."""

    num_actual_tokens: int  # tokens in the batch, without padding rows
    max_query_len: int
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32, cumulative query lengths
    max_seq_len: int
    seq_lens: torch.Tensor  # [num_reqs] int32, context + new tokens per request
    seq_start_loc: torch.Tensor  # [num_reqs + 1] int32, cumulative seq_lens
    block_table: torch.Tensor  # [num_reqs, max_blocks_per_req] int32
    slot_mapping: torch.Tensor  # [num_actual_tokens] int32 cache slot per token, -1 = none
    # Set when some tokens have no cache slot (-1, e.g. dummy runs): only these token
    # rows are written, to these slots, because the CPU kernel does not skip -1.
    kv_write_token_indices: Optional[torch.Tensor] = None
    kv_write_slot_mapping: Optional[torch.Tensor] = None
    causal: bool = True


class IPEXAttentionMetadataBuilder(AttentionMetadataBuilder[IPEXAttentionMetadata]):
    # The plugin runs eagerly (no graphs), and one kernel takes any batch order.
    cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER
    reorder_batch_threshold: ClassVar[Optional[int]] = None

    def __init__(
        self,
        kv_cache_spec: AttentionSpec,
        layer_names: list[str],
        vllm_config: VllmConfig,
        device: torch.device,
    ) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> IPEXAttentionMetadata:
        # common_prefix_len is always 0: the platform disables cascade attention.
        common = common_attn_metadata
        num_reqs = common.num_reqs
        seq_lens = common.seq_lens[:num_reqs]
        # The kernel takes cumulative KV lengths, not per-request lengths.
        seq_start_loc = torch.zeros(num_reqs + 1, dtype=torch.int32, device=seq_lens.device)
        torch.cumsum(seq_lens, dim=0, dtype=torch.int32, out=seq_start_loc[1:])

        # int32 once per step: the CPU KV-write kernel takes int32 (else every layer converts).
        slot_mapping = common.slot_mapping[: common.num_actual_tokens].to(torch.int32)
        kv_write_token_indices = kv_write_slot_mapping = None
        has_slot = slot_mapping >= 0
        if not bool(has_slot.all()):
            kv_write_token_indices = has_slot.nonzero().flatten()
            kv_write_slot_mapping = slot_mapping[kv_write_token_indices]

        return IPEXAttentionMetadata(
            num_actual_tokens=common.num_actual_tokens,
            max_query_len=common.max_query_len,
            query_start_loc=common.query_start_loc.to(torch.int32),
            max_seq_len=common.max_seq_len,
            seq_lens=seq_lens,
            seq_start_loc=seq_start_loc,
            block_table=common.block_table_tensor.to(torch.int32),
            slot_mapping=slot_mapping,
            kv_write_token_indices=kv_write_token_indices,
            kv_write_slot_mapping=kv_write_slot_mapping,
            causal=common.causal,
        )


class IPEXAttentionImpl(AttentionImpl[IPEXAttentionMetadata]):
    """Decoder self-attention and encoder-only attention. Everything the kernels cannot do is rejected here, when
    the model is built, so a served model never fails on its first request."""

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: Optional[int] = None,
        alibi_slopes: Optional[list[float]] = None,
        sliding_window: Optional[int] = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: Optional[float] = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: Optional[str] = None,
        sinks: Optional[torch.Tensor] = None,
    ) -> None:
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _reject_unsupported(
            num_heads=num_heads,
            head_size=head_size,
            num_kv_heads=num_kv_heads,
            alibi_slopes=alibi_slopes,
            sliding_window=sliding_window,
            logits_soft_cap=logits_soft_cap,
            kv_cache_dtype=kv_cache_dtype,
            attn_type=attn_type,
            sinks=sinks,
            dcp_world_size=self.dcp_world_size,
        )
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.kv_cache_dtype = kv_cache_dtype
        self._kernel_kv_dtype = device.kv_cache_kernel_dtype(kv_cache_dtype)
        self._cache_view_dtype = device.kv_cache_view_dtype(kv_cache_dtype)
        self.attn_type = attn_type
        self.sliding_window = sliding_window
        # A query at position p sees the sliding_window keys p - sliding_window + 1 .. p.
        self.window_left = -1 if sliding_window is None else sliding_window - 1
        # IPEX disables the cap with -1 (0 is not "off" on CPU).
        self.logits_soft_cap = -1.0 if not logits_soft_cap else float(logits_soft_cap)
        # Layers that reuse another layer's KV cache must not write into it.
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        # CPU mode: decode-only batches may run on IPEX's single-query kernel or the
        # plugin's native one (chosen per machine, kernels/attention.py).
        self._single_query_possible = (
            attn_type == AttentionType.DECODER
            and attention_kernels.single_query_decode_possible(
                self.window_left, self.logits_soft_cap, self._kernel_kv_dtype, num_heads,
                num_kv_heads))
        self._head_mapping = (attention_kernels.head_mapping(num_heads, num_kv_heads)
                              if self._single_query_possible else None)
        self._decode_kernel: Optional[str] = None  # decided at the first decode-only batch

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: IPEXAttentionMetadata,
        output: Optional[torch.Tensor] = None,
        output_scale: Optional[torch.Tensor] = None,
        output_block_scale: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """query [num_tokens, num_heads, head_size]; key/value [num_tokens, num_kv_heads,
        head_size]; kv_cache [2, *device.kv_cache_shape(...)[1:]]; output like query.
        Rows past attn_metadata.num_actual_tokens are padding and left as they are."""
        if output is None:
            raise ValueError("IPEXAttentionImpl needs the output buffer (accept_output_buffer)")
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(
                "fused output quantization is not supported by the IPEX attention backend")
        if attn_metadata is None:
            # Memory-profiling run: no KV cache exists yet.
            return output

        num_tokens = attn_metadata.num_actual_tokens
        if self.attn_type == AttentionType.ENCODER_ONLY:
            encoder_only.forward(self, query[:num_tokens], key[:num_tokens],
                                 value[:num_tokens], output[:num_tokens], attn_metadata)
            return output
        key_cache, value_cache = self._cache_views(kv_cache)
        if query.shape[0] != num_tokens:  # padding rows (eager mode has none)
            query, key, value = query[:num_tokens], key[:num_tokens], value[:num_tokens]
            output_rows = output[:num_tokens]
        else:
            output_rows = output

        if self.kv_sharing_target_layer_name is None:
            if attn_metadata.kv_write_token_indices is None:
                attention_kernels.write_kv_cache(
                    key, value, key_cache, value_cache, attn_metadata.slot_mapping,
                    self._kernel_kv_dtype)
            else:
                indices = attn_metadata.kv_write_token_indices
                attention_kernels.write_kv_cache(
                    key.index_select(0, indices), value.index_select(0, indices),
                    key_cache, value_cache, attn_metadata.kv_write_slot_mapping,
                    self._kernel_kv_dtype)

        decode_kernel = ("varlen" if attn_metadata.max_query_len != 1
                         else self._decode_kernel_for(query, key_cache))
        if decode_kernel == "single_query":
            attention_kernels.paged_attention_single_query(
                output_rows, query, key_cache, value_cache, self._head_mapping, self.scale,
                attn_metadata.block_table, attn_metadata.seq_lens,
                device.kv_cache_block_size(key_cache), attn_metadata.max_seq_len)
            return output
        if decode_kernel == "native":
            attention_kernels.paged_attention_native(
                output_rows, query, key_cache, value_cache, self.scale,
                attn_metadata.block_table, attn_metadata.seq_lens)
            return output
        attention_kernels.paged_attention_varlen(
            output_rows,
            query,
            key_cache,
            value_cache,
            attn_metadata.query_start_loc,
            attn_metadata.seq_start_loc,
            attn_metadata.max_query_len,
            attn_metadata.max_seq_len,
            self.scale,
            attn_metadata.block_table,
            window_left=self.window_left,
            softcap=self.logits_soft_cap,
            kv_cache_dtype=self._kernel_kv_dtype,
        )
        return output

    def _decode_kernel_for(self, query: torch.Tensor, key_cache: torch.Tensor) -> str:
        # Kept per layer once settled (the setting, or a measurement on a quiet machine,
        # does not change while the engine runs), not re-read on every layer of every
        # decode step; asked again while a measurement taken under load is provisional.
        if self._decode_kernel is not None:
            return self._decode_kernel
        if not self._single_query_possible:
            self._decode_kernel = "varlen"
            return "varlen"
        kernel, settled = attention_kernels.decode_kernel(
            self.num_heads, self.num_kv_heads, self.head_size, query.dtype,
            device.kv_cache_block_size(key_cache))
        if settled:
            self._decode_kernel = kernel
        return kernel

    def _cache_views(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (key_cache, value_cache) of this layer's cache, split once instead of per step.
        # An fp8 cache is allocated as uint8 and viewed as the float8 dtype it stores.
        if getattr(self, "_cache_views_of", None) is not kv_cache:
            cache = kv_cache
            if self._cache_view_dtype is not None and cache.dtype != self._cache_view_dtype:
                cache = cache.view(self._cache_view_dtype)
            self._key_value_caches = tuple(cache.unbind(0))
            self._cache_views_of = kv_cache
        return self._key_value_caches


def _reject_unsupported(
    *,
    num_heads: int,
    head_size: int,
    num_kv_heads: int,
    alibi_slopes: Optional[list[float]],
    sliding_window: Optional[int],
    logits_soft_cap: Optional[float],
    kv_cache_dtype: str,
    attn_type: str,
    sinks: Optional[torch.Tensor],
    dcp_world_size: int,
) -> None:
    """Raise one line naming the first thing the IPEX attention kernels cannot do."""
    prefix = "IPEX attention backend: "
    if attn_type == AttentionType.ENCODER_ONLY:
        encoder_only.reject_unsupported(prefix, sliding_window, logits_soft_cap)
    elif attn_type != AttentionType.DECODER:
        raise NotImplementedError(
            f"{prefix}attention type {attn_type!r} is not supported (decoder self-attention "
            "and encoder-only attention only: encoder-decoder cross attention is not)")
    if alibi_slopes is not None:
        raise NotImplementedError(f"{prefix}ALiBi position biases are not supported")
    if sinks is not None:
        raise NotImplementedError(f"{prefix}attention sinks are not supported")
    if sliding_window is not None and sliding_window < 2:
        # The kernel's left window is sliding_window - 1, and it reads 0 as "no window"
        # (measured on CPU), so a 1-token window would silently attend to everything.
        raise NotImplementedError(
            f"{prefix}sliding window {sliding_window} is not supported (minimum 2)")
    if kv_cache_dtype not in device.kv_cache_dtypes():
        raise NotImplementedError(
            f"{prefix}--kv-cache-dtype {kv_cache_dtype} is not supported on "
            f"{device.device_type()}; use one of {', '.join(device.kv_cache_dtypes())}")
    if dcp_world_size > 1:
        raise NotImplementedError(f"{prefix}decode context parallelism is not supported")
    if num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
        raise ValueError(
            f"{prefix}{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    IPEXAttentionBackend.validate_head_size(head_size)
    # The layer is built under the model's dtype as torch's default dtype.
    dtype = torch.get_default_dtype()
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{prefix}dtype {dtype} is not supported; use float32, float16 or bfloat16")


def _describe_sizes(sizes: list[int]) -> str:
    """'1-256, 260-1024 (step 4)' for long lists, the plain list for short ones."""
    if len(sizes) <= 12:
        return ", ".join(map(str, sizes))
    runs: list[list[int]] = []  # [first, last, step]
    for size in sizes:
        if runs and (len(runs[-1]) == 1 or size - runs[-1][1] == runs[-1][2]):
            run = runs[-1]
            if len(run) == 1:
                run += [size, size - run[0]]
            else:
                run[1] = size
        else:
            runs.append([size])
    parts = []
    for run in runs:
        if len(run) == 1:
            parts.append(str(run[0]))
        elif run[2] == 1:
            parts.append(f"{run[0]}-{run[1]}")
        else:
            parts.append(f"{run[0]}-{run[1]} (step {run[2]})")
    return ", ".join(parts)
