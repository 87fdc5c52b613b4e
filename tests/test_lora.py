"""LoRA through the plugin (CPU mode) against HF transformers on the adapter merged into the
weights (W + alpha/r * B @ A, tests/fixtures/lora_adapters.py), and the punica kernels
against float64 math.

The case that shipped wrong (issue 13): with every ``max_loras`` slot full, base-model rows
(LoRA index -1) got the adapter of the last slot (vLLM's torch punica ops index the stacked
weights with -1, i.e. wrap to the last slot; IPEX's CPU kernels read out of bounds).
"""

from __future__ import annotations

import random

from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy
from tests.fixtures.in_process import shutdown_llm
from tests.fixtures.lora_adapters import AdapterSpec, build_adapter, build_merged_model

MAX_NEW_TOKENS = 20
TIE_MARGIN = 0.02
ADAPTER_1 = AdapterSpec(rank=8, seed=1)
ADAPTER_2 = AdapterSpec(rank=8, seed=2)


def _prompts(lengths, seed=0, vocab=768):
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(n)] for n in lengths]


def _make_llm(model_dir, **kwargs):
    from vllm import LLM

    defaults = dict(model=str(model_dir), dtype="float32", max_model_len=512, max_num_seqs=8,
                    seed=0, enable_prefix_caching=False, enable_lora=True, max_lora_rank=8,
                    max_loras=2)
    defaults.update(kwargs)
    return LLM(**defaults)


def _lora_request(name: str, lora_id: int, path):
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, str(path))


def _generate(llm, prompts, lora_requests, max_tokens=MAX_NEW_TOKENS, n=1, temperature=0.0,
              seed=None):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True,
                            n=n, seed=seed)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        lora_request=lora_requests, use_tqdm=False)
    return outs


def _tokens(outs):
    return [list(o.outputs[0].token_ids) for o in outs]


def _references(model_dirs, prompts):
    """HF greedy for prompt i on model_dirs[i] (the base or an adapter's merged model)."""
    refs = []
    for model_dir, prompt in zip(model_dirs, prompts, strict=True):
        refs.extend(hf_greedy(model_dir, [prompt], MAX_NEW_TOKENS, ignore_eos=True))
    return refs


def _assert_discriminates(refs_a, refs_b):
    """The references of two models must differ on every prompt, or the test could not tell
    one model's output from the other's."""
    for a, b in zip(refs_a, refs_b, strict=True):
        assert a.output_ids != b.output_ids, "adapter does not change the output"


# ----------------------------------------------------------------------- the reported case


def test_mixed_batch_every_slot_full_matches_hf_merged(tiny_llama_dir):
    """[base, adapter 1, adapter 2, base] in one batch with max_loras=2 (both slots full);
    the same prompt for the first base row and the adapter-2 row, as in the report."""
    a1, a2 = build_adapter(tiny_llama_dir, ADAPTER_1), build_adapter(tiny_llama_dir, ADAPTER_2)
    m1 = build_merged_model(tiny_llama_dir, ADAPTER_1)
    m2 = build_merged_model(tiny_llama_dir, ADAPTER_2)
    p = _prompts([9, 23, 40], seed=13)
    prompts = [p[0], p[1], p[0], p[2]]
    requests = [None, _lora_request("a1", 1, a1), _lora_request("a2", 2, a2), None]

    llm = _make_llm(tiny_llama_dir)
    try:
        got = _tokens(_generate(llm, prompts, requests))
    finally:
        shutdown_llm(llm)

    refs = _references([tiny_llama_dir, m1, m2, tiny_llama_dir], prompts)
    _assert_discriminates([refs[0]], [_references([m2], [p[0]])[0]])
    assert got[0] != got[2], "base and adapter-2 rows on the same prompt gave the same tokens"
    assert_greedy_close(refs, got, tie_margin=TIE_MARGIN)


# ----------------------------------------------------------------------- kernels vs float64

def _plan_and_ref_inputs(dtype, rows_slots, num_slots=3, rank=8, n_in=64, n_out=48, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(rows_slots), n_in, generator=gen).to(dtype)
    # vLLM's stacks: [slots, 1, rank, in] and [slots, 1, out, rank]; every slot filled.
    a = torch.randn(num_slots, 1, rank, n_in, generator=gen).to(dtype)
    b = torch.randn(num_slots, 1, n_out, rank, generator=gen).to(dtype)
    return x, a, b


def _ref_lora(x, a, b, slots, scale):
    """float64: scale * x @ A^T @ B^T per row; 0 for base rows (slot -1)."""
    import torch

    out = torch.zeros(x.shape[0], b.shape[2], dtype=torch.float64)
    for i, s in enumerate(slots):
        if s >= 0:
            out[i] = scale * (b[s, 0].double() @ (a[s, 0].double() @ x[i].double()))
    return out


