"""The plugin's IPEX-backed kernels as opaque custom ops while torch.compile traces.

Dynamo cannot trace the kernel functions themselves: CPU mode pins small kernels to one
OpenMP thread with ``torch.set_num_threads`` (kernels/cpu_threads.py), IPEX's
``add_rmsnorm`` has no fake kernel, and the prepacked GEMM picks its kernel from the row
count, which a graph captured for a dynamic token count would freeze at the warm-up size.
So each call site uses the wrapper here: eagerly it is the kernel function itself (no extra
dispatch); under dynamo it is a ``torch.ops.vllm_xpu_plugin.*`` op with a fake (shape-only)
implementation, which inductor calls as an extern kernel at run time, where the kernel
function runs as in eager mode (thread pinning and GEMM choice included).

Outputs are fresh contiguous tensors (custom ops may not return views of their inputs) and
the fakes say so.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.library import Library
from vllm.utils import direct_register_custom_op

from vllm_xpu_plugin import device
from vllm_xpu_plugin.kernels import activations, gemm, norms, rotary

LIBRARY_NAME = "vllm_xpu_plugin"
_library = Library(LIBRARY_NAME, "FRAGMENT")  # noqa: TID251 (lives as long as the module)


def _fresh(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous tensor sharing no memory with ``like`` (an op input)."""
    t = t.contiguous()
    if t.untyped_storage().data_ptr() == like.untyped_storage().data_ptr():
        t = t.clone()
    return t


# ---------------------------------------------------------------------- RMS norm

