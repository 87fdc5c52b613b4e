"""Startup misconfiguration: found in the API-server process, reported in one line.

vLLM builds its config in the process that parses the command line, then starts an
engine-core process that builds the workers. A problem first noticed in a worker (dtype,
head size) surfaces as two interleaved tracebacks and "Engine core initialization
failed". So every check that only needs the config runs here, from the platform's
``pre_register_and_update`` / ``check_and_update_config``, and raises
:class:`PluginConfigError` (below).

On the command line (``vllm serve``) :func:`install_cli_error_formatter` turns an uncaught
``PluginConfigError`` into ``vllm-xpu-plugin: error: <what to do>`` and a non-zero exit
instead of a traceback. Library users (``vllm.LLM``) get the exception itself.
"""

from __future__ import annotations

import re
import sys
from typing import Optional

import torch

ERROR_PREFIX = "vllm-xpu-plugin: error: "


class PluginConfigError(RuntimeError):
    """A misconfiguration found at startup; its message is one actionable line."""

IPEX_DISTRIBUTION = "intel_extension_for_pytorch"


def _major_minor(version: str) -> Optional[str]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def ipex_torch_version_problem(torch_version: Optional[str] = None,
                               ipex_version: Optional[str] = None) -> Optional[str]:
    """Why the installed IPEX cannot run with the installed torch, or None.

    IPEX must match torch's major.minor (IPEX 2.8.x <-> torch 2.8.x). IPEX checks this
    itself on import, but then crashes with an AttributeError (it calls ``os.exit``), so
    the plugin compares the installed versions first, from package metadata (cheap, and
    without importing IPEX).
    """
    from importlib import metadata

    torch_version = torch_version or torch.__version__
    if ipex_version is None:
        try:
            ipex_version = metadata.version(IPEX_DISTRIBUTION)
        except metadata.PackageNotFoundError:
            return ("intel-extension-for-pytorch is not installed: pip install "
                    f"intel-extension-for-pytorch=={_major_minor(torch_version)}.* matching "
                    f"torch {torch_version}")
    if _major_minor(torch_version) != _major_minor(ipex_version):
        return (f"intel-extension-for-pytorch {ipex_version} does not match torch "
                f"{torch_version} (IPEX {_major_minor(ipex_version)}.x needs torch "
                f"{_major_minor(ipex_version)}.x): install the matching pair, e.g. "
                "torch==2.8.0 with intel-extension-for-pytorch==2.8.0 (CPU) or 2.8.10+xpu")
    return None


def head_size_problem(head_size: int, supported: list[int], device_type: str) -> Optional[str]:
    if head_size in supported:
        return None
    return (f"attention head size {head_size} is not supported by the IPEX attention "
            f"kernels on {device_type} (supported: {_ranges(supported)}); this model "
            "cannot be served by vllm-xpu-plugin")


def dtype_problem(dtype: torch.dtype, device_name: str) -> Optional[str]:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {dtype} is not supported; use --dtype bfloat16, float16 or float32"
    if dtype == torch.bfloat16 and "a770" in device_name.lower():
        return (f"{device_name}: Intel Arc A770 has a known bfloat16 accuracy issue; "
                "pass --dtype float16")
    return None


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 8, 12, 16] -> '1-3, 8-16 step 4' style summary (short for error lines)."""
    if not values:
        return "none"
    parts, start, prev, step = [], values[0], values[0], None
    for v in values[1:]:
        if step is None:
            step = v - prev
        elif v - prev != step:
            parts.append((start, prev, step))
            start, step = v, None
        prev = v
    parts.append((start, prev, step))
    out = []
    for a, b, s in parts:
        if a == b:
            out.append(str(a))
        elif s in (None, 1):
            out.append(f"{a}-{b}")
        else:
            out.append(f"{a}-{b} step {s}")
    return ", ".join(out)


def find_config_error(exc: Optional[BaseException]) -> Optional[BaseException]:
    """The PluginConfigError in ``exc``'s cause/context chain, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PluginConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _format_uncaught(previous_hook):
    def hook(exc_type, exc, tb):
        found = find_config_error(exc)
        if found is None:
            return previous_hook(exc_type, exc, tb)
        sys.stderr.write(f"{ERROR_PREFIX}{found}\n")
        sys.stderr.flush()

    hook.vllm_xpu_plugin_formatter = True
    return hook


def install_cli_error_formatter() -> None:
    """Print an uncaught PluginConfigError as one line (the process still exits with 1).

    Called only on the command-line path (the platform receives vLLM's argument parser);
    every other exception goes to the previous hook unchanged.
    """
    if not getattr(sys.excepthook, "vllm_xpu_plugin_formatter", False):
        sys.excepthook = _format_uncaught(sys.excepthook)


def no_platform_problem() -> Optional[str]:
    """With the plugin installed but inactive (no usable Intel GPU, CPU mode not asked
    for) and no other vLLM platform detected, vLLM fails later with "Failed to infer
    device type" and a traceback; say what to do instead."""
    from vllm.platforms import current_platform
    from vllm.platforms.interface import UnspecifiedPlatform

    from vllm_xpu_plugin import device, envs

    if envs.VLLM_XPU_PLUGIN_DEVICE or not isinstance(current_platform, UnspecifiedPlatform):
        return None
    if device.xpu_usable():
        return None
    return ("no usable Intel GPU and CPU mode is off (torch.xpu.is_available() is False): "
            "install the Intel GPU driver with torch 2.8.0+xpu and IPEX 2.8.10+xpu, or run "
            "in CPU mode with VLLM_XPU_PLUGIN_DEVICE=cpu --device cpu")
