"""LoRA (punica) kernels: multi-adapter shrink (x @ A^T) and expand (y += t @ B^T) over a
batch whose tokens each use one adapter slot or none (the base model).

Semantics the plugin's punica wrapper (vllm_xpu_plugin/lora/punica_wrapper.py) relies on:

- :func:`shrink` writes ``scale * x @ A[slot]^T`` for LoRA tokens and **exactly 0** for base
  tokens; :func:`expand` adds ``t @ B[slot]^T`` into a column slice of ``y``. A base token's
  shrunk row is 0, so its expand adds 0 whatever slot the kernel reads for it.
- Kernels never see the index -1. vLLM marks base tokens with -1; its torch punica ops index
  the stacked weights with it (Python wraps: the LAST slot's adapter is applied to base
  tokens once every slot is full, issue 13), and IPEX 2.8's CPU punica kernels read out of
  bounds with it (measured: NaNs, and glibc "double free or corruption" in sgmv). The step
  plan (:class:`StepPlan`) maps base tokens to slot 0 and remembers which rows to zero.

Kernels, measured on IPEX 2.8.0 (CPU build):

- bf16 / fp16: ``ipex.llm.functional`` ``bgmv_shrink`` / ``bgmv_expand_slice`` (one
  adapter index per row) for decode and prompt rows alike. The CPU ``sgmv_*`` kernels are
  not used: with runs of different lengths they mis-place rows and write past their
  output (measured; the process later aborts with heap corruption). The CPU kernels want 3-D weights ``[slots, rows, cols]``, the
  output in the weights' dtype (shrink) / the input's dtype (expand) and a contiguous
  output; vLLM hands 4-D stacks and fp32 buffers, so these are adapted here.
- float32: the CPU kernels silently do nothing (output left untouched, no error), so
  float32 runs grouped torch matmuls per adapter (one GEMM per adapter in the step).
- Intel GPU: the same ``ipex.llm.functional`` calls with vLLM 0.11's arguments for its
  in-tree XPU punica wrapper (4-D stacks, fp32 buffers). Unverified on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from vllm_xpu_plugin import device
from vllm_xpu_plugin.kernels.cpu_threads import cpu_small_op

# The CPU build's punica kernels compute only these; float32 is a silent no-op there.
_CPU_KERNEL_DTYPES = (torch.bfloat16, torch.float16)


@dataclass
class StepPlan:
    """Which adapter slot each row of a step uses, in the forms the kernels take.

    Built once per step (:func:`plan_step`) from vLLM's per-row LoRA indices (-1 = base).
    """

    num_rows: int
    # [num_rows] long: the slot of every row, base rows mapped to slot 0.
    row_slots: torch.Tensor
    # [num_rows, 1] bool: base rows (zeroed after shrink), None when there are none.
    base_rows: Optional[torch.Tensor]
    # The torch path: (slot, rows) per adapter in use; rows is a slice or an index tensor.
    groups: list = field(default_factory=list)

    @property
    def has_lora(self) -> bool:
        return bool(self.groups)


def plan_step(row_lora_indices: torch.Tensor) -> StepPlan:
    """Plan a step from vLLM's per-row LoRA slot indices (-1 for base rows)."""
    indices = row_lora_indices.to("cpu", torch.long)
    idx = indices.tolist()
    n = len(idx)
    starts, lens, slots = [], [], []
    for i, s in enumerate(idx):
        if slots and s == slots[-1]:
            lens[-1] += 1
        else:
            starts.append(i)
            lens.append(1)
            slots.append(s)
    active = sorted({s for s in idx if s >= 0})
    lora_runs = [(st, st + ln, s) for st, ln, s in zip(starts, lens, slots, strict=True)
                 if s >= 0]
    dev = row_lora_indices.device
    groups: list = []
    if len(lora_runs) <= len(active) + 2:
        # Few runs (prompt chunks, or a batch grouped by adapter): contiguous slices.
        groups = [(s, slice(a, b)) for a, b, s in lora_runs]
    else:
        for s in active:
            rows = torch.tensor([i for i, t in enumerate(idx) if t == s], dtype=torch.long,
                                device=dev)
            groups.append((s, rows))
    has_base = any(s < 0 for s in idx)
    clamped = indices.clamp(min=0)
    base_rows = (indices < 0).to(dev).view(-1, 1) if has_base and active else None
    return StepPlan(
        num_rows=n,
        row_slots=clamped.to(dev),
        base_rows=base_rows,
        groups=groups,
    )


def _stack3d(w: torch.Tensor) -> torch.Tensor:
    """vLLM's [slots, 1, rows, cols] stacks as the [slots, rows, cols] view the CPU kernels take."""
    return w.flatten(0, 1) if w.dim() == 4 else w


def _use_ipex(dtype: torch.dtype) -> bool:
    return dtype in _CPU_KERNEL_DTYPES if device.is_cpu_mode() else True


def buffer_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """dtype of the shrunk (rank-sized) intermediate: the CPU kernels write it in the
    weights' dtype; float32 (torch path) and the Intel GPU (as vLLM) keep float32."""
    if device.is_cpu_mode():
        return model_dtype
    return torch.float32  # XPU-only


