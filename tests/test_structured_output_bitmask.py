"""The plugin's torch grammar-bitmask application against vLLM's own
``apply_grammar_bitmask`` (xgrammar's C++ CPU kernel, which needs float32 logits)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm.v1.structured_output.utils import apply_grammar_bitmask as vllm_apply

from vllm_xpu_plugin.structured_output import apply_grammar_bitmask, take_grammar_bitmask


def make_step(vocab_size: int, seed: int):
    """A batch of 6 requests in runner order r0..r5; r1, r2, r4, r5 are structured (in a
    different order on the scheduler side) and r2, r3, r5 have speculative tokens."""
    rng = np.random.default_rng(seed)
    batch_order = ["r0", "r1", "r2", "r3", "r4", "r5"]
    spec = {"r2": [1, 2, 3], "r3": [4], "r5": [5, 6]}
    structured = {"r4": 0, "r2": 1, "r1": 2, "r5": 3, "gone": 4}  # "gone" left the batch
    num_bitmask_rows = sum(1 + len(spec.get(r, ())) for r in structured)
    words = (vocab_size + 31) // 32
    bitmask = rng.integers(-(2**31), 2**31, size=(num_bitmask_rows, words),
                           dtype=np.int64).astype(np.int32)
    scheduler_output = SimpleNamespace(grammar_bitmask=bitmask,
                                       structured_output_request_ids=structured,
                                       scheduled_spec_decode_tokens=spec)
    input_batch = SimpleNamespace(req_id_to_index={r: i for i, r in enumerate(batch_order)})
    num_logits_rows = sum(1 + len(spec.get(r, ())) for r in batch_order)
    return scheduler_output, input_batch, num_logits_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab_size,logits_width", [(100, 100), (96, 130), (49152, 49152)])
def test_matches_vllm_xgrammar_cpu_kernel(dtype, vocab_size, logits_width):
    scheduler_output, input_batch, rows = make_step(vocab_size, seed=vocab_size)
    logits = torch.randn(rows, logits_width).to(dtype)

    reference = logits.float()
    vllm_apply(scheduler_output, input_batch, reference, torch.device("cpu"))

    ours = logits.clone()
    apply_grammar_bitmask(scheduler_output, input_batch, ours)

    masked = torch.isneginf(ours)
    assert torch.equal(masked, torch.isneginf(reference))
    assert torch.equal(ours[~masked], logits[~masked])
    # The test is not vacuous: some rows are masked, unstructured rows (r0, r3) are not.
    assert masked.any() and not masked[0].any()


def test_xgrammar_cpu_kernel_rejects_bf16_which_is_why_this_exists():
    scheduler_output, input_batch, rows = make_step(64, seed=1)
    with pytest.raises(ValueError, match="float32"):
        vllm_apply(scheduler_output, input_batch,
                   torch.zeros(rows, 64, dtype=torch.bfloat16), torch.device("cpu"))


def test_take_grammar_bitmask_leaves_the_original_untouched():
    from vllm.v1.core.sched.output import CachedRequestData, SchedulerOutput

    bitmask = np.zeros((1, 2), dtype=np.int32)
    original = SchedulerOutput(
        scheduled_new_reqs=[], scheduled_cached_reqs=CachedRequestData.make_empty(),
        num_scheduled_tokens={"a": 1}, total_num_scheduled_tokens=1,
        scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={},
        num_common_prefix_blocks=[], finished_req_ids=set(), free_encoder_mm_hashes=[],
        structured_output_request_ids={"a": 0}, grammar_bitmask=bitmask)
    for_vllm, kept = take_grammar_bitmask(original)
    assert for_vllm.grammar_bitmask is None and kept is original
    assert original.grammar_bitmask is bitmask
    assert for_vllm.num_scheduled_tokens == {"a": 1}
    no_mask = SchedulerOutput(**{**vars(original), "grammar_bitmask": None})
    assert take_grammar_bitmask(no_mask) == (no_mask, None)
