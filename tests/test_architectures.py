"""Every text architecture of the seed's verified model list runs through the plugin (CPU
mode) and matches an independent reference: greedy tokens and logprobs, float32 both sides.

One engine per architecture (module-scoped, in-process engine core to save a process start),
a few prompts of different lengths plus one text prompt through the model's tokenizer.
The tiny models keep each real checkpoint's options (tests/fixtures/tiny_models.py ARCHS,
tests/fixtures/remote_code_models.py); docs/supported_models.md maps them to real models.

References:
- HF transformers' own implementation where it exists offline (Llama, Qwen2, Mistral, Phi3).
- Baichuan-7B / ChatGLM3-6B need Hub remote code that is not available offline: the tiny
  checkpoints are converted from transformers' LlamaForCausalLM (MHA) / GlmForCausalLM
  models with the same weights, and those HF models are the reference (see
  tests/fixtures/remote_code_models.py for why the math is identical).
- GPTQ variants: HF on the dequantized weights (tests/fixtures/quantize.py's unpacker).
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy
from tests.fixtures.in_process import in_process_engine_core

MAX_NEW_TOKENS = 24
TIE_MARGIN = 0.02  # float32 both sides: only genuine near-ties may flip a greedy token
LOGPROB_TOL = 5e-3
NUM_LOGPROBS = 5
TEXT_PROMPT = "User: What is the capital of France?\nAssistant:"
# Tiny models need a few MB of KV cache; the CPU-mode default (4 GiB) would stay allocated
# per engine in this process (in-process engine core).
KV_CACHE_BYTES = 64 << 20


def _hf(arch: str, **overrides) -> Callable[[], tuple[Path, Path]]:
    def build() -> tuple[Path, Path]:
        from tests.fixtures.tiny_models import build_tiny_model

        d = build_tiny_model(arch, **overrides)
        return d, d

    return build


def _remote(name: str, gptq: bool = False) -> Callable[[], tuple[Path, Path]]:
    def build() -> tuple[Path, Path]:
        from tests.fixtures import remote_code_models

        return getattr(remote_code_models, f"build_tiny_{name}")(gptq=gptq)

    return build


@dataclass(frozen=True)
class ArchCase:
    covers: str  # the real checkpoints this tiny model stands for
    build: Callable[[], tuple[Path, Path]]  # -> (dir vLLM serves, HF reference dir)
    # prompt lengths per generate() call (one call = one batch)
    batches: tuple[tuple[int, ...], ...] = ((3, 40, 100),)
    llm_kwargs: dict = field(default_factory=dict)
    quantization: str | None = None


CASES: dict[str, ArchCase] = {
    "llama3": ArchCase("Llama-3.1-8B, DeepSeek-R1-Distill-Llama-8B (llama3 rope scaling)",
                       _hf("llama3")),
    "deepseek-llm": ArchCase("deepseek-llm-7b-chat (Llama, multi-head attention)",
                             _hf("deepseek-llm")),
    "qwen2": ArchCase("Qwen2-7B-Instruct, DeepSeek-R1-Distill-Qwen-7B (qkv bias)", _hf("qwen2")),
    # Prompts and generations longer than the 32-token window.
    "mistral-sliding-window": ArchCase("Mistral-7B-v0.1 (sliding window on)", _hf("mistral"),
                                       batches=((20, 50, 120),)),
    # LongRoPE switches factor sets at original_max_position_embeddings (64): one batch that
    # stays below it (short factors), one whose prompts exceed it (long factors). vLLM picks
    # the set per batch (any position > 64), HF per forward (max position + 1 > 64); they
    # agree when a batch is entirely on one side, as here.
    "phi3-longrope": ArchCase("Phi-3-mini-128k-instruct (LongRoPE)", _hf("phi3"),
                              batches=((5, 20), (70, 130))),
    "baichuan": ArchCase(
        "Baichuan-7B (W_pack; reference: HF Llama, same weights)", _remote("baichuan"),
        llm_kwargs={"trust_remote_code": True, "tokenizer_mode": "slow"}),
    "baichuan-gptq": ArchCase(
        "Baichuan-7B GPTQ 4-bit (reference: HF Llama, dequantized)",
        _remote("baichuan", gptq=True), batches=((5, 60),),
        llm_kwargs={"trust_remote_code": True, "tokenizer_mode": "slow"},
        quantization="ipex_gptq"),
    "chatglm3": ArchCase("chatglm3-6b (ChatGLMModel; reference: HF GlmForCausalLM)",
                         _remote("chatglm")),
    "chatglm3-gptq": ArchCase(
        "chatglm3-6b GPTQ 4-bit (ChatGLMForConditionalGeneration; reference: HF Glm, "
        "dequantized)", _remote("chatglm", gptq=True), batches=((5, 60),),
        quantization="ipex_gptq"),
}


@dataclass
class ArchRun:
    name: str
    model_dir: Path
    ref_dir: Path
    prompts: list[list[int]]  # every prompt's token ids, batch after batch
    completions: list  # vLLM CompletionOutput per prompt
    text_prompt_ids: list[int]  # the ids vLLM's tokenizer produced for TEXT_PROMPT
    model_class: str
    sliding_window: int | None
    quantization: str | None


def _random_prompts(lengths, vocab_size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab_size) for _ in range(n)] for n in lengths]


def _reference_text_ids(case_name: str, model_dir: Path) -> list[int]:
    """TEXT_PROMPT encoded independently of vLLM's tokenizer loading."""
    if case_name.startswith("baichuan"):  # BaiChuanTokenizer = sentencepiece + BOS
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        return [sp.bos_id()] + sp.encode(TEXT_PROMPT)
    from tokenizers import Tokenizer  # the fast tokenizer file itself, with its BOS template

    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(TEXT_PROMPT).ids


