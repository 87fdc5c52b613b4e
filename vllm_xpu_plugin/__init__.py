"""vLLM platform plugin for Intel GPUs (torch ``xpu``) on IPEX kernels.

Entry points (see pyproject.toml):
- ``vllm.platform_plugins``: :func:`register` returns the Platform's qualname when an Intel
  GPU is usable or CPU mode is asked for (``VLLM_XPU_PLUGIN_DEVICE=cpu``), else ``None`` so
  an installed plugin never takes over a CUDA or CPU machine.
- ``vllm.general_plugins``: :func:`register_ops` registers the custom ops and quantization
  configs when this plugin's platform is vLLM's current one, and nothing otherwise (vLLM
  runs general plugins in every process, whatever the platform; idempotent).
"""

from __future__ import annotations

# The one version source (pyproject.toml reads it; release tags are v<__version__>).
__version__ = "0.2.0.dev0"

PLATFORM_QUALNAME = "vllm_xpu_plugin.platform.XPUPluginPlatform"


def register() -> str | None:
    """Pure and cheap: vLLM calls it more than once per process."""
    from vllm_xpu_plugin import device, envs

    if envs.VLLM_XPU_PLUGIN_DEVICE:
        # CPU mode, or an explicit request for this plugin: a typo or a missing GPU is
        # then reported by the platform in one line instead of silently falling back.
        return PLATFORM_QUALNAME
    if device.xpu_usable() or _command_line_requests_xpu():
        return PLATFORM_QUALNAME
    return None


def _command_line_requests_xpu() -> bool:
    """``vllm serve MODEL --device xpu`` names this plugin explicitly; without a usable
    GPU the platform then exits with one line saying why (instead of vLLM's
    "Failed to infer device type" traceback)."""
    import sys

    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv) and argv[i + 1] == "xpu":
            return True
        if arg == "--device=xpu":
            return True
    return False


def _fail_if_no_platform() -> None:
    """No Intel GPU, CPU mode off and no other vLLM platform: one line instead of vLLM's
    "Failed to infer device type" traceback a moment later (issue 8)."""
    from vllm_xpu_plugin import startup_checks

    problem = startup_checks.no_platform_problem()
    if problem:
        startup_checks.install_cli_error_formatter()
        raise startup_checks.PluginConfigError(problem)


def _plugin_platform_is_current() -> bool:
    """True when vLLM's current platform is this plugin's (resolving it if needed)."""
    from vllm.platforms import current_platform

    cls = type(current_platform)
    return f"{cls.__module__}.{cls.__qualname__}" == PLATFORM_QUALNAME


def register_ops() -> None:
    """Register custom ops (``register_oot``) and quantization configs, only when this
    plugin's platform is the current one: with CUDA or vLLM's CPU backend current, an
    installed plugin changes nothing (``CustomOp.register_oot`` replaces a layer class for
    every platform). Idempotent."""
    _fail_if_no_platform()
    if not _plugin_platform_is_current():
        return
    from vllm_xpu_plugin.ops import register_all_ops

    register_all_ops()
    try:
        from vllm_xpu_plugin.quantization import register_quantization_configs
    except ImportError:  # quantization package not present yet
        return
    register_quantization_configs()
