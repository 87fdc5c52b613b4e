"""Rejection sampling for speculative decoding in plain torch (no Triton).

vLLM 0.11's ``RejectionSampler`` runs four Triton kernels, which cannot run in CPU mode
and would tie Intel GPUs to triton-xpu. :class:`TorchRejectionSampler` replaces only
``forward`` with vectorised torch ops on whatever device the logits live on; the output
layout ([batch_size, max_spec_len + 1] int32, rejected slots = -1) and therefore the
inherited ``parse_output`` stay vLLM's.

Algorithm (https://arxiv.org/abs/2211.17192), per request, for draft tokens d_1..d_n:
  * greedy request: accept d_i while d_i == argmax(target_i); at the first mismatch emit
    argmax(target_i) and stop;
  * random request: accept d_i with probability min(1, p(d_i) / q(d_i)), where p is the
    target distribution after temperature, top-k and top-p, and q the draft distribution
    (ngram has no draft probabilities: q is one-hot on d_i, so the ratio is p(d_i)); at
    the first rejection emit a token sampled from max(p - q, 0) (renormalised) and stop;
  * if all n drafts are accepted, append the bonus token (sampled by vLLM's Sampler from
    the last target position, so top-k/top-p/penalties apply to it as usual).
The emitted tokens are then distributed exactly as p at every position.

Deliberate differences from vLLM 0.11's Triton path:
  * a request is greedy when its temperature is below the Sampler's epsilon
    (``InputBatch`` stores 0.0 for greedy requests), whereas the Triton kernels compare
    against -1 and so treat greedy requests in a mixed greedy/random batch as random with
    temperature 0 (division by zero);
  * the acceptance draws are float32 (no fp64 on Intel Arc), with ``p(d) > 0`` required;
  * target probabilities are computed in float32 from a copy of the logits.
"""

from __future__ import annotations

from typing import Optional

import torch
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
from vllm.v1.sample.rejection_sampler import (
    MAX_SPEC_LEN,
    PLACEHOLDER_TOKEN_ID,
    RejectionSampler,
)
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)

# Same threshold as vllm.v1.sample.sampler: below it a temperature means greedy.
SAMPLING_EPS = 1e-5


class TorchRejectionSampler(RejectionSampler):
    """A ``RejectionSampler`` whose ``forward`` is plain torch (any device)."""

    def forward(
        self,
        metadata: SpecDecodeMetadata,
        draft_probs: Optional[torch.Tensor],
        target_logits: torch.Tensor,
        bonus_token_ids: torch.Tensor,
        sampling_metadata: SamplingMetadata,
    ) -> torch.Tensor:
        if metadata.max_spec_len > MAX_SPEC_LEN:
            raise ValueError(f"num_speculative_tokens {metadata.max_spec_len} exceeds the "
                             f"rejection sampler's limit of {MAX_SPEC_LEN}")
        return rejection_sample(
            draft_token_ids=metadata.draft_token_ids,
            num_draft_tokens=metadata.num_draft_tokens,
            max_spec_len=metadata.max_spec_len,
            draft_probs=draft_probs,
            target_logits=target_logits,
            bonus_token_ids=bonus_token_ids,
            sampling_metadata=sampling_metadata,
        )


def greedy_request_mask(sampling_metadata: SamplingMetadata, batch_size: int,
                        device: torch.device) -> torch.Tensor:
    """[batch_size] bool: which requests decode greedily."""
    if sampling_metadata.all_greedy:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    if sampling_metadata.all_random:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    return sampling_metadata.temperature[:batch_size] < SAMPLING_EPS


