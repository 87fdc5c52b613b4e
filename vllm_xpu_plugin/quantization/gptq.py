"""``ipex_gptq``: GPTQ (AutoGPTQ / optimum v1 format) checkpoints on IPEX int4 kernels."""

from __future__ import annotations

from typing import Any, Optional

import torch

from vllm_xpu_plugin.quantization.config_base import (
    GPTQ_NAME,
    IPEXInt4ConfigBase,
    layer_in_list,
)
from vllm_xpu_plugin.quantization.settings import GPTQSettings


class IPEXGPTQConfig(IPEXInt4ConfigBase):
    """Chosen automatically for checkpoints whose ``quant_method`` is ``gptq``."""

    checkpoint_method = "gptq"

    def __init__(self, settings: GPTQSettings) -> None:
        super().__init__()
        self.settings = settings
        self.weight_bits = settings.bits
        self.group_size = settings.group_size
        self.desc_act = settings.desc_act
        self.pack_factor = 32 // settings.bits

    def __repr__(self) -> str:
        return (f"IPEXGPTQConfig(bits={self.weight_bits}, group_size={self.group_size}, "
                f"desc_act={self.desc_act}, sym={self.settings.sym})")

    @classmethod
    def get_name(cls) -> str:
        return GPTQ_NAME

    @staticmethod
    def get_config_filenames() -> list[str]:
        return ["quantize_config.json"]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> IPEXGPTQConfig:
        return cls(GPTQSettings.from_config(config))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Optional[Any]:
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod

        self.reject_moe(layer, prefix, "GPTQ")
        if not isinstance(layer, LinearBase):
            return None  # embeddings and lm_head stay unquantized
        only = self.settings.modules_in_block_to_quantize
        if only and not layer_in_list(prefix, only, self.packed_modules_mapping):
            return UnquantizedLinearMethod()
        from vllm_xpu_plugin.quantization.gptq_linear import IPEXGPTQLinearMethod

        return IPEXGPTQLinearMethod(self)
