"""Unit tests of the torch rejection sampler against independent references.

Greedy outputs are compared token for token with a per-request Python loop written from
the paper's definition; the random path is checked statistically: many samples over a
small vocabulary must follow the target distribution (softmax with temperature, top-k,
top-p computed here in numpy), which a sampler that is off in acceptance or in the
recovered distribution fails by a wide margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from vllm.v1.sample.logits_processor import LogitsProcessors
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.rejection_sampler import PLACEHOLDER_TOKEN_ID, RejectionSampler
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

from vllm_xpu_plugin.spec_decode import TorchRejectionSampler

VOCAB = 8
BONUS = 5  # a recognisable bonus token id
# TV distance between the empirical and the target distribution. With N samples over 8
# tokens the sampling noise is ~ sqrt(8 / N) / 2; the bugs these tests catch move the
# distribution by 0.1-0.3.
TV_BOUND = 0.03
CHI2_MIN_PVALUE = 1e-4


def make_sampling_metadata(temperature=None, top_k=None, top_p=None, generators=None,
                           *, batch_size: int) -> SamplingMetadata:
    """Greedy rows have temperature 0.0 (as vLLM's InputBatch stores them)."""
    def tensor(values, dtype):
        return None if values is None else torch.tensor(values, dtype=dtype)

    temp = tensor(temperature, torch.float32)
    all_greedy = temp is None or bool((temp < 1e-5).all())
    all_random = temp is not None and bool((temp >= 1e-5).all())
    zeros = torch.zeros(batch_size)
    return SamplingMetadata(
        temperature=None if all_greedy else temp,
        all_greedy=all_greedy,
        all_random=all_random,
        top_p=tensor(top_p, torch.float32),
        top_k=tensor(top_k, torch.int32),
        generators=generators or {},
        max_num_logprobs=None,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=zeros,
        presence_penalties=zeros,
        repetition_penalties=torch.ones(batch_size),
        output_token_ids=[[] for _ in range(batch_size)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(),
    )


def run_sampler(draft_token_ids: list[list[int]], target_logits: torch.Tensor,
                sampling_metadata: SamplingMetadata, draft_probs=None,
                bonus_token_ids=None) -> torch.Tensor:
    # (SpecDecodeMetadata.make_dummy flattens with sum(lists, []): quadratic.)
    num_draft = [len(ids) for ids in draft_token_ids]
    flat = [t for ids in draft_token_ids for t in ids]
    zeros = torch.zeros(len(flat), dtype=torch.int32)
    metadata = SpecDecodeMetadata(
        draft_token_ids=torch.tensor(flat, dtype=torch.int32),
        num_draft_tokens=num_draft,
        cu_num_draft_tokens=torch.tensor(np.cumsum(num_draft), dtype=torch.int32),
        target_logits_indices=zeros, bonus_logits_indices=zeros, logits_indices=zeros)
    batch_size = len(draft_token_ids)
    if bonus_token_ids is None:
        bonus_token_ids = torch.full((batch_size, 1), BONUS, dtype=torch.int32)
    return TorchRejectionSampler()(metadata, draft_probs, target_logits, bonus_token_ids,
                                   sampling_metadata)


def reference_target_probs(logits: np.ndarray, temperature: float, top_k: int,
                           top_p: float) -> np.ndarray:
    """softmax(logits / T), restricted to the top-k tokens, then to the top-p nucleus
    (tokens whose ascending cumulative probability exceeds 1 - p, at least one)."""
    z = logits.astype(np.float64) / temperature
    order = np.argsort(z, kind="stable")  # ascending
    keep = np.zeros_like(z, dtype=bool)
    keep[order[len(z) - top_k:]] = True
    z = np.where(keep, z, -np.inf)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    sorted_probs = probs[order]
    cumulative = np.cumsum(sorted_probs)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[-1] = False
    keep2 = np.ones_like(keep)
    keep2[order[drop_sorted]] = False
    probs = np.where(keep2, probs, 0.0)
    return probs / probs.sum()


def reference_greedy(draft_token_ids: list[list[int]], target_logits: torch.Tensor,
                     bonus: list[int]) -> list[list[int]]:
    out, row = [], 0
    for req, drafts in enumerate(draft_token_ids):
        tokens = []
        for d in drafts:
            best = int(np.argmax(target_logits[row].float().numpy()))
            row += 1
            tokens.append(best)
            if best != d:
                break
        else:
            tokens.append(bonus[req])
        # Skip the target rows left after a rejection.
        row += len(drafts) - min(len(drafts), len(tokens))
        out.append(tokens)
    return out


def parse(output: torch.Tensor) -> list[list[int]]:
    return RejectionSampler.parse_output(output, vocab_size=1 << 30)


def tv_distance(samples: np.ndarray, probs: np.ndarray) -> float:
    counts = np.bincount(samples, minlength=len(probs)).astype(np.float64)
    return 0.5 * float(np.abs(counts / counts.sum() - probs).sum())


def chi2_pvalue(samples: np.ndarray, probs: np.ndarray) -> float:
    counts = np.bincount(samples, minlength=len(probs))
    support = probs > 0
    if counts[~support].any():
        return 0.0  # a token outside the target's support: impossible under p
    expected = probs[support] * counts.sum()
    return float(stats.chisquare(counts[support], expected).pvalue)


def assert_distribution(samples: np.ndarray, probs: np.ndarray, what: str) -> None:
    tv = tv_distance(samples, probs)
    pvalue = chi2_pvalue(samples, probs)
    assert tv < TV_BOUND and pvalue > CHI2_MIN_PVALUE, (
        f"{what}: TV={tv:.4f} (bound {TV_BOUND}), chi2 p={pvalue:.2e}, "
        f"empirical={np.bincount(samples, minlength=len(probs)) / len(samples)}, "
        f"target={probs}")


# ----------------------------------------------------------------------------- greedy


def test_greedy_matches_reference_loop():
    gen = torch.Generator().manual_seed(0)
    draft_token_ids = [[1, 2, 3], [], [4], [0, 0, 0, 0], [7, 6]]
    num_tokens = sum(map(len, draft_token_ids))
    logits = torch.randn(num_tokens, VOCAB, generator=gen)
    # Force some acceptances: make the draft token the argmax in chosen rows.
    flat = [d for ds in draft_token_ids for d in ds]
    for row in (0, 1, 3, 4, 5, 6, 7, 8):
        logits[row, flat[row]] = 10.0
    logits[2, flat[2]] = -10.0  # request 0 rejects its third draft
    bonus = [11, 12, 13, 14, 15]
    out = run_sampler(draft_token_ids, logits.to(torch.bfloat16),
                      make_sampling_metadata(batch_size=5),
                      bonus_token_ids=torch.tensor(bonus, dtype=torch.int32).unsqueeze(1))
    assert out.dtype == torch.int32 and out.shape == (5, 5)
    expected = reference_greedy(draft_token_ids, logits.to(torch.bfloat16), bonus)
    assert parse(out) == expected
    # Hand-checked anchors: request 0 accepts 1, 2 and rejects 3; request 1 has no
    # drafts and emits only its bonus; request 3 accepts all four drafts plus the bonus.
    assert expected[1] == [12] and expected[3] == [0, 0, 0, 0, 14]
    assert out[1, 1:].tolist() == [PLACEHOLDER_TOKEN_ID] * 4


def test_greedy_random_inputs_many_batches():
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        batch = int(torch.randint(1, 6, (1,), generator=gen))
        drafts = [torch.randint(0, 3, (int(torch.randint(0, 5, (1,), generator=gen)),),
                                generator=gen).tolist() for _ in range(batch)]
        n = sum(map(len, drafts))
        # A 3-token-heavy vocabulary so that drafts are accepted often.
        logits = torch.randn(n, VOCAB, generator=gen)
        logits[:, 3:] -= 5
        bonus = torch.randint(0, VOCAB, (batch, 1), generator=gen, dtype=torch.int32)
        if n == 0:
            continue
        out = run_sampler(drafts, logits, make_sampling_metadata(batch_size=batch),
                          bonus_token_ids=bonus)
        assert parse(out) == reference_greedy(drafts, logits, bonus[:, 0].tolist())


# ----------------------------------------------------------------------------- random

CONFIGS = {
    # name: (temperature, top_k, top_p)
    "plain": (1.0, VOCAB, 1.0),
    "temp0.6_topk4": (0.6, 4, 1.0),
    "temp1.5_topp0.8": (1.5, VOCAB, 0.8),
    "topk5_topp0.7": (1.0, 5, 0.7),
}


@pytest.fixture(scope="module")
def target_logits_rows() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(VOCAB, generator=gen) * 1.5 for _ in range(2)]


def test_ngram_random_first_token_follows_target_per_request_mix(target_logits_rows):
    """One call over a batch mixing greedy rows and four random configurations: each
    configuration's first emitted token must follow its own target distribution."""
    torch.manual_seed(3)
    logits_row = target_logits_rows[0]
    draft = int(torch.argsort(logits_row)[-2])  # a likely but not the likeliest token
    per_config = 4000
    names = list(CONFIGS) + ["greedy"]
    rows = [name for _ in range(per_config) for name in names]
    temperature = [0.0 if n == "greedy" else CONFIGS[n][0] for n in rows]
    top_k = [VOCAB if n == "greedy" else CONFIGS[n][1] for n in rows]
    top_p = [1.0 if n == "greedy" else CONFIGS[n][2] for n in rows]
    meta = make_sampling_metadata(temperature, top_k, top_p, batch_size=len(rows))
    out = run_sampler([[draft]] * len(rows), logits_row.repeat(len(rows), 1), meta)
    first = out[:, 0].numpy()
    rows_arr = np.array(rows)
    for name, (temp, k, p) in CONFIGS.items():
        probs = reference_target_probs(logits_row.numpy(), temp, k, p)
        assert_distribution(first[rows_arr == name], probs, name)
    greedy_first = first[rows_arr == "greedy"]
    assert (greedy_first == int(logits_row.argmax())).all()
    # Greedy rows rejected the (non-argmax) draft, so they carry no bonus.
    assert (out[rows_arr == "greedy", 1] == PLACEHOLDER_TOKEN_ID).all()


def test_ngram_random_second_position_follows_target(target_logits_rows):
    """Given the first draft was accepted, the token at position 2 follows the second
    target distribution; accepted-everything rows end with the bonus token."""
    torch.manual_seed(4)
    first_logits, second_logits = target_logits_rows
    d1 = int(first_logits.argmax())
    d2 = int(torch.argsort(second_logits)[-3])
    n = 30000
    logits = torch.stack([first_logits, second_logits]).repeat(n, 1)
    meta = make_sampling_metadata([1.0] * n, batch_size=n)
    out = run_sampler([[d1, d2]] * n, logits, meta).numpy()
    p1 = reference_target_probs(first_logits.numpy(), 1.0, VOCAB, 1.0)
    assert_distribution(out[:, 0], p1, "position 1")
    after_accept = out[out[:, 0] == d1]
    p2 = reference_target_probs(second_logits.numpy(), 1.0, VOCAB, 1.0)
    assert_distribution(after_accept[:, 1], p2, "position 2 given position 1 accepted")
    both = after_accept[after_accept[:, 1] == d2]
    assert len(both) > 0 and (both[:, 2] == BONUS).all()
    rejected = out[out[:, 0] != d1]
    assert (rejected[:, 1:] == PLACEHOLDER_TOKEN_ID).all()


def test_random_with_draft_probs_follows_target(target_logits_rows):
    """General case (draft model with probabilities q): drafts sampled from q, the output
    must still follow p -- the defining property of speculative sampling."""
    torch.manual_seed(5)
    logits_row = target_logits_rows[1]
    q = torch.softmax(torch.randn(VOCAB) * 2, dim=-1)
    n = 30000
    drafts = torch.multinomial(q, n, replacement=True)
    meta = make_sampling_metadata([1.0] * n, batch_size=n)
    out = run_sampler([[int(d)] for d in drafts], logits_row.repeat(n, 1), meta,
                      draft_probs=q.repeat(n, 1).contiguous())
    probs = reference_target_probs(logits_row.numpy(), 1.0, VOCAB, 1.0)
    assert_distribution(out[:, 0].numpy(), probs, "with draft probabilities")


def test_acceptance_rate_matches_target_probability(target_logits_rows):
    """ngram acceptance of draft d happens with probability p(d)."""
    torch.manual_seed(6)
    logits_row = target_logits_rows[0]
    probs = reference_target_probs(logits_row.numpy(), 1.0, VOCAB, 1.0)
    draft = int(np.argsort(probs)[-3])
    n = 20000
    out = run_sampler([[draft]] * n, logits_row.repeat(n, 1),
                      make_sampling_metadata([1.0] * n, batch_size=n))
    accepted = (out[:, 1] == BONUS).float().mean().item()
    assert abs(accepted - probs[draft]) < 0.02, (accepted, probs[draft])


def test_token_outside_top_k_is_never_accepted(target_logits_rows):
    """top-k = 1 leaves the target all its mass on the argmax: a different draft token
    has p = 0 and must always be replaced by the argmax."""
    torch.manual_seed(7)
    logits_row = target_logits_rows[0]
    best = int(logits_row.argmax())
    draft = int(torch.argsort(logits_row)[-2])
    n = 20000
    out = run_sampler([[draft]] * n, logits_row.repeat(n, 1),
                      make_sampling_metadata([1.0] * n, top_k=[1] * n, batch_size=n))
    assert (out[:, 0] == best).all() and (out[:, 1] == PLACEHOLDER_TOKEN_ID).all()


def test_seeded_generators_reproducible(target_logits_rows):
    logits_row = target_logits_rows[0]
    draft = int(torch.argsort(logits_row)[-2])
    n = 64

    def once(seed_offset: int) -> torch.Tensor:
        gens = {i: torch.Generator().manual_seed(100 + i + seed_offset) for i in range(n)}
        meta = make_sampling_metadata([1.0] * n, generators=gens, batch_size=n)
        return run_sampler([[draft, draft]] * n, logits_row.repeat(2 * n, 1), meta)

    assert torch.equal(once(0), once(0))
    assert not torch.equal(once(0), once(1000))


def test_bad_input_is_rejected():
    meta = make_sampling_metadata(batch_size=1)
    with pytest.raises(ValueError, match="target logits"):
        run_sampler([[1, 2]], torch.randn(3, VOCAB), meta)
