"""What the plugin compiles for the user's ``-O`` / ``--compilation-config`` (docs/compile.md).

Called from ``XPUPluginPlatform.check_and_update_config``. Two modes:

- eager: no torch.compile; every op runs as written (IPEX kernels via forward_oot).
  ``--enforce-eager`` and ``-O0`` give it; so does every feature listed in
  :func:`eager_only_reason` (one log line says why).
- compiled: vLLM's PIECEWISE level with the inductor backend (C++ codegen in CPU mode, the
  XPU (Triton) codegen on an Intel GPU). The model's forward is captured once by dynamo
  with a dynamic token dimension and split at the attention op
  (``vllm.unified_attention_with_output``, the platform's attention then is an opaque
  custom op): inductor compiles the pieces between attention calls and never traces into
  the IPEX attention kernels. The plugin's other IPEX-backed ops stay IPEX kernels
  (``custom_ops = ["all"]``), each an opaque custom op in the graph (traceable_ops.py).

Why PIECEWISE rather than vLLM's CPU platform's DYNAMO_ONCE whole graph: the issue asks for
the attention to be a splitting op, and with no graph capture (no CUDA graphs here) the
split costs only one Python call per piece per step while the pieces of identical layers
share one inductor compilation (see docs/compile.md for the measured compile times).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from vllm_xpu_plugin import device, envs
from vllm_xpu_plugin.log import init_logger

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = init_logger(__name__)

# What the plugin runs for vLLM's level 3 (PIECEWISE) when nobody asked for a level: vLLM
# 0.11 hands the platform level 3 both when the user asks for nothing and for -O3, so an
# explicit request is recognised by its mark (mark_command_line_levels: -O3 on vLLM's
# command line) or by an explicit backend (offline: compilation_config={"level": 3,
# "backend": "inductor"}), or asked with VLLM_XPU_PLUGIN_COMPILE=1. Eager, by measurement (benchmarks/compile_mode.py,
# SmolLM2-135M bf16, 16 prompts x 128 tokens, OMP_NUM_THREADS=2, AMD EPYC 2 vCPU, eager and
# compiled engines in one process, generate calls interleaved; docs/compile.md "Default"):
# on the quietest rounds compiled 220-259 tok/s vs eager 244 (no clear gain: the heavy ops
# are opaque IPEX kernels either way); under neighbour load (load average 4-11) compiled
# lost 6 of 10 interleaved rounds (down to 0.4x); and compiling costs start time (+8 s with
# vLLM's compile cache warm, +50-100 s cold).
COMPILE_BY_DEFAULT = False

# Ops the compiled graph is split at (run eagerly between compiled pieces): the attention
# ops, and FusedMoE's ops, which write their input in place: inside an inductor graph such
# an op becomes auto_functionalized, and vLLM 0.11's FixFunctionalizationPass then looks up
# torch.ops._C ops, which do not exist without vllm._C (measured: the compile fails).
SPLITTING_OPS = [
    "vllm.unified_attention",
    "vllm.unified_attention_with_output",
    "vllm.moe_forward",
    "vllm.moe_forward_shared",
]

# Inductor options vLLM's CPU platform uses for its C++ backend (vllm/platforms/cpu.py).
CPU_INDUCTOR_OPTIONS = {
    "dce": True,
    "size_asserts": False,
    "nan_asserts": False,
    "epilogue_fusion": True,
    # Inductor's C++ kernels on one thread. With the token count dynamic, inductor cannot
    # tell a decode-sized loop from a prefill-sized one and opens an OpenMP parallel region
    # in every fused kernel; eager mode keeps such small work serial (ATen's grain size,
    # kernels/cpu_threads.py), because a region whose other thread is descheduled stalls
    # on a shared machine. Measured without this (benchmarks/compile_mode.py, load 9-11):
    # compiled 13.5-54.5 tok/s vs eager 20.3-87.2 in 3 of 4 interleaved rounds.
    "cpp.threads": 1,
}


def eager_only_reason(vllm_config: VllmConfig) -> Optional[str]:
    """Why this config runs eagerly even though compilation was asked for, or None."""
    if vllm_config.lora_config is not None:
        # vLLM's own CPU and XPU platforms also run LoRA eagerly: the punica wrapper's
        # per-step metadata is Python state the compiled graph would freeze.
        return "--enable-lora runs eagerly (as on vLLM's CPU and XPU platforms)"
    if vllm_config.parallel_config.world_size > 1:
        # The plugin's communicators (gloo in CPU mode, oneCCL on XPU) are not custom ops
        # (vLLM calls torch.ops.vllm.all_reduce only on CUDA/ROCm/TPU), so dynamo would
        # trace into torch.distributed; not validated, hence eager.
        return "tensor/pipeline parallelism (world size > 1) runs eagerly"
    model_config = vllm_config.model_config
    if model_config is not None and model_config.runner_type == "pooling":
        return "pooling models run eagerly"
    if model_config is not None and model_config.quantization in ("ipex_gptq", "ipex_awq"):
        # The int4 GEMM (kernels/int4_gemm.py) is not wrapped as an opaque op yet.
        return f"{model_config.quantization[5:].upper()} int4 models run eagerly"
    return None


def apply_compilation_policy(vllm_config: VllmConfig) -> None:
    """Set the compilation config to eager or compiled (see the module docstring)."""
    from vllm.config import CompilationLevel, CUDAGraphMode

    compilation_config = vllm_config.compilation_config
    model_config = vllm_config.model_config
    # No CUDA graphs on XPU (and none in CPU mode).
    compilation_config.cudagraph_mode = CUDAGraphMode.NONE
    compilation_config.cudagraph_capture_sizes = []
    # Keep the user's "-op" opt-outs (e.g. -rms_norm to compare with the native path): the
    # IPEX ops stay on in both modes.
    compilation_config.custom_ops = [
        "all", *(op for op in compilation_config.custom_ops if op.startswith("-"))]
    if compilation_config.compile_sizes is None:
        compilation_config.compile_sizes = []

    if not _compile_requested(vllm_config):
        _set_eager(vllm_config)
        return
    reason = eager_only_reason(vllm_config)
    if reason is not None:
        logger.info("torch.compile is off for this config: %s (docs/compile.md).", reason)
        _set_eager(vllm_config)
        return

    if compilation_config.level != CompilationLevel.PIECEWISE:
        # Whole-graph levels would put the attention op (it writes its output buffer) into
        # inductor's graph, whose functionalization fix-up pass in vLLM 0.11 looks up
        # vllm._C ops that do not exist here.
        logger.info("torch.compile level %d runs as level 3 (PIECEWISE, attention split "
                    "out) on vllm-xpu-plugin (docs/compile.md).", compilation_config.level)
    compilation_config.level = CompilationLevel.PIECEWISE
    if compilation_config.splitting_ops is None:  # the user's own list wins
        compilation_config.splitting_ops = list(SPLITTING_OPS)
    compilation_config.backend = "inductor"
    compilation_config.use_inductor = True
    if device.is_cpu_mode():
        compilation_config.inductor_compile_config.update(CPU_INDUCTOR_OPTIONS)
        # Inductor's parallel compile workers do not survive in vLLM's daemonic engine
        # processes (vLLM's CPU platform sets the same).
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    # XPU-only: inductor picks its XPU (Triton) codegen from the tensors' device; nothing to
    # set here beyond the level and backend above.
    if model_config is not None:
        model_config.enforce_eager = False
    # Registers the plugin's opaque ops before the worker builds the model.
    from vllm_xpu_plugin.compilation import traceable_ops  # noqa: F401
    logger.info("torch.compile: PIECEWISE inductor, split at the attention op "
                "(docs/compile.md); --enforce-eager or -O0 runs eagerly.")


# Set on a CompilationConfig parsed from the user's own -O / --compilation-config value that
# names a level; vLLM's default (no -O) is never parsed, so it never carries the mark.
_LEVEL_ASKED = "_vllm_xpu_plugin_level_asked"


def mark_command_line_levels(parser) -> None:
    """Make the ``-O`` / ``--compilation-config`` option of vLLM's command line mark the
    config it parses when the user named a level (``-O3``, ``-O.level=3``, ``-O '{"level":
    3}'``), so that an explicit ``-O3`` compiles while no ``-O`` at all keeps the measured
    default. Called from the platform's ``pre_register_and_update(parser)`` hook, i.e. only
    when this plugin's platform is the current one."""
    for action in parser._actions:
        if action.dest != "compilation_config" or action.type is None:
            continue
        if getattr(action.type, "marks_level", False):
            return
        parse = action.type

        def parse_and_mark(value, _parse=parse):
            config = _parse(value)
            if getattr(config, "level", None) is not None:
                # A plain attribute in the instance dict: vLLM keeps the parsed object
                # (EngineArgs -> VllmConfig) and the config is checked in this process.
                config.__dict__[_LEVEL_ASKED] = True
            return config

        parse_and_mark.marks_level = True
        action.type = parse_and_mark
        return


