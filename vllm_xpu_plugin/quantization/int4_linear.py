"""The part of the GPTQ and AWQ linear methods that does not depend on the checkpoint layout:
shard sizes, handing the loaded tensors to the int4 GEMM (vllm_xpu_plugin/kernels/int4_gemm.py:
torch's CPU int4 kernel in CPU mode, IPEX's WOQ module on an Intel GPU), and the forward.

After the checkpoint's packed tensors have been loaded into a vLLM linear layer they are
converted to the kernel's layout and the layer's copies are deleted, so the weights are
resident once (the seed kept both: 8.6 GB for a 5.74 GB AWQ checkpoint).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from vllm.model_executor.layers.linear import LinearMethodBase

from vllm_xpu_plugin.kernels import int4_gemm
from vllm_xpu_plugin.kernels.int4_gemm import PackedFormat

__all__ = ["PackedFormat", "IPEXWOQLinearMethodBase", "LinearPartition", "attach_int4_linear",
           "release_parameters", "resident_bytes"]


def release_parameters(layer: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Drop the layer's checkpoint-layout tensors once the kernel holds its own copy."""
    for name in names:
        if name in layer._parameters:
            del layer._parameters[name]
        elif hasattr(layer, name):
            delattr(layer, name)


def attach_int4_linear(layer: torch.nn.Module, kernel, out_features: int) -> None:
    # Stored outside nn.Module's registry so model.named_modules()/state_dict() walks (and
    # vLLM's post-load hooks) never see the kernel's tensors.
    object.__setattr__(layer, "int4_linear", kernel)
    layer.int4_output_size = out_features


def apply_int4_linear(layer: torch.nn.Module, x: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Run the layer's int4 GEMM on ``x`` of shape [..., in_features], then add ``bias``.

    The bias is not fused into the kernel: vLLM passes it only where it must be added (not
    with skip_bias_add, and only on tensor-parallel rank 0 of a row-parallel layer).
    """
    x2d = x.reshape(-1, x.shape[-1])
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    out = layer.int4_linear(x2d)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], layer.int4_output_size)


def resident_bytes(layer: torch.nn.Module) -> dict[str, int]:
    """Bytes the int4 kernel of ``layer`` holds (weight, scales, zero points), for the
    memory benchmark and tests; {} for a layer without one."""
    kernel = getattr(layer, "int4_linear", None)
    return {} if kernel is None else kernel.resident_bytes()


class LinearPartition(NamedTuple):
    """What ``create_weights`` is told about one linear layer's shard."""

    in_features: int  # input size of this partition
    out_features: int  # sum of the output partition sizes (merged QKV / gate-up)
    pack_factor: int  # 4-bit values per int32
    prefix: str  # layer name, for error messages
    weight_loader: object


class IPEXWOQLinearMethodBase(LinearMethodBase):
    """Shared by the GPTQ and AWQ linear methods: the config, the shard sizes, building the
    int4 GEMM and the forward."""

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

    def _install(self, layer: torch.nn.Module, packed_params: tuple[str, ...], **tensors) -> None:
        kernel = int4_gemm.build_int4_linear(**tensors)
        attach_int4_linear(layer, kernel, tensors["out_features"])
        release_parameters(layer, packed_params)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return apply_int4_linear(layer, x, bias)
