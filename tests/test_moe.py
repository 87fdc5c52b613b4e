"""Mixture-of-experts through the plugin (CPU mode): vLLM's FusedMoE layers on the plugin's
routing and IPEX expert kernels (vllm_xpu_plugin/moe/, kernels/moe.py; docs/moe.md).

- Routing and experts against plain float64 loops written here from the routing rules
  (not vLLM's or the plugin's code).
- Tiny random-weight MoE checkpoints of every architecture transformers 4.x and vLLM 0.11
  both implement, against HF transformers: greedy tokens and logprobs, float32 both sides.
- Expert weights held once (no prepacked duplicate), in bf16 too.
- Unsupported MoE models/options refused at startup in one line.
TP=2 / expert parallel equalities: tests/test_moe_parallel.py (slow).
"""

from __future__ import annotations

import gc
import os
import random
from pathlib import Path

import pytest
import torch

from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy
from vllm_xpu_plugin import device

MAX_NEW_TOKENS = 16
TIE_MARGIN = 0.02
LOGPROB_TOL = 5e-3
NUM_LOGPROBS = 5
KV_CACHE_BYTES = 32 << 20
PROMPT_LENGTHS = (3, 37, 90)

# arch -> vLLM model class it must run on (no Transformers fallback).
MOE_ARCHS = {
    "qwen3-moe": "qwen3_moe.Qwen3MoeForCausalLM",
    "qwen2-moe": "qwen2_moe.Qwen2MoeForCausalLM",
    "mixtral": "mixtral.MixtralForCausalLM",
    "olmoe": "olmoe.OlmoeForCausalLM",
    "granite-moe": "granitemoe.GraniteMoeForCausalLM",
    "phimoe": "phimoe.PhiMoEForCausalLM",
}


# --------------------------------------------------------------------------- references


def _ref_route(logits, top_k, renormalize, *, bias=None, groups=None, topk_group=None,
               scoring="softmax", scale=1.0):
    """Per token, in float64 Python loops: scores, (grouped) choice on scores + bias,
    weights from the unbiased scores."""
    out = []
    for row in logits.double():
        scores = row.softmax(-1) if scoring == "softmax" else row.sigmoid()
        choice = scores + (bias.double() if bias is not None else 0)
        allowed = list(range(len(row)))
        if groups:
            size = len(row) // groups
            ranks = []
            for g in range(groups):
                vals = sorted(choice[g * size:(g + 1) * size].tolist(), reverse=True)
                ranks.append(sum(vals[:2]) if bias is not None else vals[0])
            keep = sorted(range(groups), key=ranks.__getitem__, reverse=True)[:topk_group]
            allowed = [e for e in allowed if e // size in keep]
        ids = sorted(allowed, key=lambda e: float(choice[e]), reverse=True)[:top_k]
        w = [float(scores[e]) for e in ids]
        if renormalize:
            w = [v / sum(w) for v in w]
        out.append({e: v * scale for e, v in zip(ids, w, strict=True)})
    return out


def _as_dicts(weights, ids):
    return [{int(e): float(w) for e, w in zip(ri, rw, strict=True)}
            for ri, rw in zip(ids, weights, strict=True)]


def _assert_routes_equal(got, want, tol=1e-5):
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w), (g, w)
        for e in w:
            assert abs(g[e] - w[e]) < tol, (g, w)


def _ref_experts(x, w13, w2, routes):
    inter = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t, route in enumerate(routes):
        for e, w in route.items():
            gu = w13[e].double() @ x[t].double()
            out[t] += w * (w2[e].double() @ (torch.nn.functional.silu(gu[:inter]) * gu[inter:]))
    return out


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("renormalize", [True, False])
def test_softmax_topk_routing(renormalize):
    from vllm_xpu_plugin.kernels.moe import select_experts

    logits = torch.randn(7, 8, generator=torch.Generator().manual_seed(1))
    weights, ids = select_experts(logits, 2, renormalize)
    _assert_routes_equal(_as_dicts(weights, ids), _ref_route(logits, 2, renormalize))


def test_biased_routing_weights_use_unbiased_scores_and_scale():
    from vllm_xpu_plugin.kernels.moe import select_experts

    gen = torch.Generator().manual_seed(2)
    logits, bias = torch.randn(6, 8, generator=gen), torch.randn(8, generator=gen)
    weights, ids = select_experts(logits, 2, True, e_score_correction_bias=bias,
                                  routed_scaling_factor=2.5)
    want = _ref_route(logits, 2, True, bias=bias, scale=2.5)
    _assert_routes_equal(_as_dicts(weights, ids), want)
    # The bias changes the choice somewhere, or this test would not test it.
    assert want != _ref_route(logits, 2, True, scale=2.5)


