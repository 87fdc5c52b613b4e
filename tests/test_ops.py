"""The plugin's custom ops (vllm_xpu_plugin/ops) against plain-torch references.

Every reference below is written out from the math (fp32), not taken from vLLM's
forward_native. Tolerances (torch.testing.assert_close, |a-b| <= atol + rtol*|b|):
  fp32: atol 1e-5, rtol 1e-5   (rotary 1e-4: the cache's fp32 angles pos*inv_freq)
  bf16: atol 2e-2, rtol 1.6e-2 (~2 bf16 ulps: one rounding of the result, one of the
        input cast / the dtype-rounded cos_sin_cache)
  fp16: atol 2e-3, rtol 2e-3   (same, fp16 ulps)
Inputs are random normal with a fixed seed.
"""

from __future__ import annotations

import math

import pytest
import torch
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.custom_op import CustomOp
from vllm.model_executor.layers import rotary_embedding as rope_mod
from vllm.model_executor.layers.activation import GeluAndMul, SiluAndMul
from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm
from vllm.platforms import current_platform

from vllm_xpu_plugin.kernels import norms

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
# fp32 rotary: vLLM's cache holds fp32 cos/sin of fp32 angles (pos * inv_freq), ~1e-5 rad off
ROPE_TOL = {**TOL, torch.float32: dict(atol=1e-4, rtol=1e-4)}


@pytest.fixture(scope="module", autouse=True)
def _registered_ops():
    """Register through vLLM's own plugin loader (the vllm.general_plugins entry point)."""
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    assert "RMSNorm" in CustomOp.op_registry_oot, "entry point did not register the ops"


def _config(custom_ops=("all",)) -> VllmConfig:
    config = VllmConfig(compilation_config=CompilationConfig())
    # Set after construction: the platform's check_and_update_config (run inside
    # VllmConfig()) rewrites custom_ops to ["all"]; tests of "-name" need their own list.
    config.compilation_config.custom_ops = list(custom_ops)
    return config


def build(cls, *args, custom_ops=("all",), **kwargs):
    with set_current_vllm_config(_config(custom_ops)):
        return cls(*args, **kwargs)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed)).to(dtype)


# ------------------------------------------------------------------ plain references


def ref_rms(x, w, eps, residual=None, gemma=False):
    """Returns (normed fp32, new residual in x's dtype or None)."""
    s = x.double()
    new_res = None
    if residual is not None:
        s = s + residual.double()
        new_res = s.to(x.dtype)
    y = s / torch.sqrt((s * s).mean(dim=-1, keepdim=True) + eps)
    y = y * ((1.0 + w.double()) if gemma else w.double())
    return y.float(), new_res


def ref_rope(x, positions, head_size, rotary_dim, neox, cos=None, sin=None, base=10000.0):
    """x: [T, heads * head_size]. cos/sin [T, rotary_dim // 2] or computed from inv_freq."""
    t = x.shape[0]
    xs = x.double().view(t, -1, head_size)
    if cos is None:
        inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        ang = positions.double()[:, None] * inv_freq[None, :]
        cos, sin = ang.cos(), ang.sin()
    cos = cos.double()[:, None, :]
    sin = sin.double()[:, None, :]
    rot, rest = xs[..., :rotary_dim], xs[..., rotary_dim:]
    if neox:
        a, b = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2 :]
        rot = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([rot, rest], dim=-1).reshape(x.shape).float()


def ref_silu_mul(x):
    d = x.shape[-1] // 2
    a, b = x[..., :d].double(), x[..., d:].double()
    return (a / (1.0 + torch.exp(-a)) * b).float()


def ref_gelu_mul(x, approximate):
    d = x.shape[-1] // 2
    a, b = x[..., :d].double(), x[..., d:].double()
    if approximate == "tanh":
        g = 0.5 * a * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3)))
    else:
        g = 0.5 * a * (1.0 + torch.erf(a / math.sqrt(2.0)))
    return (g * b).float()


def close(actual, expected, tol):
    torch.testing.assert_close(actual.float(), expected.float(), **tol)


# ------------------------------------------------------------------ registration / dispatch


def test_platform_is_the_plugin():
    assert current_platform.is_out_of_tree()
    assert type(current_platform).__module__ == "vllm_xpu_plugin.platform"


