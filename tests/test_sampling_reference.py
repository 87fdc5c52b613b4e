"""End to end in float16, and top-k / top-p / stop strings checked against an independent
reference: HF transformers' float32 logits on the same weights (teacher-forced on the
plugin's own output) and plain Python string search. One fp16 engine for the module."""

from __future__ import annotations

import gc
import random

import pytest
import torch

from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy, load_hf_model

PROMPT_LENS = (7, 19, 33)
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def fp16_llm(tiny_llama_dir):
    from vllm import LLM

    llm = LLM(model=str(tiny_llama_dir), dtype="float16", max_model_len=512, max_num_seqs=8,
              seed=0, enable_prefix_caching=False)
    yield llm
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def hf_model(tiny_llama_dir):
    return load_hf_model(tiny_llama_dir, "float32")


def _prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in PROMPT_LENS]


def _run(llm, prompts, **params):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sp = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, seed=1234, **params)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp,
                        use_tqdm=False)
    return [o.outputs[0] for o in outs]


def _hf_logits(model, prompt, completion) -> torch.Tensor:
    """fp32 logits predicting each completion token [len(completion), vocab]."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)]


def test_fp16_greedy_matches_hf(fp16_llm, tiny_llama_dir, hf_model):
    prompts = _prompts(hf_model.config.vocab_size)
    got = [list(c.token_ids) for c in _run(fp16_llm, prompts, temperature=0.0)]
    ref = hf_greedy(tiny_llama_dir, prompts, MAX_TOKENS, ignore_eos=True)
    # fp16 compute vs fp32 reference: tokens may differ only at near-ties.
    assert_greedy_close(ref, got, tie_margin=0.1)


def _ranks(model, prompts, outs, temperature):
    ranks, nucleus_mass = [], []
    for prompt, out in zip(prompts, outs, strict=True):
        tokens = list(out.token_ids)
        logits = _hf_logits(model, prompt, tokens) / temperature
        for row, tok in zip(logits, tokens, strict=True):
            ranks.append(int((row > row[tok] + 0.05).sum()))  # 0.05: fp16 vs fp32 slack
            probs = row.softmax(-1)
            nucleus_mass.append(float(probs[probs > probs[tok] * 1.05].sum()))
    return ranks, nucleus_mass


def test_top_k_samples_only_the_top_k(fp16_llm, hf_model):
    prompts = _prompts(hf_model.config.vocab_size)
    ranks, _ = _ranks(hf_model, prompts, _run(fp16_llm, prompts, temperature=3.0, top_k=3), 3.0)
    assert max(ranks) < 3, ranks
    free, _ = _ranks(hf_model, prompts, _run(fp16_llm, prompts, temperature=3.0), 3.0)
    assert max(free) >= 3, "without top-k the test could not fail"


def test_top_p_samples_only_the_nucleus(fp16_llm, hf_model):
    prompts = _prompts(hf_model.config.vocab_size)
    _, mass = _ranks(hf_model, prompts, _run(fp16_llm, prompts, temperature=3.0, top_p=0.3), 3.0)
    # a token is in the nucleus when the tokens more probable than it hold < top_p
    assert max(mass) < 0.3 + 0.02, mass
    _, free = _ranks(hf_model, prompts, _run(fp16_llm, prompts, temperature=3.0), 3.0)
    assert max(free) >= 0.32, "without top-p the test could not fail"


def test_stop_string_truncates_where_python_finds_it(fp16_llm, hf_model, tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    prompts = _prompts(hf_model.config.vocab_size)[:1]
    ref_tokens = hf_greedy(tiny_llama_dir, prompts, MAX_TOKENS, ignore_eos=True)
    ref_tokens = ref_tokens[0].output_ids
    text = tok.decode(list(ref_tokens), skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text
    expected = text[: text.find(stop)]
    got = _run(fp16_llm, prompts, temperature=0.0, stop=[stop])[0]
    assert got.text == expected and got.finish_reason == "stop", (got.text, expected)