@pytest.mark.parametrize("scoring,with_bias", [("softmax", False), ("sigmoid", True)])
def test_grouped_topk_routing(scoring, with_bias):
    from vllm_xpu_plugin.kernels.moe import select_experts

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 16, generator=gen)
    bias = torch.randn(16, generator=gen) * 0.5 if with_bias else None
    weights, ids = select_experts(logits, 4, True, use_grouped_topk=True, num_expert_group=4,
                                  topk_group=2, scoring_func=scoring,
                                  e_score_correction_bias=bias, routed_scaling_factor=1.5)
    want = _ref_route(logits, 4, True, bias=bias, groups=4, topk_group=2, scoring=scoring,
                      scale=1.5)
    _assert_routes_equal(_as_dicts(weights, ids), want)


# --------------------------------------------------------------------------- experts


def _expert_case(dtype, num_experts=8, hidden=128, inter=64, tokens=11, seed=4):
    gen = torch.Generator().manual_seed(seed)
    w13 = (torch.randn(num_experts, 2 * inter, hidden, generator=gen) * 0.1).to(dtype)
    w2 = (torch.randn(num_experts, hidden, inter, generator=gen) * 0.1).to(dtype)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    logits = torch.randn(tokens, num_experts, generator=gen)
    return w13, w2, x, logits


def _expected_cpu_layout(dtype) -> str:
    """The layout this host's CPU should get, from a plain read of /proc/cpuinfo: IPEX's
    fused (VNNI) bf16 MoE kernel only runs with AVX512-BF16 or AMX-BF16."""
    if dtype != torch.bfloat16:
        return "plain"
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    return "vnni" if {"avx512_bf16", "amx_bf16"} & set(flags) else "tpp"


@pytest.mark.parametrize("flags,layout", [
    ({"avx2", "avx512f", "avx512_bf16"}, "vnni"), ({"avx2", "amx_bf16"}, "vnni"),
    ({"avx2", "avx512f"}, "tpp"), ({"avx2"}, "tpp")])
def test_bf16_expert_layout_follows_the_cpus_bf16_instructions(monkeypatch, flags, layout):
    """An AVX2-only CPU (IPEX's fused kernel: "scalar path not implemented") gets the TPP
    layout; the layout chosen runs and matches float64 wherever it can run."""
    from vllm_xpu_plugin.kernels import moe as moe_kernels

    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags))
    w13, w2, x, logits = _expert_case(torch.bfloat16)
    kernel = moe_kernels.ExpertKernel(torch.nn.Parameter(w13.clone(), requires_grad=False),
                                      torch.nn.Parameter(w2.clone(), requires_grad=False))
    assert kernel.layout == layout
    if layout == _expected_cpu_layout(torch.bfloat16) or layout == "tpp":
        weights, ids = moe_kernels.select_experts(logits, 2, True)
        got = kernel(x, weights, ids).double()
        want = _ref_experts(x, w13, w2, _as_dicts(weights, ids))
        assert (got - want).abs().max() < 3e-2 * want.abs().max()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_experts_match_float64_reference(dtype, tol):
    from vllm_xpu_plugin.kernels.moe import ExpertKernel, select_experts

    w13, w2, x, logits = _expert_case(dtype)
    ref_w13, ref_w2 = w13.clone(), w2.clone()
    kernel = ExpertKernel(torch.nn.Parameter(w13, requires_grad=False),
                          torch.nn.Parameter(w2, requires_grad=False))
    weights, ids = select_experts(logits, 2, True)
    got = kernel(x, weights, ids).double()
    want = _ref_experts(x, ref_w13, ref_w2, _as_dicts(weights, ids))
    assert (got - want).abs().max() < tol * want.abs().max()


