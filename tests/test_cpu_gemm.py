"""CPU mode's prepacked GEMM (gemm.cpu_pack_linear_weight / gemm.cpu_linear) against a
float64 F.linear on the plain weight, for row counts on both sides of every switch point
the load-time measurement can choose and the shapes of real models (odd row counts, a
vocabulary-sized LM head); and the switch-point choice itself."""

from __future__ import annotations

import pytest
import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.kernels import gemm

pytestmark = pytest.mark.skipif(not device.is_cpu_mode(), reason="CPU-mode GEMM path")

# (out_features, in_features): SmolLM2-like projections, a small LM head, the smallest
# shape TPP takes.
SHAPES = [(192, 576), (1536, 576), (4096, 576), (32, 64)]
ROWS = [1, 2, 7, 16, 17, 63, 64, 65, 127, 128, 129]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}  # relative to max |reference|


@pytest.fixture
def switch_at(monkeypatch):
    """Fix the switch point for every shape (what VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS does)."""
    def fix(rows):
        monkeypatch.setenv("VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS", str(rows))
        monkeypatch.setattr(gemm, "_max_rows_by_shape", {})
    yield fix


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{o}x{i}" for o, i in SHAPES])
def test_prepacked_linear_matches_reference(dtype, shape, switch_at):
    gen = torch.Generator().manual_seed(0)
    out_features, in_features = shape
    weight = (torch.randn(out_features, in_features, generator=gen) * 0.05).to(dtype)
    bias = torch.randn(out_features, generator=gen).to(dtype)
    packed = gemm.cpu_pack_linear_weight(weight)
    assert packed is not None
    switch_at(gemm.CPU_PACKED_GEMM_MAX_ROWS)
    assert gemm.choose_max_rows(weight, packed) == 128
    plain_before = weight.clone()
    for rows in ROWS:
        x = torch.randn(rows, in_features, generator=gen).to(dtype)
        for b in (None, bias):
            ref = torch.nn.functional.linear(
                x.double(), weight.double(), None if b is None else b.double())
            got = gemm.cpu_linear(x, weight, b, packed)
            assert got.shape == ref.shape and got.dtype == dtype
            err = (got.double() - ref).abs().max() / ref.abs().max()
            assert err <= TOLERANCE[dtype], (rows, b is not None, float(err))
    assert torch.equal(weight, plain_before)  # packing copies; the plain weight is kept


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pretend the host CPU has (or lacks) AMX: the block rule reads device.cpu_flags()."""
    def pretend(kind):
        flags = {"amx": {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"},
                 "no-amx": {"avx2", "avx512f", "avx512_bf16"},
                 "avx2": {"avx2", "fma"}}[kind]
        monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags))
    yield pretend


@pytest.mark.parametrize("cpu,setting,shape,block", [
    # AVX512-BF16 without AMX (64-wide blocks measured faster there): the widest that divides.
    ("no-amx", "auto", (1536, 576), 64), ("no-amx", "auto", (96, 64), 32),
    ("no-amx", "auto", (48, 64), 16),
    # With AMX (never measured wider) and AVX2-only (16 measured faster): IPEX's own 16.
    ("amx", "auto", (1536, 576), 16), ("amx", "auto", (96, 64), 16),
    ("avx2", "auto", (1536, 576), 16), ("avx2", "32", (1536, 576), 32),
    # A setting wins on either kind; a width it does not divide falls back to 16.
    ("no-amx", "16", (1536, 576), 16), ("no-amx", "32", (1536, 576), 32),
    ("no-amx", "64", (96, 64), 16), ("amx", "64", (1536, 576), 64),
])
def test_every_output_block_width_matches_reference(monkeypatch, switch_at, cpu_kind, cpu,
                                                    setting, shape, block):
    """The block width the rule gives on each CPU kind (or the one set), at decode and
    prefill row counts, with and without bias, against float64."""
    cpu_kind(cpu)
    monkeypatch.setenv("VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK", setting)
    gen = torch.Generator().manual_seed(2)
    out_features, in_features = shape
    weight = (torch.randn(out_features, in_features, generator=gen) * 0.05).bfloat16()
    bias = torch.randn(out_features, generator=gen).bfloat16()
    packed = gemm.cpu_pack_linear_weight(weight)
    assert packed.shape[0] * packed.shape[3] == out_features and packed.shape[3] == block
    switch_at(2048)
    for rows in (1, 16, 17, 300):
        x = torch.randn(rows, in_features, generator=gen).bfloat16()
        for b in (None, bias):
            ref = torch.nn.functional.linear(
                x.double(), weight.double(), None if b is None else b.double())
            got = gemm.cpu_linear(x, weight, b, packed)
            err = (got.double() - ref).abs().max() / ref.abs().max()
            assert err <= TOLERANCE[torch.bfloat16], (rows, b is not None, float(err))


def test_switch_point_measurement_slices_wide_blocks(monkeypatch, cpu_kind):
    """The load-time measurement slices the blocked weight by whole blocks of any width."""
    cpu_kind("no-amx")
    monkeypatch.delenv("VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS", raising=False)
    monkeypatch.delenv("VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK", raising=False)
    weight = (torch.randn(1088, 64) * 0.05).bfloat16()  # 1088 = 17 x 64: slice of 1024
    packed = gemm.cpu_pack_linear_weight(weight)
    assert packed.shape[3] == 64
    rows, timings = gemm.measure_max_rows(weight, packed)
    assert rows in (gemm.ALWAYS_PACKED_ROWS, *gemm.TUNED_ROWS) and timings


def test_cpu_flags_are_the_first_cpus_flags_line():
    """device.cpu_flags() against a plain read of /proc/cpuinfo's first flags line."""
    text = open("/proc/cpuinfo").read()  # CPU mode runs on Linux x86-64 only
    first = next(line for line in text.splitlines() if line.startswith("flags"))
    assert device.cpu_flags() == frozenset(first.split(":", 1)[1].split())
    assert device.cpu_has_amx() == (" amx_bf16" in first)


