"""Attention kernels: KV-cache write, variable-length causal attention over the paged KV
cache, CPU mode's decode-only kernel and the per-machine choice of it, and
variable-length attention without a cache (encoder-only models).

The KV-cache tensors are in :func:`vllm_xpu_plugin.device.kv_cache_layout`."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import torch

from vllm_xpu_plugin import device, envs, host_cpu
from vllm_xpu_plugin.kernels import native_decode
from vllm_xpu_plugin.kernels.cpu_threads import cpu_small_op
from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)


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


# ---- CPU mode: decode-only batches ----------------------------------------------------
# IPEX's CPU build has a second paged kernel for one query per sequence
# (single_query_cached_kv_attention). Which of the two is faster depends on the CPU:
#   AMX Xeon (2026-11-27): single-query 0.85-1.8x the varlen kernel over five runs (not
#   reliably faster, so it was not routed);
#   AMD EPYC, AVX512-BF16, no AMX (2026-12-02, 1 thread, load 2.8): single-query 3.5-7x
#   faster (SmolLM2 heads 9/3x64, 16 x 320 tokens: 4.41 -> 0.62 ms; Llama-8B heads
#   32/8x128, 32 x 1024: 154 -> 25 ms).
# A third candidate is the plugin's own kernel (native_decode.py, compiled on this machine
# at first use): 1.7-2.1x the single-query kernel on the AVX512-BF16 EPYC (2026-12-07),
# for bf16/fp32 and head sizes that are multiples of 16 up to 256.
# So a decode-only batch uses the kernel measured fastest on this machine, once per head
# configuration, on a synthetic batch (decode_kernel), unless
# VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION fixes it.
#
# A timing taken while other processes compete for the cores says little: four engines
# starting at once on 2 cores (2026-12-03, AVX512-BF16) had one measure varlen 7.8 ms vs
# single-query 11.1 ms and keep varlen, which is 4.7x slower there once quiet (4.85 vs
# 1.04 ms); that server then ran at 0.56x its twin's speed. So the measurement also reads
# how much CPU other processes used meanwhile (host_cpu.OtherProcessesLoad): at or above
# _DECODE_QUIET_CORES the choice is provisional and measured again at a decode step
# _DECODE_RETRY_S later, keeping the quietest measurement, at most
# _DECODE_MAX_MEASUREMENTS times.

DECODE_KERNELS = ("varlen", "single_query", "native")
_SINGLE_QUERY_KERNEL_ENV = "PAGED_ATTENTION_SINGLE_QUERY_KERNEL"  # read by IPEX's C++
_DECODE_TUNE_SEQS, _DECODE_TUNE_CONTEXT, _DECODE_TUNE_REPEATS = 16, 512, 3
# At least this long, so that the other processes' CPU time (10 ms ticks) is resolved to
# ~0.05 cores; a quiet measurement takes ~0.05 s of calls otherwise.
_DECODE_TUNE_MIN_S = 0.2
_DECODE_QUIET_CORES = host_cpu.QUIET_OTHERS_CORES
_DECODE_RETRY_S = 5.0
_DECODE_MAX_MEASUREMENTS = 6


@dataclass
class DecodeKernelDecision:
    kernel: str
    seconds: dict  # kernel -> seconds per call, of the measurement that decided
    others_cores: float  # other processes' CPU use during that measurement
    measurements: int
    measured_at: float  # time.monotonic() of the latest measurement

    @property
    def settled(self) -> bool:
        return (self.others_cores < _DECODE_QUIET_CORES
                or self.measurements >= _DECODE_MAX_MEASUREMENTS)


_decode_kernel_by_config: dict[tuple, DecodeKernelDecision] = {}


def paged_attention_single_query(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    head_mapping: torch.Tensor,
    scale: float,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    max_seq_len: int,
) -> None:
    """CPU mode: attention of one query per sequence (row i of query/out is sequence i's
    newest token) over its ``seq_lens[i]`` cached tokens. head_mapping[h] is query head
    h's KV head (int32). Full attention only: no window, no soft cap, no fp8 cache."""
    # IPEX 2.8's CPU kernel guesses a beam size from how many leading rows share their
    # first block (PagedAttentionKrnl.cpp deduce_beam_size) -- with prefix caching, that is
    # unrelated requests sharing a prompt prefix -- and from 4 up switches to its "VNNI"
    # kernel, which then always fails (TORCH_CHECK(window_size > 0, "Sliding window
    # unsupported") for window -1; measured in the engine). The kernel reads this variable
    # on every call: 1 pins its flash-decoding kernel, which has no beam assumption.
    envs.set_defaults({_SINGLE_QUERY_KERNEL_ENV: "1"})
    device.ipex_ops().single_query_cached_kv_attention(
        out, query, key_cache, value_cache, head_mapping, scale, block_table, seq_lens,
        block_size, max_seq_len, None, -1, 1.0, 1.0, -1.0)