def test_tpp_blocked_bf16_experts_match_float64_reference(monkeypatch):
    """The alternative in-place bf16 layout (each expert TPP-blocked), same bytes."""
    from vllm_xpu_plugin.kernels import moe as moe_kernels

    monkeypatch.setattr(moe_kernels, "CPU_LOWP_LAYOUT", moe_kernels.LAYOUT_TPP)
    w13, w2, x, logits = _expert_case(torch.bfloat16)
    p13 = torch.nn.Parameter(w13.clone(), requires_grad=False)
    p2 = torch.nn.Parameter(w2.clone(), requires_grad=False)
    kernel = moe_kernels.ExpertKernel(p13, p2)
    assert kernel.layout == "tpp"
    assert p13.untyped_storage().nbytes() == w13.untyped_storage().nbytes()
    weights, ids = moe_kernels.select_experts(logits, 2, True)
    got = kernel(x, weights, ids).double()
    want = _ref_experts(x, w13, w2, _as_dicts(weights, ids))
    assert (got - want).abs().max() < 3e-2 * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_parallel_halves_sum_to_the_whole(dtype):
    """Two ranks with 4 experts each (expert_map as vLLM builds it) add up to one rank
    with all 8: what the all-reduce after an EP MoE layer relies on."""
    from vllm_xpu_plugin.kernels.moe import ExpertKernel, select_experts

    w13, w2, x, logits = _expert_case(dtype, tokens=13)
    weights, ids = select_experts(logits, 2, False)
    want = _ref_experts(x, w13, w2, _as_dicts(weights, ids))
    total = torch.zeros_like(want)
    for rank in range(2):
        local = slice(4 * rank, 4 * rank + 4)
        expert_map = torch.full((8,), -1, dtype=torch.int32)
        expert_map[local] = torch.arange(4, dtype=torch.int32)
        kernel = ExpertKernel(torch.nn.Parameter(w13[local].clone(), requires_grad=False),
                              torch.nn.Parameter(w2[local].clone(), requires_grad=False))
        total += kernel(x, weights, ids, expert_map).double()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (total - want).abs().max() < tol * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_weights_are_held_once(dtype):
    """After the IPEX re-layout the layer's parameters hold the only copy: same bytes."""
    from vllm_xpu_plugin.kernels.moe import ExpertKernel

    w13, w2, _, _ = _expert_case(dtype)
    p13 = torch.nn.Parameter(w13, requires_grad=False)
    p2 = torch.nn.Parameter(w2, requires_grad=False)
    before = w13.untyped_storage().nbytes() + w2.untyped_storage().nbytes()
    kernel = ExpertKernel(p13, p2)
    del w13, w2
    gc.collect()
    after = p13.untyped_storage().nbytes() + p2.untyped_storage().nbytes()
    assert after == before
    assert kernel.w13 is p13 and kernel.w2 is p2
    assert kernel.layout == _expected_cpu_layout(dtype)
    assert not [k for k, v in vars(kernel).items()
                if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter)]


# --------------------------------------------------------------------------- models


def _prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(n)] for n in PROMPT_LENGTHS]


def _llm(model_dir: Path, **kwargs):
    from vllm import LLM

    args = dict(model=str(model_dir), dtype="float32", max_model_len=256, max_num_seqs=4,
                seed=0, enable_prefix_caching=False, kv_cache_memory_bytes=KV_CACHE_BYTES)
    args.update(kwargs)
    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine core
    try:
        return LLM(**args)
    finally:
        if old is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


def _shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _model_facts(model):
    from vllm.model_executor.layers.fused_moe.layer import FusedMoE

    layers = [m for m in model.modules() if isinstance(m, FusedMoE)]
    return {"class": f"{type(model).__module__}.{type(model).__name__}",
            "moe_layers": len(layers),
            "methods": sorted({type(m.quant_method).__name__ for m in layers})}


# The architecture name real checkpoints carry where it differs from transformers' class
# name (Phi-3.5-MoE's config.json says PhiMoEForCausalLM; vLLM registers only that).
CHECKPOINT_ARCHITECTURE = {"phimoe": "PhiMoEForCausalLM"}
# vLLM 0.11's phimoe.py loads lm_head.bias but never adds it to the logits (its
# compute_logits passes no bias; every platform): both sides run with that bias zeroed.
ZERO_LM_HEAD_BIAS = {"phimoe"}


def _checkpoint_dir(arch: str, model_dir: Path) -> Path:
    """The directory both vLLM and HF run: the tiny checkpoint, with the real checkpoint's
    architecture name and the vLLM-ignored LM-head bias zeroed where needed."""
    import json

    from safetensors.torch import load_file, save_file

    if arch not in CHECKPOINT_ARCHITECTURE and arch not in ZERO_LM_HEAD_BIAS:
        return model_dir
    out = model_dir.parent / f"{model_dir.name}-as-checkpoint"
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir()
    for f in model_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            (tmp / f.name).symlink_to(f)
    weights = load_file(model_dir / "model.safetensors")
    if arch in ZERO_LM_HEAD_BIAS:
        weights["lm_head.bias"] = torch.zeros_like(weights["lm_head.bias"])
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = [CHECKPOINT_ARCHITECTURE.get(arch, config["architectures"][0])]
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.rename(out)
    return out


@pytest.fixture(scope="module", params=sorted(MOE_ARCHS))
def moe_run(request):
    from transformers import AutoConfig
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from tests.fixtures.tiny_models import build_tiny_model

    arch = request.param
    model_dir = _checkpoint_dir(arch, build_tiny_model(arch))
    prompts = _prompts(AutoConfig.from_pretrained(model_dir).vocab_size)
    llm = _llm(model_dir)
    try:
        facts = llm.apply_model(_model_facts)[0]
        params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, ignore_eos=True,
                                logprobs=NUM_LOGPROBS)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                            use_tqdm=False)
        return arch, model_dir, prompts, [o.outputs[0] for o in outs], facts
    finally:
        _shutdown(llm)