def test_bad_block_setting_is_one_clear_line(monkeypatch):
    from vllm_xpu_plugin import envs

    monkeypatch.setenv("VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK", "48")
    with pytest.raises(ValueError, match="VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK='48' must be"):
        _ = envs.VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK


def test_shapes_tpp_cannot_take_are_left_to_torch():
    assert gemm.cpu_pack_linear_weight(torch.randn(100, 64)) is None  # out % 16
    assert gemm.cpu_pack_linear_weight(torch.randn(64, 100)) is None  # in % 64
    assert gemm.cpu_pack_linear_weight(torch.randn(64, 64).half()) is None


@pytest.mark.parametrize("switch", [0, 2048])
def test_both_gemms_match_reference_at_every_row_count_the_switch_can_pick(switch, switch_at):
    """Switch 0: every call on torch's GEMM; 2048: every call on the prepacked one -- at
    the row counts around each measured switch point (64 ... 1024)."""
    gen = torch.Generator().manual_seed(1)
    weight = (torch.randn(1536, 576, generator=gen) * 0.05).bfloat16()
    packed = gemm.cpu_pack_linear_weight(weight)
    switch_at(switch)
    assert gemm.choose_max_rows(weight, packed) == switch
    for rows in (255, 256, 257, 511, 512, 513, 1024, 1025):
        x = torch.randn(rows, 576, generator=gen).bfloat16()
        ref = torch.nn.functional.linear(x.double(), weight.double())
        got = gemm.cpu_linear(x, weight, None, packed)
        err = (got.double() - ref).abs().max() / ref.abs().max()
        assert err <= TOLERANCE[torch.bfloat16], (rows, float(err))


def test_switch_point_is_the_last_measured_row_count_before_torch_wins():
    assert gemm.decide_max_rows([(128, 1.0, 2.0), (256, 1.0, 1.5), (512, 2.0, 1.0)]) == 256
    assert gemm.decide_max_rows([(128, 2.0, 1.0)]) == gemm.ALWAYS_PACKED_ROWS
    assert gemm.decide_max_rows([(r, 1.0, 2.0) for r in gemm.TUNED_ROWS]) == 1024
    # a loss ends the climb even if a later row count would win again
    assert gemm.decide_max_rows([(128, 1.0, 2.0), (256, 3.0, 2.0), (512, 1.0, 2.0)]) == 128


def test_measured_switch_point_is_one_of_the_measured_row_counts(monkeypatch):
    monkeypatch.delenv("VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS", raising=False)
    monkeypatch.setattr(gemm, "_max_rows_by_shape", {})
    weight = (torch.randn(2048, 576) * 0.05).bfloat16()  # sliced to 1024 outputs to measure
    packed = gemm.cpu_pack_linear_weight(weight)
    rows, timings = gemm.measure_max_rows(weight, packed)
    assert rows in (gemm.ALWAYS_PACKED_ROWS, *gemm.TUNED_ROWS)
    assert timings and all(t > 0 and o > 0 for _, t, o in timings)
    assert [r for r, _, _ in timings] == list(gemm.TUNED_ROWS[:len(timings)])
    chosen = gemm.choose_max_rows(weight, packed)  # measured once per shape, then cached
    assert gemm.chosen_max_rows() == {(2048, 576, torch.bfloat16): chosen}
    assert gemm.packed_gemm_max_rows(weight) == chosen


@pytest.mark.parametrize("raw", ["-1", "many", "1.5"])
def test_bad_switch_setting_is_one_clear_line(monkeypatch, raw):
    from vllm_xpu_plugin import envs

    monkeypatch.setenv("VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS", raw)
    with pytest.raises(ValueError, match="VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS=.* must be 'auto'"):
        _ = envs.VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS
