"""SiluAndMul and GeluAndMul (approximate "none" / "tanh") on IPEX kernels."""

from __future__ import annotations

import torch
from vllm.model_executor.layers.activation import GeluAndMul, SiluAndMul

from vllm_xpu_plugin.compilation import traceable_ops
from vllm_xpu_plugin.ops._common import keep_in_tree_name


def _out_for(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return torch.empty(x.shape[:-1] + (d,), dtype=x.dtype, device=x.device)


@SiluAndMul.register_oot
class IPEXSiluAndMul(SiluAndMul):
    """``x -> silu(x[..., :d]) * x[..., d:]``, ``d = x.shape[-1] // 2``."""

    def forward_oot(self, x: torch.Tensor) -> torch.Tensor:
        return traceable_ops.silu_and_mul(x)


keep_in_tree_name(IPEXSiluAndMul, SiluAndMul)


@GeluAndMul.register_oot
class IPEXGeluAndMul(GeluAndMul):
    """``x -> gelu(x[..., :d], approximate) * x[..., d:]``.

    (vLLM's own XPU path drops ``approximate="tanh"``; this one passes it on.)
    """

    def forward_oot(self, x: torch.Tensor) -> torch.Tensor:
        return traceable_ops.gelu_and_mul(x, _out_for(x), self.approximate)


keep_in_tree_name(IPEXGeluAndMul, GeluAndMul)
