"""CPU mode: the plugin's own decode-attention kernel (cpu_decode_attention.cpp), compiled
on this machine at first use and called through ctypes.

Why: IPEX 2.8's CPU decode kernels are bound by their own work per KV element, far below
memory bandwidth (docs/performance.md, "Decode attention"). Measured 2026-12-07 (AMD EPYC,
AVX512-BF16, 2 threads, `make bench-kernels`): 78-87 % of the STREAM copy at SmolLM2's
heads and 58-63 % at Llama-8B's, against 33-45 % for IPEX's single-query kernel; the
engine 1.06-1.14x faster end to end. It is one of the candidates kernels/attention.py
measures at load, so it is used only where it is measured faster.

It is built with the system C++ compiler (``$CXX``, else ``g++`` / ``c++``) as
``-O3 -march=native -fopenmp``, with no torch headers (about 8 s on 2 cores), into
``$VLLM_CACHE_ROOT/xpu_plugin_native/`` under a name hashed from the source, the flags,
the compiler's version and this CPU's flags, so a cache shared between machines or
compilers never loads a foreign build. Without a compiler, or if the build fails, the
kernel is unavailable (one log line says why) and the IPEX kernels serve every decode.
Its OpenMP region is libgomp's, the one torch and IPEX already loaded (same soname), so it
shares their threads and wait policy.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from vllm_xpu_plugin import host_cpu
from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)

SOURCE = Path(__file__).with_name("cpu_decode_attention.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno",
         "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math")
_DTYPES = {torch.bfloat16: 0, torch.float32: 1}
# Tokens per (sequence, KV head) task: a multiple of every supported block size (16-128);
# 256 measured fastest of 128/256/512 at SmolLM2's heads, 16 x 300 tokens (2026-12-03).
PART_TOKENS = 256

_I64, _INT, _PTR, _F32 = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float


class NativeKernelUnavailable(RuntimeError):
    pass


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    from vllm import envs as vllm_envs

    return Path(vllm_envs.VLLM_CACHE_ROOT) / "xpu_plugin_native"


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([
        source, " ".join(FLAGS).encode(), compiler.encode(), version.encode(),
        " ".join(sorted(host_cpu.cpu_flags())).encode()])).hexdigest()[:20]
    target = _cache_dir() / f"cpu_decode_attention-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: engines starting together (TP workers)
    # never load a half-written library.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", partial],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise NativeKernelUnavailable(f"{Path(compiler).name} failed: {last}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded kernel library, "") or (None, why it is unavailable); built once per
    process, logged once."""
    compiler = _compiler()
    if compiler is None:
        why = "no C++ compiler ($CXX, g++ or c++) on PATH"
    else:
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
        except (OSError, subprocess.SubprocessError, NativeKernelUnavailable) as exc:
            why = str(exc)
        else:
            lib.xpu_plugin_decode_attention.restype = _INT
            lib.xpu_plugin_decode_attention.argtypes = [
                _INT, _PTR, _I64, _I64, _PTR, _I64, _I64, _PTR, _PTR, _I64, _I64, _I64,
                _PTR, _I64, _PTR, _INT, _INT, _INT, _INT, _INT, _INT, _INT, _F32]
            return lib, ""
    logger.info("CPU mode: the plugin's native decode-attention kernel is unavailable (%s); "
                "decodes use IPEX's kernels", why)
    return None, why


@functools.cache
def _head_sizes(lib: ctypes.CDLL) -> frozenset:
    buf = (_INT * 64)()
    n = lib.xpu_plugin_decode_head_sizes(buf, 64)
    return frozenset(buf[:n])


def supports(dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_size: int) -> bool:
    """Whether this configuration can run on the native kernel (building it if needed).
    Full attention only: callers check window, soft cap and KV-cache dtype."""
    if dtype not in _DTYPES or num_heads % num_kv_heads:
        return False
    lib, _ = _library()
    return (lib is not None and head_size in _head_sizes(lib)
            and num_heads // num_kv_heads <= lib.xpu_plugin_max_group())


def unavailable_reason() -> str:
    return _library()[1]


def paged_attention_decode(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    scale: float,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
) -> None:
    """One query per sequence (row i of query/out is sequence i's newest token) over its
    ``seq_lens[i]`` cached tokens; caches [num_blocks, num_kv_heads, block_size, head_size]
    (CPU mode's HND layout); block_table and seq_lens int32. query/out may be strided
    views with contiguous heads. Only for configurations :func:`supports` accepts."""
    lib, why = _library()
    if lib is None:
        raise NativeKernelUnavailable(why)
    num_seqs, num_heads, head_size = query.shape
    _, num_kv_heads, block_size, _ = key_cache.shape
    for name, t in (("query", query), ("out", out), ("key_cache", key_cache),
                    ("value_cache", value_cache)):
        if t.stride(-1) != 1 or t.dtype != query.dtype:
            raise ValueError(f"native decode attention: {name} must be {query.dtype} "
                             "with a contiguous last dimension")
    if key_cache.stride() != value_cache.stride():
        raise ValueError("native decode attention: key and value caches differ in layout")
    if block_table.dtype != torch.int32 or block_table.stride(-1) != 1:
        block_table = block_table.to(torch.int32).contiguous()
    if seq_lens.dtype != torch.int32 or not seq_lens.is_contiguous():
        seq_lens = seq_lens.to(torch.int32).contiguous()
    status = lib.xpu_plugin_decode_attention(
        _DTYPES[query.dtype], out.data_ptr(), out.stride(0), out.stride(1),
        query.data_ptr(), query.stride(0), query.stride(1), key_cache.data_ptr(),
        value_cache.data_ptr(), key_cache.stride(0), key_cache.stride(1),
        key_cache.stride(2), block_table.data_ptr(), block_table.stride(0),
        seq_lens.data_ptr(), num_seqs, num_heads, num_kv_heads, head_size, block_size,
        PART_TOKENS, torch.get_num_threads(), scale)
    if status != 0:
        raise ValueError(f"native decode attention: unsupported configuration "
                         f"({query.dtype}, {num_heads}/{num_kv_heads} heads x {head_size})")
