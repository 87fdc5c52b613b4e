"""Checkpoint quantization settings (GPTQ / AWQ) read from ``quantization_config``.

Pure Python, no torch: the front-end process validates a checkpoint's settings while vLLM
picks the quantization method (``override_quantization_method``), so an unsupported
checkpoint fails at startup with one line naming the setting, before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Group sizes verified against the plain-torch reference (tests/test_quantization_layers.py).
SUPPORTED_GROUP_SIZES = (32, 64, 128, -1)
SUPPORTED_BITS = (4,)


class UnsupportedQuantizationError(ValueError):
    """A checkpoint's quantization setting the plugin cannot serve; one actionable line."""


def _problem(setting: str, value: Any, supported: str) -> UnsupportedQuantizationError:
    return UnsupportedQuantizationError(
        f"quantization_config.{setting}={value!r} is not supported by vllm-xpu-plugin's "
        f"IPEX int4 kernels (supported: {supported})")


def _get(config: dict[str, Any], keys: tuple[str, ...], default: Any = None) -> Any:
    for key in keys:
        if key in config:
            return config[key]
    return default


def _require(config: dict[str, Any], keys: tuple[str, ...], method: str) -> Any:
    value = _get(config, keys)
    if value is None:
        raise UnsupportedQuantizationError(
            f"{method} quantization config has no {' / '.join(keys)} entry; "
            "is this a complete GPTQ/AWQ checkpoint?")
    return value


def _check_bits_and_group(bits: Any, group_size: Any, bits_key: str, group_key: str) -> None:
    if bits not in SUPPORTED_BITS:
        raise _problem(bits_key, bits, "bits=4")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise _problem(group_key, group_size,
                       "group_size " + ", ".join(str(g) for g in SUPPORTED_GROUP_SIZES))


@dataclass(frozen=True)
class GPTQSettings:
    """AutoGPTQ / optimum ("gptq" v1 checkpoint format) settings."""

    bits: int
    group_size: int
    desc_act: bool
    sym: bool
    modules_in_block_to_quantize: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GPTQSettings:
        bits = _require(config, ("bits",), "GPTQ")
        group_size = _require(config, ("group_size",), "GPTQ")
        _check_bits_and_group(bits, group_size, "bits", "group_size")
        # v1 stores zero points minus one; "gptq_v2" stores them as is, "marlin"/"bitblas"
        # re-pack the weights for those CUDA kernels.
        fmt = str(_get(config, ("checkpoint_format", "format"), "gptq") or "gptq").lower()
        if fmt != "gptq":
            raise _problem("checkpoint_format", fmt, "checkpoint_format 'gptq'")
        if _get(config, ("is_marlin_format",), False):
            raise _problem("is_marlin_format", True, "the plain GPTQ layout")
        pack_dtype = str(_get(config, ("pack_dtype",), "int32") or "int32").replace("torch.", "")
        if pack_dtype != "int32":
            raise _problem("pack_dtype", pack_dtype, "int32 packing")
        if _get(config, ("lm_head",), False):
            raise _problem("lm_head", True, "an unquantized lm_head")
        if _get(config, ("dynamic",), None):
            raise _problem("dynamic", "<per-module overrides>",
                           "one bits/group_size setting for the whole model")
        in_block = _get(config, ("modules_in_block_to_quantize",), None) or []
        flat: list[str] = []
        for item in in_block:
            flat.extend(item if isinstance(item, list) else [item])
        return cls(bits=int(bits), group_size=int(group_size),
                   desc_act=bool(_get(config, ("desc_act",), False)),
                   sym=bool(_get(config, ("sym",), True)),
                   modules_in_block_to_quantize=flat)


@dataclass(frozen=True)
class AWQSettings:
    """AutoAWQ GEMM-format settings."""

    bits: int
    group_size: int
    modules_to_not_convert: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AWQSettings:
        bits_key = "w_bit" if "w_bit" in config else "bits"
        group_key = "q_group_size" if "q_group_size" in config else "group_size"
        bits = _require(config, ("w_bit", "bits"), "AWQ")
        group_size = _require(config, ("q_group_size", "group_size"), "AWQ")
        _check_bits_and_group(bits, group_size, bits_key, group_key)
        # AutoAWQ's GEMV / GEMV_fast / exllama / marlin versions pack the weights differently.
        version = str(_get(config, ("version",), "gemm") or "gemm").lower()
        if version != "gemm":
            raise _problem("version", version, "version 'gemm'")
        if not _get(config, ("zero_point",), True):
            raise _problem("zero_point", False, "zero_point=true (asymmetric AWQ)")
        skip = _get(config, ("modules_to_not_convert",), None) or []
        return cls(bits=int(bits), group_size=int(group_size),
                   modules_to_not_convert=[str(m) for m in skip])
