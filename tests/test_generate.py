"""End to end: vllm.LLM greedy generation through the plugin (CPU mode) equals HF
transformers greedy generation on the same weights.

Covers mixed batches of prompts of different lengths, every supported block size,
chunked prefill (a tiny token budget splits prompts over several steps) and prefix
caching (a second pass over shared-prefix prompts hits the cache).
"""

from __future__ import annotations

import gc
import random

import pytest

from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy

MAX_NEW_TOKENS = 32
# float32 on both sides: the reference and the plugin agree to ~1e-5 in logits, so greedy
# tokens may only differ at genuine near-ties (< TIE_MARGIN nats between HF's top-2).
TIE_MARGIN = 0.02
LOGPROB_TOL = 5e-3


def _prompts(vocab_size: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in lengths]


def _shared_prefix_prompts(vocab_size: int, prefix_len: int, suffix_lens: list[int]):
    rng = random.Random(1)
    prefix = [rng.randrange(3, vocab_size) for _ in range(prefix_len)]
    return [prefix + [rng.randrange(3, vocab_size) for _ in range(n)] for n in suffix_lens]


def _make_llm(model_dir, **kwargs):
    from vllm import LLM

    defaults = dict(model=str(model_dir), dtype="float32", max_model_len=1024,
                    max_num_seqs=16, seed=0, enable_prefix_caching=False)
    defaults.update(kwargs)
    return LLM(**defaults)


def _generate(llm, prompts, max_tokens=MAX_NEW_TOKENS, logprobs=1):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                            logprobs=logprobs)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        use_tqdm=False)
    return [o.outputs[0] for o in outs]


def _check_against_hf(model_dir, prompts, completions, tie_margin=TIE_MARGIN,
                      logprob_tol=LOGPROB_TOL):
    ref = hf_greedy(model_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)
    assert_greedy_close(ref, [list(c.token_ids) for c in completions], tie_margin=tie_margin)
    # Where the tokens agree, the chosen token's logprob must agree too.
    for r, c in zip(ref, completions, strict=False):
        for step, (hf_tok, tok) in enumerate(zip(r.output_ids, c.token_ids, strict=False)):
            if hf_tok != tok:
                break
            got = c.logprobs[step][tok].logprob
            assert abs(got - r.logprobs[step]) < logprob_tol, (step, got, r.logprobs[step])


def _shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


# Prompts of different lengths in one batch; some longer than one block of every size.
LENGTHS = [1, 3, 7, 15, 16, 17, 33, 64, 65, 130, 200]


@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_tiny_llama_matches_hf_for_every_block_size(tiny_llama_dir, block_size):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_llama_dir).vocab_size
    prompts = _prompts(vocab, LENGTHS, seed=block_size)
    llm = _make_llm(tiny_llama_dir, block_size=block_size)
    try:
        completions = _generate(llm, prompts)
    finally:
        _shutdown(llm)
    _check_against_hf(tiny_llama_dir, prompts, completions)


def test_tiny_llama_chunked_prefill_and_prefix_cache_match_hf(tiny_llama_dir):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_llama_dir).vocab_size
    # 24-token steps split every long prompt over several steps, mixed with decodes.
    prompts = _shared_prefix_prompts(vocab, prefix_len=100, suffix_lens=[1, 5, 20, 47])
    prompts += _prompts(vocab, [2, 9, 40, 90], seed=7)
    llm = _make_llm(tiny_llama_dir, block_size=16, enable_chunked_prefill=True,
                    max_num_batched_tokens=24, max_num_seqs=8, enable_prefix_caching=True,
                    disable_log_stats=False)
    try:
        first = _generate(llm, prompts)
        hits_before = _prefix_cache_hits(llm)
        second = _generate(llm, prompts)  # same prompts again: full-block prefix hits
        hits_after = _prefix_cache_hits(llm)
    finally:
        _shutdown(llm)
    assert hits_after > hits_before, "second pass did not hit the prefix cache"
    _check_against_hf(tiny_llama_dir, prompts, first)
    _check_against_hf(tiny_llama_dir, prompts, second)


def _prefix_cache_hits(llm) -> int:
    for metric in llm.get_metrics():
        if metric.name == "vllm:prefix_cache_hits":
            return int(metric.value)
    raise AssertionError("vllm:prefix_cache_hits metric missing")


def test_smollm2_matches_hf(smollm2_dir):
    """The real model: 8 prompts of different lengths in one batch, plain and with chunked
    prefill + prefix caching forced in the same engine (second pass hits the cache)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a small village by the sea, there lived an old fisherman who",
        "1, 2, 3, 4, 5,",
        "Water boils at a temperature of",
        "The three primary colors are",
        "Translate to French: I like apples. ->",
        "A list of the planets of the solar system, ordered by their distance from the sun: "
        "Mercury, Venus,",
    ]
    prompts = [tok(t).input_ids for t in texts]
    llm = _make_llm(smollm2_dir, block_size=32, enable_chunked_prefill=True,
                    max_num_batched_tokens=32, max_num_seqs=8, enable_prefix_caching=True,
                    max_model_len=512)
    try:
        first = _generate(llm, prompts)
        second = _generate(llm, prompts)
    finally:
        _shutdown(llm)
    # 30 layers of float32 kernels differing in summation order: allow near-ties of 0.05
    # nats and logprob drift of 2e-2.
    _check_against_hf(smollm2_dir, prompts, first, tie_margin=0.05, logprob_tol=2e-2)
    _check_against_hf(smollm2_dir, prompts, second, tie_margin=0.05, logprob_tol=2e-2)