@pytest.fixture(scope="module", params=sorted(CASES))
def arch_run(request) -> ArchRun:
    from transformers import AutoConfig
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    name = request.param
    case = CASES[name]
    model_dir, ref_dir = case.build()
    vocab = AutoConfig.from_pretrained(ref_dir).vocab_size
    kwargs = dict(model=str(model_dir), dtype="float32", max_model_len=512, max_num_seqs=8,
                  seed=0, enable_prefix_caching=False, kv_cache_memory_bytes=KV_CACHE_BYTES)
    if name.startswith("baichuan"):
        # The documented workaround for the Hub tokenizer (test_baichuan_hub_tokenizer_...).
        from tests.fixtures.remote_code_models import build_llama_tokenizer_for

        kwargs["tokenizer"] = str(build_llama_tokenizer_for(model_dir))
    kwargs.update(case.llm_kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, ignore_eos=True,
                            logprobs=NUM_LOGPROBS)
    batches = [_random_prompts(b, vocab, seed=i) for i, b in enumerate(case.batches)]
    # In-process engine core: one process start less per architecture (scoped to here).
    with in_process_engine_core():
        llm = LLM(**kwargs)
    try:
        model_class = llm.apply_model(lambda m: f"{type(m).__module__}.{type(m).__name__}")[0]
        completions, prompts = [], []
        for i, batch in enumerate(batches):
            requests = [TokensPrompt(prompt_token_ids=p) for p in batch]
            if i == 0:
                requests.append(TEXT_PROMPT)  # through vLLM's tokenizer
            outs = llm.generate(requests, params, use_tqdm=False)
            if i == 0:
                text_out = outs.pop()
                batch = batch + [list(text_out.prompt_token_ids)]
                outs.append(text_out)
            prompts += batch
            completions += [o.outputs[0] for o in outs]
        config = llm.llm_engine.model_config
        return ArchRun(name, model_dir, ref_dir, prompts, completions,
                       list(text_out.prompt_token_ids), model_class,
                       config.get_sliding_window(), config.quantization)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def test_greedy_tokens_and_logprobs_match_reference(arch_run):
    run = arch_run
    ref = hf_greedy(run.ref_dir, run.prompts, MAX_NEW_TOKENS, ignore_eos=True,
                    num_logprobs=NUM_LOGPROBS)
    assert_greedy_close(ref, [list(c.token_ids) for c in run.completions],
                        tie_margin=TIE_MARGIN)
    compared = 0
    for n, (r, c) in enumerate(zip(ref, run.completions, strict=True)):
        for step, (hf_tok, tok) in enumerate(zip(r.output_ids, c.token_ids, strict=True)):
            if hf_tok != tok:
                break  # a tolerated near-tie: the contexts differ from here on
            got = {t: lp.logprob for t, lp in c.logprobs[step].items()}
            assert abs(got[tok] - r.logprobs[step]) < LOGPROB_TOL, (run.name, n, step)
            for t, hf_lp in r.top_logprobs[step].items():
                if t in got:
                    assert abs(got[t] - hf_lp) < LOGPROB_TOL, (run.name, n, step, t)
            compared += 1
    # The greedy paths must mostly coincide, or the logprob checks proved little.
    assert compared >= 0.9 * MAX_NEW_TOKENS * len(run.prompts), (run.name, compared)


def test_vllm_used_its_own_implementation_and_options(arch_run):
    """The architecture ran on vLLM's model class for it (no Transformers fallback), with the
    checkpoint's options intact (sliding window on, quantization routed to the plugin)."""
    run = arch_run
    expected_class = {
        "llama3": "llama.LlamaForCausalLM", "deepseek-llm": "llama.LlamaForCausalLM",
        "qwen2": "qwen2.Qwen2ForCausalLM", "mistral-sliding-window": "llama.LlamaForCausalLM",
        "phi3-longrope": "phi3.Phi3ForCausalLM", "baichuan": "baichuan.BaiChuanForCausalLM",
        "baichuan-gptq": "baichuan.BaiChuanForCausalLM",
        "chatglm3": "chatglm.ChatGLMForCausalLM", "chatglm3-gptq": "chatglm.ChatGLMForCausalLM",
    }[run.name]
    assert run.model_class == f"vllm.model_executor.models.{expected_class}"
    assert run.quantization == CASES[run.name].quantization
    from transformers import AutoConfig

    if run.name == "mistral-sliding-window":
        assert run.sliding_window == 32
        assert AutoConfig.from_pretrained(run.ref_dir).sliding_window == 32


