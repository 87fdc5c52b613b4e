"""Structured outputs (xgrammar / guidance grammars) without xgrammar's device kernels."""

from vllm_xpu_plugin.structured_output.grammar_bitmask import (
    apply_grammar_bitmask,
    take_grammar_bitmask,
)

__all__ = ["apply_grammar_bitmask", "take_grammar_bitmask"]