@pytest.mark.parametrize(
    "make, ours_name, in_tree_name",
    [
        (lambda **k: build(RMSNorm, 64, **k), "IPEXRMSNorm", "rms_norm"),
        (lambda **k: build(GemmaRMSNorm, 64, **k), "IPEXGemmaRMSNorm", "gemma_rms_norm"),
        (lambda **k: build(SiluAndMul, **k), "IPEXSiluAndMul", "silu_and_mul"),
        (lambda **k: build(GeluAndMul, "tanh", **k), "IPEXGeluAndMul", "gelu_and_mul"),
        (
            lambda **k: build(
                rope_mod.RotaryEmbedding, 64, 64, 128, 10000, True, torch.float32, **k
            ),
            "IPEXRotaryEmbedding",
            "rotary_embedding",
        ),
    ],
)
def test_in_tree_constructor_builds_ours_and_dispatches_forward_oot(make, ours_name, in_tree_name):
    op = make()
    assert type(op).__name__ == ours_name
    assert type(op).__module__.startswith("vllm_xpu_plugin.ops.")
    assert op._forward_method.__func__ is type(op).forward_oot
    # The in-tree name still switches it: "-name" -> forward_native.
    off = make(custom_ops=("all", f"-{in_tree_name}"))
    assert off._forward_method.__func__ is type(off).forward_native


def test_forward_reaches_the_device_kernel(monkeypatch):
    """RMSNorm(...)(x) -> forward_oot -> norms.rms_norm (fails if dispatch breaks)."""
    calls = []
    real = norms.rms_norm
    monkeypatch.setattr(norms, "rms_norm", lambda *a: calls.append(1) or real(*a))
    norm = build(RMSNorm, 48)
    norm(randn(3, 48))
    assert calls == [1]


ROPE_SUBCLASS_ARGS = {
    # class: constructor kwargs beyond head_size/rotary_dim/max_position/base/neox/dtype
    rope_mod.RotaryEmbedding: {},
    rope_mod.Llama3RotaryEmbedding: dict(
        scaling_factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, orig_max_position=64
    ),
    rope_mod.YaRNScalingRotaryEmbedding: dict(scaling_factor=4.0),
    rope_mod.LinearScalingRotaryEmbedding: dict(scaling_factors=[1.0, 2.0]),
    rope_mod.NTKScalingRotaryEmbedding: dict(scaling_factor=2.0),
    rope_mod.DynamicNTKScalingRotaryEmbedding: dict(scaling_factor=2.0),
    rope_mod.DynamicNTKAlphaRotaryEmbedding: dict(scaling_alpha=2.0),
}


def _make_rope(cls, head, rot, neox, dtype, max_pos=256):
    return build(
        cls,
        head_size=head,
        rotary_dim=rot,
        max_position_embeddings=max_pos,
        base=10000,
        is_neox_style=neox,
        dtype=dtype,
        **ROPE_SUBCLASS_ARGS[cls],
    )


def test_ipex_rotary_class_list():
    from vllm_xpu_plugin.ops.ipex_rotary_embedding import IPEX_ROTARY_CLASSES

    assert set(IPEX_ROTARY_CLASSES) == set(ROPE_SUBCLASS_ARGS)
    base = rope_mod.RotaryEmbedding
    for in_tree, ours in IPEX_ROTARY_CLASSES.items():
        assert CustomOp.op_registry_oot[in_tree.__name__] is ours
        assert issubclass(ours, in_tree)
        # Only safe while the in-tree class keeps the base class's forward.
        for meth in ("forward", "forward_native", "forward_cuda", "forward_oot"):
            assert getattr(in_tree, meth) is getattr(base, meth), (in_tree, meth)


@pytest.mark.parametrize(
    "cls, args",
    [
        (rope_mod.MRotaryEmbedding, (64, 64, 128, 10000, True, torch.float32, [8, 12, 12])),
        (rope_mod.DeepseekScalingRotaryEmbedding, (64, 32, 128, 10000, False, 2.0, torch.float32)),
        (rope_mod.Llama4VisionRotaryEmbedding, (64, 32, 128, 10000, False, torch.float32)),
    ],
)
def test_other_rotary_subclasses_are_untouched(cls, args):
    """Classes with their own forward build themselves; on the plugin platform they
    dispatch to CustomOp.forward_oot, i.e. their own forward_native."""
    op = build(cls, *args)
    assert type(op) is cls
    assert op._forward_method.__func__ is CustomOp.forward_oot


