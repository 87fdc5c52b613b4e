"""GPTQ linear method on the int4 GEMM (kernels/int4_gemm.py) (column/row parallel, merged QKV and gate-up).

Checkpoint layout (AutoGPTQ v1), per linear of ``in`` inputs and ``out`` outputs:
  qweight int32 [in / 8, out]   eight 4-bit values along the input dim, low nibble first
  qzeros  int32 [groups, out/8] eight (zero - 1) values along the output dim
  scales  float [groups, out]
  g_idx   int32 [in]            group of each input channel (a permutation with desc_act)
"""

from __future__ import annotations

import torch
from vllm.model_executor.parameter import (
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    PackedColumnParameter,
    PackedvLLMParameter,
    RowvLLMParameter,
)

from vllm_xpu_plugin.log import init_logger
from vllm_xpu_plugin.quantization import int4_linear
from vllm_xpu_plugin.quantization.settings import UnsupportedQuantizationError

logger = init_logger(__name__)

_PACKED_PARAMS = ("qweight", "qzeros", "scales", "g_idx")


# The class name matters: vLLM's linear layers only use their v2 (vLLMParameter-aware)
# weight loaders for quant methods named in linear.WEIGHT_LOADER_V2_SUPPORTED, which lists
# "IPEXGPTQLinearMethod".
class IPEXGPTQLinearMethod(int4_linear.IPEXWOQLinearMethodBase):

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        cfg = self.quant_config
        in_pp, out_pp, pack, prefix, weight_loader = self._partition(
            layer, input_size_per_partition, output_partition_sizes, extra_weight_attrs)
        if in_pp % pack or out_pp % pack:
            raise UnsupportedQuantizationError(
                f"{prefix}: GPTQ needs input and output sizes divisible by {pack} "
                f"(got {in_pp} x {out_pp} per partition)")
        if cfg.group_size != -1 and in_pp % cfg.group_size:
            raise UnsupportedQuantizationError(
                f"{prefix}: input size {in_pp} per partition is not a multiple of GPTQ "
                f"group_size {cfg.group_size} (too large a tensor-parallel size?)")

        row_partitioned = input_size != in_pp
        if row_partitioned and cfg.desc_act and cfg.group_size != -1:
            raise UnsupportedQuantizationError(
                "GPTQ desc_act=true with tensor parallelism > 1 is not supported by "
                "vllm-xpu-plugin; serve with --tensor-parallel-size 1")
        # A row-parallel partition owns its own groups; otherwise every partition sees all
        # groups of the full input dimension.
        partition_groups = row_partitioned and cfg.group_size != -1
        group_size = cfg.group_size if cfg.group_size != -1 else input_size
        num_groups = (in_pp if partition_groups else input_size) // group_size

        qweight = PackedvLLMParameter(
            data=torch.empty(in_pp // pack, out_pp, dtype=torch.int32),
            input_dim=0, output_dim=1, packed_dim=0, packed_factor=pack,
            weight_loader=weight_loader)
        g_idx = RowvLLMParameter(
            data=torch.arange(in_pp, dtype=torch.int32) // group_size,
            input_dim=0, weight_loader=weight_loader)
        zeros_data = torch.empty(num_groups, out_pp // pack, dtype=torch.int32)
        scales_data = torch.empty(num_groups, out_pp, dtype=params_dtype)
        if partition_groups:
            scales = GroupQuantScaleParameter(data=scales_data, input_dim=0, output_dim=1,
                                              weight_loader=weight_loader)
            qzeros = PackedvLLMParameter(data=zeros_data, input_dim=0, output_dim=1,
                                         packed_dim=1, packed_factor=pack,
                                         weight_loader=weight_loader)
        else:
            scales = ChannelQuantScaleParameter(data=scales_data, output_dim=1,
                                                weight_loader=weight_loader)
            qzeros = PackedColumnParameter(data=zeros_data, output_dim=1, packed_dim=1,
                                           packed_factor=pack, weight_loader=weight_loader)
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("g_idx", g_idx)
        layer.register_parameter("qzeros", qzeros)
        layer.register_parameter("scales", scales)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        cfg = self.quant_config
        qweight = layer.qweight.data
        self._install(
            layer, _PACKED_PARAMS,
            fmt=int4_linear.PackedFormat.GPTQ_GEMM,
            qweight=qweight,
            scales=layer.scales.data,
            qzeros=layer.qzeros.data,
            in_features=qweight.shape[0] * cfg.pack_factor,
            out_features=qweight.shape[1],
            group_size=cfg.group_size,
            g_idx=layer.g_idx.data,
        )
