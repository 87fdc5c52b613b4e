"""Resident weight memory of a GPTQ/AWQ checkpoint loaded by the plugin vs its size on disk.

Loads the model in this process with vLLM's model loader on the plugin's platform (CPU mode
here; the same code path on an Intel GPU), then prints side by side:

- checkpoint bytes: the safetensors tensors, split into packed int4 linears (qweight,
  qzeros, scales, g_idx) and the rest (embeddings, lm_head, norms, biases);
- resident bytes by tensor accounting: every parameter/buffer of the loaded model (shared
  storages counted once) plus what the int4 GEMM holds for each int4 linear
  (vllm_xpu_plugin/kernels/int4_gemm.py: its re-packed int4 weight, its scales and zero
  points, and the act-order channel order; which kernel, by count);
- the process RSS delta over a (second, warm) load, after returning freed heap to the OS;
  the first load's delta, which also holds imported code and IPEX initialisation, is
  printed below it;
- the ratios, against the target resident <= 1.05 x checkpoint bytes.

Usage (OMP threads are set explicitly: the machine is shared)::

    VLLM_XPU_PLUGIN_DEVICE=cpu python benchmarks/quant_memory.py --model DIR
    VLLM_XPU_PLUGIN_DEVICE=cpu python benchmarks/quant_memory.py --smollm2 gptq --group-size 64

``--smollm2 FORMAT`` builds the RTN SmolLM2-135M checkpoint with tests/fixtures/quantize.py
first (run from the repo root).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

TARGET_RATIO = 1.05
PACKED_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")


def checkpoint_bytes(model_dir: Path) -> dict[str, int]:
    """Tensor bytes in the safetensors files, from their headers (nothing is loaded)."""
    packed = other = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if name.endswith(PACKED_SUFFIXES):
                packed += end - start
            else:
                other += end - start
    return {"packed_linears": packed, "other": other, "total": packed + other}


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _trim_heap() -> None:
    """Return freed heap pages to the OS so RSS shows live memory, not allocator caches
    (loading frees many temporaries: fp32 conversions, IPEX's transposed copies)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def resident_bytes(model) -> dict[str, int]:
    """Bytes held by the loaded model: unique parameter/buffer storages + int4 kernel data."""
    from vllm_xpu_plugin.quantization.int4_linear import resident_bytes as int4_bytes

    seen: set[int] = set()
    tensors = 0
    for t in list(model.parameters()) + list(model.buffers()):
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        tensors += storage.nbytes()
    ipex = {"weight": 0, "scales": 0, "zeros": 0, "channel_order": 0}
    kernels: dict[str, int] = {}
    leftovers = []
    for name, module in model.named_modules():
        for k, v in int4_bytes(module).items():
            ipex[k] += v
        kernel = getattr(module, "int4_linear", None)
        if kernel is not None:
            kernels[type(kernel).__name__] = kernels.get(type(kernel).__name__, 0) + 1
        leftovers += [f"{name}.{p}" for p in ("qweight", "qzeros") if p in module._parameters]
    if leftovers:
        raise AssertionError(f"checkpoint-layout tensors still held: {leftovers[:4]}")
    return {"params_buffers": tensors, "int4_weight": ipex["weight"],
            "int4_scales": ipex["scales"], "int4_zeros": ipex["zeros"],
            "int4_channel_order": ipex["channel_order"], "kernels": kernels,
            "total": tensors + sum(ipex.values())}


def load_with_plugin(model_dir: Path, dtype: str):
    """vLLM's model loader in this process, on the plugin's platform.

    The model is loaded twice: the first (cold) load also imports the model code and
    initialises IPEX/oneDNN, which RSS counts too; the second (warm) load's RSS delta is
    what the weights themselves occupy. Returns (model, cold delta, warm delta, method).
    """
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    vllm_config = EngineArgs(model=str(model_dir), dtype=dtype, max_model_len=512,
                             enforce_eager=True).create_engine_config()
    deltas = []
    with set_current_vllm_config(vllm_config), tempfile.NamedTemporaryFile() as f:
        parallel_state.init_distributed_environment(
            world_size=1, rank=0, local_rank=0, distributed_init_method=f"file://{f.name}",
            backend="gloo")
        parallel_state.initialize_model_parallel(1, 1)
        model = None
        for _ in range(2):
            del model
            # attention layers register by name; a second model must start from none
            vllm_config.compilation_config.static_forward_context.clear()
            _trim_heap()
            before = _rss()
            model = get_model(vllm_config=vllm_config)
            _trim_heap()
            deltas.append(_rss() - before)
    return model, deltas[0], deltas[1], vllm_config.model_config.quantization


def _mib(n: float) -> str:
    return f"{n / 2**20:9.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="a GPTQ or AWQ checkpoint directory")
    src.add_argument("--smollm2", choices=("gptq", "awq"),
                     help="build and measure the RTN SmolLM2-135M checkpoint of this format")
    ap.add_argument("--group-size", type=int, default=64, help="with --smollm2")
    ap.add_argument("--asym", action="store_true", help="with --smollm2 gptq")
    ap.add_argument("--desc-act", action="store_true", help="with --smollm2 gptq")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2, help="OMP/torch threads")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)

    model_dir = args.model
    if args.smollm2:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.fixtures.quantize import QuantSpec, build_quantized
        from tests.fixtures.smollm2 import build_smollm2

        spec = QuantSpec(args.smollm2, args.group_size, sym=not args.asym,
                         desc_act=args.desc_act)
        model_dir = build_quantized(build_smollm2(), spec)
    model_dir = Path(model_dir)

    ckpt = checkpoint_bytes(model_dir)
    model, cold_delta, rss_delta, quantization = load_with_plugin(model_dir, args.dtype)
    held = resident_bytes(model)
    ipex_linears = (held["int4_weight"] + held["int4_scales"] + held["int4_zeros"]
                    + held["int4_channel_order"])
    tensor_ratio = held["total"] / ckpt["total"]
    rss_ratio = rss_delta / ckpt["total"]
    linear_ratio = ipex_linears / ckpt["packed_linears"] if ckpt["packed_linears"] else 0.0

    import platform as host

    print(f"model: {model_dir}  (quantization={quantization}, dtype={args.dtype})")
    print(f"device: {os.environ.get('VLLM_XPU_PLUGIN_DEVICE') or 'xpu'}, host {host.node()}, "
          f"int4 kernels: {held['kernels']}")
    print(f"{'':34}{'checkpoint':>14}{'resident':>14}{'ratio':>9}")
    print(f"{'int4 linears (packed + scales/zeros)':34}{_mib(ckpt['packed_linears']):>14}"
          f"{_mib(ipex_linears):>14}{linear_ratio:9.3f}")
    print(f"{'  of which int4 weight':34}{'':>14}{_mib(held['int4_weight']):>14}")
    print(f"{'  of which scales':34}{'':>14}{_mib(held['int4_scales']):>14}")
    print(f"{'  of which zero points':34}{'':>14}{_mib(held['int4_zeros']):>14}")
    print(f"{'  of which act-order channel order':34}{'':>14}"
          f"{_mib(held['int4_channel_order']):>14}")
    print(f"{'other tensors (embeddings, norms)':34}{_mib(ckpt['other']):>14}"
          f"{_mib(held['params_buffers']):>14}")
    print(f"{'total, tensor accounting':34}{_mib(ckpt['total']):>14}{_mib(held['total']):>14}"
          f"{tensor_ratio:9.3f}")
    print(f"{'total, process RSS delta (warm)':34}{_mib(ckpt['total']):>14}"
          f"{_mib(rss_delta):>14}{rss_ratio:9.3f}")
    print(f"{'  first load (+ imports, IPEX init)':34}{'':>14}{_mib(cold_delta):>14}"
          f"{cold_delta / ckpt['total']:9.3f}")
    verdict = "OK" if max(tensor_ratio, rss_ratio) <= TARGET_RATIO else "ABOVE TARGET"
    print(f"target resident <= {TARGET_RATIO:.2f} x checkpoint: tensor {tensor_ratio:.3f}, "
          f"RSS {rss_ratio:.3f} -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