def _level_asked(compilation_config) -> bool:
    """True when the user named the level: on the command line (the mark above) or
    offline with an explicit backend next to it (vLLM's default backend is "")."""
    return bool(compilation_config.__dict__.get(_LEVEL_ASKED)) or bool(compilation_config.backend)


def _compile_requested(vllm_config: VllmConfig) -> bool:
    from vllm.config import CompilationLevel

    model_config = vllm_config.model_config
    if model_config is not None and model_config.enforce_eager:
        return False
    switch = envs.VLLM_XPU_PLUGIN_COMPILE
    if switch is False:
        return False
    level = vllm_config.compilation_config.level
    if level is None or level == CompilationLevel.NO_COMPILATION:
        return False
    compilation_config = vllm_config.compilation_config
    if switch or level != CompilationLevel.PIECEWISE or COMPILE_BY_DEFAULT:
        return True
    if _level_asked(compilation_config):
        return True
    # vLLM turns "nothing asked" into PIECEWISE before the platform sees the config.
    logger.info("torch.compile is off by default on vllm-xpu-plugin (measured no faster "
                "here, docs/compile.md); -O3 or VLLM_XPU_PLUGIN_COMPILE=1 turns it on.")
    return False


def _set_eager(vllm_config: VllmConfig) -> None:
    from vllm.config import CompilationLevel

    vllm_config.compilation_config.level = CompilationLevel.NO_COMPILATION
    if vllm_config.model_config is not None:
        vllm_config.model_config.enforce_eager = True


def attention_op_is_opaque() -> bool:
    """True when the model being built is compiled: the Attention layers then call
    ``torch.ops.vllm.unified_attention_with_output`` (the splitting op) instead of the
    backend directly. Read by vLLM in each Attention layer's constructor, under the config
    being built; eager models keep the direct call (no custom-op dispatch per layer)."""
    from vllm.config import CompilationLevel, get_current_vllm_config

    level = get_current_vllm_config().compilation_config.level
    return level not in (None, CompilationLevel.NO_COMPILATION)