# Decode-like rows (every run one row: bgmv), prompt chunks (runs: sgmv), all base, no base.
ROW_SLOTS = {
    "decode_mixed": [-1, 0, 1, -1, 2, 2, 0, -1],
    "prefill_runs": [-1] * 5 + [2] * 7 + [0] * 3 + [-1] * 2 + [1] * 4,
    "all_base": [-1] * 6,
    "all_last_slot": [2] * 5,
}


import pytest  # noqa: E402


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("case", sorted(ROW_SLOTS))
@pytest.mark.parametrize("buffer_fp32", [False, True])
def test_shrink_expand_match_float64(dtype_name, case, buffer_fp32):
    """The kernels the wrapper calls, against float64 math, with every slot filled and base
    rows among LoRA rows (the -1 rows must get exactly nothing)."""
    import torch

    from vllm_xpu_plugin.kernels import lora as lora_kernels

    dtype = getattr(torch, dtype_name)
    slots = ROW_SLOTS[case]
    x, a, b = _plan_and_ref_inputs(dtype, slots)
    plan = lora_kernels.plan_step(torch.tensor(slots))
    scale = 0.5
    buf = torch.full((len(slots), 8), float("nan"),
                     dtype=torch.float32 if buffer_fp32 else lora_kernels.buffer_dtype(dtype))
    lora_kernels.shrink(buf, x, a, plan, scale)
    # y has the expanded slice in the middle of wider rows, as in a packed qkv output.
    y0 = torch.randn(len(slots), 48 + 20).to(dtype)
    y = y0.clone()
    lora_kernels.expand(y, buf, b, plan, 7, 48, add=True)
    ref = _ref_lora(x, a, b, slots, scale)
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    got = y.double() - y0.double()
    scale_ref = ref.abs().max().item() or 1.0
    assert torch.isfinite(got).all()
    assert (got[:, :7] == 0).all() and (got[:, 55:] == 0).all(), "wrote outside the slice"
    err = (got[:, 7:55] - ref).abs().max().item() / scale_ref
    assert err < tol, (case, dtype_name, err)
    for i, s in enumerate(slots):
        if s < 0:
            assert (y[i] == y0[i]).all(), f"base row {i} changed"


# ----------------------------------------------------------------------- the IPEX path e2e


def test_mixed_batch_bf16_runs_ipex_kernels(tiny_llama_dir):
    """bf16 runs IPEX's bgmv kernels (float32 runs grouped torch matmuls). Same batch as the
    float32 case, every slot full; bf16 noise (~0.05-0.4 nats on the tiny model) allows
    near-ties of 0.5 nats against the float32 HF reference over the first 8 tokens."""
    a1, a2 = build_adapter(tiny_llama_dir, ADAPTER_1), build_adapter(tiny_llama_dir, ADAPTER_2)
    m1 = build_merged_model(tiny_llama_dir, ADAPTER_1)
    m2 = build_merged_model(tiny_llama_dir, ADAPTER_2)
    p = _prompts([12, 30, 7], seed=21)
    prompts = [p[0], p[1], p[0], p[2]]
    requests = [None, _lora_request("a1", 1, a1), _lora_request("a2", 2, a2), None]
    llm = _make_llm(tiny_llama_dir, dtype="bfloat16")
    try:
        got = _tokens(_generate(llm, prompts, requests, max_tokens=8))
    finally:
        shutdown_llm(llm)
    refs = [hf_greedy(d, [q], 8, ignore_eos=True)[0]
            for d, q in zip([tiny_llama_dir, m1, m2, tiny_llama_dir], prompts, strict=True)]
    assert got[0] != got[2], "base and adapter-2 rows on the same prompt gave the same tokens"
    assert_greedy_close(refs, got, tie_margin=0.5)


# ----------------------------------------------------------------------- the other mixes

ADAPTER_R4_MLP = AdapterSpec(rank=4, alpha=8.0, seed=3,
                             target_modules=("k_proj", "gate_proj", "up_proj"))
ADAPTER_R8_ALL = AdapterSpec(rank=8, alpha=8.0, seed=4,
                             target_modules=("q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"))


def _run_and_check(llm, model_dir, prompts, specs, names_ids, **gen_kwargs):
    """Generate prompt i with adapter specs[i] (None = base) and compare with HF merged."""
    requests = [None if s is None else _lora_request(*names_ids[s],
                                                     build_adapter(model_dir, s))
                for s in specs]
    outs = _generate(llm, prompts, requests, **gen_kwargs)
    dirs = [model_dir if s is None else build_merged_model(model_dir, s) for s in specs]
    refs = _references(dirs, prompts)
    for k in range(len(outs[0].outputs)):
        assert_greedy_close(refs, [list(o.outputs[k].token_ids) for o in outs],
                            tie_margin=TIE_MARGIN)
    return outs


