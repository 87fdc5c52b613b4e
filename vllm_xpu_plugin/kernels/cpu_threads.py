"""CPU mode: how many OpenMP threads a small IPEX kernel runs on (used by every family)."""

from __future__ import annotations

import torch

# CPU mode: decode-sized IPEX kernels on one thread. IPEX's small kernels (RMSNorm,
# rotary, KV-cache write) open an OpenMP parallel region whatever the size; torch's own
# element-wise ops stay on one thread below at::internal::GRAIN_SIZE (32768 elements).
# Measured, 16 x 576 bf16 add+RMSNorm (SmolLM2 decode at batch 16), 2 threads: 11 us
# either way with spinning OMP workers, 29 us vs 11 us with OMP_WAIT_POLICY=PASSIVE; and a
# spinning region whose other core is busy with another process (the API server, a
# client) waits for a scheduler slice. ~150 of a decode step's ~300 regions are these.
CPU_SERIAL_MAX_ELEMENTS = 32768


def cpu_small_op(num_elements: int, op, *args):
    """``op(*args)`` on one OpenMP thread when the op is small (CPU mode only)."""
    threads = torch.get_num_threads()
    if num_elements > CPU_SERIAL_MAX_ELEMENTS or threads == 1:
        return op(*args)
    torch.set_num_threads(1)
    try:
        return op(*args)
    finally:
        torch.set_num_threads(threads)
