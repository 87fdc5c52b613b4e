"""Int4 weight-only GEMM for the GPTQ and AWQ linear layers (vllm_xpu_plugin/quantization/).

CPU mode: torch's own int4 kernel, ``aten::_weight_int4pack_mm_for_cpu``. It holds the
weight as 4-bit values (``_convert_weight_to_int4pack_for_cpu``, N x K/2 bytes) and one
scale + one float zero per group and output channel in the activation dtype:
``w = (q - 8) * scale + zero``, so GPTQ/AWQ's integer zero point z becomes
``zero = (8 - z) * scale``. Resident bytes per weight element: 0.5 + 4/g (bf16/fp16),
against the checkpoint's 0.5 + 2.5/g (fp16 scales, 4-bit zeros) -- 1.03x at g=64 on the
int4 layers, before the embeddings dilute it (issue 18's target is 1.05x for the model).
IPEX's CPU WOQ kernel, used before, keeps scales and zero points in fp32 + fp16 + bf16
(0.5 + 16/g) and has no way to hold one copy; on CPUs without AVX512-FP16 (e.g. AMD
EPYC) it also dequantizes the whole weight on every call: measured 107 ms vs 0.51 ms for a
4096 x 4096 decode row (docs/quantization.md).

Act order (GPTQ ``desc_act``): the input channels are sorted by group once at load time
(the weight's K columns permuted), and each call gathers x's columns in the same order,
so every group is contiguous as the kernel needs.

The kernel needs N % 16 == 0: other output sizes are padded with zero-scale channels (at
most 15, sliced off the result). Shapes it cannot take at all (per-channel scales with K
not a multiple of 32, act-order groups of unequal size) use IPEX's WOQ module, with one log
line naming the layer shape.

Intel GPU: IPEX's ``IPEXWeightOnlyQuantizedLinear`` (XPU build), as vLLM's own XPU path.
"""

from __future__ import annotations

import enum
from typing import Optional

import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)


class PackedFormat(enum.IntEnum):
    """Checkpoint layouts; the numbers are IPEX's ``QuantMethod``
    (intel_extension_for_pytorch.llm.quantization.utils)."""

    GPTQ_GEMM = 0
    AWQ_GEMM = 1


# Output column (within each eight) stored at nibble i of an AWQ int32 (AutoAWQ's order).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Group sizes torch's CPU int4 kernel takes (aten/src/ATen/native/LinearAlgebra.cpp).
ATEN_GROUP_SIZES = (256, 128, 64, 32)
ATEN_N_MULTIPLE = 16  # _convert_weight_to_int4pack_cpu: "expect N to be dividable by 16"
# A GPTQ v1 packed int32 of eight zero points that all equal 8 (stored as zero - 1 = 7).
_GPTQ_SYMMETRIC_ZEROS_WORD = 0x77777777


def gptq_zeros_are_symmetric(qzeros: torch.Tensor) -> bool:
    """True when every packed GPTQ zero point is 8 (IPEX's implicit zero when it is given
    none). Decided from the data, not from the ``sym`` flag."""
    return bool((qzeros == _GPTQ_SYMMETRIC_ZEROS_WORD).all())


def is_trivial_g_idx(g_idx: torch.Tensor, group_size: int) -> bool:
    """True when ``g_idx`` is the identity grouping (no act-order permutation)."""
    n = g_idx.numel()
    if group_size == -1:
        return bool((g_idx == 0).all())
    expected = torch.arange(n, device=g_idx.device, dtype=torch.int64) // group_size
    return bool(torch.equal(g_idx.to(torch.int64), expected))


# ---- unpacking the checkpoint layouts to integers ------------------------------------

