"""A narrow GPUModelRunner subclass for Intel GPUs and CPU mode.

Only the device hooks are overridden (as vLLM's own cpu_model_runner.py does). The
constructor runs inside :func:`device.cuda_api_redirect`, which points the few
``torch.cuda.Event``/``Stream`` calls vLLM makes at construction to this device's
equivalents and restores ``torch.cuda`` afterwards: no global patch survives.
"""

from __future__ import annotations

import time

import torch
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    UnquantizedEmbeddingMethod,
)
from vllm.v1.utils import CpuGpuBuffer
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_xpu_plugin import device, envs, host_cpu, structured_output
from vllm_xpu_plugin.compilation import traceable_ops
from vllm_xpu_plugin.kernels import attention as attention_kernels
from vllm_xpu_plugin.kernels import gemm
from vllm_xpu_plugin.log import init_logger
from vllm_xpu_plugin.sample import XPUPluginSampler
from vllm_xpu_plugin.spec_decode import TorchRejectionSampler, prepare_ngram_proposer
from vllm_xpu_plugin.worker.cpu_spin_governor import make_governor

logger = init_logger(__name__)


class XPUPluginModelRunner(GPUModelRunner):

    def __init__(self, vllm_config: VllmConfig, device_: torch.device):
        with device.cuda_api_redirect():
            super().__init__(vllm_config, device_)
        # Cascade attention is a FlashAttention feature.
        self.cascade_attn_enabled = False
        if device.is_cpu_mode():
            self._alias_device_buffers_to_host()
        # vLLM's sampler with the greedy pick on sampling.greedy_argmax (sample/).
        self.sampler = XPUPluginSampler(logprobs_mode=self.sampler.logprobs_mode)
        # Speculative decoding: vLLM's RejectionSampler is Triton-only (spec_decode/).
        if hasattr(self, "rejection_sampler"):
            self.rejection_sampler = TorchRejectionSampler()
            prepare_ngram_proposer(self.drafter)
        # Structured outputs: the grammar bitmask of the step being executed, applied in
        # _sample by the plugin instead of by xgrammar's kernels (structured_output/).
        self._pending_grammar_step = None
        # CPU mode: OpenMP threads spin when the machine is otherwise idle, sleep when
        # other processes want the cores (worker/cpu_spin_governor.py).
        self._spin_governor = make_governor() if device.is_cpu_mode() else None

    # ------------------------------------------------------------------ device hooks

    def _init_device_properties(self) -> None:
        self.num_sms = None

    def _sync_device(self) -> None:
        device.synchronize()

    def _to_list(self, sampled_token_ids: torch.Tensor) -> list[list[int]]:
        if sampled_token_ids.device.type == "cpu":
            return sampled_token_ids.tolist()
        return super()._to_list(sampled_token_ids)

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        if self._spin_governor is not None:
            self._spin_governor.tick()
        # Hide the grammar bitmask from vLLM's xgrammar call (float32-only on CPU,
        # torch.compile elsewhere); _sample applies it at the same point in the step.
        scheduler_output, self._pending_grammar_step = (
            structured_output.take_grammar_bitmask(scheduler_output))
        try:
            return super().execute_model(scheduler_output, intermediate_tensors)
        finally:
            self._pending_grammar_step = None

    def _sample(self, logits, spec_decode_metadata):
        if self._pending_grammar_step is not None and logits is not None:
            structured_output.apply_grammar_bitmask(
                self._pending_grammar_step, self.input_batch, logits)
        return super()._sample(logits, spec_decode_metadata)

    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        if device.is_cpu_mode():
            _prepack_cpu_gemm_weights(self.model)
            # Built (about 8 s on 2 cores, once per machine: cached) while loading, not in
            # the first request's decode step where the kernel choice is measured.
            attention_kernels.prepare_decode_kernels()
        if self.vllm_config.compilation_config.level:  # torch.compile (compilation/)
            traceable_ops.prepare_model_for_compile(self.model, self.model_config.dtype)

    def get_dp_padding(self, num_tokens: int):
        # No CUDA graphs, so data-parallel ranks need no common padded size.
        return 0, None

    def may_reinitialize_input_batch(self, kv_cache_config) -> None:
        batch = self.input_batch
        super().may_reinitialize_input_batch(kv_cache_config)
        if device.is_cpu_mode() and self.input_batch is not batch:
            self._alias_device_buffers_to_host()

    # ------------------------------------------------------------------ CPU mode
    # (see also _prepack_cpu_gemm_weights below)

    def _alias_device_buffers_to_host(self) -> None:
        """In CPU mode the "device" is the host: let each host/device buffer pair share one
        tensor so that the per-step host-to-device copies vanish."""

        def alias(obj) -> None:
            for value in vars(obj).values():
                if isinstance(value, CpuGpuBuffer):
                    value.gpu = value.cpu

        alias(self)
        batch = self.input_batch
        for name, value in list(vars(batch).items()):
            if name.endswith("_cpu_tensor") and isinstance(value, torch.Tensor):
                device_name = name[: -len("_cpu_tensor")]
                if isinstance(getattr(batch, device_name, None), torch.Tensor):
                    setattr(batch, device_name, value)
        for block_table in batch.block_table.block_tables:
            alias(block_table)


