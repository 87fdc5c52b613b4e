"""Per-layer tests of the IPEX int4 GPTQ/AWQ linear methods (CPU mode).

Each case builds a real vLLM linear layer (column / row parallel, merged QKV, merged
gate-up) with the plugin's quant method, loads RTN-quantized checkpoint shards through the
layer's own weight loaders, runs ``process_weights_after_loading`` and compares the output
with a plain-torch reference: ``x @ ((q - zero) * scale).T + bias`` computed from the
integers *before* packing (so neither the packer, IPEX's unpacking nor the plugin is
trusted). In fp32 the kernel must agree to ~1e-5 relative; bf16/fp16 to their rounding.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from tests.fixtures.quantize import (
    IntQuant,
    act_order_perm,
    pack_awq,
    pack_gptq,
    rtn_quantize,
    unpack_awq,
    unpack_gptq,
)

HIDDEN = 256
INTERMEDIATE = 384  # 3 x 128: every supported group size divides it


@pytest.fixture(scope="module")
def tp1():
    """vLLM's tensor-parallel group of one rank (the linear layers ask for it)."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state

    from vllm_xpu_plugin.quantization import register_quantization_configs

    register_quantization_configs()
    config = VllmConfig()
    with set_current_vllm_config(config):
        owned = not parallel_state.model_parallel_is_initialized()
        if owned:
            with tempfile.NamedTemporaryFile() as f:
                parallel_state.init_distributed_environment(
                    world_size=1, rank=0, local_rank=0,
                    distributed_init_method=f"file://{f.name}", backend="gloo")
                parallel_state.initialize_model_parallel(1, 1)
        try:
            yield config
        finally:
            if owned:
                parallel_state.destroy_model_parallel()
                parallel_state.destroy_distributed_environment()


def _gptq_config(group_size, desc_act=False, sym=True):
    from vllm_xpu_plugin.quantization.gptq import IPEXGPTQConfig

    return IPEXGPTQConfig.from_config({"quant_method": "gptq", "bits": 4,
                                       "group_size": group_size, "desc_act": desc_act,
                                       "sym": sym})


def _awq_config(group_size, skip=None):
    from vllm_xpu_plugin.quantization.awq import IPEXAWQConfig

    return IPEXAWQConfig.from_config({"quant_method": "awq", "bits": 4,
                                      "group_size": group_size, "zero_point": True,
                                      "version": "gemm", "modules_to_not_convert": skip})


# (kind, input size, [(shard id, output size)])
LAYERS = {
    "column": (HIDDEN, [(None, 192)]),
    "row": (INTERMEDIATE, [(None, HIDDEN)]),
    "qkv": (HIDDEN, [("q", 128), ("k", 64), ("v", 64)]),  # 4 heads, 2 kv heads, dim 32
    "gate_up": (HIDDEN, [(0, INTERMEDIATE), (1, INTERMEDIATE)]),
}


def _make_layer(kind, quant_config, bias, dtype):
    from vllm.model_executor.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )

    common = dict(bias=bias, quant_config=quant_config, params_dtype=dtype)
    if kind == "column":
        return ColumnParallelLinear(HIDDEN, 192, prefix="model.layers.0.mlp.fc", **common)
    if kind == "row":
        return RowParallelLinear(INTERMEDIATE, HIDDEN,
                                 prefix="model.layers.0.mlp.down_proj", **common)
    if kind == "qkv":
        return QKVParallelLinear(HIDDEN, 32, 4, 2,
                                 prefix="model.layers.0.self_attn.qkv_proj", **common)
    return MergedColumnParallelLinear(HIDDEN, [INTERMEDIATE, INTERMEDIATE],
                                      prefix="model.layers.0.mlp.gate_up_proj", **common)


def _load(layer, name, tensor, shard_id):
    param = getattr(layer, name)
    if shard_id is None:
        param.weight_loader(param, tensor)
    else:
        param.weight_loader(param, tensor, shard_id)


