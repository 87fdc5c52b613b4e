"""``ipex_awq``: AWQ (AutoAWQ GEMM format) checkpoints on IPEX int4 kernels."""

from __future__ import annotations

from typing import Any, Optional

import torch

from vllm_xpu_plugin.quantization.config_base import (
    AWQ_NAME,
    IPEXInt4ConfigBase,
    layer_in_list,
)
from vllm_xpu_plugin.quantization.settings import AWQSettings


class IPEXAWQConfig(IPEXInt4ConfigBase):
    """Chosen automatically for checkpoints whose ``quant_method`` is ``awq``."""

    checkpoint_method = "awq"

    def __init__(self, settings: AWQSettings) -> None:
        super().__init__()
        self.settings = settings
        self.weight_bits = settings.bits
        self.group_size = settings.group_size
        self.pack_factor = 32 // settings.bits
        self.modules_to_not_convert = list(settings.modules_to_not_convert)

    def __repr__(self) -> str:
        return (f"IPEXAWQConfig(bits={self.weight_bits}, group_size={self.group_size}, "
                f"modules_to_not_convert={self.modules_to_not_convert})")

    @classmethod
    def get_name(cls) -> str:
        return AWQ_NAME

    @staticmethod
    def get_config_filenames() -> list[str]:
        return ["quant_config.json", "quantize_config.json"]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> IPEXAWQConfig:
        return cls(AWQSettings.from_config(config))

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        # modules_to_not_convert holds checkpoint (HF) names; some vLLM models rename.
        if self.modules_to_not_convert:
            self.modules_to_not_convert = hf_to_vllm_mapper.apply_list(
                self.modules_to_not_convert)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Optional[Any]:
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod

        self.reject_moe(layer, prefix, "AWQ")
        if not isinstance(layer, LinearBase):
            return None  # embeddings and lm_head stay unquantized
        if self.modules_to_not_convert and layer_in_list(
                prefix, self.modules_to_not_convert, self.packed_modules_mapping):
            return UnquantizedLinearMethod()
        from vllm_xpu_plugin.quantization.awq_linear import IPEXAWQLinearMethod

        return IPEXAWQLinearMethod(self)
