"""IPEX weight-only int4 linear (``IPEXWeightOnlyQuantizedLinear.from_weight``), shared by the
GPTQ and AWQ linear methods.

After the checkpoint's packed tensors have been loaded into a vLLM linear layer, they are
handed to IPEX, which re-packs them into its own kernel layout; the layer's copies are then
deleted, so the packed weights are resident once (the seed kept both: 8.6 GB for a 5.74 GB
AWQ checkpoint).
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Optional

import torch
from vllm.model_executor.layers.linear import LinearMethodBase

from vllm_xpu_plugin import device


class PackedFormat(enum.IntEnum):
    """IPEX's ``QuantMethod`` numbering (intel_extension_for_pytorch.llm.quantization.utils)."""

    GPTQ_GEMM = 0
    AWQ_GEMM = 1


# A GPTQ v1 packed int32 of eight zero points that all equal 8 (stored as zero - 1 = 7).
_GPTQ_SYMMETRIC_ZEROS_WORD = 0x77777777


def gptq_zeros_are_symmetric(qzeros: torch.Tensor) -> bool:
    """True when every packed GPTQ zero point is 8: the zero IPEX's CPU kernel assumes when
    it is given no zero points. Passing none then saves IPEX's fp32 zero-point copy (4 bytes
    per group and output channel). Decided from the data, not from the ``sym`` flag."""
    return bool((qzeros == _GPTQ_SYMMETRIC_ZEROS_WORD).all())


def is_trivial_g_idx(g_idx: torch.Tensor, group_size: int) -> bool:
    """True when ``g_idx`` is the identity grouping (no act-order permutation)."""
    n = g_idx.numel()
    if group_size == -1:
        return bool((g_idx == 0).all())
    expected = torch.arange(n, device=g_idx.device, dtype=torch.int64) // group_size
    return bool(torch.equal(g_idx.to(torch.int64), expected))


def build_woq_linear(
    *,
    fmt: PackedFormat,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: Optional[torch.Tensor],
    in_features: int,
    out_features: int,
    group_size: int,
    g_idx: Optional[torch.Tensor] = None,
) -> torch.nn.Module:
    """Build the IPEX int4 module from checkpoint-layout tensors.

    The tensors are consumed: IPEX transposes ``scales`` in place while converting them, so
    callers must not use them afterwards.
    """
    ipex = device.ipex()
    from intel_extension_for_pytorch.llm.quantization.woq_linear import (
        IPEXWeightOnlyQuantizedLinear,
    )

    if group_size == in_features:
        # One group spanning the whole input is per-channel quantization; IPEX 2.8's CPU
        # prepack fails on a single explicit group ("Dimension out of range").
        group_size = -1

    # Compute in the activation dtype (lowp_mode NONE). vLLM's upstream IPEX path uses INT8
    # lowp mode, which quantizes activations per token at run time; this plugin keeps the
    # activations in bf16/fp16/fp32 so results track the dequantized model.
    qconfig = ipex.quantization.get_weight_only_quant_qconfig_mapping(
        weight_dtype=ipex.quantization.WoqWeightDtype.INT4,
        lowp_mode=ipex.quantization.WoqLowpMode.NONE,
        group_size=group_size,
    )
    return IPEXWeightOnlyQuantizedLinear.from_weight(
        qweight,
        scales,
        qzeros,
        in_features,
        out_features,
        qconfig=qconfig,
        group_size=group_size,
        g_idx=g_idx,
        quant_method=int(fmt),
    )


def release_parameters(layer: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Drop the layer's checkpoint-layout tensors once IPEX holds its own copy."""
    for name in names:
        if name in layer._parameters:
            del layer._parameters[name]
        elif hasattr(layer, name):
            delattr(layer, name)


def apply_woq_linear(layer: torch.nn.Module, x: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Run the IPEX module on ``x`` of shape [..., in_features], then add ``bias``.

    The bias is not fused into the IPEX module: vLLM passes it only where it must be added
    (not with skip_bias_add, and only on tensor-parallel rank 0 of a row-parallel layer).
    """
    x2d = x.reshape(-1, x.shape[-1])
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    out = layer.ipex_woq_linear(x2d)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], layer.ipex_output_size)


def attach_woq_linear(layer: torch.nn.Module, module: torch.nn.Module, out_features: int) -> None:
    # Stored outside nn.Module's registry so model.named_modules()/state_dict() walks (and
    # vLLM's post-load hooks) never see IPEX's internal module.
    object.__setattr__(layer, "ipex_woq_linear", module)
    layer.ipex_output_size = out_features


# IPEX's CPU op context keeps scales and zero points in three dtypes (fp32, fp16, bf16:
# ContextLinearWoq::scales_list_ / zero_points_list_) and exposes only the fp32 one; the
# other two add 2 + 2 bytes per element. Measured: RSS grows by fp32 size x 2, not x 1.
_SCALE_COPIES_PER_FP32_BYTE = 2


def resident_bytes(layer: torch.nn.Module) -> dict[str, int]:
    """Bytes held by the IPEX module of ``layer``: its int4 weight, and its scales and zero
    points (all dtype copies), for the memory benchmark and tests."""
    module = getattr(layer, "ipex_woq_linear", None)
    if module is None:
        return {}
    impl = getattr(module, "woq_linear_impl", module)
    ctx = impl._op_context
    copies = _SCALE_COPIES_PER_FP32_BYTE if device.is_cpu_mode() else 1
    return {"weight": _nbytes(ctx.get_weight()),
            "scales": _nbytes(ctx.get_scales()) * copies,
            "zeros": _nbytes(ctx.get_zero_points()) * copies}


def _nbytes(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.numel() * t.element_size()


class LinearPartition(NamedTuple):
    """What ``create_weights`` is told about one linear layer's shard."""

    in_features: int  # input size of this partition
    out_features: int  # sum of the output partition sizes (merged QKV / gate-up)
    pack_factor: int  # 4-bit values per int32
    prefix: str  # layer name, for error messages
    weight_loader: object


class IPEXWOQLinearMethodBase(LinearMethodBase):
    """The part of the GPTQ and AWQ linear methods that does not depend on the checkpoint
    layout: the config, the shard sizes, and the forward on IPEX's int4 module."""

    def __init__(self, quant_config) -> None:
        self.quant_config = quant_config

    def _partition(self, layer: torch.nn.Module, input_size_per_partition: int,
                   output_partition_sizes: list[int], extra_weight_attrs: dict) -> LinearPartition:
        return LinearPartition(
            in_features=input_size_per_partition,
            out_features=sum(output_partition_sizes),
            pack_factor=self.quant_config.pack_factor,
            prefix=getattr(layer, "prefix", "") or type(layer).__name__,
            weight_loader=extra_weight_attrs.get("weight_loader"),
        )

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return apply_woq_linear(layer, x, bias)
