"""Mixture-of-experts for vLLM's FusedMoE layers (docs/moe.md).

- :mod:`.fused_moe_method`: the ``UnquantizedFusedMoEMethod`` override (``register_oot``,
  imported by :func:`vllm_xpu_plugin.ops.register_all_ops`), routing and experts on
  :mod:`vllm_xpu_plugin.kernels.moe`.
- :mod:`.limits`: unsupported MoE models and options, refused in one line
  (:func:`config_problem` at startup, :func:`layer_problem` per layer).
"""

from vllm_xpu_plugin.moe.limits import config_problem, layer_problem

__all__ = ["config_problem", "layer_problem"]
