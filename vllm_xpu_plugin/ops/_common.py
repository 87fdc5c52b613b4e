"""Shared helper for the ops modules."""

from __future__ import annotations

from vllm.model_executor.custom_op import CustomOp


def keep_in_tree_name(oot_cls: type[CustomOp], in_tree_cls: type[CustomOp]) -> type[CustomOp]:
    """Give an OOT op the ``name`` of the in-tree op it replaces.

    ``register_oot`` sets ``oot_cls.name`` to the class name it is keyed by (e.g.
    "RMSNorm"), but ``CustomOp.enabled()`` matches ``+name`` / ``-name`` in
    ``CompilationConfig.custom_ops`` against the in-tree name (e.g. "rms_norm"). Restoring
    it keeps ``custom_ops=["-rms_norm"]`` meaning what users expect and keeps vLLM's
    enabled/disabled op bookkeeping in in-tree names. The registry key is unaffected.
    """
    oot_cls.name = in_tree_cls.name
    return oot_cls
