"""What the GPTQ and AWQ configs share: plugin-owned names, dtypes, the platform check that
keeps an installed plugin from taking GPTQ/AWQ checkpoints away from vLLM on other
platforms, and the substring layer matching both formats use for module lists."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from vllm_xpu_plugin.quantization.settings import UnsupportedQuantizationError

GPTQ_NAME = "ipex_gptq"
AWQ_NAME = "ipex_awq"


def plugin_platform_active() -> bool:
    """True when vLLM's current platform is this plugin's. register_ops() runs in every
    vLLM process once the package is installed, including CUDA or CPU machines where the
    plugin's platform is not selected; checkpoints there stay with vLLM's own methods."""
    from vllm.platforms import current_platform

    from vllm_xpu_plugin.platform import XPUPluginPlatform

    return isinstance(current_platform, XPUPluginPlatform)


def layer_in_list(prefix: str, names: list[str], fused_mapping: Mapping[str, list[str]]) -> bool:
    """Whether the layer ``prefix`` (vLLM name, e.g. ``model.layers.0.self_attn.qkv_proj``)
    matches any entry of ``names`` by substring, as AutoAWQ / AutoGPTQ match module lists.

    A fused layer (qkv_proj, gate_up_proj) is checked shard by shard under its checkpoint
    names; shards that disagree cannot be served by one kernel and fail in one line.
    """
    proj = prefix.rsplit(".", 1)[-1]
    shards = [prefix[: len(prefix) - len(proj)] + s for s in fused_mapping.get(proj, [])]
    if not shards:
        return any(name in prefix for name in names)
    matches = {any(name in shard for name in names) for shard in shards}
    if len(matches) > 1:
        raise UnsupportedQuantizationError(
            f"{prefix}: some but not all of its checkpoint shards {shards} are quantized; "
            "vllm-xpu-plugin needs all shards of a fused layer in the same precision")
    return matches.pop()


class IPEXInt4ConfigBase(QuantizationConfig):
    """Base of the plugin's int4 configs (GPTQ, AWQ) on IPEX weight-only kernels."""

    # Name of the checkpoint ``quant_method`` this config serves.
    checkpoint_method: str = ""

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return -1  # no CUDA compute capability involved

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant) -> Optional[str]:
        method = str(hf_quant_cfg.get("quant_method", "")).lower()
        if method != cls.checkpoint_method:
            return None
        if user_quant not in (None, cls.checkpoint_method, cls.get_name()):
            return None  # vLLM then reports the mismatch with -q/--quantization
        if not plugin_platform_active():
            return None
        cls.from_config(hf_quant_cfg)  # unsupported settings fail here, in the front-end
        return cls.get_name()

    def maybe_update_config(self, model_name: str, revision: Optional[str] = None) -> None:
        # vLLM's GPTQ config scans the safetensors metadata here; the module lists this
        # plugin honours come from the quantization config itself.
        return None

    @staticmethod
    def reject_moe(layer: torch.nn.Module, prefix: str, name: str) -> None:
        # By class name: importing vLLM's fused-MoE package pulls in Triton.
        if any(cls.__name__ == "FusedMoE" for cls in type(layer).__mro__):
            raise UnsupportedQuantizationError(
                f"{prefix}: {name} mixture-of-experts layers are not supported by "
                "vllm-xpu-plugin (dense models only)")
