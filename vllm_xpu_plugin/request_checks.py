"""Per-request checks vLLM 0.11 does not make (the platform's ``validate_request`` hook).

vLLM rejects ``temperature < 0`` but lets NaN/inf through (``nan < 0`` is False); the
sampler then divides the logits by NaN and returns garbage with HTTP 200. A ValueError
raised here becomes a 400 with this message.
"""

from __future__ import annotations

import math
from typing import Optional

_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty")


def sampling_params_problem(params) -> Optional[str]:
    """Why these SamplingParams cannot be sampled with, or None (PoolingParams: None)."""
    for name in _FLOAT_FIELDS:
        value = getattr(params, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
    bias = getattr(params, "logit_bias", None) or {}
    for token, value in bias.items():
        if not math.isfinite(float(value)):
            return f"logit_bias[{token}] must be a finite number, got {value}"
    return None
