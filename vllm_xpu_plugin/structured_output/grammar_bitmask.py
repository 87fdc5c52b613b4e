"""Apply structured-output grammar bitmasks to logits on any device and dtype.

vLLM 0.11's ``GPUModelRunner.execute_model`` applies the scheduler's grammar bitmask with
``xgrammar.apply_token_bitmask_inplace``, which dispatches on the device: its CPU kernel
rejects anything but float32 logits (bf16/fp16 models fail), and every non-CUDA device
goes to a ``torch.compile`` kernel (on Intel GPUs that means triton-xpu). The plugin's
runner therefore hides the bitmask from vLLM's call (:func:`take_grammar_bitmask`) and
applies it here, with plain torch ops, just before sampling.

The row bookkeeping mirrors ``vllm.v1.structured_output.utils.apply_grammar_bitmask``:
the scheduler sends one bitmask row per structured request and per scheduled speculative
token, ordered by ``structured_output_request_ids``; logits rows are ordered by the
runner's batch, with each request's speculative positions following its first row.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.worker.gpu_input_batch import InputBatch

BITS_PER_WORD = 32


def take_grammar_bitmask(
    scheduler_output: SchedulerOutput,
) -> tuple[SchedulerOutput, Optional[SchedulerOutput]]:
    """Split off the grammar bitmask: returns (a copy of the scheduler output without the
    bitmask, for vLLM's execute_model; the original, to apply later) -- or the scheduler
    output unchanged and None when there is no bitmask this step."""
    if scheduler_output.grammar_bitmask is None:
        return scheduler_output, None
    return dataclasses.replace(scheduler_output, grammar_bitmask=None), scheduler_output


def logits_rows_for_bitmask(scheduler_output: SchedulerOutput,
                            input_batch: InputBatch) -> tuple[list[int], list[int]]:
    """Pairs (logits row, bitmask row) for every structured-output position."""
    spec_tokens = scheduler_output.scheduled_spec_decode_tokens
    structured = scheduler_output.structured_output_request_ids

    # First logits row of each structured request in the runner's batch order.
    first_logits_row: dict[str, int] = {}
    offset = 0
    for req_id, batch_index in sorted(input_batch.req_id_to_index.items(),
                                      key=lambda item: item[1]):
        if req_id in structured:
            first_logits_row[req_id] = batch_index + offset
        offset += len(spec_tokens.get(req_id, ()))

    logits_rows: list[int] = []
    bitmask_rows: list[int] = []
    bitmask_row = 0
    for req_id, _ in sorted(structured.items(), key=lambda item: item[1]):
        num_rows = 1 + len(spec_tokens.get(req_id, ()))
        if req_id in first_logits_row:
            start = first_logits_row[req_id]
            logits_rows.extend(range(start, start + num_rows))
            bitmask_rows.extend(range(bitmask_row, bitmask_row + num_rows))
        bitmask_row += num_rows
    return logits_rows, bitmask_rows


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor,
                         logits_rows: list[int]) -> None:
    """Set ``logits[logits_rows[i], t] = -inf`` where bit t of ``bitmask[i]`` is 0.

    ``bitmask`` is int32 [len(logits_rows), ceil(vocab / 32)], bit t % 32 of word t // 32
    standing for token t (xgrammar's layout). Tokens beyond the bitmask (padded vocab)
    are left alone, as xgrammar does."""
    if not logits_rows:
        return
    vocab_size = min(logits.shape[-1], bitmask.shape[-1] * BITS_PER_WORD)
    shifts = torch.arange(BITS_PER_WORD, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool()
    allowed = allowed.reshape(bitmask.shape[0], -1)[:, :vocab_size]
    rows = torch.tensor(logits_rows, dtype=torch.long, device=logits.device)
    masked = logits[rows, :vocab_size].masked_fill(~allowed, float("-inf"))
    logits[rows, :vocab_size] = masked


def apply_grammar_bitmask(scheduler_output: SchedulerOutput, input_batch: InputBatch,
                          logits: torch.Tensor) -> None:
    """In place: mask the logits of every structured-output position by its grammar."""
    grammar_bitmask = scheduler_output.grammar_bitmask
    if grammar_bitmask is None:
        return
    logits_rows, bitmask_rows = logits_rows_for_bitmask(scheduler_output, input_batch)
    if not logits_rows:
        return
    rows = np.ascontiguousarray(grammar_bitmask[bitmask_rows], dtype=np.int32)
    apply_token_bitmask_(logits, torch.from_numpy(rows).to(logits.device), logits_rows)