def target_probs_from_logits(
    logits: torch.Tensor,  # [num_tokens, vocab_size]
    token_req_idx: torch.Tensor,  # [num_tokens] request index of each token
    is_greedy: torch.Tensor,  # [batch_size]
    sampling_metadata: SamplingMetadata,
) -> torch.Tensor:
    """Float32 target probabilities after temperature, top-k and top-p (the same
    transformations, in the same order, as vLLM's Sampler applies to the bonus token).
    Rows of greedy requests use temperature 1; they are only ever argmax-ed."""
    logits = logits.to(torch.float32, copy=True)
    temperature = sampling_metadata.temperature
    if temperature is not None:
        temperature = torch.where(is_greedy, 1.0, temperature[:is_greedy.shape[0]])
        logits.div_(temperature[token_req_idx].unsqueeze(-1).to(torch.float32))
    top_k = sampling_metadata.top_k
    top_p = sampling_metadata.top_p
    logits = apply_top_k_top_p(
        logits,
        None if top_k is None else top_k[token_req_idx],
        None if top_p is None else top_p[token_req_idx],
    )
    return logits.softmax(dim=-1)


def rejection_sample(
    draft_token_ids: torch.Tensor,  # [num_tokens]
    num_draft_tokens: list[int],  # [batch_size]
    max_spec_len: int,
    draft_probs: Optional[torch.Tensor],  # [num_tokens, vocab_size] or None (ngram)
    target_logits: torch.Tensor,  # [num_tokens, vocab_size]
    bonus_token_ids: torch.Tensor,  # [batch_size, 1] or [batch_size]
    sampling_metadata: SamplingMetadata,
) -> torch.Tensor:
    """Return [batch_size, max_spec_len + 1] int32 output tokens, -1 where none."""
    if draft_token_ids.ndim != 1 or target_logits.ndim != 2:
        raise ValueError("draft_token_ids must be 1-D and target_logits 2-D")
    device = target_logits.device
    batch_size = len(num_draft_tokens)
    num_tokens = draft_token_ids.shape[0]
    if target_logits.shape[0] != num_tokens or sum(num_draft_tokens) != num_tokens:
        raise ValueError(f"{num_tokens} draft tokens, {sum(num_draft_tokens)} counted per "
                         f"request, {target_logits.shape[0]} target logits rows")
    if draft_probs is not None and draft_probs.shape != target_logits.shape:
        raise ValueError("draft_probs and target_logits must have the same shape")

    num_draft = torch.tensor(num_draft_tokens, dtype=torch.long, device=device)
    token_req_idx = torch.repeat_interleave(
        torch.arange(batch_size, device=device), num_draft, output_size=num_tokens)
    req_start = torch.cumsum(num_draft, 0) - num_draft
    token_pos = torch.arange(num_tokens, device=device) - req_start[token_req_idx]
    draft_ids = draft_token_ids.to(torch.long)
    is_greedy = greedy_request_mask(sampling_metadata, batch_size, device)

    # Per draft token: whether it is accepted, and the token emitted if it is rejected.
    # Greedy uses the raw logits, as the Sampler does for the bonus token.
    target_argmax = target_logits.argmax(dim=-1)
    if sampling_metadata.all_greedy:
        accepted = draft_ids == target_argmax
        replacement = target_argmax
    else:
        target_probs = target_probs_from_logits(
            target_logits, token_req_idx, is_greedy, sampling_metadata)
        uniform = uniform_per_token(num_tokens, num_draft_tokens,
                                    sampling_metadata.generators, device)
        p_draft = target_probs.gather(1, draft_ids.unsqueeze(1)).squeeze(1)
        if draft_probs is None:
            ratio = p_draft
        else:
            q_draft = draft_probs.gather(1, draft_ids.unsqueeze(1)).squeeze(1)
            # A zero draft probability would divide by zero: reject, as vLLM does.
            ratio = torch.where(q_draft > 0, p_draft / q_draft, 0.0)
        # p > 0 also rejects a token the target rules out (e.g. outside its top-k) when
        # the uniform draw is exactly 0.0 (vLLM draws float64 to make that rarer).
        accepted_random = (p_draft > 0) & (ratio >= uniform)
        recovered = sample_recovered_tokens(num_draft_tokens, draft_ids, token_req_idx,
                                            draft_probs, target_probs,
                                            sampling_metadata.generators)
        token_greedy = is_greedy[token_req_idx]
        accepted = torch.where(token_greedy, draft_ids == target_argmax, accepted_random)
        replacement = torch.where(token_greedy, target_argmax, recovered)

    # Scatter into padded [batch_size, max_spec_len] grids; padding counts as rejected.
    accepted_grid = torch.zeros(batch_size, max_spec_len, dtype=torch.long, device=device)
    accepted_grid[token_req_idx, token_pos] = accepted.to(torch.long)
    draft_grid = torch.zeros(batch_size, max_spec_len, dtype=torch.long, device=device)
    draft_grid[token_req_idx, token_pos] = draft_ids
    replacement_grid = torch.zeros_like(draft_grid)
    replacement_grid[token_req_idx, token_pos] = replacement.to(torch.long)
    # Leading run of accepted drafts per request.
    num_accepted = torch.cumprod(accepted_grid, dim=1).sum(dim=1)

    pad = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    draft_grid = torch.cat([draft_grid, pad], dim=1)
    replacement_grid = torch.cat([replacement_grid, pad], dim=1)
    positions = torch.arange(max_spec_len + 1, device=device).unsqueeze(0)
    num_accepted = num_accepted.unsqueeze(1)
    all_accepted = num_accepted == num_draft.unsqueeze(1)
    bonus = bonus_token_ids.reshape(batch_size, 1).to(torch.long)

    output = torch.full((batch_size, max_spec_len + 1), PLACEHOLDER_TOKEN_ID,
                        dtype=torch.long, device=device)
    output = torch.where(positions < num_accepted, draft_grid, output)
    at_stop = positions == num_accepted
    output = torch.where(at_stop & ~all_accepted, replacement_grid, output)
    output = torch.where(at_stop & all_accepted, bonus, output)
    # int32, consistent with SamplerOutput.sampled_token_ids.
    return output.to(torch.int32)


