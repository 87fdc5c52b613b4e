"""The plugin's loggers, under vLLM's ``vllm`` logger so users see their lines.

vLLM configures one handler (its format, its ``VLLM_LOGGING_LEVEL``) on the ``vllm`` logger
only; a logger named ``vllm_xpu_plugin.*`` has no handler, so its INFO lines were dropped and
its warnings printed unformatted by Python's last-resort handler. ``init_logger(__name__)``
here names the logger ``vllm.vllm_xpu_plugin.<module>``: it propagates to vLLM's handler and
is formatted like vLLM's own lines.
"""

from __future__ import annotations

from vllm.logger import init_logger as _vllm_init_logger

LOGGER_PREFIX = "vllm."


def init_logger(name: str):
    """vLLM's logger for plugin module ``name`` (pass ``__name__``)."""
    if not name.startswith(LOGGER_PREFIX):
        name = LOGGER_PREFIX + name
    return _vllm_init_logger(name)
