"""RMSNorm and GemmaRMSNorm on IPEX kernels (``rms_norm`` / ``add_rms_norm``)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

from vllm_xpu_plugin.compilation import traceable_ops
from vllm_xpu_plugin.ops._common import keep_in_tree_name

_Out = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


@RMSNorm.register_oot
class IPEXRMSNorm(RMSNorm):
    """``x -> w * x / sqrt(mean(x^2) + eps)``, optionally after ``residual += x``.

    With a residual it returns ``(normed, residual)`` where ``residual`` is updated in
    place to ``x + residual`` (as vLLM's fused_add_rms_norm does); ``x`` is not modified.
    """

    def _ipex_usable(self, x: torch.Tensor) -> bool:
        # forward_native instead of IPEX when:
        # - variance_size_override: the kernel always averages over the whole last dim,
        #   the override averages over its first var_hidden_size channels only;
        # - has_weight=False: self.weight is then a plain fp32 tensor that is not a
        #   parameter or buffer, so it does not follow the module to the device/dtype;
        # - weight dtype != x dtype: forward_native returns the promoted dtype
        #   (x.to(dtype) * fp32 weight -> fp32), the kernel would return x's dtype.
        return (
            self.variance_size_override is None and self.has_weight and self.weight.dtype == x.dtype
        )

    def forward_oot(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> _Out:
        if not self._ipex_usable(x):
            return self.forward_native(x, residual)
        if residual is None:
            return traceable_ops.rms_norm(x, self.weight.data, self.variance_epsilon)
        return traceable_ops.fused_add_rms_norm(x, residual, self.weight.data, self.variance_epsilon)


keep_in_tree_name(IPEXRMSNorm, RMSNorm)


@GemmaRMSNorm.register_oot
class IPEXGemmaRMSNorm(GemmaRMSNorm):
    """Gemma's ``(x_normed_fp32 * (1 + w)).to(dtype)``: the kernel with an fp32 ``1 + w``
    weight multiplies in fp32 and rounds once, which is Gemma's formula."""

    def forward_oot(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> _Out:
        weight = 1.0 + self.weight.data.float()  # hidden_size adds; weights may reload
        if residual is None:
            return traceable_ops.rms_norm(x, weight, self.variance_epsilon)
        if x.dtype == torch.float16:
            # Gemma adds an fp16 x to an fp32 copy of the residual and hands the fp32 sum
            # on as the new residual; the fused kernel keeps the residual's dtype.
            return self.forward_native(x, residual)
        return traceable_ops.fused_add_rms_norm(x, residual, weight, self.variance_epsilon)


keep_in_tree_name(IPEXGemmaRMSNorm, GemmaRMSNorm)
