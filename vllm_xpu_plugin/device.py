"""Every difference between an Intel GPU (torch ``xpu``) and CPU mode, in one place.

The rest of the plugin calls these functions and never asks which device it is on.
Lines that only run on a real Intel GPU are marked ``# XPU-only``: they cannot be
exercised on a machine without one, so they are kept few and simple.

Measured IPEX 2.8 facts this module encodes:
- KV-cache layout: CPU kernels use [num_blocks, num_kv_heads, block_size, head_size]
  ("HND"); the XPU kernels (vLLM 0.11) use [num_blocks, block_size, num_kv_heads,
  head_size] ("NHD"). The wrong one segfaults in reshape_and_cache.
- Kernel names: CPU silu_mul / gelu_mul / rotary_embedding /
  single_query_cached_kv_attention vs XPU silu_and_mul / gelu_and_mul /
  rotary_embedding_batched / single_query_kv_attention.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Optional

import torch

from vllm_xpu_plugin import envs

# --------------------------------------------------------------------------- device


def is_cpu_mode() -> bool:
    return envs.cpu_mode()


def device_type() -> str:
    return "cpu" if is_cpu_mode() else "xpu"


def dispatch_key() -> str:
    return "CPU" if is_cpu_mode() else "XPU"


def torch_device(local_rank: int = 0) -> torch.device:
    if is_cpu_mode():
        return torch.device("cpu")
    return torch.device(f"xpu:{local_rank}")  # XPU-only


@functools.cache
def ipex():
    """Import IPEX lazily (importing it costs seconds and must not happen in register())."""
    import intel_extension_for_pytorch

    return intel_extension_for_pytorch


def ipex_ops():
    """``torch.ops.torch_ipex`` with IPEX imported (its import registers the ops)."""
    ipex()
    return torch.ops.torch_ipex


def xpu_usable() -> bool:
    """True when torch sees an Intel GPU and the XPU build of IPEX imports."""
    try:
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            return False
        ipex()
        return True
    except Exception:
        return False


def set_device(device: torch.device) -> None:
    if device.type == "xpu":
        torch.xpu.set_device(device)  # XPU-only


def synchronize() -> None:
    if not is_cpu_mode():
        torch.xpu.synchronize()  # XPU-only


def empty_cache() -> None:
    if not is_cpu_mode():
        torch.xpu.empty_cache()  # XPU-only


def device_name(device_id: int = 0) -> str:
    if envs.VLLM_XPU_PLUGIN_TEST_DEVICE_NAME:  # test-only seam (see envs.py)
        return envs.VLLM_XPU_PLUGIN_TEST_DEVICE_NAME
    if is_cpu_mode():
        import platform

        return f"cpu ({platform.processor() or platform.machine()})"
    return torch.xpu.get_device_name(device_id)  # XPU-only


def total_memory(device_id: int = 0) -> int:
    if is_cpu_mode():
        import psutil

        return psutil.virtual_memory().total
    return torch.xpu.get_device_properties(device_id).total_memory  # XPU-only


def memory_in_use(device: Optional[torch.types.Device] = None) -> float:
    """Bytes in use by this process on the device (RSS in CPU mode)."""
    if is_cpu_mode():
        import psutil

        return float(psutil.Process().memory_info().rss)
    torch.xpu.reset_peak_memory_stats(device)  # XPU-only
    return float(torch.xpu.max_memory_allocated(device))  # XPU-only


def distributed_backend() -> str:
    if is_cpu_mode():
        return "gloo"
    # XPU-only: torch 2.8 ships xccl for XPU builds; older stacks need oneCCL bindings.
    try:
        import torch.distributed as dist

        if dist.is_xccl_available():
            return "xccl"
    except Exception:
        pass
    return "ccl"


def engine_env_defaults() -> dict[str, str]:
    """Environment defaults for the engine processes started after the config is built
    (applied with setdefault: a user's own value wins).

    CPU mode: ``OMP_WAIT_POLICY=PASSIVE``. The engine's OpenMP threads share the cores with
    the API server and the clients; spinning workers then stall every parallel region
    until the scheduler runs them again. Measured (2 vCPUs, 2 threads, SmolLM2 bf16,
    ``vllm bench serve`` c=16 x 128 tokens, two servers benched alternately): 14-24 tok/s
    with libgomp's default spinning vs 104-119 tok/s with PASSIVE. A dedicated machine
    running offline batches can set ``OMP_WAIT_POLICY=ACTIVE``.
    """
    if is_cpu_mode():
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    return {}


@contextmanager
def cuda_api_redirect():
    """While the GPUModelRunner constructor runs, make its ``torch.cuda.Event`` /
    ``torch.cuda.Stream`` calls build objects for this device; restore on exit.

    vLLM's own XPU runner leaves placeholders behind on ``torch.cuda``; this does not.
    """
    names = ("Event", "Stream", "current_stream", "default_stream", "stream")
    saved = {n: getattr(torch.cuda, n) for n in names}
    try:
        if is_cpu_mode():
            torch.cuda.Event = _HostEvent
            torch.cuda.Stream = _HostStream
        else:  # XPU-only
            torch.cuda.Event = torch.xpu.Event
            torch.cuda.Stream = torch.xpu.Stream
            torch.cuda.current_stream = torch.xpu.current_stream
            torch.cuda.default_stream = torch.xpu.current_stream
            torch.cuda.stream = torch.xpu.stream
        yield
    finally:
        for n, v in saved.items():
            setattr(torch.cuda, n, v)


class _HostEvent:
    """A CPU stand-in for torch.cuda.Event: work on the host is already ordered."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, *args, **kwargs) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, *args, **kwargs) -> None:
        pass


class _HostStream:
    def __init__(self, *args, **kwargs) -> None:
        pass


# --------------------------------------------------------------------------- KV cache

# The one place the KV-cache layout per device is decided.
KV_LAYOUT_CPU = "HND"  # [num_blocks, num_kv_heads, block_size, head_size]
KV_LAYOUT_XPU = "NHD"  # [num_blocks, block_size, num_kv_heads, head_size]


def kv_cache_layout() -> str:
    return KV_LAYOUT_CPU if is_cpu_mode() else KV_LAYOUT_XPU


def kv_cache_shape(
    num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
) -> tuple[int, ...]:
    """Shape of one layer's KV cache: [2 (key, value), *per-device block layout]."""
    if kv_cache_layout() == "HND":
        return (2, num_blocks, num_kv_heads, block_size, head_size)
    return (2, num_blocks, block_size, num_kv_heads, head_size)


# --------------------------------------------------------------------------- kernels
# Thin wrappers over IPEX kernels, one per name difference between CPU and XPU builds.
# (Filled in / extended by the attention and ops modules' owners.)

# ---- ops kernels (used by vllm_xpu_plugin/ops; owner: ops) ----------------------
# Every wrapper takes the same arguments on both devices. IPEX is imported lazily.


# CPU mode: decode-sized IPEX kernels on one thread. IPEX's small kernels (RMSNorm,
# rotary, KV-cache write) open an OpenMP parallel region whatever the size; torch's own
# element-wise ops stay on one thread below at::internal::GRAIN_SIZE (32768 elements).
# Measured, 16 x 576 bf16 add+RMSNorm (SmolLM2 decode at batch 16), 2 threads: 11 us
# either way with spinning OMP workers, 29 us vs 11 us with OMP_WAIT_POLICY=PASSIVE; and a
# spinning region whose other core is busy with another process (the API server, a
# client) waits for a scheduler slice. ~150 of a decode step's ~300 regions are these.
CPU_SERIAL_MAX_ELEMENTS = 32768


def _cpu_small_op(num_elements: int, op, *args):
    """``op(*args)`` on one OpenMP thread when the op is small (CPU mode only)."""
    threads = torch.get_num_threads()
    if num_elements > CPU_SERIAL_MAX_ELEMENTS or threads == 1:
        return op(*args)
    torch.set_num_threads(1)
    try:
        return op(*args)
    finally:
        torch.set_num_threads(threads)


def silu_and_mul(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` with ``d = x.shape[-1] // 2``, into ``out`` if
    given (else a new tensor)."""
    if is_cpu_mode():
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
    ipex().llm.functional.silu_and_mul(x, out)  # XPU-only
    return out


def gelu_and_mul(x: torch.Tensor, out: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``out = gelu(x[..., :d], approximate) * x[..., d:]``; approximate "none" or "tanh"."""
    if is_cpu_mode():
        # Same reason as silu_and_mul: IPEX CPU ``gelu_mul`` is a torch.compile wrapper.
        d = x.shape[-1] // 2
        gelu = torch.nn.functional.gelu(x[..., :d], approximate=approximate)
        return torch.mul(gelu, x[..., d:], out=out)
    ipex().llm.functional.gelu_and_mul(x, out, approximate)  # XPU-only
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim into a new tensor of x's dtype. x may be a strided view.

    ``weight`` may be fp32 while x is 16-bit (GemmaRMSNorm passes ``1 + w`` in fp32): the
    CPU kernel then multiplies in fp32 and rounds once, which is Gemma's formula.
    """
    if is_cpu_mode():
        # The kernel ipex.llm.functional.rms_norm dispatches to, called directly.
        return _cpu_small_op(x.numel(), ipex_ops().rmsnorm, x, weight, eps)
    return ipex().llm.functional.rms_norm(x, weight.to(x.dtype), eps)  # XPU-only


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual += x`` (in place) and return ``(rms_norm(residual), residual)``.

    Same kernel call on both builds (``add_rms_norm(residual, x, ..., add_back=True)``);
    x is left unchanged and the normalized output is a new tensor.
    """
    if is_cpu_mode():
        # The kernel ipex.llm.functional.add_rms_norm dispatches to, called directly.
        out = _cpu_small_op(x.numel(), ipex_ops().add_rmsnorm, x, residual, weight,
                            eps, True)
        return out, residual
    weight = weight.to(x.dtype)  # XPU-only
    out = ipex().llm.functional.add_rms_norm(residual, x, weight, None, eps, True)  # XPU-only
    return out, residual  # XPU-only


def rotary_kernel_table(cos_sin_cache: torch.Tensor, head_size: int) -> torch.Tensor:
    """vLLM's ``cos_sin_cache`` ([max_positions, rotary_dim] = cat(cos, sin)) as this
    device's rotary kernel reads it. Build it once per cache (it depends on nothing else).

    XPU: the cache itself. CPU: fp32 [max_positions, head_size] = cat(sin, cos), each
    padded to head_size // 2 (the kernel reads only the first rotary_dim // 2 of each; the
    values are the cache's, so results are bit-identical to converting per call).
    """
    if not is_cpu_mode():
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
    if is_cpu_mode():
        # One kernel call per tensor and nothing else: the kernel picks each token's
        # sin/cos row from the whole table by position (decode step of SmolLM2-135M at
        # batch 16: 2 ops per layer instead of ~12; see docs/performance.md).
        rope = ipex_ops().rotary_position_embedding
        offset = rotary_dim // 2 if is_neox else 1
        positions = positions.view(1, num_tokens)

        def rotate(x: torch.Tensor) -> torch.Tensor:
            heads = x.numel() // (num_tokens * head_size)
            out, _, _ = _cpu_small_op(x.numel(), rope, x.view(1, num_tokens, heads, head_size),
                                      kernel_table, positions, heads, head_size, offset,
                                      rotary_dim)
            return out.view(x.shape)

        return rotate(query), (rotate(key) if key is not None else None)
    # XPU-only: the kernel takes no key=None; rotate a 1-head scratch key and drop it.
    k = key if key is not None else query.new_zeros(num_tokens, head_size)  # XPU-only
    ipex().llm.functional.rotary_embedding_batched(  # XPU-only
        positions.flatten(), query, k, head_size, kernel_table, is_neox, rotary_dim
    )
    return query, key  # XPU-only


def greedy_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)`` (int64; first maximal index on ties, NaN counts as max)."""
    if is_cpu_mode() and logits.dtype == torch.float32 and logits.dim() == 2:
        # torch's CPU argmax is a scalar loop: 1.8 ms for 16 x 49152 fp32 logits on one
        # core; numpy's is vectorized (0.15 ms) with the same tie and NaN rules.
        return torch.from_numpy(logits.detach().contiguous().numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)


# ---- attention kernels (used by vllm_xpu_plugin/attention; owner: attention) -----------
# IPEX ``PagedAttention`` class methods; the KV-cache tensors are in kv_cache_layout().


def attention_head_sizes() -> list[int]:
    """Head sizes the paged-attention kernels are known to handle on this device."""
    if is_cpu_mode():
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
) -> None:
    """Store token i's key/value [num_tokens, num_kv_heads, head_size] (strided views
    allowed) at slot ``slot_mapping[i]``: block ``slot // block_size``, offset
    ``slot % block_size``.

    Every slot must be >= 0: the CPU kernel does not skip vLLM's padding slot -1, it
    writes out of bounds (measured: heap corruption).
    """
    if is_cpu_mode():
        # reshape_and_cache is the CPU kernel for the HND block layout; called directly (what
        # PagedAttention.reshape_and_cache runs), it wants int32 slots.
        if slot_mapping.dtype != torch.int32:
            slot_mapping = slot_mapping.to(torch.int32)
        _cpu_small_op(key.numel(), ipex_ops().reshape_and_cache, key, value,
                      key_cache, value_cache, slot_mapping, "auto", 1.0, 1.0)
    else:
        # XPU-only: the NHD block layout is the "flash" variant's (as in vLLM 0.11 on XPU).
        ipex().llm.modules.PagedAttention.reshape_and_cache_flash(
            key, value, key_cache, value_cache, slot_mapping, "auto", 1.0, 1.0
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
) -> None:
    """Causal attention of a batch of variable-length queries over their paged KV cache.

    out/query: [num_tokens, num_heads, head_size] (query may be a strided view; out must
    be contiguous). Sequence i's queries are rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``
    and are the LAST tokens of its ``cu_seqlens_kv[i+1] - cu_seqlens_kv[i]`` cached
    tokens (the causal mask is aligned bottom-right). cu_seqlens_* and block_table are
    int32 (the CPU kernel rejects int64). num_heads may be a multiple of num_kv_heads
    (GQA/MQA). window_left: a query at position p sees keys p - window_left .. p
    (-1: unbounded). softcap: logits -> softcap * tanh(logits / softcap); -1 disables
    it (0 does not: measured wrong results on CPU).
    """
    window_right = 0 if window_left >= 0 else -1
    if is_cpu_mode():
        # The kernel PagedAttention.flash_attn_varlen_func dispatches to, called directly.
        ipex_ops().flash_attn_varlen_func(
            out, query, key_cache, value_cache, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q,
            max_seqlen_kv, scale, True, block_table, None, window_left, window_right, "auto",
            1.0, 1.0, softcap)
        return
    query = query.contiguous()  # XPU-only: vLLM 0.11 hands the XPU kernel a contiguous q
    ipex().llm.modules.PagedAttention.flash_attn_varlen_func(  # XPU-only
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
        k_scale=1.0,
        v_scale=1.0,
        softcap=softcap,
    )


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
