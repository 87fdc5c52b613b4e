"""The punica wrapper vLLM's LoRA layers call (``XPUPluginPlatform.get_punica_wrapper``).

vLLM's CPU wrapper (``PunicaWrapperCPU``) runs torch ops that index the stacked adapter
weights with the base model's LoRA index -1, i.e. apply the last slot's adapter to base
requests once every ``max_loras`` slot is full (issue 13). This wrapper keeps vLLM's
metadata (:class:`PunicaWrapperBase`) and turns it once per step into a
:class:`~vllm_xpu_plugin.kernels.lora.StepPlan` (no -1 reaches a kernel; base rows are
zeroed after shrink), then calls the plugin's LoRA kernels. Steps with no LoRA row skip the
kernels altogether.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from vllm.lora.punica_wrapper.punica_base import PunicaWrapperBase

from vllm_xpu_plugin.kernels import lora as lora_kernels


class PluginPunicaWrapper(PunicaWrapperBase):

    def __init__(self, max_num_batched_tokens: int, max_batches: int,
                 device: Union[torch.device, str], **kwargs):
        super().__init__(max_num_batched_tokens, max_batches, device)
        empty = lora_kernels.plan_step(torch.empty(0, dtype=torch.long))
        self._token_plan: lora_kernels.StepPlan = empty
        self._sampler_plan: lora_kernels.StepPlan = empty

    def update_metadata(self, mapping, lora_index_to_id: list[Optional[int]], max_loras: int,
                        vocab_size: int, extra_vocab_size: int, **kwargs) -> None:
        # vLLM V1 always passes is_prefill=True; the plan picks bgmv vs sgmv from the rows.
        self.is_prefill = mapping.is_prefill
        self._update_base_metadata(mapping, lora_index_to_id, max_loras, vocab_size,
                                   extra_vocab_size)
        self._token_plan = lora_kernels.plan_step(self.token_lora_indices)
        self._sampler_plan = lora_kernels.plan_step(self.sampler_indices)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _rows(t: torch.Tensor, plan: lora_kernels.StepPlan) -> torch.Tensor:
        # Rows past the mapping (padding) are treated as base rows: left alone.
        return t if t.shape[0] == plan.num_rows else t[:plan.num_rows]

    def _shrink(self, y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, scale: float,
                plan: lora_kernels.StepPlan) -> None:
        lora_kernels.shrink(self._rows(y, plan), self._rows(x, plan), w, plan, scale)

    def _expand(self, y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, offset: int,
                size: int, add: bool, plan: lora_kernels.StepPlan) -> None:
        lora_kernels.expand(self._rows(y, plan), self._rows(x, plan), w, plan, offset, size,
                            add)

    # ------------------------------------------------------------------ vLLM's interface

    def add_shrink(self, y, x: torch.Tensor, lora_a_stacked: tuple[torch.Tensor, ...],
                   scale: float, **kwargs) -> None:
        """``y[i] = scale * x @ A_i[slot]^T`` per slice i (0 on base rows)."""
        x = x.view(-1, x.shape[-1])
        for i, lora_a in enumerate(lora_a_stacked):
            self._shrink(y[i], x, lora_a, scale, self._token_plan)

    def add_expand(self, y: torch.Tensor, x, lora_b_stacked: tuple[torch.Tensor, ...],
                   lora_bias_stacked: Optional[tuple[torch.Tensor, ...]],
                   output_slices: tuple[int, ...], offset_start: int = 0,
                   add_inputs: bool = True, **kwargs) -> None:
        """``y[:, slice i] += x[i] @ B_i[slot]^T (+ bias_i[slot])``, slices from offset_start."""
        y = y.view(-1, y.shape[-1])
        if lora_bias_stacked is not None:
            # vLLM's bias helper zeroes base rows' bias itself (indices == -1).
            self._apply_bias(self.token_lora_indices, y, output_slices, lora_bias_stacked)
        offset = offset_start
        for i, lora_b in enumerate(lora_b_stacked):
            self._expand(y, x[i], lora_b, offset, output_slices[i], add_inputs,
                         self._token_plan)
            offset += output_slices[i]

    def add_lora_embedding(self, y: torch.Tensor, x: torch.Tensor,
                           lora_b_stacked: torch.Tensor, add_inputs: bool = True,
                           **kwargs) -> None:
        """``y += x @ B[slot]^T``; x is the LoRA-A embedding lookup, which vLLM reads from
        slot 0 for base tokens, so base rows are zeroed first."""
        plan = self._token_plan
        if not plan.has_lora:
            return
        x = self._rows(x, plan)
        if plan.base_rows is not None:
            x = x.masked_fill(plan.base_rows, 0)
        self._expand(y, x, lora_b_stacked, 0, min(y.shape[-1], lora_b_stacked.shape[-2]),
                     add_inputs, plan)

    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor,
                        lora_a_stacked: tuple[torch.Tensor, ...],
                        lora_b_stacked: tuple[torch.Tensor, ...],
                        lora_bias_stacked: Optional[tuple[torch.Tensor, ...]], scale: float,
                        output_slices: tuple[int, ...], *, buffer=None, **kwargs) -> None:
        """``y[:, slice i] += scale * x @ A_i[slot]^T @ B_i[slot]^T (+ bias_i[slot])``."""
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        if lora_bias_stacked is not None:
            self._apply_bias(self.token_lora_indices, y, output_slices, lora_bias_stacked)
        if not self._token_plan.has_lora:
            return
        x = x.view(-1, x.shape[-1])
        if buffer is None:
            r = lora_b_stacked[0].size(-1)
            buffer = torch.empty((len(output_slices), x.size(0), r),
                                 dtype=lora_kernels.buffer_dtype(x.dtype), device=x.device)
        self.add_shrink(buffer, x, lora_a_stacked, scale)
        self.add_expand(y, buffer, lora_b_stacked, None, output_slices, add_inputs=True)

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale, *, buffer=None,
                        **kwargs) -> None:
        """``y += scale * x @ A[slot]^T @ B[slot]^T`` per request (the LM head)."""
        plan = self._sampler_plan
        if not plan.has_lora:
            return
        y = y.view(-1, y.shape[-1])
        x = x.view(-1, x.shape[-1])
        r = lora_b_stacked.size(-1)
        if buffer is None:
            buffer = torch.empty((x.size(0), r), dtype=lora_kernels.buffer_dtype(x.dtype),
                                 device=x.device)
        self._shrink(buffer, x, lora_a_stacked, scale, plan)
        self._expand(y, buffer, lora_b_stacked, 0, min(y.shape[-1], lora_b_stacked.shape[-2]),
                     True, plan)
