"""LoRA through the plugin (CPU mode) against HF transformers on the adapter merged into the
weights (W + alpha/r * B @ A, tests/fixtures/lora_adapters.py), and the punica kernels
against float64 math.

The case that shipped wrong (issue 13): with every ``max_loras`` slot full, base-model rows
(LoRA index -1) got the adapter of the last slot (vLLM's torch punica ops index the stacked
weights with -1, i.e. wrap to the last slot; IPEX's CPU kernels read out of bounds).
"""

from __future__ import annotations

import gc
import random

from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy
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


def _shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


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
        _shutdown(llm)

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
