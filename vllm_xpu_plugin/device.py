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

from vllm_xpu_plugin import envs, host_cpu

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


# --------------------------------------------------------------------------- host CPU


# CPU mode picks kernel settings by the host CPU's flags (kernels/gemm.py: GEMM block width;
# kernels/moe.py: bf16 expert layout). The reader is torch-free, shared with the doctor.
cpu_flags = host_cpu.cpu_flags


def cpu_has_amx() -> bool:
    return "amx_bf16" in cpu_flags()


def cpu_has_bf16_instructions() -> bool:
    """AVX512-BF16 or AMX-BF16. Without them (AVX2-only CPUs) IPEX's fused CPU MoE kernel
    has no code path: ``fused_experts`` fails with "tinygemm_kernel_avx: scalar path not
    implemented!" (IPEX 2.8.0, AMD EPYC with AVX2 only, 2026-12-02)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


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


def kv_cache_block_size(cache: torch.Tensor) -> int:
    """Tokens per block of one layer's key (or value) cache in this device's layout."""
    return cache.shape[-2 if kv_cache_layout() == "HND" else -3]


# --------------------------------------------------------------------------- KV-cache dtype
# --kv-cache-dtype: vLLM allocates an fp8 cache as uint8; the IPEX kernels read the cache's
# torch dtype (CPU: measured, a uint8 cache fails "expected scalar type Float"; XPU 2.8.10:
# convert_from_fp8 in mha_fusion.py dispatches on key_cache.dtype). The plugin views it as
# the float8 dtype it stores. "fp8" is e5m2 on both devices: the CPU kernel takes only e5m2
# ("not supported kv_cahce_dtype" for e4m3), and IPEX's XPU kernel would read a bare "fp8"
# as e4m3 (CacheOps.cpp), so the alias is resolved here to keep one format everywhere.
KV_CACHE_FLOAT8 = {"fp8": torch.float8_e5m2, "fp8_e5m2": torch.float8_e5m2,
                   "fp8_e4m3": torch.float8_e4m3fn}


def kv_cache_dtypes() -> tuple[str, ...]:
    """The --kv-cache-dtype values the paged-attention kernels take on this device."""
    if is_cpu_mode():
        return ("auto", "fp8", "fp8_e5m2")
    # XPU-only: IPEX 2.8.10+xpu reshape_and_cache_flash / flash_attn_varlen_func also
    # store and read e4m3 (unscaled: k_scale = v_scale = 1).
    return ("auto", "fp8", "fp8_e5m2", "fp8_e4m3")


def kv_cache_kernel_dtype(cache_dtype: str) -> str:
    """The kv_cache_dtype string the IPEX kernels get for ``--kv-cache-dtype cache_dtype``."""
    return "fp8_e5m2" if cache_dtype == "fp8" else cache_dtype


def kv_cache_view_dtype(cache_dtype: str) -> Optional[torch.dtype]:
    """The dtype the kernels must see the allocated cache as (None: as allocated)."""
    return KV_CACHE_FLOAT8.get(cache_dtype)