def _build(kind, fmt, group_size, *, desc_act=False, sym=True, bias=True,
           dtype=torch.float32, seed=0):
    """Quantized vLLM layer + the reference float weight [out, in] and bias."""
    gen = torch.Generator().manual_seed(seed)
    in_f, shards = LAYERS[kind]
    cfg = _gptq_config(group_size, desc_act, sym) if fmt == "gptq" else _awq_config(group_size)
    layer = _make_layer(kind, cfg, bias, dtype)
    weights = [torch.randn(out, in_f, generator=gen) * 0.05 for _, out in shards]
    perm = act_order_perm(weights) if desc_act else None
    ref_w, ref_b = [], []
    for (shard_id, out), w in zip(shards, weights, strict=True):
        iq = rtn_quantize(w, group_size, fmt, sym=sym, perm=perm, model_dtype=dtype)
        packed = pack_gptq(iq) if fmt == "gptq" else pack_awq(iq)
        for name, tensor in packed.items():
            _load(layer, name, tensor, shard_id)
        ref_w.append(iq.dequantize())
        if bias:
            b = (torch.randn(out, generator=gen) * 0.1).to(dtype)
            _load(layer, "bias", b, shard_id)
            ref_b.append(b.float())
    layer.quant_method.process_weights_after_loading(layer)
    return layer, torch.cat(ref_w), (torch.cat(ref_b) if bias else None)


def _check(layer, ref_w, ref_b, dtype, tokens=5, rtol=None):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, ref_w.shape[1], generator=gen).to(dtype)
    ref = x.double() @ ref_w.double().t()
    if ref_b is not None:
        ref = ref + ref_b.double()
    out, _ = layer(x)
    assert out.dtype == dtype and out.shape == ref.shape
    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    limit = rtol or {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    assert err < limit, f"relative error {err:.3g} > {limit}"
    return err


# ----------------------------------------------------------------------------- formats


def test_gptq_packing_matches_the_format_spec():
    # in-channel k of output 0 holds value k: one int32 holds in-channels 0..7, low first.
    q = torch.zeros(8, 8, dtype=torch.long)
    q[0] = torch.arange(8)
    iq = IntQuant(q=q, scales=torch.ones(1, 8), zeros=torch.full((1, 8), 8, dtype=torch.long),
                  g_idx=torch.zeros(8, dtype=torch.long))
    packed = pack_gptq(iq)
    assert packed["qweight"][0, 0].item() == 0x76543210
    assert packed["qzeros"][0, 0].item() == 0x77777777  # zero 8 stored as 7
    iq.zeros[0, 3] = 0  # asymmetric zero 0 is stored as -1 & 0xF
    assert pack_gptq(iq)["qzeros"][0, 0].item() == 0x7777F777


def test_awq_packing_matches_the_format_spec():
    # output column c of input 0 holds value c: nibble i holds column (0 2 4 6 1 3 5 7)[i].
    q = torch.zeros(8, 8, dtype=torch.long)
    q[:, 0] = torch.arange(8)
    iq = IntQuant(q=q, scales=torch.ones(1, 8), zeros=torch.arange(8).reshape(1, 8),
                  g_idx=torch.zeros(8, dtype=torch.long))
    packed = pack_awq(iq)
    assert packed["qweight"][0, 0].item() == 0x75316420
    assert packed["qzeros"][0, 0].item() == 0x75316420


@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("fmt,desc_act,sym",
                         [("gptq", False, True), ("gptq", True, False), ("awq", False, False)])
def test_unpack_reference_round_trips(fmt, group_size, desc_act, sym):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3))
    perm = act_order_perm([w]) if desc_act else None
    iq = rtn_quantize(w, group_size, fmt, sym=sym, perm=perm)
    if desc_act and group_size != -1:  # act order: groups are not contiguous
        assert not torch.equal(iq.g_idx, torch.sort(iq.g_idx).values)
    if fmt == "gptq":
        p = pack_gptq(iq)
        got = unpack_gptq(p["qweight"], p["qzeros"], p["scales"], p["g_idx"])
    else:
        p = pack_awq(iq)
        got = unpack_awq(p["qweight"], p["qzeros"], p["scales"], group_size)
    torch.testing.assert_close(got, iq.dequantize(), rtol=0, atol=0)
    # and RTN is a faithful 4-bit approximation of the float weight
    scale = iq.scales.max().item()
    assert (got - w).abs().max().item() <= scale * 0.5 + 1e-6 or fmt == "awq"


# ----------------------------------------------------------------------------- GPTQ


