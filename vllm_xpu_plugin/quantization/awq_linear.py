"""AWQ linear method on the int4 GEMM (kernels/int4_gemm.py) (column/row parallel, merged QKV and gate-up).

Checkpoint layout (AutoAWQ GEMM), per linear of ``in`` inputs and ``out`` outputs:
  qweight int32 [in, out / 8]     eight 4-bit values along the output dim, in AWQ's
                                  interleaved order (output columns 0 2 4 6 1 3 5 7)
  qzeros  int32 [groups, out / 8] zero points, same packing
  scales  float [groups, out]
"""

from __future__ import annotations

import torch
from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter

from vllm_xpu_plugin.quantization import int4_linear
from vllm_xpu_plugin.quantization.settings import UnsupportedQuantizationError

_PACKED_PARAMS = ("qweight", "qzeros", "scales")


# The class name matters: vLLM's linear layers only use their v2 (vLLMParameter-aware)
# weight loaders for quant methods named in linear.WEIGHT_LOADER_V2_SUPPORTED, which lists
# "IPEXAWQLinearMethod".
class IPEXAWQLinearMethod(int4_linear.IPEXWOQLinearMethodBase):

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        cfg = self.quant_config
        in_pp, out_pp, pack, prefix, weight_loader = self._partition(
            layer, input_size_per_partition, output_partition_sizes, extra_weight_attrs)
        group_size = cfg.group_size if cfg.group_size != -1 else input_size
        if in_pp % group_size:
            raise UnsupportedQuantizationError(
                f"{prefix}: input size {in_pp} per partition is not a multiple of AWQ "
                f"group_size {group_size} (too large a tensor-parallel size?)")
        if out_pp % pack:
            raise UnsupportedQuantizationError(
                f"{prefix}: AWQ needs output sizes divisible by {pack} (got {out_pp})")
        num_groups = in_pp // group_size
        qweight = PackedvLLMParameter(
            data=torch.empty(in_pp, out_pp // pack, dtype=torch.int32),
            input_dim=0, output_dim=1, packed_dim=1, packed_factor=pack,
            weight_loader=weight_loader)
        qzeros = PackedvLLMParameter(
            data=torch.empty(num_groups, out_pp // pack, dtype=torch.int32),
            input_dim=0, output_dim=1, packed_dim=1, packed_factor=pack,
            weight_loader=weight_loader)
        scales = GroupQuantScaleParameter(
            data=torch.empty(num_groups, out_pp, dtype=params_dtype),
            input_dim=0, output_dim=1, weight_loader=weight_loader)
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("qzeros", qzeros)
        layer.register_parameter("scales", scales)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        cfg = self.quant_config
        qweight = layer.qweight.data
        self._install(
            layer, _PACKED_PARAMS,
            fmt=int4_linear.PackedFormat.AWQ_GEMM,
            qweight=qweight,
            scales=layer.scales.data,
            qzeros=layer.qzeros.data,
            in_features=qweight.shape[0],
            out_features=qweight.shape[1] * cfg.pack_factor,
            group_size=cfg.group_size,
        )
