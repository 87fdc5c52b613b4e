"""Environment variables read by the plugin (the only place that reads them)."""

import os

__all__ = ["VLLM_XPU_PLUGIN_DEVICE", "VLLM_XPU_PLUGIN_CPU_KVCACHE_GB",  # noqa: F822
           "VLLM_XPU_PLUGIN_TEST_DEVICE_NAME", "cpu_mode",  # noqa: F822 (module __getattr__)
           "VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS",  # noqa: F822
           "VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION",  # noqa: F822
           "VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK",  # noqa: F822
           "set_defaults", "settings_problem"]


def _device() -> str:
    # "" (auto: use an Intel GPU if one is usable) or "cpu" (run the plugin's own code
    # path on the CPU with IPEX's CPU kernels; this is how the test-suite runs).
    return os.environ.get("VLLM_XPU_PLUGIN_DEVICE", "").strip().lower()


def _cpu_kvcache_gb() -> float:
    raw = os.environ.get("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", "").strip()
    if not raw:
        return 4.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"VLLM_XPU_PLUGIN_CPU_KVCACHE_GB={raw!r} is not a number of GiB (e.g. 4 or 0.5)"
        ) from None
    if value <= 0:
        raise ValueError(f"VLLM_XPU_PLUGIN_CPU_KVCACHE_GB={raw!r} must be > 0")
    return value


def _cpu_gemm_max_rows():
    # CPU mode: up to how many rows (tokens in a step) a linear layer uses IPEX's prepacked
    # GEMM before torch's. Unset or "auto": measured per weight shape at load time
    # (kernels/gemm.py). An integer fixes it for every shape (0: never prepacked).
    raw = os.environ.get("VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS", "").strip().lower()
    if raw in ("", "auto"):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS={raw!r} must be 'auto' or a "
                         "number of rows >= 0 (e.g. 128)")
    return value


def _cpu_gemm_block():
    # CPU mode: output channels per block of the prepacked GEMM weights. Unset or "auto":
    # with AVX512-BF16 and no AMX the widest of 64 / 32 / 16 that divides a layer's output
    # channels, else IPEX's 16 (kernels/gemm.py); 16, 32 or 64 fixes it (a layer it does
    # not divide gets 16).
    raw = os.environ.get("VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK", "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw not in ("16", "32", "64"):
        raise ValueError(f"VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK={raw!r} must be 'auto', 16, 32 or 64")
    return int(raw)


def _cpu_decode_attention():
    # CPU mode: the paged-attention kernel of decode-only batches. Unset or "auto": the one
    # measured fastest on this machine (kernels/attention.py); "varlen", "single_query" or
    # "native" (the plugin's own kernel, kernels/native_decode.py).
    raw = os.environ.get("VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION", "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw not in ("varlen", "single_query", "native"):
        raise ValueError(f"VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION={raw!r} must be 'auto', "
                         "'varlen', 'single_query' or 'native'")
    return raw


def __getattr__(name: str):
    if name == "VLLM_XPU_PLUGIN_DEVICE":
        return _device()
    if name == "VLLM_XPU_PLUGIN_CPU_KVCACHE_GB":
        return _cpu_kvcache_gb()
    if name == "VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS":
        return _cpu_gemm_max_rows()
    if name == "VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION":
        return _cpu_decode_attention()
    if name == "VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK":
        return _cpu_gemm_block()
    if name == "VLLM_XPU_PLUGIN_COMPILE":
        # torch.compile (compilation/policy.py): "1" compiles unless -O0 / --enforce-eager;
        # "0" never compiles; unset: the plugin's measured default (docs/compile.md).
        raw = os.environ.get("VLLM_XPU_PLUGIN_COMPILE", "").strip().lower()
        if raw in ("", "auto"):
            return None
        return raw not in ("0", "off", "false", "no")
    if name == "VLLM_XPU_PLUGIN_TEST_DEVICE_NAME":
        # TEST-ONLY: the device name the platform reports (e.g. "Intel(R) Arc(TM) A770
        # Graphics") so per-model startup checks can be tested without that GPU. It
        # changes nothing but the reported name; never set it in production.
        return os.environ.get("VLLM_XPU_PLUGIN_TEST_DEVICE_NAME", "").strip()
    raise AttributeError(name)


# The settings whose values are checked when the plugin starts (settings_problem).
_VALIDATED = ("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", "VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS",
              "VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION", "VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK")


def settings_problem():
    """One line naming the first plugin environment variable with a bad value, or None
    (checked at startup so a typo fails there, not in an engine process)."""
    for name in _VALIDATED:
        try:
            __getattr__(name)
        except ValueError as exc:
            return str(exc)
    return None


def cpu_mode() -> bool:
    return _device() == "cpu"


def set_defaults(values: dict[str, str]) -> None:
    """Set environment variables the user has not set (inherited by processes started later)."""
    for name, value in values.items():
        os.environ.setdefault(name, value)