def uniform_per_token(num_tokens: int, num_draft_tokens: list[int],
                      generators: dict[int, torch.Generator],
                      device: torch.device) -> torch.Tensor:
    """[num_tokens] float32 U[0, 1) draws; requests with their own seeded generator draw
    from it, and requests without drafts consume nothing (as vLLM's
    ``generate_uniform_probs``). float32, not vLLM's float64: Intel Arc GPUs have no
    native fp64, and ``p > 0`` in the acceptance test covers the exact-zero draw."""
    uniform = torch.rand(num_tokens, dtype=torch.float32, device=device)
    start = 0
    for req_idx, n in enumerate(num_draft_tokens):
        if n == 0:
            continue
        generator = generators.get(req_idx)
        if generator is not None:
            uniform[start:start + n].uniform_(generator=generator)
        start += n
    return uniform


def sample_recovered_tokens(
    num_draft_tokens: list[int],
    draft_ids: torch.Tensor,  # [num_tokens] long
    token_req_idx: torch.Tensor,  # [num_tokens]
    draft_probs: Optional[torch.Tensor],  # [num_tokens, vocab_size] or None
    target_probs: torch.Tensor,  # [num_tokens, vocab_size] float32
    generators: dict[int, torch.Generator],
) -> torch.Tensor:
    """[num_tokens] tokens drawn from max(p - q, 0) (renormalised), by an exponential race:
    argmax_i w_i / E_i with E_i ~ Exp(1) picks i with probability w_i / sum(w)."""
    batch_size = len(num_draft_tokens)
    vocab_size = target_probs.shape[-1]
    if draft_probs is None:
        # q is one-hot on the draft token: max(p - q, 0) is p without the draft token.
        weights = target_probs.clone()
        weights.scatter_(1, draft_ids.unsqueeze(1), 0.0)
    else:
        weights = (target_probs - draft_probs.to(torch.float32)).clamp_min_(0.0)
    # One exponential vector per request (as vLLM): only the first rejected position
    # of a request is ever emitted, so its positions need no independent draws.
    race = torch.empty(batch_size, vocab_size, dtype=torch.float32,
                       device=target_probs.device)
    race.exponential_()
    for req_idx, generator in generators.items():
        if req_idx < batch_size and num_draft_tokens[req_idx] > 0:
            race[req_idx].exponential_(generator=generator)
    return (weights / race[token_req_idx]).argmax(dim=-1)