def _rms_norm_impl(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _fresh(norms.rms_norm(x, weight, eps), x)


def _rms_norm_fake(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fused_add_rms_norm_impl(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Functional (the kernel updates a copy of residual): an op that mutates an input
    # becomes auto_functionalized, and vLLM's FixFunctionalizationPass then looks up
    # torch.ops._C ops, which do not exist without vllm._C.
    new_residual = residual.clone(memory_format=torch.contiguous_format)
    out, _ = norms.fused_add_rms_norm(x, new_residual, weight, eps)
    return _fresh(out, x), new_residual


def _fused_add_rms_norm_fake(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(residual.shape, dtype=residual.dtype, device=residual.device))


# ---------------------------------------------------------------------- rotary

def _rotary_inputs(query: torch.Tensor, key: Optional[torch.Tensor]):
    if not device.is_cpu_mode():
        # XPU-only: that kernel rotates in place; an op may not modify undeclared inputs.
        return query.clone(), (key.clone() if key is not None else None)  # XPU-only
    return query, key


def _rotary_qk_impl(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                    head_size: int, kernel_table: torch.Tensor, is_neox: bool,
                    rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    q_in, k_in = _rotary_inputs(query, key)
    q, k = rotary.rotary_embedding(positions, q_in, k_in, head_size, kernel_table, is_neox,
                                   rotary_dim)
    return _fresh(q, query), _fresh(k, key)


def _rotary_qk_fake(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                    head_size: int, kernel_table: torch.Tensor, is_neox: bool,
                    rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(query.shape, dtype=query.dtype, device=query.device),
            torch.empty(key.shape, dtype=key.dtype, device=key.device))


def _rotary_q_impl(positions: torch.Tensor, query: torch.Tensor, head_size: int,
                   kernel_table: torch.Tensor, is_neox: bool, rotary_dim: int) -> torch.Tensor:
    q_in, _ = _rotary_inputs(query, None)
    q, _ = rotary.rotary_embedding(positions, q_in, None, head_size, kernel_table, is_neox,
                                   rotary_dim)
    return _fresh(q, query)


def _rotary_q_fake(positions: torch.Tensor, query: torch.Tensor, head_size: int,
                   kernel_table: torch.Tensor, is_neox: bool, rotary_dim: int) -> torch.Tensor:
    return torch.empty(query.shape, dtype=query.dtype, device=query.device)


# ---------------------------------------------------------------------- activations
# Opaque too: the kernel functions read the device mode from the environment, which dynamo
# cannot trace (and on XPU they call IPEX).

def _silu_and_mul_impl(x: torch.Tensor) -> torch.Tensor:
    return _fresh(activations.silu_and_mul(x), x)


def _gelu_and_mul_impl(x: torch.Tensor, approximate: str) -> torch.Tensor:
    out = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)
    return activations.gelu_and_mul(x, out, approximate)


def _half_width_fake(x: torch.Tensor, *args) -> torch.Tensor:
    return torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)


def _gelu_and_mul_fake(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _half_width_fake(x)


# ---------------------------------------------------------------------- CPU-mode GEMM

def _cpu_linear_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     packed_weight: torch.Tensor) -> torch.Tensor:
    return _fresh(gemm.cpu_linear(x, weight, bias, packed_weight), x)


def _cpu_linear_fake(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     packed_weight: torch.Tensor) -> torch.Tensor:
    return torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device=x.device)


direct_register_custom_op("rms_norm", _rms_norm_impl, fake_impl=_rms_norm_fake,
                          target_lib=_library, dispatch_key=device.dispatch_key())
direct_register_custom_op("fused_add_rms_norm", _fused_add_rms_norm_impl,
                          fake_impl=_fused_add_rms_norm_fake,
                          target_lib=_library, dispatch_key=device.dispatch_key())
direct_register_custom_op("rotary_embedding_qk", _rotary_qk_impl, fake_impl=_rotary_qk_fake,
                          target_lib=_library, dispatch_key=device.dispatch_key())
direct_register_custom_op("rotary_embedding_q", _rotary_q_impl, fake_impl=_rotary_q_fake,
                          target_lib=_library, dispatch_key=device.dispatch_key())
direct_register_custom_op("silu_and_mul", _silu_and_mul_impl, fake_impl=_half_width_fake,
                          target_lib=_library, dispatch_key=device.dispatch_key())
direct_register_custom_op("gelu_and_mul", _gelu_and_mul_impl, fake_impl=_gelu_and_mul_fake,
                          target_lib=_library, dispatch_key=device.dispatch_key())
direct_register_custom_op("cpu_linear", _cpu_linear_impl, fake_impl=_cpu_linear_fake,
                          target_lib=_library, dispatch_key=device.dispatch_key())
_ops = getattr(torch.ops, LIBRARY_NAME)


# ---------------------------------------------------------------------- call-site wrappers
# Same signatures and results as the kernels' functions.

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _ops.rms_norm(x, weight, eps)
    return norms.rms_norm(x, weight, eps)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.compiler.is_compiling():
        # The new residual is returned, not written into ``residual`` (see the impl);
        # callers use the returned pair, as with vLLM's forward_native.
        return _ops.fused_add_rms_norm(x, residual, weight, eps)
    return norms.fused_add_rms_norm(x, residual, weight, eps)


def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: Optional[torch.Tensor],
                     head_size: int, kernel_table: torch.Tensor, is_neox: bool,
                     rotary_dim: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if torch.compiler.is_compiling():
        if key is None:
            return _ops.rotary_embedding_q(positions, query, head_size, kernel_table, is_neox,
                                           rotary_dim), None
        return _ops.rotary_embedding_qk(positions, query, key, head_size, kernel_table,
                                        is_neox, rotary_dim)
    return rotary.rotary_embedding(positions, query, key, head_size, kernel_table, is_neox,
                                   rotary_dim)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _ops.silu_and_mul(x)
    return activations.silu_and_mul(x)


def gelu_and_mul(x: torch.Tensor, out: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _ops.gelu_and_mul(x, approximate)
    return activations.gelu_and_mul(x, out, approximate)


def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               packed_weight: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _ops.cpu_linear(x, weight, bias, packed_weight)
    return gemm.cpu_linear(x, weight, bias, packed_weight)


# ---------------------------------------------------------------------- before the trace

def prepare_model_for_compile(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Build what the plugin's ops otherwise build lazily on their first call, so that the
    first call, which dynamo traces, only reads it: the rotary kernel table (a module
    attribute set under dynamo would be recomputed inside the graph on every step)."""
    for module in model.modules():
        build_table = getattr(module, "_rotary_kernel_table", None)
        cache = getattr(module, "cos_sin_cache", None)
        if build_table is None or not isinstance(cache, torch.Tensor):
            continue
        # What forward_oot does first with the activations' dtype.
        module._match_cos_sin_cache_dtype(torch.empty(0, dtype=dtype, device=cache.device))
        build_table()