def _nibbles(words: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> their eight 4-bit values (low nibble first), expanded along ``dim``."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=words.device)
    vals = (words.unsqueeze(-1) >> shifts) & 0xF  # [..., 8]
    if dim == 0:  # [R, C, 8] -> [R * 8, C]
        return vals.permute(0, 2, 1).reshape(words.shape[0] * 8, words.shape[1])
    return vals.reshape(words.shape[0], words.shape[1] * 8)


def _awq_columns(words: torch.Tensor) -> torch.Tensor:
    """AWQ int32 [R, C/8] -> values [R, C] in output-column order."""
    vals = _nibbles(words, dim=1).view(words.shape[0], -1, 8)
    order = torch.tensor(AWQ_ORDER, device=words.device).argsort()  # column -> nibble
    return vals[:, :, order].reshape(words.shape[0], -1)


def unpack_checkpoint(fmt: PackedFormat, qweight: torch.Tensor,
                      qzeros: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N, K] int32 in 0..15, zero points [G, N] int32) of a GPTQ v1 / AWQ GEMM
    layer. ``qzeros`` None means GPTQ's symmetric zero 8."""
    if fmt == PackedFormat.GPTQ_GEMM:
        values = _nibbles(qweight, dim=0).t()  # [K/8, N] -> [K, N] -> [N, K]
        if qzeros is None:
            return values, None
        # GPTQ v1 stores zero - 1 (4 bits, so zero 0 is stored as 15).
        return values, (_nibbles(qzeros, dim=1) + 1) & 0xF
    return _awq_columns(qweight).t(), _awq_columns(qzeros)


# ---- CPU mode: torch's int4 kernel ----------------------------------------------------

def aten_group_size(group_size: int, in_features: int) -> Optional[int]:
    """The group size the aten kernel runs a checkpoint group of ``group_size`` with (a
    divisor, its scales repeated), or None when none fits. -1 is per output channel."""
    span = in_features if group_size == -1 else group_size
    for g in ATEN_GROUP_SIZES:
        if span % g == 0 and in_features % g == 0:
            return g
    return None


def act_order(g_idx: torch.Tensor, group_size: int) -> Optional[torch.Tensor]:
    """Input-channel order that makes act-order groups contiguous, or None when the groups
    are not all ``group_size`` channels (then no contiguous layout exists)."""
    g = g_idx.to(torch.int64)
    counts = torch.bincount(g)
    if not bool((counts == group_size).all()):
        return None
    return torch.sort(g, stable=True).indices


class AtenInt4Linear:
    """``y = x @ W.T`` on torch's CPU int4 kernel (see the module docstring)."""

    def __init__(self, values: torch.Tensor, zeros: Optional[torch.Tensor],
                 scales: torch.Tensor, group_size: int, kernel_group_size: int,
                 channel_order: Optional[torch.Tensor]) -> None:
        out_features, in_features = values.shape
        if channel_order is not None:
            values = values[:, channel_order]
        pad = -out_features % ATEN_N_MULTIPLE
        if pad:  # zero-scale channels: they compute 0 and are sliced off
            values = torch.nn.functional.pad(values, (0, 0, 0, pad))
            scales = torch.nn.functional.pad(scales, (0, pad))
            zeros = None if zeros is None else torch.nn.functional.pad(zeros, (0, pad), value=8)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            values.to(torch.int32).contiguous(), 1)
        del values
        span = in_features if group_size == -1 else group_size
        repeat = span // kernel_group_size
        scale = scales.float()
        zero = (torch.zeros_like(scale) if zeros is None
                else (8 - zeros.float()) * scale)  # w = (q - 8) * scale + zero
        self.scale_and_zero = torch.stack(
            [scale.repeat_interleave(repeat, dim=0), zero.repeat_interleave(repeat, dim=0)],
            dim=-1).to(scales.dtype).contiguous()  # [K / g, N, 2]
        self.group_size = kernel_group_size
        self.channel_order = channel_order
        self.out_features = out_features
        self.dtype = scales.dtype

    def __call__(self, x2d: torch.Tensor) -> torch.Tensor:
        if self.channel_order is not None:
            x2d = x2d.index_select(1, self.channel_order)
        in_dtype = x2d.dtype
        if in_dtype != self.dtype:
            x2d = x2d.to(self.dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2d, self.packed, self.group_size, self.scale_and_zero)
        if out.shape[1] != self.out_features:
            out = out[:, :self.out_features].contiguous()
        return out if in_dtype == self.dtype else out.to(in_dtype)

    def resident_bytes(self) -> dict[str, int]:
        return {"weight": _nbytes(self.packed),
                "scales": _nbytes(self.scale_and_zero) // 2,
                "zeros": _nbytes(self.scale_and_zero) // 2,
                "channel_order": _nbytes(self.channel_order)}


def _aten_int4_linear(fmt: PackedFormat, qweight, scales, qzeros, in_features, out_features,
                      group_size, g_idx) -> Optional[AtenInt4Linear]:
    """The aten-kernel layer, or None when the shape needs IPEX's (module docstring)."""
    kernel_group = aten_group_size(group_size, in_features)
    if kernel_group is None:
        return None
    order = None
    if g_idx is not None and not is_trivial_g_idx(g_idx, group_size):
        if group_size == -1:
            order = None  # one group: any channel order is the same group
        else:
            order = act_order(g_idx, group_size)
            if order is None:
                return None
    values, zeros = unpack_checkpoint(fmt, qweight, qzeros)
    return AtenInt4Linear(values, zeros, scales, group_size, kernel_group, order)


