"""The plugin's sampler (vllm_xpu_plugin/sample): the greedy pick against torch's argmax.

Reference: ``torch.argmax`` (the op vLLM's Sampler.greedy_sample uses), on logits built
to hit its rules: first maximal index on ties, NaN counts as the maximum, -inf rows.
"""

from __future__ import annotations

import pytest
import torch

from vllm_xpu_plugin.sample import XPUPluginSampler


def _logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rows, vocab", [(1, 7), (16, 49152), (5, 151936)])
def test_greedy_sample_matches_torch_argmax(rows, vocab):
    logits = _logits(rows, vocab, seed=rows)
    got = XPUPluginSampler().greedy_sample(logits)
    assert got.dtype == torch.int64 and got.shape == (rows,)
    assert torch.equal(got, logits.argmax(dim=-1))


def test_greedy_sample_ties_nan_inf():
    logits = _logits(4, 1000, seed=3)
    logits[0, [10, 500, 999]] = 100.0  # tie: the first index wins
    logits[1, 777] = float("nan")  # NaN is the maximum for torch.argmax
    logits[2] = float("-inf")  # all -inf: index 0
    logits[3, [3, 4]] = float("inf")
    expected = logits.argmax(dim=-1)
    assert expected.tolist() == [10, 777, 0, 3]  # the reference does what we claim
    assert torch.equal(XPUPluginSampler().greedy_sample(logits), expected)


def test_greedy_sample_strided_and_half_precision_logits():
    base = _logits(8, 2048, seed=4)
    strided = base[:, ::2]  # not contiguous
    assert torch.equal(XPUPluginSampler().greedy_sample(strided), strided.argmax(dim=-1))
    half = base.to(torch.bfloat16)  # not the numpy path: torch's argmax
    assert torch.equal(XPUPluginSampler().greedy_sample(half), half.argmax(dim=-1))
