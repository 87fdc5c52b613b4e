"""Custom ops registered with vLLM's ``CustomOp.register_oot``, one file per op."""

_registered = False


def register_all_ops() -> None:
    """Import the op modules once; their ``@X.register_oot`` decorators do the work."""
    global _registered
    if _registered:
        return
    # Importing these modules only imports vLLM layer modules (no IPEX: the kernels
    # import it lazily, on first forward, via device.ipex()).
    from vllm_xpu_plugin.moe import fused_moe_method  # noqa: F401 (FusedMoE experts)
    from vllm_xpu_plugin.ops import (  # noqa: F401
        ipex_activation,
        ipex_layernorm,
        ipex_rotary_embedding,
    )

    _registered = True