def prepare_decode_kernels() -> None:
    """CPU mode, at model load: build the native decode kernel unless the setting fixes
    one of IPEX's kernels (a failed build is logged and leaves IPEX's two)."""
    if envs.VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION in (None, "native"):
        native_decode.unavailable_reason()


def paged_attention_native(out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, scale: float, block_table: torch.Tensor,
                           seq_lens: torch.Tensor) -> None:
    """CPU mode: what :func:`paged_attention_single_query` computes, on the plugin's own
    kernel (native_decode.py); only where ``native_decode.supports`` the configuration."""
    native_decode.paged_attention_decode(out, query, key_cache, value_cache, scale,
                                         block_table, seq_lens)


def _measure_decode_kernels(num_heads: int, num_kv_heads: int, head_size: int,
                            dtype: torch.dtype, block_size: int) -> dict[str, float]:
    """Seconds per call of each decode kernel on a synthetic batch (min of interleaved
    repeats: other processes only ever add time)."""
    seqs, context = _DECODE_TUNE_SEQS, _DECODE_TUNE_CONTEXT
    blocks = seqs * -(-context // block_size)
    gen = torch.Generator().manual_seed(0)
    shape = device.kv_cache_shape(blocks, block_size, num_kv_heads, head_size)[1:]
    key_cache = torch.randn(*shape, generator=gen).to(dtype)
    value_cache = torch.randn(*shape, generator=gen).to(dtype)
    query = torch.randn(seqs, num_heads, head_size, generator=gen).to(dtype)
    out = torch.empty_like(query)
    block_table = torch.randperm(blocks, generator=gen).to(torch.int32).view(seqs, -1)
    seq_lens = torch.full((seqs,), context, dtype=torch.int32)
    cu_q = torch.arange(seqs + 1, dtype=torch.int32)
    cu_kv = torch.arange(seqs + 1, dtype=torch.int32) * context
    mapping = head_mapping(num_heads, num_kv_heads)
    scale = 1.0 / math.sqrt(head_size)
    calls = {
        "varlen": lambda: paged_attention_varlen(out, query, key_cache, value_cache, cu_q,
                                                 cu_kv, 1, context, scale, block_table),
        "single_query": lambda: paged_attention_single_query(
            out, query, key_cache, value_cache, mapping, scale, block_table, seq_lens,
            block_size, context),
    }
    if native_decode.supports(dtype, num_heads, num_kv_heads, head_size):
        calls["native"] = lambda: paged_attention_native(
            out, query, key_cache, value_cache, scale, block_table, seq_lens)
    best = dict.fromkeys(calls, float("inf"))
    for call in calls.values():
        call()  # warm-up
    began, repeats = time.perf_counter(), 0
    while repeats < _DECODE_TUNE_REPEATS or (
            time.perf_counter() - began < _DECODE_TUNE_MIN_S and repeats < 200):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
        repeats += 1
    return best


def head_mapping(num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Query head -> KV head (int32), as the single-query kernel takes it."""
    return torch.arange(num_kv_heads, dtype=torch.int32).repeat_interleave(
        num_heads // num_kv_heads)


def decode_kernel(num_heads: int, num_kv_heads: int, head_size: int, dtype: torch.dtype,
                  block_size: int) -> tuple[str, bool]:
    """(one of DECODE_KERNELS, settled): the kernel decode-only batches of this
    configuration use in CPU mode (VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION, or measured), and
    whether that is final; an unsettled choice (measured while other processes used the
    CPU) may change at a later call. "native" only where native_decode supports the
    configuration: asked for elsewhere, the single-query kernel serves."""
    fixed = envs.VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION
    if fixed == "native" and not native_decode.supports(dtype, num_heads, num_kv_heads,
                                                        head_size):
        _warn_native_unsupported(num_heads, num_kv_heads, head_size, dtype)
        return "single_query", True
    if fixed is not None:
        return fixed, True
    key = (num_heads, num_kv_heads, head_size, dtype, block_size)
    decision = _decode_kernel_by_config.get(key)
    if decision is None or (not decision.settled
                            and time.monotonic() - decision.measured_at >= _DECODE_RETRY_S):
        decision = _measure_decision(key, decision)
        _decode_kernel_by_config[key] = decision
    return decision.kernel, decision.settled


@functools.cache
def _warn_native_unsupported(num_heads: int, num_kv_heads: int, head_size: int,
                             dtype: torch.dtype) -> None:
    why = native_decode.unavailable_reason() or (
        "it takes bfloat16 or float32, head sizes that are multiples of 16 up to 256 and "
        "at most 16 query heads per KV head")
    logger.warning("VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION=native: not for %d/%d heads x %d, "
                   "%s (%s); those layers use the single-query kernel", num_heads,
                   num_kv_heads, head_size, str(dtype).removeprefix("torch."), why)


def _measure_decision(key: tuple, previous: DecodeKernelDecision | None
                      ) -> DecodeKernelDecision:
    start = time.perf_counter()
    with host_cpu.OtherProcessesLoad() as load:
        seconds = _measure_decode_kernels(*key)
    measurements = 1 if previous is None else previous.measurements + 1
    if previous is not None and previous.others_cores <= load.cores:
        seconds, others = previous.seconds, previous.others_cores  # the quieter one stands
    else:
        others = load.cores
    decision = DecodeKernelDecision(min(seconds, key=seconds.get), seconds, others,
                                    measurements, time.monotonic())
    num_heads, num_kv_heads, head_size, dtype, block_size = key
    timings = ", ".join(f"{n.replace('_', '-')} {t * 1e3:.2f} ms" for n, t in seconds.items())
    what = (f"CPU mode: decode attention ({num_heads}/{num_kv_heads} heads x {head_size}, "
            f"{str(dtype).removeprefix('torch.')}, block {block_size}) on the "
            f"{decision.kernel.replace('_', '-')} kernel: {timings}")
    if others < _DECODE_QUIET_CORES:
        logger.info("%s (measured in %.2f s; VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION fixes it)",
                    what, time.perf_counter() - start)
    elif not decision.settled:
        logger.info("%s for now: other processes used %.2f cores during measurement %d of "
                    "at most %d (%.2f in the quietest, whose timings these are); measuring "
                    "again in %.0f s", what, load.cores, measurements,
                    _DECODE_MAX_MEASUREMENTS, others, _DECODE_RETRY_S)
    else:
        logger.warning("%s: other processes used >= %.2f cores in each of %d measurements, "
                       "so this choice may be wrong for a quiet machine; "
                       "VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION=varlen|single_query|native fixes it",
                       what, others, measurements)
    return decision


def single_query_decode_possible(window_left: int, softcap: float, kv_cache_dtype: str,
                                 num_heads: int, num_kv_heads: int) -> bool:
    """Whether the single-query kernel computes what the varlen call would (CPU mode)."""
    return (device.is_cpu_mode() and window_left < 0 and softcap < 0
            and kv_cache_dtype == "auto" and num_heads % num_kv_heads == 0)


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
