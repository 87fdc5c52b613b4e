"""MoE tensor and expert parallel in CPU mode (spawned workers, gloo): TP=2, and TP=2
with --enable-expert-parallel (each rank holds 4 of the 8 experts), give the same greedy
tokens as one rank, with logprobs within float32 all-reduce noise.

Marked slow (each 2-rank engine is a main process plus two spawned workers):
`make test-slow TESTS=tests/test_moe_parallel.py`.
"""

from __future__ import annotations

import pytest

from tests.test_moe import _checkpoint_dir, _llm, _prompts, _shutdown

MAX_TOKENS = 16
LOGPROB_TOL = 2e-3


def _local_expert_counts(model) -> list[int]:
    # Module level: apply_model pickles it to the workers.
    return sorted({m.local_num_experts for m in model.modules()
                   if hasattr(m, "local_num_experts")})


def _run(model_dir, prompts, **kwargs):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = _llm(model_dir, **kwargs)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                                logprobs=1)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                            use_tqdm=False)
        local = llm.apply_model(_local_expert_counts)
        return [o.outputs[0] for o in outs], local
    finally:
        _shutdown(llm)


def _assert_same(one, two):
    for a, b in zip(one, two, strict=True):
        assert list(a.token_ids) == list(b.token_ids)
        for step, tok in enumerate(a.token_ids):
            assert abs(a.logprobs[step][tok].logprob - b.logprobs[step][tok].logprob) \
                < LOGPROB_TOL, step


@pytest.fixture(scope="module")
def single_rank():
    from tests.fixtures.tiny_models import build_tiny_model

    model_dir = _checkpoint_dir("qwen3-moe", build_tiny_model("qwen3-moe"))
    prompts = _prompts(768, seed=5)
    outs, local = _run(model_dir, prompts)
    assert local == [[8]]
    return model_dir, prompts, outs


@pytest.mark.slow
def test_moe_tp2_equals_tp1(single_rank):
    model_dir, prompts, tp1 = single_rank
    tp2, local = _run(model_dir, prompts, tensor_parallel_size=2)
    assert local == [[8], [8]]  # TP: every rank holds every expert (sliced)
    _assert_same(tp1, tp2)


@pytest.mark.slow
def test_moe_expert_parallel_2_ranks_equals_1(single_rank):
    model_dir, prompts, one = single_rank
    ep2, local = _run(model_dir, prompts, tensor_parallel_size=2,
                      enable_expert_parallel=True)
    assert local == [[4], [4]]  # EP: each rank holds half of the experts
    _assert_same(one, ep2)