# ---- IPEX's WOQ module (Intel GPU; CPU mode's fallback) -------------------------------

class IpexInt4Linear:
    """IPEX's ``IPEXWeightOnlyQuantizedLinear`` built from checkpoint-layout tensors."""

    def __init__(self, fmt: PackedFormat, qweight, scales, qzeros, in_features, out_features,
                 group_size, g_idx) -> None:
        ipex = device.ipex()
        from intel_extension_for_pytorch.llm.quantization.woq_linear import (
            IPEXWeightOnlyQuantizedLinear,
        )

        if group_size == in_features:
            # One group spanning the whole input is per-channel quantization; IPEX 2.8's
            # CPU prepack fails on a single explicit group ("Dimension out of range").
            group_size = -1
        if (fmt == PackedFormat.GPTQ_GEMM and qzeros is not None and device.is_cpu_mode()
                and gptq_zeros_are_symmetric(qzeros)):
            # CPU kernel: no zero points means zero 8 (tests/test_quantization_layers.py);
            # saves its zero-point copies. The XPU kernel keeps them explicit.
            qzeros = None
        # Compute in the activation dtype (lowp_mode NONE). vLLM's upstream IPEX path uses
        # INT8 lowp mode, which quantizes activations per token at run time; this plugin
        # keeps the activations in bf16/fp16/fp32 so results track the dequantized model.
        qconfig = ipex.quantization.get_weight_only_quant_qconfig_mapping(
            weight_dtype=ipex.quantization.WoqWeightDtype.INT4,
            lowp_mode=ipex.quantization.WoqLowpMode.NONE,
            group_size=group_size,
        )
        # IPEX transposes ``scales`` in place while converting them.
        self.module = IPEXWeightOnlyQuantizedLinear.from_weight(
            qweight, scales, qzeros, in_features, out_features, qconfig=qconfig,
            group_size=group_size, g_idx=g_idx, quant_method=int(fmt))

    def __call__(self, x2d: torch.Tensor) -> torch.Tensor:
        return self.module(x2d)

    def resident_bytes(self) -> dict[str, int]:
        impl = getattr(self.module, "woq_linear_impl", self.module)
        ctx = impl._op_context
        # IPEX's CPU op context keeps scales and zero points in three dtypes (fp32, fp16,
        # bf16: ContextLinearWoq::scales_list_ / zero_points_list_) and exposes only the
        # fp32 one; the other two add 2 + 2 bytes per element (RSS grows by fp32 x 2).
        copies = 2 if device.is_cpu_mode() else 1
        return {"weight": _nbytes(ctx.get_weight()),
                "scales": _nbytes(ctx.get_scales()) * copies,
                "zeros": _nbytes(ctx.get_zero_points()) * copies}


def build_int4_linear(*, fmt: PackedFormat, qweight: torch.Tensor, scales: torch.Tensor,
                      qzeros: Optional[torch.Tensor], in_features: int, out_features: int,
                      group_size: int, g_idx: Optional[torch.Tensor] = None):
    """The int4 GEMM for one layer's shard, from checkpoint-layout tensors (consumed:
    callers must not use them afterwards). Returns a callable ``x2d -> y2d`` with
    ``resident_bytes()``."""
    if device.is_cpu_mode():
        layer = _aten_int4_linear(fmt, qweight, scales, qzeros, in_features, out_features,
                                  group_size, g_idx)
        if layer is not None:
            return layer
        logger.info_once(
            "int4 %s layer %d x %d (group %d) is outside torch's CPU int4 kernel "
            "(per-channel K %% 32, unequal act-order groups); using IPEX's WOQ kernel for it, "
            "which keeps scales and zero points in three dtypes",
            fmt.name.split("_")[0], out_features, in_features, group_size)
    if g_idx is not None and is_trivial_g_idx(g_idx, group_size):
        g_idx = None  # plain group order: IPEX's faster GPTQ layout
    return IpexInt4Linear(fmt, qweight, scales, qzeros, in_features, out_features,
                          group_size, g_idx)


def _nbytes(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.numel() * t.element_size()
