"""CPU mode's prepacked GEMM (gemm.cpu_pack_linear_weight / gemm.cpu_linear) against a
float64 F.linear on the plain weight, for every row count around the switch to torch's
GEMM and the shapes of real models (odd row counts, a vocabulary-sized LM head)."""

from __future__ import annotations

import pytest
import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.kernels import gemm

pytestmark = pytest.mark.skipif(not device.is_cpu_mode(), reason="CPU-mode GEMM path")

# (out_features, in_features): SmolLM2-like projections, a small LM head, the smallest
# shape TPP takes.
SHAPES = [(192, 576), (1536, 576), (4096, 576), (32, 64)]
ROWS = [1, 2, 7, 16, 17, 63, 64, 65, 127, 128, 129]  # the switch is at 128 rows
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}  # relative to max |reference|


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{o}x{i}" for o, i in SHAPES])
def test_prepacked_linear_matches_reference(dtype, shape):
    gen = torch.Generator().manual_seed(0)
    out_features, in_features = shape
    weight = (torch.randn(out_features, in_features, generator=gen) * 0.05).to(dtype)
    bias = torch.randn(out_features, generator=gen).to(dtype)
    packed = gemm.cpu_pack_linear_weight(weight)
    assert packed is not None
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


def test_shapes_tpp_cannot_take_are_left_to_torch():
    assert gemm.cpu_pack_linear_weight(torch.randn(100, 64)) is None  # out % 16
    assert gemm.cpu_pack_linear_weight(torch.randn(64, 100)) is None  # in % 64
    assert gemm.cpu_pack_linear_weight(torch.randn(64, 64).half()) is None
