"""The test models and the HF reference helpers do what the other tests rely on.

Independent references: the tiny model's greedy run is checked against transformers' own
``generate()``, its logprobs against a teacher-forced forward pass, and the tokenizers
against their own decode.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures import tiny_models
from tests.fixtures.hf_reference import (
    HFGeneration,
    assert_greedy_close,
    first_divergence,
    hf_greedy,
    hf_prompt_logprobs,
)


def test_tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert type(tok).__name__ == "PreTrainedTokenizerFast"
    assert len(tok) == tiny_models.VOCAB_SIZE
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    text = "def add(a, b):\n    return a + b  # ünïcode ☃"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < len(text.encode()) / 1.5, "merges should compress common text"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_llama_config_and_idempotent_build(tiny_llama_dir):
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2  # GQA
    assert cfg["head_dim"] == 32 and cfg["num_hidden_layers"] == 2
    assert cfg["vocab_size"] == tiny_models.VOCAB_SIZE and cfg["torch_dtype"] == "float32"
    assert (tiny_llama_dir / "model.safetensors").is_file()
    marker = tiny_llama_dir / ".build-complete.json"
    before = marker.stat().st_mtime_ns
    assert tiny_models.build_tiny_model("llama") == tiny_llama_dir
    assert marker.stat().st_mtime_ns == before, "a complete build must not be redone"
    other = tiny_models.build_tiny_model("llama", num_hidden_layers=3)
    assert other != tiny_llama_dir and other.name.startswith("llama-")


def test_tiny_llama_greedy_is_not_degenerate(tiny_llama_dir):
    report = tiny_models.sanity_check(tiny_llama_dir)
    assert min(report["distinct_tokens_per_prompt"]) >= 8, report
    assert report["median_margin"] > 0.3, report
    special = set(range(len(tiny_models.SPECIAL_TOKENS)))
    assert not special & {t for ids in report["output_ids"] for t in ids}, report


def test_hf_greedy_matches_transformers_generate(tiny_llama_dir):
    import torch

    from tests.fixtures.hf_reference import load_hf_model

    prompts = [[1, 296, 333, 292], [1] + list(range(10, 60))]
    ref = hf_greedy(tiny_llama_dir, prompts, max_new_tokens=12, ignore_eos=True)
    model = load_hf_model(str(tiny_llama_dir), "float32")
    for prompt, r in zip(prompts, ref, strict=True):
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert out[0, len(prompt) :].tolist() == r.output_ids
        assert len(r.logprobs) == len(r.margins) == len(r.top_logprobs) == 12
        assert all(r.top_logprobs[i][t] == r.logprobs[i] for i, t in enumerate(r.output_ids))
    # Teacher-forced logprobs of prompt + output equal the generation's logprobs.
    full = [p + r.output_ids for p, r in zip(prompts, ref, strict=True)]
    for p, r, lps in zip(prompts, ref, hf_prompt_logprobs(tiny_llama_dir, full), strict=True):
        assert lps[0] is None
        assert lps[len(p) :] == pytest.approx(r.logprobs, abs=1e-4)


def test_assert_greedy_close_tolerates_only_near_ties():
    ref = HFGeneration(
        prompt_ids=[1],
        output_ids=[5, 6, 7],
        logprobs=[-0.1, -0.5, -0.2],
        top_logprobs=[{5: -0.1, 9: -3.0}, {6: -0.5, 8: -0.52}, {7: -0.2, 4: -2.0}],
        margins=[2.9, 0.02, 1.8],
    )
    assert first_divergence([5, 6], [5, 6]) is None
    assert first_divergence([5, 6], [5, 8]) == 1
    assert_greedy_close([ref], [[5, 6, 7]])
    assert_greedy_close([ref], [[5, 8, 3]])  # step 1 is a near-tie (0.02 nats)
    with pytest.raises(AssertionError, match="step 0"):
        assert_greedy_close([ref], [[9, 6, 7]])  # 2.9 nats below HF's choice
    with pytest.raises(AssertionError, match="step 2"):
        assert_greedy_close([ref], [[5, 6, 3]])  # not even in HF's top logprobs
    with pytest.raises(AssertionError, match="lengths differ"):
        assert_greedy_close([ref], [[5, 6]])
    assert_greedy_close([ref], [[5, 6]], max_length_mismatch=True)


def test_smollm2_dir(smollm2_dir):
    from transformers import AutoTokenizer

    from tests.fixtures import smollm2

    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["rope_theta"] == 100000.0 and cfg["torch_dtype"] == "bfloat16"
    assert cfg["tie_word_embeddings"] is True and cfg["eos_token_id"] == 2
    gen = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    tc = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"
    marker = json.loads((smollm2_dir / ".build-complete.json").read_text())
    assert "paris" in marker["france_answer"].lower()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = smollm2.chat_prompt_ids(tok)
    text = tok.decode(ids)
    assert text.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok("Paris").input_ids[0] != tok.bos_token_id  # SmolLM2 adds no BOS
