"""GPTQ and AWQ int4 checkpoints on IPEX weight-only kernels.

:func:`register_quantization_configs` registers ``ipex_gptq`` and ``ipex_awq`` with vLLM.
Each overrides vLLM's choice for checkpoints whose ``quant_method`` is ``gptq`` / ``awq``
(when this plugin's platform is active), so ``vllm serve <gptq-or-awq-dir>`` needs no flag;
``-q ipex_gptq`` / ``-q ipex_awq`` (or ``-q gptq`` / ``-q awq``) name them explicitly.
See docs/quantization.md.
"""

from __future__ import annotations

from vllm_xpu_plugin.quantization.config_base import AWQ_NAME, GPTQ_NAME

__all__ = ["AWQ_NAME", "GPTQ_NAME", "SUPPORTED_QUANTIZATION", "register_quantization_configs"]

SUPPORTED_QUANTIZATION = (GPTQ_NAME, AWQ_NAME)


def register_quantization_configs() -> None:
    """Register the plugin's quantization configs with vLLM. Idempotent."""
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        register_quantization_config,
    )

    from vllm_xpu_plugin.quantization.awq import IPEXAWQConfig
    from vllm_xpu_plugin.quantization.gptq import IPEXGPTQConfig

    for name, config_cls in ((GPTQ_NAME, IPEXGPTQConfig), (AWQ_NAME, IPEXAWQConfig)):
        if name not in QUANTIZATION_METHODS:
            register_quantization_config(name)(config_cls)
