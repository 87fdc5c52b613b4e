"""Rotary embedding on IPEX kernels, for the RotaryEmbedding classes whose math is the base
class's (NeoX or GPT-J style, partial rotary, key may be None).

How ``register_oot`` meets subclasses (vLLM 0.11 ``CustomOp.__new__``): the class to build
is looked up in ``op_registry_oot`` by the *exact* ``cls.__name__`` being instantiated.
Registering for ``RotaryEmbedding`` therefore replaces only ``RotaryEmbedding(...)``
itself; ``Llama3RotaryEmbedding(...)`` etc. still build their own class, which inherits
vLLM's ``RotaryEmbedding`` (not ours) and on an out-of-tree platform dispatches to
``CustomOp.forward_oot`` = its own ``forward_native``. Nothing is silently replaced.

Subclasses that only change how ``cos_sin_cache`` is *filled* (inv_freq / scaling / mscale)
but keep its layout ([positions, rotary_dim] = cat(cos, sin)) and the base forward are
registered one by one below, each keyed by its own name, so they also run on IPEX. Every
other subclass (MRotaryEmbedding and Ernie4_5_VL, DeepseekScaling, Llama4Vision,
DualChunk, ModernBert, Phi3LongRoPEScaled which is not even a CustomOp) keeps vLLM's
forward_native.
"""

from __future__ import annotations

from typing import Optional

import torch
from vllm.model_executor.layers.rotary_embedding import (
    DynamicNTKAlphaRotaryEmbedding,
    DynamicNTKScalingRotaryEmbedding,
    LinearScalingRotaryEmbedding,
    Llama3RotaryEmbedding,
    NTKScalingRotaryEmbedding,
    RotaryEmbedding,
    YaRNScalingRotaryEmbedding,
)

from vllm_xpu_plugin.compilation import traceable_ops
from vllm_xpu_plugin.kernels import rotary
from vllm_xpu_plugin.ops._common import keep_in_tree_name


class _IPEXRotaryForward:
    """forward_oot for any class with the base RotaryEmbedding cache layout and forward."""

    head_size: int
    rotary_dim: int
    is_neox_style: bool
    cos_sin_cache: torch.Tensor

    def forward_oot(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.cos_sin_cache.shape[-1] != self.rotary_dim:
            # Not the layout the kernels read (a future subclass changed it): stay exact.
            return self.forward_native(positions, query, key)  # type: ignore[attr-defined]
        self._match_cos_sin_cache_dtype(query)  # type: ignore[attr-defined]
        return traceable_ops.rotary_embedding(
            positions,
            query,
            key,
            self.head_size,
            self._rotary_kernel_table(),
            self.is_neox_style,
            self.rotary_dim,
        )

    def _rotary_kernel_table(self) -> torch.Tensor:
        # Rebuilt only when cos_sin_cache is replaced (dtype/device match, reload); vLLM
        # shares one rotary module across all layers, so this is once per model.
        cache = self.cos_sin_cache
        if getattr(self, "_kernel_table_source", None) is not cache:
            self._kernel_table = rotary.rotary_kernel_table(cache, self.head_size)
            self._kernel_table_source = cache
        return self._kernel_table


@RotaryEmbedding.register_oot
class IPEXRotaryEmbedding(_IPEXRotaryForward, RotaryEmbedding):
    pass


@Llama3RotaryEmbedding.register_oot
class IPEXLlama3RotaryEmbedding(_IPEXRotaryForward, Llama3RotaryEmbedding):
    pass


@YaRNScalingRotaryEmbedding.register_oot
class IPEXYaRNScalingRotaryEmbedding(_IPEXRotaryForward, YaRNScalingRotaryEmbedding):
    pass


@LinearScalingRotaryEmbedding.register_oot
class IPEXLinearScalingRotaryEmbedding(_IPEXRotaryForward, LinearScalingRotaryEmbedding):
    pass


@NTKScalingRotaryEmbedding.register_oot
class IPEXNTKScalingRotaryEmbedding(_IPEXRotaryForward, NTKScalingRotaryEmbedding):
    pass


@DynamicNTKScalingRotaryEmbedding.register_oot
class IPEXDynamicNTKScalingRotaryEmbedding(_IPEXRotaryForward, DynamicNTKScalingRotaryEmbedding):
    pass


@DynamicNTKAlphaRotaryEmbedding.register_oot
class IPEXDynamicNTKAlphaRotaryEmbedding(_IPEXRotaryForward, DynamicNTKAlphaRotaryEmbedding):
    pass


# in-tree class -> our class, for every class that runs on IPEX (tests and docs read it).
IPEX_ROTARY_CLASSES: dict[type[RotaryEmbedding], type[RotaryEmbedding]] = {
    RotaryEmbedding: IPEXRotaryEmbedding,
    Llama3RotaryEmbedding: IPEXLlama3RotaryEmbedding,
    YaRNScalingRotaryEmbedding: IPEXYaRNScalingRotaryEmbedding,
    LinearScalingRotaryEmbedding: IPEXLinearScalingRotaryEmbedding,
    NTKScalingRotaryEmbedding: IPEXNTKScalingRotaryEmbedding,
    DynamicNTKScalingRotaryEmbedding: IPEXDynamicNTKScalingRotaryEmbedding,
    DynamicNTKAlphaRotaryEmbedding: IPEXDynamicNTKAlphaRotaryEmbedding,
}

for _ours in IPEX_ROTARY_CLASSES.values():
    keep_in_tree_name(_ours, RotaryEmbedding)
