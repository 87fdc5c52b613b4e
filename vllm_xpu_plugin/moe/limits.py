"""What the plugin's MoE path cannot serve, as one-line reasons.

:func:`config_problem` runs in the API-server process (the platform's
``check_and_update_config``), so a known-unsupported MoE model or option fails before any
engine process starts; :func:`layer_problem` is the backstop for every FusedMoE layer a
worker builds (an architecture not listed below, a new option).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from vllm.config import VllmConfig

# Config keys that hold a model's routed-expert count (vLLM's own list, plus Qwen/OLMoE).
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

# MoE architectures vLLM 0.11 implements whose experts need something the IPEX kernels do
# not compute (MLA models are refused by the platform already).
UNSUPPORTED_ARCHITECTURES = {
    "GptOssForCausalLM": "attention sinks and biased swigluoai experts",
    "Grok1ModelForCausalLM": "GELU experts",
    "Grok1ForCausalLM": "GELU experts",
    "Llama4ForCausalLM": "router weights applied to the expert input",
    "Llama4ForConditionalGeneration": "router weights applied to the expert input",
    "LongcatFlashForCausalLM": "zero-computation experts",
}


def num_routed_experts(hf_config: Any) -> int:
    for key in EXPERT_COUNT_KEYS:
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def config_problem(vllm_config: VllmConfig) -> Optional[str]:
    """Why this MoE model/config cannot be served by vllm-xpu-plugin, or None (dense
    models: always None)."""
    model_config = vllm_config.model_config
    if model_config is None or not num_routed_experts(model_config.hf_text_config):
        return None
    name = model_config.model
    for arch in getattr(model_config.hf_config, "architectures", None) or []:
        if arch in UNSUPPORTED_ARCHITECTURES:
            return (f"{name}: {arch} is not supported by vllm-xpu-plugin (its MoE layers "
                    f"need {UNSUPPORTED_ARCHITECTURES[arch]})")
    if model_config.quantization:
        return (f"{name}: {model_config.quantization} mixture-of-experts checkpoints are not "
                "supported by vllm-xpu-plugin (no int4 expert kernel yet); serve the "
                "unquantized checkpoint")
    parallel = vllm_config.parallel_config
    if parallel.enable_eplb:
        return f"{name}: --enable-eplb is not supported by vllm-xpu-plugin's MoE layers"
    if getattr(parallel, "enable_expert_parallel", False):
        from vllm_xpu_plugin.kernels.moe import unsupported_expert_parallel

        reason = unsupported_expert_parallel()
        if reason:
            return f"{name}: {reason} (vllm-xpu-plugin MoE)"
    if parallel.data_parallel_size > 1:
        return (f"{name}: --data-parallel-size {parallel.data_parallel_size} with a "
                "mixture-of-experts model is not supported by vllm-xpu-plugin; use "
                "--tensor-parallel-size (optionally with --enable-expert-parallel)")
    return None


def layer_problem(layer: Any, moe: Any) -> Optional[str]:
    """Why this FusedMoE layer's options cannot run on the plugin's kernels, or None."""
    where = f"{getattr(layer, 'layer_name', 'FusedMoE')}"
    if getattr(layer, "activation", "silu") != "silu":
        return (f"{where}: MoE activation {layer.activation!r} is not supported by "
                "vllm-xpu-plugin (SiLU-gated experts only)")
    if getattr(moe, "has_bias", False):
        return f"{where}: MoE expert biases are not supported by vllm-xpu-plugin"
    if getattr(layer, "apply_router_weight_on_input", False):
        return (f"{where}: router weights applied to the expert input are not supported "
                "by vllm-xpu-plugin")
    if getattr(layer, "zero_expert_num", 0):
        return f"{where}: zero-computation experts are not supported by vllm-xpu-plugin"
    if getattr(layer, "enable_eplb", False):
        return f"{where}: expert load balancing (EPLB) is not supported by vllm-xpu-plugin"
    from vllm_xpu_plugin.kernels.moe import unsupported_routing

    reason = unsupported_routing(getattr(layer, "use_grouped_topk", False),
                                 getattr(layer, "e_score_correction_bias", None),
                                 getattr(layer, "custom_routing_function", None),
                                 getattr(layer, "use_ep", False))
    return f"{where}: {reason} (vllm-xpu-plugin)" if reason else None
