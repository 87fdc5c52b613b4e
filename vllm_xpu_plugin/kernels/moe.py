"""Mixture-of-experts kernels: routing (which experts, with which weights) and the experts'
gated MLPs (vLLM's FusedMoE layer, through vllm_xpu_plugin/moe/).

Routing is plain torch on every device and mirrors vLLM 0.11's
``FusedMoE.select_experts`` (the semantics vLLM's model code is written against):

- softmax top-k (float32 scores), optionally renormalised over the chosen k;
- a score-correction bias (DeepSeek-V3 / GLM-4.5 style): experts chosen on
  ``scores + bias``, weighted with the unbiased scores, then ``routed_scaling_factor``;
- grouped top-k (softmax or sigmoid scores, groups ranked by their best score, or by their
  top-2 sum with a bias), then ``routed_scaling_factor``;
- a model's own routing function (PhiMoE's sparsemixer).

As in vLLM, ``routed_scaling_factor`` only applies on the grouped and the biased paths.

Experts, CPU mode: the weights stay in the layer's ``w13_weight`` [E, 2I, H] /
``w2_weight`` [E, H, I] parameters -- one copy, no prepacked duplicate:
- bf16 / fp16: re-laid out once, in place, for IPEX's fused CPU MoE kernel
  (``torch_ipex.fused_experts``, VNNI layout from ``convert_weight_packed_moe_bf16``);
  on a CPU without bf16 instructions, which that kernel cannot run on, each expert
  TPP-blocked in place for ``torch_ipex.mixtral_moe_tpp``;
- float32 (and shapes that kernel does not take): ``torch_ipex.mixtral_moe_tpp``, the
  per-expert kernel ``ipex.llm.modules.GatedMLPMOE`` runs on the CPU, over the experts
  that received tokens only (GatedMLPMOE visits every expert).
Intel GPU: ``ipex.llm.modules.GatedMLPMOE`` (as vLLM's own XPU path). Its XPU module
(IPEX v2.8.10+xpu, transformers/models/xpu/fusions/linear_fusion.py
``_IPEXGatedMLPMOEXPU``) always picks the experts itself with ``topk_softmax`` on the
router logits over all of its experts (a custom routing function only replaces the
weights, renormalisation happens in its ``moe_gather``), and transposes the weights in
place (one copy). So on the GPU only plain softmax top-k routing, without expert
parallelism, is computed the same way; the rest is refused (:func:`unsupported_routing`,
:func:`unsupported_expert_parallel`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)

# --------------------------------------------------------------------------- routing


def select_experts(
    router_logits: torch.Tensor,
    top_k: int,
    renormalize: bool,
    *,
    hidden_states: Optional[torch.Tensor] = None,
    use_grouped_topk: bool = False,
    num_expert_group: Optional[int] = None,
    topk_group: Optional[int] = None,
    scoring_func: str = "softmax",
    routed_scaling_factor: float = 1.0,
    e_score_correction_bias: Optional[torch.Tensor] = None,
    custom_routing_function: Optional[Callable] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights float32 [T, k], topk_ids int64 [T, k]) of global expert ids."""
    if use_grouped_topk:
        weights, ids = grouped_topk(router_logits, top_k, renormalize, num_expert_group,
                                    topk_group, scoring_func, e_score_correction_bias)
        return _scaled(weights, routed_scaling_factor), ids
    if custom_routing_function is not None:
        weights, ids = custom_routing_function(hidden_states=hidden_states,
                                               gating_output=router_logits, topk=top_k,
                                               renormalize=renormalize)
        return weights.float(), ids.long()
    if scoring_func != "softmax":
        raise ValueError(f"MoE scoring function {scoring_func!r} needs grouped top-k")
    scores = torch.softmax(router_logits.float(), dim=-1)
    if e_score_correction_bias is not None:
        ids = torch.topk(scores + e_score_correction_bias.float().unsqueeze(0), top_k,
                         dim=-1)[1]
        weights = scores.gather(1, ids)
    else:
        weights, ids = torch.topk(scores, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if e_score_correction_bias is not None:
        weights = _scaled(weights, routed_scaling_factor)
    return weights, ids


def grouped_topk(router_logits: torch.Tensor, top_k: int, renormalize: bool,
                 num_expert_group: int, topk_group: int, scoring_func: str = "softmax",
                 e_score_correction_bias: Optional[torch.Tensor] = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2/V3 style: keep the ``topk_group`` best of ``num_expert_group`` expert
    groups, then the ``top_k`` best experts inside them (no scaling factor here)."""
    logits = router_logits.float()
    if scoring_func == "softmax":
        scores = torch.softmax(logits, dim=-1)
    elif scoring_func == "sigmoid":
        scores = logits.sigmoid()
    else:
        raise ValueError(f"unsupported MoE scoring function {scoring_func!r}")
    num_tokens, num_experts = scores.shape
    choice = scores
    if e_score_correction_bias is not None:
        choice = scores + e_score_correction_bias.float().unsqueeze(0)
        group_scores = choice.view(num_tokens, num_expert_group, -1).topk(2, dim=-1)[0].sum(-1)
    else:
        group_scores = choice.view(num_tokens, num_expert_group, -1).amax(dim=-1)
    group_idx = torch.topk(group_scores, topk_group, dim=-1)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0)
    expert_mask = group_mask.repeat_interleave(num_experts // num_expert_group, dim=1)
    masked = choice.masked_fill(expert_mask == 0, float("-inf"))
    ids = torch.topk(masked, top_k, dim=-1)[1]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def _scaled(weights: torch.Tensor, factor: Optional[float]) -> torch.Tensor:
    return weights if factor in (None, 1.0) else weights * factor


def unsupported_routing(use_grouped_topk: bool, e_score_correction_bias, custom_routing_function,
                        use_ep: bool) -> Optional[str]:
    """Why a FusedMoE layer's routing cannot run on this device's MoE kernel, or None."""
    if device.is_cpu_mode():
        return None
    if use_grouped_topk or e_score_correction_bias is not None:  # XPU-only
        return "grouped / score-bias MoE routing is not supported on Intel GPUs yet"  # XPU-only
    if custom_routing_function is not None:  # XPU-only
        return "a model-specific MoE routing function is not supported on Intel GPUs yet"  # XPU-only
    return unsupported_expert_parallel() if use_ep else None  # XPU-only


def unsupported_expert_parallel() -> Optional[str]:
    """Why --enable-expert-parallel cannot run on this device's MoE kernel, or None."""
    if device.is_cpu_mode():
        return None
    return "--enable-expert-parallel is not supported on Intel GPUs yet"  # XPU-only


def fused_moe(kernel: ExpertKernel, x: torch.Tensor, router_logits: torch.Tensor, top_k: int,
              renormalize: bool, expert_map: Optional[torch.Tensor] = None,
              **routing) -> torch.Tensor:
    """Route (:func:`select_experts` options in ``routing``) and run the experts."""
    if kernel.fusion is not None:
        # XPU-only: GatedMLPMOE routes itself (softmax top-k; see unsupported_routing).
        return kernel.fusion(x, False, top_k, router_logits, renormalize)  # XPU-only
    topk_weights, topk_ids = select_experts(router_logits, top_k, renormalize,
                                            hidden_states=x, **routing)
    return kernel(x, topk_weights, topk_ids, expert_map)


def localize(topk_weights: torch.Tensor, topk_ids: torch.Tensor,
             expert_map: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert parallel: global ids -> this rank's expert ids; a pair routed to another
    rank's expert keeps id 0 with weight 0 (that rank adds its share in the all-reduce)."""
    if expert_map is None:
        return topk_weights, topk_ids
    local = expert_map[topk_ids]
    off_rank = local < 0
    return topk_weights.masked_fill(off_rank, 0.0), local.masked_fill(off_rank, 0).long()


# --------------------------------------------------------------------------- experts

LAYOUT_PLAIN = "plain"  # [E, 2I, H] / [E, H, I] as loaded (float32 on the CPU)
LAYOUT_VNNI = "vnni"  # blocked in place for torch_ipex.fused_experts (CPU bf16/fp16)
LAYOUT_TPP = "tpp"  # each expert blocked in place for IPEX's TPP GEMM (mixtral_moe_tpp)
# CPU bf16/fp16 experts: which of the two in-place layouts (benchmarks/moe_step.py A/Bs them).
# The VNNI one needs bf16 instructions (device.cpu_has_bf16_instructions); without them the
# experts take the TPP layout, whose GEMM has an AVX2 path.
CPU_LOWP_LAYOUT = LAYOUT_VNNI


def cpu_lowp_layout() -> str:
    if CPU_LOWP_LAYOUT == LAYOUT_VNNI and not device.cpu_has_bf16_instructions():
        return LAYOUT_TPP
    return CPU_LOWP_LAYOUT


class ExpertKernel:
    """One FusedMoE layer's experts on the device's IPEX kernel. Holds no weight copy:
    it reads (and on the CPU may re-lay out in place) the layer's parameters."""

    def __init__(self, w13: torch.nn.Parameter, w2: torch.nn.Parameter) -> None:
        self.w13, self.w2 = w13, w2
        self.intermediate = w2.shape[2]
        self.layout = LAYOUT_PLAIN
        self.fusion = None
        if device.is_cpu_mode():
            if w13.dtype in (torch.bfloat16, torch.float16):
                if cpu_lowp_layout() == LAYOUT_TPP:
                    self._pack_tpp_in_place()
                else:
                    self._pack_vnni_in_place()
            return
        self.fusion = device.ipex().llm.modules.GatedMLPMOE(  # XPU-only
            w13, w2, use_prepack=True)  # XPU-only

    def _pack_vnni_in_place(self) -> None:
        ops = device.ipex_ops()
        try:
            packed13, packed2 = ops.convert_weight_packed_moe_bf16(self.w13.data, self.w2.data)
        except RuntimeError as exc:  # a shape or dtype the fused kernel does not take
            logger.info_once("MoE experts stay on the per-expert kernel (%s)", exc)
            return
        # Same shapes, new layout: the parameters now hold the packed bytes only.
        self.w13.data, self.w2.data = packed13, packed2
        self.layout = LAYOUT_VNNI

    def _pack_tpp_in_place(self) -> None:
        from vllm_xpu_plugin.kernels import gemm

        # 16-wide output blocks, so that gate and up (w13's two halves) never share one.
        packed13 = [gemm.cpu_pack_linear_weight(w, block_out=16) for w in self.w13.data]
        packed2 = [gemm.cpu_pack_linear_weight(w, block_out=16) for w in self.w2.data]
        if any(p is None for p in packed13 + packed2) or self.intermediate % 16:
            return  # TPP does not take these shapes: per-expert kernel on the plain weights
        # Blocked [out/16, ...]: the first half of w13's output blocks is the gate.
        self.w13.data, self.w2.data = torch.stack(packed13), torch.stack(packed2)
        self.layout = LAYOUT_TPP

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                 expert_map: Optional[torch.Tensor] = None) -> torch.Tensor:
        """sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]) for each token t (CPU
        mode; on an Intel GPU :func:`fused_moe` calls GatedMLPMOE instead)."""
        x = x.contiguous()
        if self.layout == LAYOUT_VNNI:
            weights, ids = localize(topk_weights, topk_ids, expert_map)
            return device.ipex_ops().fused_experts(
                x, self.w13, self.w2, weights.float(), ids.int(), False, True, False,
                False, 0, 0, 0, None, None, None, None, None, None)
        return self._per_expert(x, topk_weights, topk_ids, expert_map)

    def _per_expert(self, x, topk_weights, topk_ids, expert_map) -> torch.Tensor:
        ids = topk_ids if expert_map is None else expert_map[topk_ids]
        top_k = ids.shape[1]
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat.clamp(min=0), weights=(flat >= 0).float(),
                                minlength=self.w13.shape[0]).long().tolist()
        start = int((flat < 0).sum())  # off-rank pairs (id -1) sort first
        out = torch.zeros_like(x)
        weights = topk_weights.to(x.dtype)
        # Gate/up split: rows of the plain weight, or output blocks of the TPP-blocked one.
        inter = self.intermediate if self.layout == LAYOUT_PLAIN else self.w13.shape[1] // 2
        blocked = self.layout == LAYOUT_TPP
        for expert, count in enumerate(counts):
            if not count:
                continue
            pairs = order[start:start + count]
            start += count
            w13 = self.w13[expert]
            out = device.ipex_ops().mixtral_moe_tpp(
                x, pairs // top_k, pairs % top_k, w13[:inter], w13[inter:], self.w2[expert],
                not blocked, weights, out, False)
        return out