def test_moe_greedy_tokens_and_logprobs_match_hf(moe_run):
    arch, model_dir, prompts, completions, facts = moe_run
    assert facts["class"] == f"vllm.model_executor.models.{MOE_ARCHS[arch]}"
    assert facts["moe_layers"] == 2 and facts["methods"] == ["IPEXUnquantizedFusedMoEMethod"]
    ref = hf_greedy(model_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True,
                    num_logprobs=NUM_LOGPROBS)
    assert_greedy_close(ref, [list(c.token_ids) for c in completions], tie_margin=TIE_MARGIN)
    compared = 0
    for n, (r, c) in enumerate(zip(ref, completions, strict=True)):
        for step, (hf_tok, tok) in enumerate(zip(r.output_ids, c.token_ids, strict=True)):
            if hf_tok != tok:
                break
            got = {t: lp.logprob for t, lp in c.logprobs[step].items()}
            for t, hf_lp in r.top_logprobs[step].items():
                if t in got:
                    assert abs(got[t] - hf_lp) < LOGPROB_TOL, (arch, n, step, t)
            compared += 1
    assert compared >= 0.9 * MAX_NEW_TOKENS * len(prompts), (arch, compared)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("spec_args,method", [(("gptq", 64), "ipex_gptq"),
                                               (("awq", 64), "ipex_awq")])
def test_int4_moe_checkpoint_is_refused_at_startup_in_one_line(spec_args, method):
    """GPTQ/AWQ Qwen3-MoE (tests/fixtures/quantize.py quantizes the experts' gate/up/down
    too): `vllm serve` exits before any engine process with one line naming the method."""
    import subprocess
    import sys

    from tests.fixtures.quantize import QuantSpec, build_quantized
    from tests.fixtures.tiny_models import build_tiny_model

    quant_dir = build_quantized(build_tiny_model("qwen3-moe"), QuantSpec(*spec_args))
    from safetensors import safe_open

    with safe_open(str(quant_dir / "model.safetensors"), "pt") as f:
        assert any(".experts.0.gate_proj.qweight" in k for k in f.keys())
    env = dict(os.environ, VLLM_XPU_PLUGIN_DEVICE="cpu")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "vllm"), "serve", str(quant_dir), "--device", "cpu",
         "--host", "127.0.0.1", "--port", "18201"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "vllm-xpu-plugin: error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"{method} mixture-of-experts checkpoints are not supported" in errors[0]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "EngineCore" not in proc.stderr + proc.stdout  # no engine process was started


def _stub_config(architectures, quantization=None, dp=1, eplb=False, experts=8):
    from types import SimpleNamespace

    hf = SimpleNamespace(architectures=architectures, num_experts=experts)
    model = SimpleNamespace(model="m", hf_config=hf, hf_text_config=hf,
                            quantization=quantization)
    parallel = SimpleNamespace(data_parallel_size=dp, enable_eplb=eplb)
    return SimpleNamespace(model_config=model, parallel_config=parallel)


def test_unsupported_moe_configs_have_one_line_reasons():
    from vllm_xpu_plugin.moe import config_problem

    assert config_problem(_stub_config(["Qwen3MoeForCausalLM"])) is None
    assert config_problem(_stub_config(["LlamaForCausalLM"], experts=0, dp=2)) is None  # dense
    cases = {
        "GptOssForCausalLM is not supported": _stub_config(["GptOssForCausalLM"]),
        "Llama4ForCausalLM is not supported": _stub_config(["Llama4ForCausalLM"]),
        "--enable-eplb": _stub_config(["Qwen3MoeForCausalLM"], eplb=True),
        "--data-parallel-size 2": _stub_config(["MixtralForCausalLM"], dp=2),
    }
    for expected, config in cases.items():
        problem = config_problem(config)
        assert problem and expected in problem and "\n" not in problem, problem


def test_unsupported_layer_options_have_one_line_reasons():
    from types import SimpleNamespace

    from vllm_xpu_plugin.moe import layer_problem

    plain = dict(layer_name="model.layers.0.mlp.experts", activation="silu",
                 apply_router_weight_on_input=False, zero_expert_num=0, enable_eplb=False)
    assert layer_problem(SimpleNamespace(**plain), SimpleNamespace(has_bias=False)) is None
    for change, expected in ((dict(activation="gelu"), "activation 'gelu'"),
                             (dict(apply_router_weight_on_input=True), "expert input"),
                             (dict(zero_expert_num=2), "zero-computation")):
        layer = SimpleNamespace(**{**plain, **change})
        problem = layer_problem(layer, SimpleNamespace(has_bias=False))
        assert problem and expected in problem, problem
    assert "biases" in layer_problem(SimpleNamespace(**plain), SimpleNamespace(has_bias=True))
