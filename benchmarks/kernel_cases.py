"""The kernel cases of benchmarks/kernels.py: plugin call, plain-torch reference, bytes.

Each case owns its inputs; ``plugin()`` and ``reference()`` run one call each and
``check()`` returns the max abs difference between their outputs (run before timing).
Bytes are what the kernel must move at least (inputs read once, outputs written once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Case:
    name: str
    shape: str
    plugin: Callable[[], object]
    reference: Callable[[], object]
    check: Callable[[], float]
    bytes: int
    flops: int = 0


def _randn(*shape, dtype, seed=0, scale=1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# --------------------------------------------------------------------------- attention


class PagedAttentionSetup:
    """A paged KV cache in the plugin's layout, a block table and one batch's metadata,
    built the way the runner hands them to the backend."""

    def __init__(self, args, dtype: torch.dtype, query_lens: list[int], seq_lens: list[int]):
        from vllm_xpu_plugin import device
        from vllm_xpu_plugin.attention.ipex_attn import (
            IPEXAttentionImpl,
            IPEXAttentionMetadata,
        )
        from vllm_xpu_plugin.kernels import attention as attention_kernels

        self.device = device
        self.attention_kernels = attention_kernels
        bs, hd = args.block_size, args.head_size
        self.hq, self.hkv, self.hd, self.bs = args.heads, args.kv_heads, hd, bs
        self.scale = 1.0 / math.sqrt(hd)
        self.query_lens, self.seq_lens = query_lens, seq_lens
        blocks_per_seq = [-(-s // bs) for s in seq_lens]
        num_blocks = sum(blocks_per_seq) + 1
        shape = device.kv_cache_shape(num_blocks, bs, self.hkv, hd)
        self.layout = device.kv_cache_layout()
        self.kv_cache = _randn(*shape, dtype=dtype, seed=1)
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(2))
        width = max(blocks_per_seq)
        self.block_table = torch.zeros(len(seq_lens), width, dtype=torch.int32)
        start = 0
        for i, nb in enumerate(blocks_per_seq):
            self.block_table[i, :nb] = perm[start:start + nb].to(torch.int32)
            start += nb
        num_tokens = sum(query_lens)
        self.query = _randn(num_tokens, self.hq, hd, dtype=dtype, seed=3)
        self.key = _randn(num_tokens, self.hkv, hd, dtype=dtype, seed=4)
        self.value = _randn(num_tokens, self.hkv, hd, dtype=dtype, seed=5)
        self.output = torch.empty_like(self.query)
        # The new tokens sit at the end of each sequence.
        slots, positions = [], []
        for i, (q, s) in enumerate(zip(query_lens, seq_lens, strict=True)):
            for pos in range(s - q, s):
                block = int(self.block_table[i, pos // bs])
                slots.append(block * bs + pos % bs)
                positions.append(pos)
        q_loc = torch.tensor([0, *query_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        s_loc = torch.tensor([0, *seq_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        self.metadata = IPEXAttentionMetadata(
            num_actual_tokens=num_tokens,
            max_query_len=max(query_lens),
            query_start_loc=q_loc,
            max_seq_len=max(seq_lens),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            seq_start_loc=s_loc,
            block_table=self.block_table,
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
        )
        # Query head -> KV head, for IPEX's single-query kernel.
        self.head_mapping = torch.arange(self.hkv, dtype=torch.int32).repeat_interleave(
            self.hq // self.hkv)
        torch.set_default_dtype(dtype)  # the impl validates the model dtype at build
        try:
            self.impl = IPEXAttentionImpl(self.hq, hd, self.scale, num_kv_heads=self.hkv)
        finally:
            torch.set_default_dtype(torch.float32)

    def plugin(self) -> torch.Tensor:
        return self.impl.forward(None, self.query, self.key, self.value, self.kv_cache,
                                 self.metadata, output=self.output)

    def single_query(self) -> torch.Tensor:
        """IPEX's CPU decode kernel (one query per sequence), KV write included."""
        paged = self.device.ipex().llm.modules.PagedAttention
        key_cache, value_cache = self.kv_cache.unbind(0)
        self.attention_kernels.write_kv_cache(self.key, self.value, key_cache, value_cache,
                                   self.metadata.slot_mapping)
        paged.single_query_cached_kv_attention(
            self.output, self.query, key_cache, value_cache, self.head_mapping, self.scale,
            self.block_table, self.metadata.seq_lens, self.bs, max(self.seq_lens), None)
        return self.output

    def _pages(self, i: int, cache: torch.Tensor) -> torch.Tensor:
        """Sequence i's cached K or V as [kv_heads, seq_len, head_size]."""
        nb = -(-self.seq_lens[i] // self.bs)
        pages = cache[self.block_table[i, :nb].long()]
        if self.layout == "HND":  # [nb, heads, bs, hd]
            pages = pages.transpose(0, 1)
        else:  # [nb, bs, heads, hd]
            pages = pages.permute(2, 0, 1, 3)
        return pages.reshape(self.hkv, nb * self.bs, self.hd)[:, : self.seq_lens[i]]

    def reference(self) -> torch.Tensor:
        """Plain torch: write the new K/V into the pages, gather each sequence's pages,
        attend with scaled_dot_product_attention (causal over the cached context)."""
        key_cache, value_cache = self.kv_cache.unbind(0)
        slots = self.metadata.slot_mapping
        blocks, offsets = slots // self.bs, slots % self.bs
        if self.layout == "HND":
            key_cache[blocks, :, offsets] = self.key
            value_cache[blocks, :, offsets] = self.value
        else:
            key_cache[blocks, offsets] = self.key
            value_cache[blocks, offsets] = self.value
        if len(set(self.query_lens)) == 1 and len(set(self.seq_lens)) == 1:
            return self._reference_uniform(key_cache, value_cache)
        out, start = [], 0
        for i, (q_len, s_len) in enumerate(zip(self.query_lens, self.seq_lens, strict=True)):
            q = self.query[start:start + q_len].transpose(0, 1)  # [hq, q, hd]
            k, v = self._pages(i, key_cache), self._pages(i, value_cache)
            # Query j sits at position s_len - q_len + j and sees keys 0 .. that position.
            mask = (torch.arange(s_len)[None, :]
                    <= torch.arange(s_len - q_len, s_len)[:, None])
            o = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)
            out.append(o.transpose(0, 1))
            start += q_len
        return torch.cat(out)

    def _reference_uniform(self, key_cache, value_cache) -> torch.Tensor:
        """All sequences alike (a decode batch): one batched gather + SDPA."""
        n, s = len(self.seq_lens), self.seq_lens[0]
        q_len = self.query_lens[0]
        nb = -(-s // self.bs)
        idx = self.block_table[:, :nb].long()

        def gather(cache):
            pages = cache[idx]  # [n, nb, ...]
            if self.layout == "HND":
                pages = pages.transpose(1, 2)
            else:
                pages = pages.permute(0, 3, 1, 2, 4)
            return pages.reshape(n, self.hkv, nb * self.bs, self.hd)[:, :, :s]

        q = self.query.view(n, q_len, self.hq, self.hd).transpose(1, 2)
        mask = None
        if q_len > 1:
            mask = torch.arange(s)[None, :] <= torch.arange(s - q_len, s)[:, None]
        o = torch.nn.functional.scaled_dot_product_attention(
            q, gather(key_cache), gather(value_cache), attn_mask=mask, scale=self.scale,
            enable_gqa=True)
        return o.transpose(1, 2).reshape(-1, self.hq, self.hd)

    def check(self) -> float:
        got = self.plugin().clone()
        return _max_err(got, self.reference())

    def bytes(self) -> int:
        e = self.kv_cache.element_size()
        kv_read = 2 * sum(self.seq_lens) * self.hkv * self.hd * e
        new = sum(self.query_lens) * (2 * self.hq + 2 * self.hkv) * self.hd * e
        return kv_read + new

    def flops(self) -> int:
        # QK^T and PV over the keys each query sees (causal), per query head.
        pairs = sum(sum(s - q + j + 1 for j in range(q))
                    for q, s in zip(self.query_lens, self.seq_lens, strict=True))
        return 4 * pairs * self.hq * self.hd


def attention_cases(args, dtype) -> list[Case]:
    cases = []
    decode = PagedAttentionSetup(args, dtype, [1] * args.batch, [args.context] * args.batch)
    cases.append(Case("attn decode", f"{args.batch}x{args.context} ctx, "
                      f"{args.heads}/{args.kv_heads}x{args.head_size}",
                      decode.plugin, decode.reference, decode.check, decode.bytes(),
                      decode.flops()))
    if decode.device.is_cpu_mode():
        # IPEX's single-query decode kernel called directly on the same batch. The row
        # above is the backend's path, which takes whichever decode kernel the engine
        # measured faster on this machine (kernels/attention.py), so on a machine where
        # that is single-query the two rows time the same kernel.
        cases.append(Case("attn decode, IPEX single-query kernel (alt.)", cases[0].shape,
                          decode.single_query, decode.reference,
                          lambda: _max_err(decode.single_query().clone(), decode.reference()),
                          decode.bytes(), decode.flops()))
    # A chunked-prefill step as the scheduler builds it: one prompt's next chunk on top of
    # the chunks already cached, batched with the running decodes.
    n_dec = args.batch - 1
    q_lens = [args.chunk] + [1] * n_dec
    s_lens = [args.context + args.chunk] + [args.context] * n_dec
    mixed = PagedAttentionSetup(args, dtype, q_lens, s_lens)
    cases.append(Case("attn chunked prefill",
                      f"{args.chunk}+{args.context} ctx & {n_dec} decodes",
                      mixed.plugin, mixed.reference, mixed.check, mixed.bytes(),
                      mixed.flops()))
    return cases


# --------------------------------------------------------------------------- ops


def _build(cls, *a, **kw):
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config

    config = VllmConfig(compilation_config=CompilationConfig())
    config.compilation_config.custom_ops = ["all"]
    with set_current_vllm_config(config):
        return cls(*a, **kw)


def op_cases(args, dtype) -> list[Case]:
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # registers the plugin's ops (vllm.general_plugins entry point)
    e = torch.tensor([], dtype=dtype).element_size()
    n, h, eps = args.tokens, args.hidden, 1e-6
    cases = []

    norm = _build(RMSNorm, h, eps=eps).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(_randn(h, dtype=dtype, seed=6, scale=0.1) + 1)
    x = _randn(n, h, dtype=dtype, seed=7)
    w = norm.weight.data

    def ref_rms(inp):
        f = inp.float()
        return (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + eps)).to(dtype) * w

    cases.append(Case("RMSNorm", f"{n}x{h}", lambda: norm(x), lambda: ref_rms(x),
                      lambda: _max_err(norm(x), ref_rms(x)), 2 * n * h * e))

    residual = _randn(n, h, dtype=dtype, seed=8)
    res_plugin, res_ref = residual.clone(), residual.clone()

    def plugin_add():
        res_plugin.copy_(residual)  # keep the residual from growing across calls
        return norm(x, res_plugin)

    def ref_add():
        res_ref.copy_(residual)
        res_ref.add_(x)
        return ref_rms(res_ref), res_ref

    def check_add():
        (out, res), (ref_out, ref_res) = plugin_add(), ref_add()
        return max(_max_err(out, ref_out), _max_err(res, ref_res))

    # The copy that resets the residual is in both sides; bytes count the kernel only.
    cases.append(Case("fused add+RMSNorm", f"{n}x{h}", plugin_add, ref_add, check_add,
                      4 * n * h * e))

    hq, hkv, hd = args.heads, args.kv_heads, args.head_size
    max_pos = 8192
    rope = _build(RotaryEmbedding, hd, hd, max_pos, 10000.0, True, dtype)
    positions = torch.randint(0, max_pos, (n,), generator=torch.Generator().manual_seed(9))
    q0 = _randn(n, hq * hd, dtype=dtype, seed=10)
    k0 = _randn(n, hkv * hd, dtype=dtype, seed=11)
    q, k = q0.clone(), k0.clone()

    def ref_rope(qq, kk):
        cos, sin = rope.cos_sin_cache.index_select(0, positions).to(dtype).chunk(2, dim=-1)
        cos, sin = cos[:, None, :], sin[:, None, :]

        def rot(t, heads):
            t = t.view(n, heads, hd)
            a, b = t[..., : hd // 2], t[..., hd // 2:]
            return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).view(n, -1)

        return rot(qq, hq), rot(kk, hkv)

    def check_rope():
        # The returned tensors (CPU mode rotates into new ones; XPU in place).
        qq, kk = rope(positions, q0.clone(), k0.clone())
        rq, rk = ref_rope(q0, k0)
        return max(_max_err(qq, rq), _max_err(kk, rk))

    # Rotating the same q/k again each call is fine for timing.
    cases.append(Case("rotary (neox)", f"{n} tok, {hq}/{hkv}x{hd}",
                      lambda: rope(positions, q, k), lambda: ref_rope(q, k), check_rope,
                      2 * n * (hq + hkv) * hd * e + n * hd * e))

    d = args.intermediate
    act = _build(SiluAndMul)
    xa = _randn(n, 2 * d, dtype=dtype, seed=12)

    def ref_silu(t):
        return torch.nn.functional.silu(t[:, :d]) * t[:, d:]

    cases.append(Case("SiluAndMul", f"{n}x{2 * d}", lambda: act(xa), lambda: ref_silu(xa),
                      lambda: _max_err(act(xa), ref_silu(xa)), 3 * n * d * e))
    return cases


def build_cases(args, dtype) -> list[Case]:
    return attention_cases(args, dtype) + op_cases(args, dtype)