def test_mrope_text_positions_still_correct():
    """MRotaryEmbedding (Qwen2-VL family) keeps working: text-only 1-D positions."""
    rope = build(rope_mod.MRotaryEmbedding, 64, 64, 128, 10000, True, torch.float32, [8, 12, 12])
    positions = torch.arange(37) * 3
    q, k = _qk(37, 8, 2, 64, torch.float32, seed=17)
    exp_q, exp_k = ref_rope(q, positions, 64, 64, True), ref_rope(k, positions, 64, 64, True)
    out_q, out_k = rope(positions, q, k)
    close(out_q, exp_q, ROPE_TOL[torch.float32])
    close(out_k, exp_k, ROPE_TOL[torch.float32])


def test_phi3_long_rope_untouched():
    cls = rope_mod.Phi3LongRoPEScaledRotaryEmbedding
    op = build(cls, 64, 64, 4096, 1024, 10000, True, torch.float32, [1.0] * 32, [1.0] * 32)
    assert type(op) is cls


# ------------------------------------------------------------------ RMSNorm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", [1, 37])
@pytest.mark.parametrize("hidden", [130, 256])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, num_tokens, hidden, with_residual):
    norm = build(RMSNorm, hidden, eps=1e-5, dtype=dtype)
    norm.weight.data.copy_(randn(hidden, dtype=dtype, seed=1))
    x = randn(num_tokens, hidden, dtype=dtype, seed=2) * 3
    res = randn(num_tokens, hidden, dtype=dtype, seed=3) if with_residual else None
    x0 = x.clone()
    expected, expected_res = ref_rms(x, norm.weight.data, 1e-5, res)
    out = norm(x, res) if with_residual else norm(x)
    if with_residual:
        out, new_res = out
        assert new_res.dtype == dtype
        close(new_res, expected_res, TOL[dtype])
    assert out.dtype == dtype and out.shape == x.shape
    close(out, expected, TOL[dtype])
    assert torch.equal(x, x0)


def test_rms_norm_strided_3d_view():
    """q_norm on per-head views of a qkv split (Qwen3-style): non-contiguous input."""
    qkv = randn(37, 3 * 4 * 32, dtype=torch.bfloat16, seed=4)
    q = qkv[:, : 4 * 32].view(37, 4, 32)
    assert not q.is_contiguous()
    norm = build(RMSNorm, 32, dtype=torch.bfloat16)
    norm.weight.data.copy_(randn(32, dtype=torch.bfloat16, seed=5))
    close(norm(q), ref_rms(q, norm.weight.data, 1e-6)[0], TOL[torch.bfloat16])


def test_rms_norm_native_fallbacks(monkeypatch):
    monkeypatch.setattr(norms, "rms_norm", lambda *a: pytest.fail("IPEX used"))
    x = randn(5, 64, seed=6).view(1, 5, 64)
    # variance over the first 48 channels only
    norm = build(RMSNorm, 64, var_hidden_size=48)
    expected = x.double() / torch.sqrt(x.double()[..., :48].pow(2).mean(-1, keepdim=True) + 1e-6)
    close(norm(x), expected, TOL[torch.float32])
    # has_weight=False
    norm = build(RMSNorm, 64, has_weight=False)
    close(norm(x), ref_rms(x, torch.ones(64), 1e-6)[0], TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_gemma_rms_norm(dtype, with_residual):
    hidden = 200
    norm = build(GemmaRMSNorm, hidden, eps=1e-6)
    norm.weight.data.copy_(randn(hidden, seed=7) * 0.5)
    norm = norm.to(dtype)
    x = randn(37, hidden, dtype=dtype, seed=8)
    res = randn(37, hidden, dtype=dtype, seed=9) if with_residual else None
    if with_residual:
        # Gemma sums in x's dtype (fp16: in fp32) and normalizes that sum.
        s = x + res if dtype != torch.float16 else x + res.float()
        expected = ref_rms(s, norm.weight.data, 1e-6, gemma=True)[0]
        out, new_res = norm(x, res)  # may update res in place, as vLLM's fused add does
        assert new_res.dtype == s.dtype
        close(new_res, s, TOL[dtype])
    else:
        out = norm(x)
        expected = ref_rms(x, norm.weight.data, 1e-6, gemma=True)[0]
    assert out.dtype == dtype
    close(out, expected, TOL[dtype])


# ------------------------------------------------------------------ activations


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", [1, 37])
def test_silu_and_mul(dtype, num_tokens):
    x = randn(num_tokens, 2 * 176, dtype=dtype, seed=10) * 2
    out = build(SiluAndMul)(x)
    assert out.shape == (num_tokens, 176) and out.dtype == dtype
    close(out, ref_silu_mul(x), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1, 2 * 88), (37, 2 * 176), (2, 3, 2 * 40)])
