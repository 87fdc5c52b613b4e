"""The plugin's vLLM Platform: Intel GPUs (``xpu``), or the CPU in CPU mode.

As an out-of-tree platform (``PlatformEnum.OOT``) every ``is_xpu()`` branch inside vLLM is
off, so each behaviour vLLM gives its built-in XPU platform is supplied here or in the
plugin's worker, runner, attention backend and ops.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Optional

import torch
from vllm.platforms.interface import Platform, PlatformEnum, _Backend

from vllm_xpu_plugin import compilation, device, envs, moe, request_checks, startup_checks
from vllm_xpu_plugin.distributed import ray_checks
from vllm_xpu_plugin.kernels import attention as attention_kernels
from vllm_xpu_plugin.log import init_logger
from vllm_xpu_plugin.startup_checks import PluginConfigError  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from vllm.config import ModelConfig, VllmConfig
    from vllm.utils import FlexibleArgumentParser

logger = init_logger(__name__)

ATTENTION_BACKEND = "vllm_xpu_plugin.attention.ipex_attn.IPEXAttentionBackend"
WORKER_CLS = "vllm_xpu_plugin.worker.xpu_worker.XPUPluginWorker"
DEFAULT_BLOCK_SIZE = 64
SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128)


def _device_setting_problem(requested: str) -> Optional[str]:
    """Why ``--device requested`` cannot work here, or None when it can."""
    if requested not in ("xpu", "cpu"):
        return (f"--device {requested!r} is not supported by vllm-xpu-plugin: use "
                "--device xpu (Intel GPU) or --device cpu with VLLM_XPU_PLUGIN_DEVICE=cpu")
    if requested == "cpu" and not device.is_cpu_mode():
        return ("--device cpu needs CPU mode: set VLLM_XPU_PLUGIN_DEVICE=cpu "
                "(the plugin then runs its IPEX CPU kernels)")
    if requested == "xpu" and device.is_cpu_mode():
        return ("--device xpu but VLLM_XPU_PLUGIN_DEVICE=cpu selects CPU mode: "
                "unset VLLM_XPU_PLUGIN_DEVICE on an Intel GPU machine, or pass --device cpu")
    if requested == "xpu" and not device.xpu_usable():
        return _no_xpu_message()
    return None


def _no_xpu_message() -> str:
    return ("--device xpu: no usable Intel GPU (torch.xpu.is_available() is False or the "
            "XPU build of intel-extension-for-pytorch does not import); install the Intel "
            "GPU driver with torch 2.8.0+xpu and IPEX 2.8.10+xpu, or run in CPU mode with "
            "VLLM_XPU_PLUGIN_DEVICE=cpu --device cpu")


def startup_problem() -> Optional[str]:
    """One line saying why the plugin cannot serve in this process, or None."""
    mode = envs.VLLM_XPU_PLUGIN_DEVICE
    if mode not in ("", "xpu", "cpu"):
        return (f"VLLM_XPU_PLUGIN_DEVICE={mode!r} is not understood: use 'cpu' for CPU mode, "
                "or leave it unset to use an Intel GPU")
    if mode != "cpu" and not device.xpu_usable():
        return _no_xpu_message().replace("--device xpu: ", "")
    return envs.settings_problem() or startup_checks.ipex_torch_version_problem()


class _DeviceAction(argparse.Action):
    """``--device``: vLLM 0.11 dropped the flag, but users follow the seed's
    ``vllm serve MODEL --device xpu``. Validate it and fail in one line."""

    def __call__(self, parser, namespace, values, option_string=None):
        problem = _device_setting_problem(str(values).strip().lower())
        if problem:
            parser.exit(2, f"vllm-xpu-plugin: error: {problem}\n")
        setattr(namespace, self.dest, values)


class XPUPluginPlatform(Platform):
    _enum = PlatformEnum.OOT
    device_name: str = device.device_type()
    device_type: str = device.device_type()
    dispatch_key: str = device.dispatch_key()
    # Ray resource per worker (vllm_xpu_plugin/distributed/ray_executor.py): Ray's GPU
    # resource covers Intel GPUs; in CPU mode each worker holds one Ray CPU.
    ray_device_key: str = "GPU" if device.device_type() == "xpu" else "CPU"
    device_control_env_var: str = "ZE_AFFINITY_MASK"
    dist_backend: str = device.distributed_backend()
    simple_compile_backend: str = "eager"
    # The plugin's IPEX int4 configs (vllm_xpu_plugin.quantization); GPTQ/AWQ checkpoints
    # are routed to them automatically. vLLM's own gptq/awq need vllm._C kernels.
    supported_quantization: list[str] = ["ipex_gptq", "ipex_awq"]

    # ------------------------------------------------------------------ CLI / config

    @classmethod
    def pre_register_and_update(cls, parser: Optional[FlexibleArgumentParser] = None) -> None:
        if parser is not None:
            # Command line: errors found later while vLLM builds the config (in
            # check_and_update_config) print as one line, not a traceback.
            startup_checks.install_cli_error_formatter()
            ray_checks.install_backend_check(parser)
            compilation.mark_command_line_levels(parser)
            if not any("--device" in a.option_strings for a in parser._actions):
                parser.add_argument(
                    "--device",
                    action=_DeviceAction,
                    default=None,
                    help="Device to serve on: 'xpu' (Intel GPU) or 'cpu' (CPU mode, needs "
                    "VLLM_XPU_PLUGIN_DEVICE=cpu). Accepted by vllm-xpu-plugin.",
                )
            problem = startup_problem()
            if problem:
                parser.exit(2, f"vllm-xpu-plugin: error: {problem}\n")
            return
        problem = startup_problem()
        if problem:
            raise PluginConfigError(problem)

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        cache_config = vllm_config.cache_config
        model_config = vllm_config.model_config
        parallel_config = vllm_config.parallel_config
        scheduler_config = vllm_config.scheduler_config

        if cache_config is not None:
            if cache_config.block_size is None:
                cache_config.block_size = DEFAULT_BLOCK_SIZE
            if cache_config.block_size not in SUPPORTED_BLOCK_SIZES:
                raise PluginConfigError(
                    f"--block-size {cache_config.block_size} is not supported by the IPEX "
                    f"attention kernels; use one of {SUPPORTED_BLOCK_SIZES}")
            if cache_config.cache_dtype not in device.kv_cache_dtypes():
                raise PluginConfigError(
                    f"--kv-cache-dtype {cache_config.cache_dtype} is not supported by the "
                    f"IPEX attention kernels on {device.device_type()}; use one of "
                    f"{', '.join(device.kv_cache_dtypes())}")
            if device.is_cpu_mode():
                cache_config.cpu_kvcache_space_bytes = int(
                    envs.VLLM_XPU_PLUGIN_CPU_KVCACHE_GB * (1 << 30))

        # validate_request's bound on prompt token ids (this process serves this model).
        request_checks.remember_model(model_config)
        if model_config is not None:
            # Cascade attention is a FlashAttention-only optimisation.
            model_config.disable_cascade_attn = True
            if model_config.use_mla:
                raise PluginConfigError(
                    f"{model_config.model}: MLA attention is not supported by vllm-xpu-plugin")
            # The int4 layers hand their weights to IPEX and keep no qweight, which vLLM's
            # LoRA layers need (docs/lora.md).
            if vllm_config.lora_config is not None and model_config.quantization in (
                    "ipex_gptq", "ipex_awq"):
                raise PluginConfigError(
                    f"--enable-lora with a {model_config.quantization[5:].upper()} (int4) "
                    "model is not supported by vllm-xpu-plugin; serve the unquantized model")
            # Checked here, in the API-server process, so a bad model/dtype fails in one
            # line before any engine-core or worker process starts (issue 8).
            problem = (startup_checks.dtype_problem(model_config.dtype, cls.get_device_name())
                       or startup_checks.head_size_problem(model_config.get_head_size(),
                                                           attention_kernels.attention_head_sizes(),
                                                           device.device_type())
                       or moe.config_problem(vllm_config))
            if problem:
                raise PluginConfigError(problem)

        # Eager, or torch.compile (PIECEWISE inductor split at the attention op) when asked
        # for and the config allows it (compilation/policy.py, docs/compile.md).
        compilation.apply_compilation_policy(vllm_config)

        # Async scheduling overlaps steps with CUDA streams/events the plugin does not
        # provide at run time.
        scheduler_config.async_scheduling = False

        if parallel_config.worker_cls == "auto":
            parallel_config.worker_cls = WORKER_CLS
        parallel_config.disable_custom_all_reduce = True
        if parallel_config.enable_dbo:
            logger.warning("Dual-batch overlap is not supported by vllm-xpu-plugin; disabled.")
            parallel_config.enable_dbo = False
        backend = parallel_config.distributed_executor_backend
        if backend is None:
            parallel_config.distributed_executor_backend = (
                "mp" if parallel_config.world_size > 1 else "uni")
        elif ray_checks.is_ray_backend(backend):
            ray_checks.select_plugin_ray_executor(parallel_config)
        elif backend not in ("mp", "uni", "ray", "external_launcher"):
            raise PluginConfigError(
                f"--distributed-executor-backend {backend} is not supported by "
                "vllm-xpu-plugin; use mp or ray")
        # Neither XPU runtimes nor IPEX survive fork() after initialisation.
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"

    @classmethod
    def check_if_supports_dtype(cls, torch_dtype: torch.dtype) -> None:
        problem = startup_checks.dtype_problem(torch_dtype, cls.get_device_name())
        if problem:
            raise PluginConfigError(problem)

    @classmethod
    def verify_quantization(cls, quant: str) -> None:
        if quant not in cls.supported_quantization:
            raise PluginConfigError(
                f"--quantization {quant} is not supported by vllm-xpu-plugin; supported: "
                f"{', '.join(cls.supported_quantization)}")

    @classmethod
    def validate_request(cls, prompt, params, processed_inputs) -> None:
        # Non-finite sampling parameters (NaN temperature) get a 400, not garbage (issue 8);
        # prompt ids outside the embedding get a 400, not a dead engine (issue 19).
        from vllm_xpu_plugin.request_checks import (
            processed_inputs_problem,
            sampling_params_problem,
        )

        problem = sampling_params_problem(params) or processed_inputs_problem(processed_inputs)
        if problem:
            raise ValueError(problem)

    # ------------------------------------------------------------------ attention

    @classmethod
    def get_attn_backend_cls(cls, selected_backend: _Backend, head_size: int,
                             dtype: torch.dtype, kv_cache_dtype: Optional[str],
                             block_size: int, use_v1: bool, use_mla: bool,
                             has_sink: bool, use_sparse: bool = False) -> str:
        if use_mla or use_sparse:
            raise PluginConfigError("MLA / sparse attention is not supported by vllm-xpu-plugin")
        if has_sink:
            raise PluginConfigError(
                "attention sinks are not supported by the IPEX attention kernels")
        if selected_backend is not None:
            logger.info_once("vllm-xpu-plugin uses its IPEX attention backend; "
                             "ignoring VLLM_ATTENTION_BACKEND=%s", selected_backend.name)
        return ATTENTION_BACKEND

    @classmethod
    def get_vit_attn_backend(cls, head_size: int, dtype: torch.dtype) -> _Backend:
        return _Backend.TORCH_SDPA

    @classmethod
    def opaque_attention_op(cls) -> bool:
        # Compiled models call attention as vLLM's splitting custom op; eager ones directly.
        return compilation.attention_op_is_opaque()

    # ------------------------------------------------------------------ device

    @classmethod
    def set_device(cls, device_: torch.device) -> None:
        device.set_device(device_)

    @classmethod
    def get_device_capability(cls, device_id: int = 0):
        return None

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return device.device_name(device_id)

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        return device.total_memory(device_id)

    @classmethod
    def get_current_memory_usage(cls, device_: Optional[torch.types.Device] = None) -> float:
        return device.memory_in_use(device_)

    @classmethod
    def inference_mode(cls):
        return torch.no_grad()

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        # Pinned host memory only helps with an accelerator to copy to.
        return not device.is_cpu_mode()

    @classmethod
    def device_count(cls) -> int:
        return 1 if device.is_cpu_mode() else torch.xpu.device_count()

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        if device.is_cpu_mode():
            # torch.distributed over gloo, never vllm._C's shared-memory ops.
            return "vllm_xpu_plugin.distributed.gloo_communicator.GlooCommunicator"
        # XPU-only: torch.distributed over xccl/oneCCL (the platform's dist_backend).
        return "vllm.distributed.device_communicators.xpu_communicator.XpuCommunicator"

    @classmethod
    def get_punica_wrapper(cls) -> str:
        return "vllm_xpu_plugin.lora.punica_wrapper.PluginPunicaWrapper"

    @classmethod
    def is_kv_cache_dtype_supported(cls, kv_cache_dtype: str,
                                    model_config: ModelConfig) -> bool:
        return kv_cache_dtype in device.kv_cache_dtypes()

    @classmethod
    def support_hybrid_kv_cache(cls) -> bool:
        return False

    @classmethod
    def support_static_graph_mode(cls) -> bool:
        return False

    @classmethod
    def use_all_gather(cls) -> bool:
        return True

    @classmethod
    def fp8_dtype(cls) -> torch.dtype:
        return torch.float8_e5m2
