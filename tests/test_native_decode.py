"""CPU mode's native decode-attention kernel (vllm_xpu_plugin/kernels/native_decode.py):
its results against a plain-torch attention over the same pages, and its build: cached,
keyed by the compiler, and absent (IPEX's kernels serving) where no compiler works.

The backend-level checks (the kernel inside IPEXAttentionImpl, chosen by the setting) are
in tests/test_attention.py."""

from __future__ import annotations

import os
import re
import stat

import pytest
import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.kernels import attention as attention_kernels
from vllm_xpu_plugin.kernels import native_decode

pytestmark = pytest.mark.skipif(not device.is_cpu_mode(),
                                reason="CPU mode's own kernel (an Intel GPU runs IPEX's)")


def reference(query, key_cache, value_cache, block_table, seq_lens, scale):
    """Softmax attention per sequence over its pages, in float64, heads repeated for GQA."""
    out = []
    num_kv_heads, block_size, head_size = key_cache.shape[1:]
    group = query.shape[1] // num_kv_heads
    for i, length in enumerate(seq_lens.tolist()):
        blocks = block_table[i, : -(-length // block_size)].long()

        keys, values = (
            cache[blocks].permute(1, 0, 2, 3).reshape(num_kv_heads, -1, head_size)[:, :length]
            .double().repeat_interleave(group, 0) for cache in (key_cache, value_cache))
        scores = torch.einsum("hd,htd->ht", query[i].double(), keys) * scale
        out.append(torch.einsum("ht,htd->hd", scores.softmax(-1), values))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads,head_size,block_size", [
    ((9, 3), 64, 64), ((32, 8), 128, 16), ((4, 4), 256, 128), ((8, 1), 80, 32),
    ((16, 1), 48, 64), ((2, 2), 32, 16)])
def test_matches_attention_over_the_pages(dtype, heads, head_size, block_size):
    gen = torch.Generator().manual_seed(3)
    num_heads, num_kv_heads = heads
    # One token, block edges, and contexts over one, two and three of the kernel's
    # 256-token partitions (combined by a second pass).
    seq_lens = torch.tensor([1, 15, 16, 37, 256, 257, 600], dtype=torch.int32)
    blocks_per_seq = -(-600 // block_size) + 3  # wider than any sequence, as the runner's
    num_blocks = len(seq_lens) * blocks_per_seq
    shape = device.kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size)[1:]
    key_cache = torch.randn(*shape, generator=gen).to(dtype)
    value_cache = torch.randn(*shape, generator=gen).to(dtype)
    block_table = torch.randperm(num_blocks, generator=gen).to(torch.int32).view(
        len(seq_lens), -1)
    # The query as the model hands it: a strided view of the fused QKV projection; a
    # gain of 3 makes the softmax peaked, so errors in the max/sum bookkeeping show.
    qkv = torch.randn(len(seq_lens), num_heads + 2 * num_kv_heads, head_size,
                      generator=gen).to(dtype) * 3
    query = qkv[:, :num_heads]
    out = torch.full((len(seq_lens), num_heads, head_size), float("nan"), dtype=dtype)
    scale = head_size ** -0.5
    assert native_decode.supports(dtype, num_heads, num_kv_heads, head_size), (
        native_decode.unavailable_reason())
    native_decode.paged_attention_decode(out, query, key_cache, value_cache, scale,
                                         block_table, seq_lens)
    expected = reference(query, key_cache, value_cache, block_table, seq_lens, scale)
    # bf16: the output's own rounding (values up to ~3, 8 bits of mantissa).
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=tolerance)


def test_what_it_does_not_take():
    assert not native_decode.supports(torch.float16, 8, 2, 64)  # no fp16 path
    assert not native_decode.supports(torch.bfloat16, 8, 2, 72)  # not a multiple of 16
    assert not native_decode.supports(torch.bfloat16, 8, 2, 512)
    assert not native_decode.supports(torch.bfloat16, 32, 1, 64)  # 32 heads per KV head


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A process that has not built the kernel yet, with its own cache directory."""
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "cache"))
    native_decode._library.cache_clear()
    native_decode._head_sizes.cache_clear()
    yield tmp_path
    native_decode._library.cache_clear()
    native_decode._head_sizes.cache_clear()


def wrapper_compiler(path, real, log, fail=False):
    """A CXX that logs each call, then runs the real compiler (or fails like one)."""
    body = ('echo "error: this compiler is broken" >&2; exit 1' if fail
            else f'exec "{real}" "$@"')
    path.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_built_once_then_loaded_from_the_cache(fresh_build, monkeypatch):
    real = native_decode._compiler()
    assert real, "no C++ compiler here: the next test covers that case"
    log = fresh_build / "calls"
    monkeypatch.setenv("CXX", wrapper_compiler(fresh_build / "cxx", real, log))
    first = native_decode._build(native_decode._compiler())
    compiles = [c for c in log.read_text().splitlines() if "-o " in c]
    assert len(compiles) == 1 and first.exists()
    assert first.parent == fresh_build / "cache" / "xpu_plugin_native"
    assert not [p for p in first.parent.iterdir() if p != first]  # no partial file left
    assert native_decode._build(native_decode._compiler()) == first
    assert [c for c in log.read_text().splitlines() if "-o " in c] == compiles
    # Another compiler is another build.
    monkeypatch.setenv("CXX", wrapper_compiler(fresh_build / "cxx2", real, log))
    assert native_decode._build(native_decode._compiler()) != first


@pytest.mark.parametrize("compiler", ["broken", "none"])
def test_without_a_working_compiler_ipex_kernels_serve(fresh_build, monkeypatch, compiler):
    if compiler == "broken":
        monkeypatch.setenv("CXX", wrapper_compiler(fresh_build / "cxx", "", fresh_build / "log",
                                                   fail=True))
        monkeypatch.setenv("PATH", str(fresh_build))  # only the broken one
        why = "cxx failed: error: this compiler is broken"
    else:
        monkeypatch.delenv("CXX", raising=False)
        monkeypatch.setenv("PATH", str(fresh_build / "empty"))
        why = "no C++ compiler"
    assert not native_decode.supports(torch.bfloat16, 8, 2, 64)
    assert why in native_decode.unavailable_reason()
    with pytest.raises(native_decode.NativeKernelUnavailable, match=re.escape(why)):
        native_decode.paged_attention_decode(*[None] * 7)
    # The load-time choice measures IPEX's two kernels only, and a fixed "native" falls
    # back to the single-query kernel instead of failing.
    monkeypatch.setattr(attention_kernels, "_decode_kernel_by_config", {})
    monkeypatch.delenv("VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION", raising=False)
    assert set(attention_kernels._measure_decode_kernels(8, 2, 64, torch.bfloat16, 16)) == {
        "varlen", "single_query"}
    monkeypatch.setenv("VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION", "native")
    assert attention_kernels.decode_kernel(8, 2, 64, torch.bfloat16, 16) == (
        "single_query", True)


def test_fixed_native_setting_on_a_configuration_it_does_not_take(monkeypatch):
    monkeypatch.setenv("VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION", "native")
    assert attention_kernels.decode_kernel(8, 2, 64, torch.float16, 16) == (
        "single_query", True)
    assert attention_kernels.decode_kernel(8, 2, 64, torch.bfloat16, 16) == ("native", True)


def test_the_source_ships_with_the_package():
    # pyproject's package-data puts it in the wheel; the build reads it from there.
    assert native_decode.SOURCE.is_file()
    assert os.path.dirname(native_decode.SOURCE) == os.path.dirname(native_decode.__file__)