@pytest.mark.slow
def test_more_adapters_than_slots_ranks_targets_chunked_prefill_prefix_cache(tiny_llama_dir):
    """4 adapters (ranks 8/8/4/8; q/v/o/down, k/gate/up, all seven) through 2 GPU slots and
    3 CPU slots (swapping and reloading from disk), base rows among them; 32-token chunked
    prefill; prefix caching with base and LoRA rows on the same prompts, twice (the second
    round hits the cache, and a LoRA row must never reuse base KV blocks or vice versa)."""
    specs_all = [ADAPTER_1, ADAPTER_2, ADAPTER_R4_MLP, ADAPTER_R8_ALL]
    names_ids = {s: (f"a{i + 1}", i + 1) for i, s in enumerate(specs_all)}
    shared = _prompts([70], seed=5)[0]
    other = _prompts([5, 33, 64, 18], seed=6)
    prompts = [shared, shared, other[0], shared, other[1], other[2], shared, other[3]]
    specs = [None, ADAPTER_1, ADAPTER_2, ADAPTER_R4_MLP, ADAPTER_R8_ALL, None, ADAPTER_R8_ALL,
             ADAPTER_1]
    llm = _make_llm(tiny_llama_dir, max_loras=2, max_cpu_loras=3, enable_chunked_prefill=True,
                    max_num_batched_tokens=32, enable_prefix_caching=True, block_size=16)
    try:
        _run_and_check(llm, tiny_llama_dir, prompts, specs, names_ids)
        _run_and_check(llm, tiny_llama_dir, prompts, specs, names_ids)  # prefix-cache hits
    finally:
        shutdown_llm(llm)


@pytest.mark.slow
def test_preemption_and_n2_with_full_slots(tiny_llama_dir):
    """A 24-block KV cache for 8 requests of ~100 tokens: the scheduler preempts and
    recomputes; n=2 (vLLM refuses n > 1 with temperature 0, so temperature 1e-3: logits
    scaled by 1000, both samples are HF's greedy except at near-ties). Slots full."""
    names_ids = {ADAPTER_1: ("a1", 1), ADAPTER_2: ("a2", 2)}
    prompts = _prompts([60, 45, 80, 30, 70, 50, 66, 40], seed=9)
    specs = [None, ADAPTER_1, ADAPTER_2, None, ADAPTER_2, ADAPTER_1, None, ADAPTER_2]
    llm = _make_llm(tiny_llama_dir, block_size=16, num_gpu_blocks_override=24,
                    max_model_len=256, disable_log_stats=False)
    try:
        _run_and_check(llm, tiny_llama_dir, prompts, specs, names_ids, n=2,
                       temperature=1e-3, seed=0)
        preempted = sum(m.value for m in llm.get_metrics()
                        if m.name == "vllm:num_preemptions")
    finally:
        shutdown_llm(llm)
    assert preempted > 0, "the small KV cache did not force a preemption"


@pytest.mark.slow
def test_tensor_parallel_2_mixed_batch(tiny_llama_dir):
    """TP=2 (gloo, two worker processes): row-parallel LoRA all-reduces its shrunk buffer."""
    names_ids = {ADAPTER_1: ("a1", 1), ADAPTER_R8_ALL: ("a4", 4)}
    prompts = _prompts([9, 23, 9, 40], seed=13)
    specs = [None, ADAPTER_1, ADAPTER_R8_ALL, None]
    llm = _make_llm(tiny_llama_dir, tensor_parallel_size=2,
                    distributed_executor_backend="mp")
    try:
        _run_and_check(llm, tiny_llama_dir, prompts, specs, names_ids)
    finally:
        shutdown_llm(llm)


# ----------------------------------------------------------------------- quantized base


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_quantized_base_with_lora_is_refused_in_one_line(tiny_llama_dir, fmt):
    """The plugin's int4 GPTQ / AWQ layers keep no ``qweight`` after handing the weights to
    IPEX, and vLLM 0.11's LoRA layers then fail deep in engine start-up ("Unsupported base
    layer: QKVParallelLinear"). Refused while the config is built, in one line."""
    from tests.fixtures.quantize import QuantSpec, build_quantized
    from vllm_xpu_plugin.startup_checks import PluginConfigError

    quant_dir = build_quantized(tiny_llama_dir, QuantSpec(fmt, 32))
    with pytest.raises(PluginConfigError) as info:
        _make_llm(quant_dir)
    message = str(info.value)
    assert "\n" not in message and "--enable-lora" in message and fmt.upper() in message
