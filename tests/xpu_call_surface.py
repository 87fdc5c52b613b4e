"""The XPU call surface as data: every IPEX (and ``torch.xpu``) function the plugin calls on
an ``# XPU-only`` line, with its signature and the dtype / layout / in-place facts of the
XPU build the plugin relies on. tests/test_xpu_call_surface.py parses the plugin's source
(AST) and checks every such call against this table.

Where each row comes from (issue 21): the public IPEX sources at the 2.8.10 XPU release,
``github.com/intel/intel-extension-for-pytorch`` tag ``v2.8.10+xpu`` = commit
``09505bb158cd953896616a36bdefc0250365a63b`` (read with ``git show <tag>:<file>``). Paths
below are relative to that tree; ``py`` is the Python wrapper the plugin calls, ``xpu`` the
XPU implementation it dispatches to, ``op`` the C++ kernel, ``fact`` the line a fact was
read from. The CPU build in site-packages (2.8.0+cpu) is NOT the source of these rows: its
``llm/functional/fusions.py`` lacks ``silu_and_mul``, ``gelu_and_mul`` and
``rotary_embedding_batched``, and its ``varlen_attention`` has no ``alibi_slopes`` /
window / softcap parameters (``git show v2.8.10+xpu:<file> | diff - site-packages/<file>``).
``torch.xpu`` rows: torch 2.8.0's Python sources (torch/xpu/__init__.py, memory.py); the
CPU wheel installed here ships the same Python files as the +xpu wheel, so the test reads
their signatures live (only the C extension differs between the builds).

Adding a call: a new ``# XPU-only`` call to an IPEX function fails the test until it has a
row here. Copy the parameter list from the XPU tag (never from the CPU build, never from
memory), record file:line, and any fact the call relies on.

Param kinds: ``tensor``, ``tensor?`` (tensor or None), ``int``, ``float``, ``bool``, ``str``,
``device?`` (device/str/int/None), ``generator?``, ``int[]``, ``any``. ``aliases``: other
names the plugin's variables carry in that slot (an argument named after a DIFFERENT slot's
name or alias is reported as swapped). ``only``: the values the XPU code implements (other
values are rejected or wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IPEX_REPO = "github.com/intel/intel-extension-for-pytorch"
IPEX_XPU_TAG = "v2.8.10+xpu"
IPEX_XPU_COMMIT = "09505bb158cd953896616a36bdefc0250365a63b"

_NO_ONLY = ()


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: bool = False  # has a default in the XPU signature
    aliases: tuple[str, ...] = ()
    only: tuple = _NO_ONLY  # the literal values the XPU code implements
    contiguous: bool = False  # the XPU kernel requires it (TORCH_CHECK) and the caller owns it
    dtypes: tuple[str, ...] = ()  # accepted torch dtypes where the kernel checks them


@dataclass(frozen=True)
class Row:
    name: str  # canonical dotted name: ipex.<...> | torch.ops.torch_ipex.<...> | torch.xpu.<...>
    params: tuple[Param, ...]
    source: tuple[str, ...]  # "py|xpu|op|fact <file>:<line> <what>"
    # "returns": the result is a new tensor and must be used; "in_place": results are
    # written into the ``writes`` arguments (the return value may be ignored);
    # "value": a plain value (device name, properties, ...); "none": returns nothing.
    result: str
    writes: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    # KV-cache layout the kernel reads ("NHD": [num_blocks, block_size, num_kv_heads,
    # head_size], block_size read as key_cache.size(1)); checked against device.py.
    kv_layout: str = ""
    live_signature: bool = False  # compare params with inspect.signature at test time
    extra: dict = field(default_factory=dict)

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)


P = Param
FUS = "intel_extension_for_pytorch/llm/functional/fusions.py"
MHA = "intel_extension_for_pytorch/llm/modules/mha_fusion.py"
XACT = "intel_extension_for_pytorch/transformers/models/xpu/fusions/activation_fusion.py"
XMHA = "intel_extension_for_pytorch/transformers/models/xpu/fusions/mha_fusion.py"
OPS = "csrc/gpu/aten/operators"

ROWS: tuple[Row, ...] = (
    # ------------------------------------------------------------------ activations
    Row(
        "ipex.llm.functional.silu_and_mul",
        (P("x", "tensor"), P("out", "tensor?", default=True)),
        (f"py {FUS}:414", f"xpu {XACT}:18 silu_and_mul_xpu",
         f"op {OPS}/TripleOps.cpp:349 silu_and_mul(self, out)",
         f"fact {XACT}:20 out=None builds the shape from x.size(-1) / 2 (a float)"),
        result="in_place", writes=("out",),
        facts=("out = silu(x[..., :d]) * x[..., d:], d = x.size(-1) // 2",
               "pass out: the wrapper's own out=None path makes a float dimension"),
        extra={"out_required": True},
    ),
    Row(
        "ipex.llm.functional.gelu_and_mul",
        (P("x", "tensor"), P("out", "tensor?", default=True),
         P("approximate", "str", default=True, only=("none", "tanh"))),
        (f"py {FUS}:447", f"xpu {XACT}:38 gelu_and_mul_xpu",
         f"op {OPS}/TripleOps.cpp:334 gelu_and_mul(self, out, approximate)",
         f"fact {XACT}:42 out=None builds the shape from x.size(-1) / 2 (a float)"),
        result="in_place", writes=("out",),
        facts=("pass out (same float-dimension bug as silu_and_mul)",),
        extra={"out_required": True},
    ),
    # ------------------------------------------------------------------ norms
    Row(
        "ipex.llm.functional.rms_norm",
        (P("hidden_states", "tensor", aliases=("x", "input")), P("weight", "tensor"),
         P("eps", "float", aliases=("epsilon",))),
        (f"py {FUS}:104", f"xpu {XMHA}:226 _IPEXRMSNormXPU.apply_function -> "
         "torch.ops.torch_ipex.rms_norm(x, [x.size(-1)], w, eps)[0]",
         f"fact {OPS}/RMSNorm.cpp:361 gamma kFloat branch: fp32 weight with 16-bit x"),
        result="returns",
        facts=("returns a new tensor of x's dtype",
               "weight may be fp32 with a 16-bit x (the kernel then multiplies in fp32): "
               "the plugin's weight.to(x.dtype) is not needed by the kernel and rounds "
               "Gemma's fp32 1 + w (docs/dev/xpu_parity.md)"),
    ),
    Row(
        "ipex.llm.functional.add_rms_norm",
        (P("residual", "tensor"), P("x", "tensor", aliases=("input",)),
         P("weight", "tensor"), P("bias", "tensor?"), P("eps", "float", aliases=("epsilon",)),
         P("add_back", "bool", default=True)),
        (f"py {FUS}:462", f"xpu {XACT}:48 add_rms_norm_xpu -> "
         "torch.ops.torch_ipex.add_rms_norm(add, x, [N], weight, bias, eps, add_back)",
         f"op {OPS}/AddNormFusion.cpp:672 add_rms_norm",
         f"fact {OPS}/AddNormFusion.cpp:537 add_back: add1.add_(input) (residual += x)"),
        result="returns", writes=("residual",),
        facts=("returns rms_norm(residual + x) as a new tensor",
               "add_back=True also writes residual + x into residual (argument 1)"),
    ),
    # ------------------------------------------------------------------ rotary
    Row(
        "ipex.llm.functional.rotary_embedding_batched",
        (P("positions", "tensor", dtypes=("torch.int64",)),
         P("query", "tensor"), P("key", "tensor", aliases=("k",)),
         P("head_dim", "int", aliases=("head_size",)),
         P("cos_sin_cache", "tensor", aliases=("kernel_table",)),
         P("is_nexo_style", "bool", aliases=("is_neox",)),
         P("rotary_dim", "int", aliases=("rot_dim",)),
         P("offsets", "tensor?", default=True)),
        (f"py {FUS}:55", f"xpu {XACT}:76 rotary_embedding_batched_xpu (offsets=None -> "
         "torch.ops.torch_ipex.rotary_embedding)",
         f"op {OPS}/Rope.cpp:783 rotary_embedding",
         f"fact {OPS}/Rope.cpp:816 positions.data_ptr<int64_t>()",
         f"fact {OPS}/Rope.cpp:817 cos_sin_cache.data_ptr<scalar_t>() (query's dtype)",
         f"fact {OPS}/Rope.cpp:792 num_heads = query.size(-1) / head_size"),
        result="in_place", writes=("query", "key"),
        facts=("rotates query and key in place (returns them)",
               "positions int64; cos_sin_cache in query's dtype",
               "query/key 2-D [num_tokens, heads * head_size]: a 3-D view would be read as "
               "one head; key must be a tensor (no None)"),
    ),
    # ------------------------------------------------------------------ paged attention
    Row(
        "ipex.llm.modules.PagedAttention.reshape_and_cache_flash",
        (P("key", "tensor"), P("value", "tensor"), P("key_cache", "tensor"),
         P("value_cache", "tensor"),
         P("slot_mapping", "tensor", dtypes=("torch.int32", "torch.int64")),
         P("kv_cache_dtype", "str", default=True, only=("auto",)),
         P("k_scale", "float", default=True), P("v_scale", "float", default=True)),
        (f"py {MHA}:742", f"xpu {XMHA}:451 -> torch.ops.torch_ipex.reshape_and_cache_flash",
         f"op {OPS}/CacheOps.cpp:666 reshape_and_cache_flash",
         f"fact {OPS}/CacheOps.cpp:679 block_size = key_cache.size(1) (NHD)",
         f"fact {OPS}/CacheOps.cpp:600 slot_map kLong -> int64 kernel, else int32",
         f"fact {OPS}/CacheOps.cpp:368 slot_idx < 0: token skipped"),
        result="in_place", writes=("key_cache", "value_cache"), kv_layout="NHD",
        facts=("slot_mapping int64 or int32 (anything not int64 is READ as int32)",
               "slots < 0 are skipped (the CPU kernel writes them out of bounds)",
               "kv_cache_dtype 'auto' only in the plugin (fp8 KV rejected at startup)"),
    ),
    Row(
        "ipex.llm.modules.PagedAttention.flash_attn_varlen_func",
        (P("output", "tensor", aliases=("out",)), P("query", "tensor", contiguous=True),
         P("key_cache", "tensor", aliases=("k_cache",)),
         P("value_cache", "tensor", aliases=("v_cache",)),
         P("cu_seqlens_q", "tensor", dtypes=("torch.int32",)),
         P("cu_seqlens_kv", "tensor", dtypes=("torch.int32",)),
         P("max_seqlen_q", "int"), P("max_seqlen_kv", "int"),
         P("scale", "float", aliases=("softmax_scale",)),
         P("is_cusal", "bool", only=(True,), aliases=("is_causal", "causal")),
         P("block_tables", "tensor", aliases=("block_table",), dtypes=("torch.int32",)),
         P("alibi_slopes", "tensor?"),
         P("window_size_left", "int", default=True, aliases=("window_left",)),
         P("window_size_right", "int", default=True, aliases=("window_right",)),
         P("kv_cache_dtype", "str", default=True, only=("auto",)),
         P("k_scale", "float", default=True), P("v_scale", "float", default=True),
         P("softcap", "float", default=True)),
        (f"py {MHA}:853", f"xpu {XMHA}:547 -> torch.ops.torch_ipex.chunked_prefill",
         f"op {OPS}/transformers/attention.cpp:1725 chunked_prefill",
         f"fact {OPS}/transformers/attention.cpp:1759,1762,1764 cu_seqlens_q/k and "
         "block_table int32 (TORCH_CHECK)",
         f"fact {OPS}/transformers/attention.cpp:1775 query contiguous (TORCH_CHECK)",
         f"fact {OPS}/transformers/attention.cpp:1789 block_size = key.size(1) (NHD)",
         f"fact {XMHA}:580 head_dim % 64 != 0: q/cache/out padded to the next multiple "
         "of 64 (80, 96 run padded)",
         f"fact {MHA}:702 is_cusal: False is not supported yet",
         f"fact {OPS}/xetla/kernels/SDP/paged_attention_kernel.hpp:617 softcap applied "
         "only when > 0 (-1 and 0 both disable it)"),
        result="in_place", writes=("output",), kv_layout="NHD",
        facts=("output contiguous [num_tokens, heads, head] (TORCH_CHECK at attention.cpp:1798)",),
    ),
    Row(
        "ipex.llm.functional.varlen_attention",
        (P("query", "tensor", contiguous=True), P("key", "tensor", contiguous=True),
         P("value", "tensor", contiguous=True), P("out", "tensor"),
         P("seqlen_q", "tensor", aliases=("cu_seqlens_q",), dtypes=("torch.int32",)),
         P("seqlen_k", "tensor", aliases=("cu_seqlens_kv", "cu_seqlens_k"),
           dtypes=("torch.int32",)),
         P("alibi_slopes", "tensor?"), P("max_seqlen_q", "int"),
         P("max_seqlen_k", "int", aliases=("max_seqlen_kv",)),
         P("pdropout", "float", only=(0.0,)), P("softmax_scale", "float", aliases=("scale",)),
         P("zero_tensors", "bool"), P("is_causal", "bool", aliases=("causal",)),
         P("return_softmax", "bool", only=(False,)), P("gen_", "generator?"),
         P("window_size_left", "int", default=True),
         P("window_size_right", "int", default=True),
         P("softcap", "float", default=True)),
        (f"py {FUS}:237", f"xpu {XMHA}:262 _IPEXVarlenScaledDotProductXPU.apply_function "
         "-> torch.ops.torch_ipex.varlen_fwd",
         f"op {OPS}/transformers/attention.cpp:1006 varlen_fwd",
         f"fact {OPS}/transformers/attention.cpp:1039,1042 cu_seqlens_q/k int32",
         f"fact {OPS}/transformers/attention.cpp:1055 query contiguous"),
        result="in_place", writes=("out",),
        facts=("the CPU build's wrapper has a different signature (no alibi_slopes, window, "
               "softcap): a call copied from the CPU branch would shift every argument",
               "out contiguous (TORCH_CHECK at :1083)"),
    ),
    # ------------------------------------------------------------------ LoRA (pre-entered
    # from the same tag for kernels/lora.py; the plugin does not call them yet)
    Row(
        "ipex.llm.functional.bgmv_shrink",
        (P("inputs", "tensor"), P("lora_a_weights", "tensor"),
         P("output_tensor", "tensor"),
         P("lora_indices_tensor", "tensor", dtypes=("torch.int64",)),
         P("scaling", "float", default=True)),
        (f"py {FUS}:514", f"xpu {XACT}:104 bgmv_shrink_xpu (asserts: xpu, contiguous, "
         "inputs fp16/bf16 == lora_a dtype, indices int64)"),
        result="in_place", writes=("output_tensor",),
        facts=("inputs fp16/bf16 only; output fp16/bf16/fp32; indices int64 (-1: no LoRA)",
               "inputs, lora_a_weights, output_tensor, indices must be contiguous (asserts, "
               f"{XACT}:133-136; not checked statically: the caller's tensors)"),
    ),
    Row(
        "ipex.llm.functional.bgmv_expand",
        (P("inputs", "tensor"), P("lora_b_weights", "tensor"), P("output_tensor", "tensor"),
         P("lora_indices_tensor", "tensor", dtypes=("torch.int64",)),
         P("add_inputs", "bool", default=True)),
        (f"py {FUS}:542", f"xpu {XACT}:169 bgmv_expand_xpu -> bgmv_expand_with_slice"),
        result="in_place", writes=("output_tensor",),
    ),
    Row(
        "ipex.llm.functional.bgmv_expand_slice",
        (P("inputs", "tensor"), P("lora_b_weights", "tensor"), P("output_tensor", "tensor"),
         P("lora_indices_tensor", "tensor", dtypes=("torch.int64",)),
         P("slice_offset", "int"), P("slice_size", "int"),
         P("add_inputs", "bool", default=True)),
        (f"py {FUS}:572", f"xpu {XACT}:235 bgmv_expand_slice_xpu"),
        result="in_place", writes=("output_tensor",),
    ),
    Row(
        "ipex.llm.functional.sgmv_shrink",
        (P("inputs", "tensor"), P("lora_a_weights", "tensor"), P("output_tensor", "tensor"),
         P("b_seq_start_loc", "tensor"), P("seq_len_tensor", "tensor"),
         P("lora_indices_tensor", "tensor", dtypes=("torch.int64",)),
         P("batches", "int"), P("max_seq_length", "int"), P("scaling", "float")),
        (f"py {FUS}:614", f"xpu {XACT}:313 sgmv_shrink_xpu"),
        result="in_place", writes=("output_tensor",),
    ),
    Row(
        "ipex.llm.functional.sgmv_expand",
        (P("inputs", "tensor"), P("lora_b_weights", "tensor"), P("output_tensor", "tensor"),
         P("b_seq_start_loc", "tensor"), P("seq_len_tensor", "tensor"),
         P("lora_indices_tensor", "tensor", dtypes=("torch.int64",)),
         P("batches", "int"), P("max_seq_length", "int"),
         P("add_inputs", "bool", default=True)),
        (f"py {FUS}:660", f"xpu {XACT}:408 sgmv_expand_xpu"),
        result="in_place", writes=("output_tensor",),
    ),
    Row(
        "ipex.llm.functional.sgmv_expand_slice",
        (P("inputs", "tensor"), P("lora_b_weights", "tensor"), P("output_tensor", "tensor"),
         P("b_seq_start_loc", "tensor"), P("seq_len_tensor", "tensor"),
         P("lora_indices_tensor", "tensor", dtypes=("torch.int64",)),
         P("batches", "int"), P("max_seq_length", "int"), P("slice_offset", "int"),
         P("slice_size", "int"), P("add_inputs", "bool", default=True)),
        (f"py {FUS}:707", f"xpu {XACT}:501 sgmv_expand_slice_xpu"),
        result="in_place", writes=("output_tensor",),
    ),
    # ------------------------------------------------------------------ MoE
    Row(
        "ipex.llm.modules.GatedMLPMOE",
        (P("W13", "tensor", aliases=("w13",)), P("W2", "tensor", aliases=("w2",)),
         P("W3", "tensor?", default=True, aliases=("w3",)),
         P("use_prepack", "bool", default=True),
         P("w1_scale_inv", "tensor?", default=True), P("w2_scale_inv", "tensor?", default=True),
         P("a1_scale_inv", "tensor?", default=True), P("a2_scale_inv", "tensor?", default=True)),
        ("py intel_extension_for_pytorch/llm/modules/linear_fusion.py:450 GatedMLPMOE.__init__",
         "xpu intel_extension_for_pytorch/transformers/models/xpu/fusions/linear_fusion.py:104 "
         "_IPEXGatedMLPMOEXPU.__init__",
         "fact intel_extension_for_pytorch/llm/modules/linear_fusion.py:474 the XPU module is "
         "built on the first forward (init_on_device), not here",
         "fact intel_extension_for_pytorch/transformers/models/xpu/fusions/linear_fusion.py:"
         "118-125 W13.data / W2.data replaced by transpose(W, 1, 2).contiguous()"),
        result="value", extra={"module": "ipex.llm.modules.GatedMLPMOE.forward"},
        facts=("W13 [E, 2 * I, H], W2 [E, H, I] (gate first in W13)",
               "on the first forward the XPU build re-lays the parameters out IN PLACE "
               "(W13 becomes [E, H, 2 * I], W2 [E, I, H]): shapes read from them later change",
               "use_prepack is ignored on XPU (its default there is False)"),
    ),
    Row(
        "ipex.llm.modules.GatedMLPMOE.forward",
        (P("hidden_states", "tensor", aliases=("x",)), P("use_grouped_topk", "bool"),
         P("top_k", "int"), P("router_logits", "tensor"), P("renormalize", "bool"),
         P("topk_group", "int", default=True), P("num_expert_group", "int", default=True),
         P("custom_routing_function", "any", default=True),
         P("scoring_func", "str", default=True),
         P("e_score_correction_bias", "tensor?", default=True)),
        ("py intel_extension_for_pytorch/llm/modules/linear_fusion.py:489 GatedMLPMOE.forward",
         "xpu intel_extension_for_pytorch/transformers/models/xpu/fusions/linear_fusion.py:170 "
         "_IPEXGatedMLPMOEXPU.forward (topk_softmax, moe_scatter, moe_gemm, moe_gather)",
         "fact intel_extension_for_pytorch/transformers/models/xpu/fusions/linear_fusion.py:"
         "191 hidden_states unpacked as (num_tokens, hidden_dim): 2-D only"),
        result="returns",
        facts=("hidden_states 2-D [num_tokens, hidden]; returns a new tensor",
               "XPU scoring_func default is 'sigmoid' (the wrapper passes 'softmax')"),
    ),
    # ------------------------------------------------------------------ torch.xpu (torch 2.8.0)
    Row("torch.xpu.set_device", (P("device", "device?"),),
        ("py torch/xpu/__init__.py:195 (torch 2.8.0)",), result="none", live_signature=True),
    Row("torch.xpu.synchronize", (P("device", "device?", default=True),),
        ("py torch/xpu/__init__.py:413 (torch 2.8.0)",), result="none", live_signature=True),
    Row("torch.xpu.empty_cache", (),
        ("py torch/xpu/memory.py:13 (torch 2.8.0)",), result="none", live_signature=True),
    Row("torch.xpu.get_device_name", (P("device", "device?", default=True,
                                        aliases=("device_id",)),),
        ("py torch/xpu/__init__.py:208 (torch 2.8.0)",), result="value", live_signature=True),
    Row("torch.xpu.get_device_properties", (P("device", "device?", default=True,
                                              aliases=("device_id", "index", "local_rank")),),
        ("py torch/xpu/__init__.py:250 (torch 2.8.0)",), result="value", live_signature=True),
    Row("torch.xpu.reset_peak_memory_stats", (P("device", "device?", default=True),),
        ("py torch/xpu/memory.py:26 (torch 2.8.0)",), result="none", live_signature=True),
    Row("torch.xpu.max_memory_allocated", (P("device", "device?", default=True),),
        ("py torch/xpu/memory.py:136 (torch 2.8.0)",), result="value", live_signature=True),
    Row("torch.xpu.memory_stats", (P("device", "device?", default=True),),
        ("py torch/xpu/memory.py:64 (torch 2.8.0)",), result="value", live_signature=True),
    Row("torch.xpu.device_count", (),
        ("py torch/xpu/__init__.py:55 (torch 2.8.0, functools.lru_cache-wrapped)",),
        result="value", live_signature=True),
)

TABLE: dict[str, Row] = {row.name: row for row in ROWS}
