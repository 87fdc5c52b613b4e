"""Worker for Intel GPUs and CPU mode.

Subclasses vLLM's GPU Worker and overrides only what touches the device: device init and
the distributed environment, the KV-cache memory budget, and the runner it builds.
"""

from __future__ import annotations

import gc
import os

import torch
from vllm.distributed.parallel_state import get_world_group
from vllm.model_executor import set_random_seed
from vllm.platforms import current_platform
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment

from vllm_xpu_plugin import device
from vllm_xpu_plugin.log import init_logger
from vllm_xpu_plugin.worker.model_runner import XPUPluginModelRunner

logger = init_logger(__name__)


class XPUPluginWorker(Worker):

    def init_device(self) -> None:
        self.device = device.torch_device(self.local_rank)
        device.set_device(self.device)
        current_platform.check_if_supports_dtype(self.model_config.dtype)
        if not device.is_cpu_mode():  # XPU-only: oneCCL reads these at init.
            os.environ.setdefault("CCL_ZE_IPC_EXCHANGE", "pidfd")
            os.environ.setdefault("CCL_ATL_TRANSPORT", "ofi")
            os.environ.setdefault("LOCAL_WORLD_SIZE", str(self.parallel_config.world_size))
            os.environ["LOCAL_RANK"] = str(self.local_rank)
        init_worker_distributed_environment(self.vllm_config, self.rank,
                                            self.distributed_init_method, self.local_rank,
                                            current_platform.dist_backend)
        if not device.is_cpu_mode() and self.parallel_config.world_size > 1:
            # XPU-only: one global all-reduce warms oneCCL up, as vLLM 0.11's XPU worker
            # does after init (docs/dev/xpu_parity.md).
            torch.distributed.all_reduce(torch.zeros(1, device=self.device),  # XPU-only
                                         group=get_world_group().device_group)
        set_random_seed(self.model_config.seed)
        gc.collect()
        device.empty_cache()
        self.model_runner = XPUPluginModelRunner(self.vllm_config, self.device)

    def sleep(self, level: int = 1) -> None:
        logger.warning("Sleep mode is not supported by vllm-xpu-plugin; ignored.")

    def wake_up(self, tags=None) -> None:
        logger.warning("Sleep mode is not supported by vllm-xpu-plugin; ignored.")

    @torch.inference_mode()
    def determine_available_memory(self) -> int:
        """Bytes the KV cache may use.

        CPU mode: a fixed budget (``VLLM_XPU_PLUGIN_CPU_KVCACHE_GB``, set on the cache config
        by the platform), since host memory is shared with everything else. XPU: profile a
        dummy forward pass and give the KV cache what is left of
        ``gpu_memory_utilization`` x total memory.
        """
        if self.cache_config.kv_cache_memory_bytes is not None:
            # The user sized the KV cache explicitly (--kv-cache-memory).
            return int(self.cache_config.kv_cache_memory_bytes)
        if device.is_cpu_mode():
            return int(self.cache_config.cpu_kvcache_space_bytes)
        return self._profile_xpu_kv_cache_memory()

    def _profile_xpu_kv_cache_memory(self) -> int:  # XPU-only
        torch.xpu.empty_cache()
        torch.xpu.reset_peak_memory_stats()
        total = torch.xpu.get_device_properties(self.local_rank).total_memory
        self.model_runner.profile_run()
        peak = torch.xpu.memory_stats()["allocated_bytes.all.peak"]
        torch.xpu.empty_cache()
        available = int(total * self.cache_config.gpu_memory_utilization - peak)
        logger.info("XPU memory: total %.2f GiB, peak during profiling %.2f GiB, "
                    "KV cache gets %.2f GiB", total / 2**30, peak / 2**30, available / 2**30)
        if available <= 0:
            raise RuntimeError(
                f"No XPU memory left for the KV cache (peak {peak / 2**30:.2f} GiB of "
                f"{total / 2**30:.2f} GiB): raise --gpu-memory-utilization or lower "
                "--max-num-batched-tokens")
        return available
