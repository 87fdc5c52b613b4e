"""Encoder-only models and pooling tasks through the plugin (CPU mode) against HF transformers.

Every engine runs float32 on a tiny random-weight checkpoint (tests/fixtures/tiny_models.py)
and the reference is transformers' own model class on the same weights, one prompt at a
time (no padding), float32. A causal mask in place of the bidirectional one, a sequence
attending to its neighbour in the batch, a lost position offset or token type all move
the pooled vectors far beyond the tolerances.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

# float32 both sides: measured differences are ~1e-6; a wrong mask or position moves
# embeddings by > 1e-1.
ATOL = 1e-4
MIN_COSINE = 0.99999
KV_CACHE_BYTES = 64 << 20
# Lengths in one batch: a 1-token sequence, short and long ones, not multiples of anything.
PROMPT_LENGTHS = (1, 7, 33, 130, 301)
TEXT = "The capital of France is Paris."


def random_prompts(lengths=PROMPT_LENGTHS, vocab_size: int = 768, seed: int = 0,
                   bos: int | None = 1) -> list[list[int]]:
    """Token ids >= 5 (no special token, no pad id): a leading BOS stands for [CLS]."""
    rng = random.Random(seed)
    prompts = []
    for n in lengths:
        body = [rng.randrange(5, vocab_size) for _ in range(n - (bos is not None))]
        prompts.append(([bos] if bos is not None else []) + body)
    return prompts


@contextmanager
def pooling_llm(model_dir, **kwargs) -> Iterator:
    """A float32 vllm.LLM with the in-process engine core (one process start less)."""
    from vllm import LLM

    from tests.fixtures.in_process import in_process_engine_core

    args = dict(model=str(model_dir), runner="pooling", dtype="float32", max_model_len=512,
                max_num_seqs=8, seed=0, enable_prefix_caching=False,
                kv_cache_memory_bytes=KV_CACHE_BYTES)
    args.update(kwargs)
    with in_process_engine_core():
        llm = LLM(**args)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


# Pair templates: BERT's [CLS] A [SEP] B [SEP] with B's token type 1, RoBERTa/XLM-R's
# <s> A </s></s> B </s> (one token type). <s>/</s> (ids 1/2) stand for [CLS]/[SEP].
BERT_TEMPLATE = ("<s> $A </s>", "<s> $A </s> $B:1 </s>:1")
ROBERTA_TEMPLATE = ("<s> $A </s>", "<s> $A </s> </s> $B </s>")
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "The capital of France is Paris.",
    "A spider has eight legs.",
    "def add(a, b):\n    return a + b",
    "Once upon a time there was a little robot who wanted to learn how to paint. Every "
    "morning it rolled to the window, looked at the garden and tried to mix the colors.",
]


def tiny_encoder(arch: str, **overrides):
    """The tiny ``arch`` checkpoint with a BERT- or RoBERTa-style tokenizer template (the
    shared tiny tokenizer only prepends BOS), in a sibling cache directory."""
    import shutil

    from tokenizers import Tokenizer, processors

    from tests.fixtures._cache import MARKER, build_dir_atomically
    from tests.fixtures.tiny_models import BOS, BOS_ID, EOS, EOS_ID, build_tiny_model

    model_dir = build_tiny_model(arch, **overrides)
    single, pair = ROBERTA_TEMPLATE if "roberta" in arch else BERT_TEMPLATE

    def build(tmp):
        for f in model_dir.iterdir():
            if f.name not in (MARKER, "tokenizer.json"):
                shutil.copy2(f, tmp / f.name)
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)])
        tok.save(str(tmp / "tokenizer.json"))

    out = model_dir.parent / f"{model_dir.name}-encoder-tokenizer"
    return build_dir_atomically(out, f"{model_dir.name}|{single}|{pair}", build)


def tokens(prompts):
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=p) for p in prompts]


# ---------------------------------------------------------------------------- HF reference


def hf_hidden_states(model_dir, prompts, model_class: str = "AutoModel", **call) -> list:
    """Last hidden states [len, hidden] of transformers' model, one prompt at a time."""
    import transformers

    model = getattr(transformers, model_class).from_pretrained(
        str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            out.append(model(input_ids=ids, **call).last_hidden_state[0])
    return out


def pool(hidden: torch.Tensor, how: str) -> torch.Tensor:
    vec = {"CLS": hidden[0], "MEAN": hidden.mean(0), "LAST": hidden[-1]}[how]
    return torch.nn.functional.normalize(vec, dim=-1)


def assert_vectors_close(got, want, what: str) -> None:
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g = torch.as_tensor(g, dtype=torch.float32)
        assert g.shape == w.shape, (what, i, g.shape, w.shape)
        cos = float(torch.nn.functional.cosine_similarity(g, w, dim=0))
        err = float((g - w).abs().max())
        assert cos > MIN_COSINE and err < ATOL, f"{what} #{i}: cosine {cos:.7f}, max |d| {err:.2e}"


# ---------------------------------------------------------------------------- BERT


@pytest.fixture(scope="module")
def bert_dir():
    from tests.fixtures.tiny_models import build_tiny_model

    return build_tiny_model("bert")


@pytest.mark.parametrize("pooling", ["CLS", "MEAN"])
def test_bert_embeddings_match_hf(bert_dir, pooling):
    from vllm.config import PoolerConfig

    prompts = random_prompts()
    with pooling_llm(bert_dir, pooler_config=PoolerConfig(pooling_type=pooling)) as llm:
        outs = llm.embed(tokens(prompts) + [TEXT], use_tqdm=False)
        # Not a Matryoshka model: vLLM refuses `dimensions` (the server test serves it as one).
        from vllm import PoolingParams

        with pytest.raises(ValueError, match="dimensions"):
            llm.embed(tokens(prompts[:1]), pooling_params=PoolingParams(dimensions=32),
                      use_tqdm=False)
    text_ids = list(outs[-1].prompt_token_ids)
    ref = [pool(h, pooling) for h in hf_hidden_states(bert_dir, prompts + [text_ids])]
    assert_vectors_close([o.outputs.embedding for o in outs], ref, f"BertModel {pooling}")


# ---------------------------------------------------------------------------- the kernel path


def _encoder_impl(num_heads, num_kv_heads, head_size, scale, sliding_window=None,
                  **config_kwargs):
    from vllm.attention.backends.abstract import AttentionType
    from vllm.config import SchedulerConfig, VllmConfig, set_current_vllm_config

    from vllm_xpu_plugin.attention.ipex_attn import IPEXAttentionImpl

    scheduler = SchedulerConfig(**{"enable_chunked_prefill": False, "max_model_len": 512,
                                   "max_num_batched_tokens": 512, **config_kwargs})
    with set_current_vllm_config(VllmConfig(scheduler_config=scheduler)):
        return IPEXAttentionImpl(num_heads, head_size, scale, num_kv_heads,
                                 sliding_window=sliding_window,
                                 attn_type=AttentionType.ENCODER_ONLY)


def _sdpa_reference(q, k, v, lengths, scale, window=None) -> torch.Tensor:
    """Plain float64 softmax(q k^T * scale) v per sequence; a window keeps |i - j| <= w."""
    out, start = [], 0
    rep = q.shape[1] // k.shape[1]
    for n in lengths:
        qs, ks, vs = (t[start:start + n].double().transpose(0, 1) for t in (q, k, v))
        ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
        logits = qs @ ks.transpose(1, 2) * scale
        if window is not None:
            pos = torch.arange(n)
            logits = logits.masked_fill((pos[:, None] - pos[None, :]).abs() > window,
                                        float("-inf"))
        out.append((torch.softmax(logits, -1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_size,scale,window", [
    (4, 4, 32, 32 ** -0.5, None),  # BERT: multi-head, the default scale
    (8, 2, 64, 0.3, None),  # GQA and a scale other than 1/sqrt(head_size)
    (4, 2, 32, 0.2, 8),  # ModernBERT-style local layer: |i - j| <= 8
])
def test_encoder_only_attention_matches_plain_softmax(dtype, heads, kv_heads, head_size, scale,
                                                      window):
    """The impl as vLLM's EncoderOnlyAttention builds it (vLLM's non-causal builder subclass
    of the plugin's), on a fused-qkv batch with padding rows, vs float64 softmax."""
    from vllm.attention.layers.encoder_only_attention import (
        create_encoder_only_attention_backend,
    )
    from vllm.v1.attention.backends.utils import CommonAttentionMetadata
    from vllm.v1.kv_cache_interface import EncoderOnlyAttentionSpec

    from vllm_xpu_plugin.attention.ipex_attn import IPEXAttentionBackend

    lengths, padding = (1, 5, 64, 17, 130), 3
    num_tokens = sum(lengths)
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(num_tokens + padding, (heads + 2 * kv_heads) * head_size,
                      generator=gen).to(dtype)
    q, k, v = qkv.split([heads * head_size, kv_heads * head_size, kv_heads * head_size], -1)
    q = q.view(-1, heads, head_size)
    k, v = (t.view(-1, kv_heads, head_size) for t in (k, v))

    backend = create_encoder_only_attention_backend(IPEXAttentionBackend)
    spec = EncoderOnlyAttentionSpec(block_size=16, num_kv_heads=kv_heads, head_size=head_size,
                                    dtype=dtype)
    builder = backend.get_builder_cls()(spec, ["layers.0.attn"], None, torch.device("cpu"))
    lens = torch.tensor(lengths, dtype=torch.int32)
    start_loc = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    start_loc[1:] = lens.cumsum(0)
    # As the runner builds it for encoder-only groups: a dummy block table and slots.
    common = CommonAttentionMetadata(
        query_start_loc=start_loc, query_start_loc_cpu=start_loc, seq_lens=lens,
        seq_lens_cpu=lens, num_computed_tokens_cpu=torch.zeros_like(lens),
        num_reqs=len(lengths), num_actual_tokens=num_tokens, max_query_len=max(lengths),
        max_seq_len=max(lengths), block_table_tensor=torch.zeros(len(lengths), 1,
                                                                 dtype=torch.int32),
        slot_mapping=torch.zeros(num_tokens, dtype=torch.int64))
    metadata = builder.build(0, common)
    assert metadata.causal is False

    impl = _encoder_impl(heads, kv_heads, head_size, scale, sliding_window=window)
    output = torch.full((num_tokens + padding, heads, head_size), 7.0, dtype=dtype)
    impl.forward(None, q, k, v, torch.tensor([]), metadata, output=output)

    want = _sdpa_reference(q[:num_tokens], k[:num_tokens], v[:num_tokens], lengths, scale,
                           window)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(output[:num_tokens].double(), want, **tol)
    assert bool((output[num_tokens:] == 7.0).all()), "padding rows were written"


def test_encoder_only_attention_refuses_chunked_prefill():
    """Chunks of a prompt would attend only within the chunk: refused when the model is
    built (vLLM enables chunked prefill for LAST pooling)."""
    with pytest.raises(NotImplementedError, match="chunked prefill"):
        _encoder_impl(4, 4, 32, 32 ** -0.5, enable_chunked_prefill=True)


# ---------------------------------------------------------------------------- other models


@pytest.mark.parametrize("arch,model_class", [("roberta", "RobertaModel"),
                                              ("xlm-roberta", "XLMRobertaModel")])
def test_roberta_family_embeddings_match_hf(arch, model_class):
    """CLS embeddings (vLLM's default for these); positions start at pad_token_id + 1."""
    model_dir = tiny_encoder(arch)
    prompts = random_prompts(seed=1)
    with pooling_llm(model_dir) as llm:
        outs = llm.embed(tokens(prompts) + [TEXT], use_tqdm=False)
    text_ids = list(outs[-1].prompt_token_ids)
    assert text_ids[0] == 1 and text_ids[-1] == 2, text_ids  # <s> ... </s>
    ref = [pool(h, "CLS") for h in hf_hidden_states(model_dir, prompts + [text_ids],
                                                    model_class)]
    assert_vectors_close([o.outputs.embedding for o in outs], ref, model_class)


def hf_pair_logits(model_dir, model_class: str, query: str, documents, zero_types=False):
    """Logits [num_docs, num_labels] of HF's classifier on (query, document) pairs."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = getattr(transformers, model_class).from_pretrained(
        str(model_dir), dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for doc in documents:
            enc = tok(query, doc, return_tensors="pt")
            if zero_types:
                enc["token_type_ids"] = torch.zeros_like(enc["token_type_ids"])
            rows.append(model(**enc).logits[0])
    return torch.stack(rows)


@pytest.mark.parametrize("arch,model_class", [
    ("bert-seq-cls", "BertForSequenceClassification"),
    ("xlm-roberta-seq-cls", "XLMRobertaForSequenceClassification"),
])
def test_cross_encoder_scores_match_hf(arch, model_class):
    """LLM.score on (query, document) pairs = sigmoid of HF's single logit; for BERT the
    document's token type 1 must reach the model (checked to change HF's scores)."""
    model_dir = tiny_encoder(arch)
    with pooling_llm(model_dir) as llm:
        outs = llm.score(QUERY, DOCUMENTS, use_tqdm=False)
    got = torch.tensor([o.outputs.score for o in outs])
    want = torch.sigmoid(hf_pair_logits(model_dir, model_class, QUERY, DOCUMENTS)[:, 0])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert float(want.max() - want.min()) > 0.05, want  # the scores tell documents apart
    if arch.startswith("bert"):
        untyped = torch.sigmoid(hf_pair_logits(model_dir, model_class, QUERY, DOCUMENTS,
                                               zero_types=True)[:, 0])
        assert float((untyped - want).abs().max()) > 10 * ATOL


def test_decoder_classifier_matches_hf():
    """Qwen2ForSequenceClassification (a reward/classifier head on the last token) through
    LLM.classify: softmax of HF's logits, causal paged attention."""
    import transformers

    from tests.fixtures.tiny_models import build_tiny_model

    model_dir = build_tiny_model("qwen2-seq-cls")
    prompts = random_prompts(seed=2)
    with pooling_llm(model_dir) as llm:
        outs = llm.classify(tokens(prompts), use_tqdm=False)
    model = transformers.Qwen2ForSequenceClassification.from_pretrained(
        str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        want = [torch.softmax(model(input_ids=torch.tensor([p])).logits[0], -1)
                for p in prompts]
    got = [torch.tensor(o.outputs.probs) for o in outs]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0, msg=f"prompt {i}")


def test_decoder_last_token_embeddings_match_hf():
    """Qwen3-Embedding style: a Qwen3ForCausalLM checkpoint served with runner="pooling"
    (vLLM's embed conversion: LAST pooling, normalised) vs HF Qwen3Model's last token."""
    from tests.fixtures.tiny_models import build_tiny_model

    model_dir = build_tiny_model("qwen3-embedding")
    prompts = random_prompts(seed=3)
    with pooling_llm(model_dir) as llm:
        outs = llm.embed(tokens(prompts), use_tqdm=False)
    ref = [pool(h, "LAST") for h in hf_hidden_states(model_dir, prompts, "Qwen3Model")]
    assert_vectors_close([o.outputs.embedding for o in outs], ref, "Qwen3 LAST")


def test_modernbert_local_and_global_layers_match_hf():
    """ModernBERT: rotary positions, local layers with a +-8 window (prompts up to 301
    tokens), a global layer; CLS pooling. Guard: the window changes HF's output."""
    from tests.fixtures.tiny_models import build_tiny_model

    model_dir = tiny_encoder("modernbert")
    prompts = random_prompts(seed=4)
    with pooling_llm(model_dir) as llm:
        outs = llm.embed(tokens(prompts), use_tqdm=False)
    ref = [pool(h, "CLS") for h in hf_hidden_states(model_dir, prompts, "ModernBertModel")]
    assert_vectors_close([o.outputs.embedding for o in outs], ref, "ModernBERT CLS")
    wide = build_tiny_model("modernbert", local_attention=1024)  # same weights, no window
    unwindowed = [pool(h, "CLS") for h in hf_hidden_states(wide, prompts[-1:],
                                                           "ModernBertModel")]
    assert float((unwindowed[0] - ref[-1]).abs().max()) > 100 * ATOL

def test_bert_with_last_pooling_is_refused_at_startup(bert_dir):
    """LAST pooling makes vLLM enable chunked prefill; the encoder-only layers would then see
    partial prompts, so the engine refuses to start, naming the flag that fixes it. Last in
    this file: a failed in-process engine start leaves state behind."""
    from vllm.config import PoolerConfig

    with pytest.raises(Exception, match="--no-enable-chunked-prefill"):  # noqa: SIM117
        with pooling_llm(bert_dir, pooler_config=PoolerConfig(pooling_type="LAST")):
            pass