@pytest.mark.parametrize("kind", ["column", "row", "qkv", "gate_up"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("desc_act,sym", [(False, True), (True, False), (True, True),
                                          (False, False)])
def test_gptq_linear_matches_dequantized_reference(tp1, kind, group_size, desc_act, sym):
    layer, ref_w, ref_b = _build(kind, "gptq", group_size, desc_act=desc_act, sym=sym)
    _check(layer, ref_w, ref_b, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_linear_low_precision_activations(tp1, dtype, desc_act):
    layer, ref_w, ref_b = _build("qkv", "gptq", 128, desc_act=desc_act, sym=True, dtype=dtype)
    _check(layer, ref_w, ref_b, dtype, tokens=9)


def test_gptq_asymmetric_zero_point_zero(tp1):
    """A group whose weights are all >= 0 gets zero point 0, stored as (0 - 1) & 0xF = 15
    in GPTQ v1; the kernel must read it back as 0, not 16."""
    from vllm.model_executor.layers.linear import ColumnParallelLinear

    w = torch.rand(64, HIDDEN, generator=torch.Generator().manual_seed(5)) * 0.1
    iq = rtn_quantize(w, 64, "gptq", sym=False, model_dtype=torch.float32)
    assert (iq.zeros == 0).any()
    layer = ColumnParallelLinear(HIDDEN, 64, bias=False, quant_config=_gptq_config(64, sym=False),
                                 params_dtype=torch.float32)
    for name, tensor in pack_gptq(iq).items():
        _load(layer, name, tensor, None)
    layer.quant_method.process_weights_after_loading(layer)
    _check(layer, iq.dequantize(), None, torch.float32)


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_single_group_spanning_the_input(tp1, fmt):
    """group_size == in_features (e.g. a 128-wide model with group 128): one group."""
    from vllm.model_executor.layers.linear import ColumnParallelLinear

    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(6)) * 0.05
    cfg = _gptq_config(128, desc_act=True, sym=False) if fmt == "gptq" else _awq_config(128)
    iq = rtn_quantize(w, 128, fmt, sym=False, perm=act_order_perm([w]) if fmt == "gptq" else None,
                      model_dtype=torch.float32)
    layer = ColumnParallelLinear(128, 64, bias=False, quant_config=cfg,
                                 params_dtype=torch.float32)
    for name, tensor in (pack_gptq(iq) if fmt == "gptq" else pack_awq(iq)).items():
        _load(layer, name, tensor, None)
    layer.quant_method.process_weights_after_loading(layer)
    _check(layer, iq.dequantize(), None, torch.float32)


def test_gptq_3d_input_and_no_bias(tp1):
    layer, ref_w, _ = _build("gate_up", "gptq", 64, bias=False)
    x = torch.randn(2, 3, HIDDEN, generator=torch.Generator().manual_seed(2))
    out, _ = layer(x)
    assert out.shape == (2, 3, 2 * INTERMEDIATE)
    torch.testing.assert_close(out, x @ ref_w.t(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- AWQ


@pytest.mark.parametrize("kind", ["column", "row", "qkv", "gate_up"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_awq_linear_matches_dequantized_reference(tp1, kind, group_size):
    layer, ref_w, ref_b = _build(kind, "awq", group_size)
    _check(layer, ref_w, ref_b, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_awq_linear_low_precision_activations(tp1, dtype):
    layer, ref_w, ref_b = _build("gate_up", "awq", 128, dtype=dtype)
    _check(layer, ref_w, ref_b, dtype, tokens=9)


def test_awq_modules_to_not_convert_stay_float(tp1):
    from vllm.model_executor.layers.linear import (
        MergedColumnParallelLinear,
        QKVParallelLinear,
        UnquantizedLinearMethod,
    )

    cfg = _awq_config(64, skip=["mlp"])
    cfg.packed_modules_mapping = {"gate_up_proj": ["gate_proj", "up_proj"],
                                  "qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    mlp = MergedColumnParallelLinear(HIDDEN, [128, 128], bias=False, quant_config=cfg,
                                     prefix="model.layers.0.mlp.gate_up_proj")
    attn = QKVParallelLinear(HIDDEN, 32, 4, 2, bias=False, quant_config=cfg,
                             prefix="model.layers.0.self_attn.qkv_proj")
    assert isinstance(mlp.quant_method, UnquantizedLinearMethod) and hasattr(mlp, "weight")
    assert type(attn.quant_method).__name__ == "IPEXAWQLinearMethod"
    # Only some shards of a fused layer skipped: one line, naming the layer.
    cfg.modules_to_not_convert = ["self_attn.k_proj"]
    with pytest.raises(ValueError, match="qkv_proj: some but not all"):
        QKVParallelLinear(HIDDEN, 32, 4, 2, bias=False, quant_config=cfg,
                          prefix="model.layers.0.self_attn.qkv_proj")


# ----------------------------------------------------------------------------- memory


def _checkpoint_bytes(kind, fmt, group_size, sym, desc_act, dtype):
    """Bytes of the packed tensors the checkpoint stores for the layer (what is loaded)."""
    in_f, shards = LAYERS[kind]
    total = 0
    for _, out in shards:
        w = torch.zeros(out, in_f)
        iq = rtn_quantize(w + 0.01, group_size, fmt, sym=sym, model_dtype=dtype,
                          perm=act_order_perm([w + 0.01]) if desc_act else None)
        packed = pack_gptq(iq) if fmt == "gptq" else pack_awq(iq)
        total += sum(t.numel() * t.element_size() for t in packed.values())
    return total


@pytest.mark.parametrize("fmt,sym,desc_act", [("gptq", True, False), ("gptq", False, False),
                                              ("gptq", True, True), ("awq", False, False)])
def test_int4_layer_is_resident_at_checkpoint_size(tp1, fmt, sym, desc_act):
    """Issue 18: the layer holds its int4 weight once and one scale + one zero per group
    and output channel in the activation dtype -- <= 1.05x the checkpoint's packed bytes at
    group 128 -- and no qweight / qzeros / scales / g_idx of the checkpoint's."""
    from vllm_xpu_plugin.quantization.int4_linear import resident_bytes

    dtype = torch.bfloat16
    layer, ref_w, ref_b = _build("gate_up", fmt, 128, sym=sym, desc_act=desc_act, dtype=dtype)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"bias"}, names
    held = resident_bytes(layer)
    out_f, in_f = ref_w.shape
    groups = in_f // 128
    assert held["weight"] == out_f * in_f // 2
    assert held["scales"] == held["zeros"] == out_f * groups * 2  # one bf16 copy each
    ratio = sum(held.values()) / _checkpoint_bytes("gate_up", fmt, 128, sym, desc_act, dtype)
    assert ratio <= 1.05, ratio
    _check(layer, ref_w, ref_b, dtype, tokens=9)


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
@pytest.mark.parametrize("out_f,in_f,group_size", [(200, HIDDEN, 64), (64, 200, -1)])
def test_int4_shapes_at_the_aten_kernels_edges(tp1, fmt, out_f, in_f, group_size):
    """200 outputs (not a multiple of 16, as torch's CPU int4 kernel needs: padded) and
    per-channel scales over 200 inputs (no kernel group size divides it: IPEX's WOQ kernel
    instead) both match the reference. (IPEX's kernel itself gave 0.54 relative error on
    200 outputs, which is why those are padded rather than handed to it.)"""
    from vllm.model_executor.layers.linear import ColumnParallelLinear

    from vllm_xpu_plugin.kernels.int4_gemm import AtenInt4Linear, IpexInt4Linear

    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(8)) * 0.05
    iq = rtn_quantize(w, group_size, fmt, sym=False, model_dtype=torch.float32)
    cfg = _gptq_config(group_size, sym=False) if fmt == "gptq" else _awq_config(group_size)
    layer = ColumnParallelLinear(in_f, out_f, bias=False, quant_config=cfg,
                                 params_dtype=torch.float32)
    for name, tensor in (pack_gptq(iq) if fmt == "gptq" else pack_awq(iq)).items():
        _load(layer, name, tensor, None)
    layer.quant_method.process_weights_after_loading(layer)
    expected = AtenInt4Linear if out_f == 200 else IpexInt4Linear
    assert isinstance(layer.int4_linear, expected)
    _check(layer, iq.dequantize(), None, torch.float32)