def shrink(out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, plan: StepPlan,
           scale: float) -> None:
    """``out[:, :r] = scale * x @ A[slot]^T`` per LoRA row, 0 on base rows.

    out: [rows, >= r] (fp32 or the model dtype); x: [rows, in]; lora_a: [slots, (1,) r, in].
    """
    if not plan.has_lora:
        out.zero_()
        return
    if not device.is_cpu_mode():
        _xpu_shrink(out, x, lora_a, plan, scale)  # XPU-only
    elif _use_ipex(lora_a.dtype):
        _cpu_ipex_shrink(out, x, _stack3d(lora_a), plan, scale)
    else:
        _torch_shrink(out, x, _stack3d(lora_a), plan, scale)
    if plan.base_rows is not None:
        out.masked_fill_(plan.base_rows, 0)


def expand(out: torch.Tensor, t: torch.Tensor, lora_b: torch.Tensor, plan: StepPlan,
           offset: int, size: int, add: bool = True) -> None:
    """``out[:, offset:offset+size] (+)= t @ B[slot]^T`` per row (0 added on base rows,
    whose ``t`` rows :func:`shrink` zeroed).

    out: [rows, >= offset+size]; t: [rows, r]; lora_b: [slots, (1,) >= size, r].
    """
    if not plan.has_lora:
        if not add:
            out[:, offset:offset + size].zero_()
        return
    if not device.is_cpu_mode():
        _xpu_expand(out, t, lora_b, plan, offset, size, add)  # XPU-only
    elif _use_ipex(lora_b.dtype):
        _cpu_ipex_expand(out, t, _stack3d(lora_b), plan, offset, size, add)
    else:
        _torch_expand(out, t, _stack3d(lora_b), plan, offset, size, add)


# --------------------------------------------------------------------------- torch (fp32)


def _torch_shrink(out, x, a, plan, scale):
    r = a.shape[1]
    out.zero_()
    for slot, rows in plan.groups:
        part = torch.matmul(x[rows], a[slot].t().to(x.dtype))
        if scale != 1.0:
            part.mul_(scale)
        if isinstance(rows, slice):
            out[rows, :r] = part
        else:
            out[:, :r].index_copy_(0, rows, part.to(out.dtype))


def _torch_expand(out, t, b, plan, offset, size, add):
    view = out[:, offset:offset + size]
    if not add:
        view.zero_()
    for slot, rows in plan.groups:
        part = torch.matmul(t[rows].to(b.dtype), b[slot, :size].t()).to(out.dtype)
        if isinstance(rows, slice):
            view[rows] += part
        else:
            view.index_add_(0, rows, part)


# --------------------------------------------------------------------------- IPEX CPU


def _contiguous_like(out: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    if out.dtype == dtype and out.is_contiguous():
        return out, False
    return torch.empty(out.shape, dtype=dtype, device=out.device), True


def _cpu_ipex_shrink(out, x, a, plan, scale):
    f = device.ipex().llm.functional
    r = a.shape[1]
    target, copied = _contiguous_like(out[:, :r] if out.shape[1] != r else out, a.dtype)
    x = x.to(a.dtype).contiguous()
    # bgmv for prompt chunks too: see _cpu_ipex_expand.
    # Decode-sized calls on one OpenMP thread (kernels/cpu_threads.py): ~14 per layer.
    cpu_small_op(x.numel(), f.bgmv_shrink, x, a, target, plan.row_slots, scale)
    if copied:
        out[:, :r].copy_(target)


def _cpu_ipex_expand(out, t, b, plan, offset, size, add):
    f = device.ipex().llm.functional
    if b.shape[1] != size:  # the weights' rows are padded (LM head): use the first `size`
        b = b[:, :size].contiguous()
    target, copied = _contiguous_like(out, b.dtype)
    if copied:
        target.copy_(out)
    t = t.to(b.dtype).contiguous()
    # bgmv for every step: IPEX 2.8's CPU sgmv kernels go wrong when runs of rows have
    # different lengths (sgmv_expand_slice, runs [1, 2]: row 1 gets nothing and memory past
    # the output is written; sgmv_shrink on [1,1,1,1,2,1,1] aborts the process later with
    # heap corruption). docs/lora.md has the measurements.
    cpu_small_op(t.shape[0] * size, f.bgmv_expand_slice, t, b, target, plan.row_slots,
                 offset, size, add)
    if copied:
        out[:, offset:offset + size].copy_(target[:, offset:offset + size])


# --------------------------------------------------------------------------- Intel GPU


def _xpu_shrink(out, x, a, plan, scale):
    # XPU-only: vLLM 0.11's in-tree XPU punica wrapper's call (bgmv for every row).
    device.ipex().llm.functional.bgmv_shrink(x, a, out, plan.row_slots, scale)  # XPU-only


def _xpu_expand(out, t, b, plan, offset, size, add):
    # XPU-only: as vLLM 0.11's PunicaWrapperXPU._apply_expand.
    device.ipex().llm.functional.bgmv_expand_slice(  # XPU-only
        t, b, out, plan.row_slots, offset, size, add)  # XPU-only
