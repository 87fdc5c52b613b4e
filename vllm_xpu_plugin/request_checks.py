"""Per-request checks vLLM 0.11 does not make (the platform's ``validate_request`` hook).

A ValueError raised here becomes a 400 with its message (one line), before the request
reaches the engine process.

- vLLM rejects ``temperature < 0`` but lets NaN/inf through (``nan < 0`` is False); the
  sampler then divides the logits by NaN and returns garbage with HTTP 200 (issue 8).
- vLLM bounds prompt token ids by ``max(tokenizer.max_token_id, vocab - 1)``, where
  ``max_token_id`` is ``max(largest id in the vocab, tokenizer.vocab_size)`` -- a count, so
  id == vocab size passes; it never checks ``< 0``. Either id reaches the embedding lookup
  in the engine process ("INDICES element is out of DATA bounds"), which kills the engine
  and ``vllm serve`` with it (issue 19). The real bound is the model's embedding rows,
  ``model_config.get_vocab_size()`` (= ``hf_text_config.vocab_size``; any padding rows
  vLLM adds past it hold no token).

``validate_request`` sees the prompt after vLLM's input preprocessing, so this covers token-id
prompts, text and chat prompts (already tokenized), multimodal prompts (placeholder
positions are replaced by embeddings and not looked up: skipped) and both halves of
encoder-decoder prompts; ``prompt_embeds`` prompts have no ids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Optional

# Embedding rows of the model of the engine built last in this process (recorded by the
# platform's check_and_update_config, which runs in the process that owns the input
# processor). None: unknown, only negative ids are rejected.
_embedding_rows: Optional[int] = None

_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty")


# Integer sampling parameters end up in int64 tensors/arrays (top_k: int32); a bigger Python
# int fails in vLLM 0.11 with a 500 and an empty message (top_k=2**64).
_INT_FIELDS = {"n": 63, "best_of": 63, "top_k": 31, "max_tokens": 63, "min_tokens": 63,
               "seed": 63, "logprobs": 63, "prompt_logprobs": 63, "truncate_prompt_tokens": 63}
_INT_LIST_FIELDS = ("stop_token_ids", "allowed_token_ids")


def _int_problem(name: str, value, bits: int) -> Optional[str]:
    if isinstance(value, int) and not -(1 << bits) <= value < (1 << bits):
        return f"{name} must be in [{-(1 << bits)}, {(1 << bits) - 1}], got {value}"
    return None


def sampling_params_problem(params) -> Optional[str]:
    """Why these SamplingParams cannot be sampled with, or None (PoolingParams: None)."""
    for name, bits in _INT_FIELDS.items():
        problem = _int_problem(name, getattr(params, name, None), bits)
        if problem:
            return problem
    for name in _INT_LIST_FIELDS:
        for value in getattr(params, name, None) or ():
            problem = _int_problem(name, value, 63)
            if problem:
                return problem
    for name in _FLOAT_FIELDS:
        value = getattr(params, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
    bias = getattr(params, "logit_bias", None) or {}
    for token, value in bias.items():
        if not math.isfinite(float(value)):
            return f"logit_bias[{token}] must be a finite number, got {value}"
    return None


def remember_model(model_config) -> None:
    """Record the embedding-row count of the model being served (``None`` clears it)."""
    global _embedding_rows
    rows = model_config.get_vocab_size() if model_config is not None else 0
    _embedding_rows = rows if rows and rows > 0 else None


def prompt_ids_problem(ids: Sequence[Any], rows: Optional[int],
                       skip: Iterable[Iterable[int]] = ()) -> Optional[str]:
    """Why ``ids`` cannot be looked up in an embedding of ``rows`` rows, or None.
    ``skip``: groups of positions that are not looked up (multimodal placeholders)."""
    skipped = {i for group in skip for i in group}
    if not skipped:  # the common case: two C-speed passes, then the slow one only to name it
        try:
            if min(ids) >= 0 and (rows is None or max(ids) < rows) and all(
                    type(t) is int for t in ids):
                return None
        except TypeError:
            pass
    for position, token in enumerate(ids):
        if position in skipped:
            continue
        if not isinstance(token, int) or isinstance(token, bool):
            return f"prompt token id at position {position} is not an integer: {token!r:.40}"
        if token < 0 or (rows is not None and token >= rows):
            bound = f"[0, {rows})" if rows is not None else ">= 0"
            return (f"prompt token id {token} at position {position} is out of range: "
                    f"ids must be in {bound} (the model's vocabulary)")
    return None


def _placeholder_positions(inputs: dict) -> list[list[int]]:
    groups = []
    for ranges in (inputs.get("mm_placeholders") or {}).values():
        for r in ranges:
            if r.is_embed is None:
                groups.append(list(range(r.offset, r.offset + r.length)))
            else:
                mask = r.is_embed.tolist()
                groups.append([r.offset + i for i, embedded in enumerate(mask) if embedded])
    return groups


def processed_inputs_problem(processed_inputs) -> Optional[str]:
    """Out-of-range prompt ids in vLLM's ProcessorInputs (any prompt kind), or None."""
    if not isinstance(processed_inputs, dict):
        return None
    if processed_inputs.get("type") == "embeds":
        return None
    if "encoder" in processed_inputs and "decoder" in processed_inputs:
        return (processed_inputs_problem(processed_inputs["encoder"])
                or processed_inputs_problem(processed_inputs["decoder"]))
    ids = processed_inputs.get("prompt_token_ids")
    if not ids:
        return None
    return prompt_ids_problem(ids, _embedding_rows, _placeholder_positions(processed_inputs))