def test_gelu_and_mul(dtype, approximate, shape):
    x = randn(*shape, dtype=dtype, seed=11) * 2
    out = build(GeluAndMul, approximate)(x)
    assert out.shape == shape[:-1] + (shape[-1] // 2,) and out.dtype == dtype
    close(out, ref_gelu_mul(x, approximate), TOL[dtype])
    if approximate == "tanh" and dtype == torch.float32:
        # the two variants differ by more than the tolerance: the flag is really passed on
        assert not torch.allclose(out, ref_gelu_mul(x, "none"), **TOL[dtype])


# ------------------------------------------------------------------ rotary


def _qk(num_tokens, num_heads, num_kv_heads, head, dtype, seed):
    """q and k as vLLM passes them: strided column slices of one fused qkv tensor."""
    qkv = randn(num_tokens, (num_heads + 2 * num_kv_heads) * head, dtype=dtype, seed=seed)
    q, k, _ = qkv.split([num_heads * head, num_kv_heads * head, num_kv_heads * head], dim=-1)
    return q, k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize(
    "head, rot",
    [(64, 64), (64, 32), (80, 32), (128, 64)],  # full, half, 0.4 (Phi/StableLM-like)
)
@pytest.mark.parametrize("num_tokens", [1, 37])
def test_rotary_embedding(dtype, neox, head, rot, num_tokens):
    num_heads, num_kv_heads = 8, 2  # GQA
    rope = _make_rope(rope_mod.RotaryEmbedding, head, rot, neox, dtype)
    positions = torch.randint(0, 256, (num_tokens,), generator=_gen(12))
    q, k = _qk(num_tokens, num_heads, num_kv_heads, head, dtype, seed=13)
    exp_q = ref_rope(q, positions, head, rot, neox)
    exp_k = ref_rope(k, positions, head, rot, neox)
    if positions.any():
        assert not torch.allclose(exp_q, q.float(), atol=1e-3)  # non-trivial rotation
    out_q, out_k = rope(positions, q, k)
    assert out_q.shape == q.shape and out_q.dtype == dtype
    close(out_q, exp_q, ROPE_TOL[dtype])
    close(out_k, exp_k, ROPE_TOL[dtype])
    # channels past rotary_dim pass through unchanged
    assert torch.equal(
        out_q.view(num_tokens, num_heads, head)[..., rot:],
        exp_q.to(dtype).view(num_tokens, num_heads, head)[..., rot:],
    )


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_embedding_key_none(neox, dtype):
    rope = _make_rope(rope_mod.RotaryEmbedding, 64, 32, neox, dtype)
    positions = torch.tensor([0, 5, 17, 255, 3])
    q, _ = _qk(5, 4, 1, 64, dtype, seed=14)
    exp_q = ref_rope(q, positions, 64, 32, neox)
    out_q, out_k = rope(positions, q, None)
    assert out_k is None
    close(out_q, exp_q, ROPE_TOL[dtype])


@pytest.mark.parametrize("cls", list(ROPE_SUBCLASS_ARGS), ids=lambda c: c.__name__)
@pytest.mark.parametrize("neox", [True, False])
def test_rotary_subclasses_on_ipex(cls, neox):
    """Scaled variants: same kernel, their own cache. Reference applies the rotation with
    cos/sin read from the instance's cache (how the cache is filled is vLLM's code)."""
    from vllm_xpu_plugin.ops.ipex_rotary_embedding import IPEX_ROTARY_CLASSES

    head, rot, dtype = 64, 32, torch.bfloat16
    rope = _make_rope(cls, head, rot, neox, dtype)
    assert type(rope) is IPEX_ROTARY_CLASSES[cls]
    assert rope._forward_method.__func__ is type(rope).forward_oot
    positions = torch.randint(0, rope.cos_sin_cache.shape[0], (37,), generator=_gen(15))
    cos, sin = rope.cos_sin_cache[positions].float().chunk(2, dim=-1)
    q, k = _qk(37, 8, 2, head, dtype, seed=16)
    exp_q = ref_rope(q, positions, head, rot, neox, cos=cos, sin=sin)
    exp_k = ref_rope(k, positions, head, rot, neox, cos=cos, sin=sin)
    out_q, out_k = rope(positions, q, k)
    close(out_q, exp_q, ROPE_TOL[dtype])
    close(out_k, exp_k, ROPE_TOL[dtype])