# ---------------------------------------------------------------------- CPU-mode GEMMs


class _PackedGEMM:
    """The GEMM of a linear method on the weight also blocked for IPEX's CPU GEMM
    (gemm.cpu_linear); the plain weight stays for large batches and for readers."""

    def __init__(self, packed_weight: torch.Tensor) -> None:
        super().__init__()
        self.packed_weight = packed_weight

    def apply(self, layer, x, bias=None):
        return traceable_ops.cpu_linear(x, layer.weight, bias, self.packed_weight)


class _PackedLinearMethod(_PackedGEMM, UnquantizedLinearMethod):
    """vLLM's unquantized linear on the blocked weight."""


class _PackedLMHeadMethod(_PackedGEMM, UnquantizedEmbeddingMethod):
    """The LM head's logits GEMM on the blocked weight; the embedding lookup of a tied
    embedding still reads the plain weight."""


def _prepack_cpu_gemm_weights(model: torch.nn.Module) -> None:
    """Give every unquantized linear layer and LM head a weight blocked for IPEX's CPU
    GEMM (CPU mode). Decode-step GEMMs of SmolLM2-135M bf16 at 16 sequences: 2.7x faster
    (benchmarks/, measured A/B). Costs one extra copy of those weights in host memory."""
    start = time.perf_counter()
    with host_cpu.OtherProcessesLoad() as load:
        packed = _prepack_modules(model)
    chosen = gemm.chosen_max_rows()
    measured = envs.VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS is None
    how = "measured on this machine" if measured else "VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS"
    logger.info("CPU mode: %d linear layers use IPEX's prepacked GEMM (output blocks: %s) "
                "up to a row count per shape (%s, %.2f s): %s", packed, gemm.packed_block_rule(),
                how, time.perf_counter() - start,
                ", ".join(f"{o}x{i} <= {rows}" for (o, i, _), rows in sorted(chosen.items())))
    if measured and load.cores >= host_cpu.QUIET_OTHERS_CORES:
        # Not measured again later, unlike the decode-attention choice: it takes seconds.
        # Decode batches stay on the prepacked GEMM either way (every shape keeps it up to
        # 64 rows); prefill chunks may take the slower path.
        logger.warning("CPU mode: other processes used %.2f cores while the GEMM row counts "
                       "were measured, so they may be off for a quiet machine; "
                       "VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS fixes them", load.cores)


def _prepack_modules(model: torch.nn.Module) -> int:
    packed = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        weight = getattr(module, "weight", None)
        if type(method) not in (UnquantizedLinearMethod, UnquantizedEmbeddingMethod):
            continue
        if not isinstance(weight, torch.Tensor):
            continue
        if type(method) is UnquantizedEmbeddingMethod and not isinstance(module, ParallelLMHead):
            continue  # an input embedding: a lookup, no GEMM
        blocked = gemm.cpu_pack_linear_weight(weight)
        if blocked is None:
            continue
        # Up to how many rows this shape runs on the blocked weight: measured once per
        # shape on this machine (kernels/gemm.py), or VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS.
        gemm.choose_max_rows(weight, blocked)
        if type(method) is UnquantizedLinearMethod:
            module.quant_method = _PackedLinearMethod(blocked)
        else:
            module.quant_method = _PackedLMHeadMethod(blocked)
        packed += 1
    return packed