def test_text_prompt_is_tokenized_like_the_reference(arch_run):
    run = arch_run
    assert run.text_prompt_ids == _reference_text_ids(run.name, run.model_dir)


def _first_tokens(model_dir, prompts, n: int = 8):
    return [g.output_ids for g in hf_greedy(model_dir, prompts, n, ignore_eos=True)]


def test_mistral_sliding_window_changes_the_reference():
    """Guard against a vacuous pass: the window changes HF's output on these prompts, so
    matching it means the plugin applied the window."""
    from tests.fixtures.tiny_models import build_tiny_model

    case = CASES["mistral-sliding-window"]
    windowed, _ = case.build()
    full = build_tiny_model("mistral", sliding_window=None)  # same weights, no window
    prompts = _random_prompts(case.batches[0], 768, seed=0)
    assert _first_tokens(windowed, prompts) != _first_tokens(full, prompts)


def test_phi3_long_factors_change_the_reference():
    """Guard: on the long batch, HF's output depends on the long factors (so the plugin had
    to apply them), and on the short batch it does not."""
    from tests.fixtures.tiny_models import ARCHS, build_tiny_model

    case = CASES["phi3-longrope"]
    phi3, _ = case.build()
    scaling = dict(ARCHS["phi3"].config["rope_scaling"])
    scaling["long_factor"] = scaling["short_factor"]
    short_only = build_tiny_model("phi3", rope_scaling=scaling)  # same weights
    short, long_ = (_random_prompts(b, 768, seed=i) for i, b in enumerate(case.batches))
    assert _first_tokens(phi3, long_) != _first_tokens(short_only, long_)
    assert _first_tokens(phi3, short) == _first_tokens(short_only, short)


def test_baichuan_hub_tokenizer_fails_with_the_seed_error():
    """The seed's Baichuan failure, reproduced where vLLM loads tokenizers: the Hub's
    tokenization_baichuan.py calls super().__init__() before creating self.sp_model, and
    transformers >= 4.34 reads vocab_size during that call. Not a plugin error; the
    workaround (build_llama_tokenizer_for + tokenizer_mode slow) is what arch_run uses."""
    from vllm.transformers_utils.tokenizer import get_tokenizer

    from tests.fixtures.remote_code_models import build_tiny_baichuan

    model_dir, _ = build_tiny_baichuan()
    with pytest.raises(AttributeError, match="^BaiChuanTokenizer has no attribute vocab_size$"):
        get_tokenizer(str(model_dir), trust_remote_code=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["baichuan-gptq", "chatglm3-gptq"])
def test_seed_failures_serve_through_the_openai_api(name):
    """The seed's two failing checkpoints (GPTQ Baichuan-7B, GPTQ chatglm3-6b) start under
    ``vllm serve`` and answer /v1/completions like their reference on the same prompt ids."""
    from openai import OpenAI

    from tests.fixtures.server import serve

    model_dir, ref_dir = CASES[name].build()
    args = ["--dtype", "float32", "--max-model-len", "512", "--seed", "0",
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES)]
    if name.startswith("baichuan"):
        from tests.fixtures.remote_code_models import build_llama_tokenizer_for

        args += ["--trust-remote-code", "--tokenizer-mode", "slow",
                 "--tokenizer", str(build_llama_tokenizer_for(model_dir))]
    with serve(str(model_dir), *args) as (base, _):
        client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
        resp = client.completions.create(
            model=str(model_dir), prompt=TEXT_PROMPT, max_tokens=MAX_NEW_TOKENS,
            temperature=0.0, logprobs=NUM_LOGPROBS,
            extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True,
                        "return_token_ids": True})
    choice = resp.choices[0]
    assert choice.prompt_token_ids == _reference_text_ids(name, model_dir)
    got = [int(t[len("token_id:"):]) for t in choice.logprobs.tokens]
    assert got == choice.token_ids
    ref = hf_greedy(ref_dir, [choice.prompt_token_ids], MAX_NEW_TOKENS, ignore_eos=True,
                    num_logprobs=NUM_LOGPROBS)
    assert_greedy_close(ref, [got], tie_margin=TIE_MARGIN)
    for step, (hf_tok, tok) in enumerate(zip(ref[0].output_ids, got, strict=True)):
        if hf_tok != tok:
            break
        assert abs(choice.logprobs.token_logprobs[step] - ref[0].logprobs[step]) < LOGPROB_TOL
