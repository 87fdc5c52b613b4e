"""vLLM's unquantized FusedMoE method on the plugin's MoE kernels (kernels/moe.py).

Under an out-of-tree platform vLLM's ``UnquantizedFusedMoEMethod`` dispatches
``forward_oot`` -> ``forward_native``, which vLLM binds to ``forward_cuda`` for any
platform that is not CPU/TPU/XPU: ``_moe_C::topk_softmax`` and Triton, which cannot run
here. ``register_oot`` makes vLLM build this subclass instead, for every FusedMoE layer
of an unquantized model; routing and experts then run on IPEX kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from vllm.model_executor.layers.fused_moe.layer import UnquantizedFusedMoEMethod

from vllm_xpu_plugin.kernels import moe as moe_kernels
from vllm_xpu_plugin.moe.limits import layer_problem
from vllm_xpu_plugin.ops._common import keep_in_tree_name
from vllm_xpu_plugin.startup_checks import PluginConfigError


@UnquantizedFusedMoEMethod.register_oot
class IPEXUnquantizedFusedMoEMethod(UnquantizedFusedMoEMethod):
    """Routing in torch, experts on IPEX's fused MoE kernels; expert weights held once."""

    def create_weights(self, layer: torch.nn.Module, *args, **kwargs) -> None:
        # The layer's options are all set before vLLM creates its weights: a combination
        # the kernels cannot compute fails here in one line, never as wrong numbers.
        problem = layer_problem(layer, self.moe)
        if problem:
            raise PluginConfigError(problem)
        super().create_weights(layer, *args, **kwargs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        super().process_weights_after_loading(layer)  # (vLLM: ROCm/FlashInfer-only steps)
        layer.ipex_experts = moe_kernels.ExpertKernel(layer.w13_weight, layer.w2_weight)

    def forward_oot(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        use_grouped_topk: bool,
        top_k: int,
        router_logits: torch.Tensor,
        renormalize: bool,
        topk_group: Optional[int] = None,
        num_expert_group: Optional[int] = None,
        global_num_experts: int = -1,
        expert_map: Optional[torch.Tensor] = None,
        custom_routing_function: Optional[Callable] = None,
        scoring_func: str = "softmax",
        routed_scaling_factor: float = 1.0,
        e_score_correction_bias: Optional[torch.Tensor] = None,
        apply_router_weight_on_input: bool = False,
        activation: str = "silu",
        enable_eplb: bool = False,
        expert_load_view: Optional[torch.Tensor] = None,
        logical_to_physical_map: Optional[torch.Tensor] = None,
        logical_replica_count: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return moe_kernels.fused_moe(
            layer.ipex_experts, x, router_logits, top_k, renormalize, expert_map,
            use_grouped_topk=use_grouped_topk, num_expert_group=num_expert_group,
            topk_group=topk_group, scoring_func=scoring_func,
            routed_scaling_factor=routed_scaling_factor,
            e_score_correction_bias=e_score_correction_bias,
            custom_routing_function=custom_routing_function)

    # With "-unquantized_fused_moe" in custom_ops vLLM calls forward_native, which it bound
    # to forward_cuda for out-of-tree platforms; the IPEX path is the only one that runs.
    forward_native = forward_oot


keep_in_tree_name(IPEXUnquantizedFusedMoEMethod, UnquantizedFusedMoEMethod)
