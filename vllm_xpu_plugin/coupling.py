"""The coupling catalogue: every private or unstable vLLM / IPEX / library surface the plugin
relies on, where, why, and what would remove it (the idea of vllm-ascend's
``patch/__init__.py`` and vllm-metal's "remove when" tags, as data).

:func:`problems` checks each entry against the installed packages (name exists, parameter
names, op schema arity). ``tests/test_vllm_compat.py`` runs it, so a vLLM or IPEX upgrade
that moves a surface fails one named test instead of a model run; ``docs/dev/vllm_coupling.md``
is generated from this list (``python -m vllm_xpu_plugin.coupling > docs/dev/vllm_coupling.md``)
and a test keeps it current. Add a row whenever the plugin starts to touch a private name,
overrides a vLLM method, or reaches into another package's internals.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Coupling:
    # "package.module:Qualified.name", or "torch.ops.<namespace>.<op>" for kind "op".
    surface: str
    # callable: signature parameter names == expect
    # attribute: the object exists (class attribute, module attribute)
    # init-assigns: Owner.__init__'s source assigns each name in expect ("self.<name> =")
    # instance-has: Owner() (built with no arguments) has each attribute in expect
    # cuda-calls: every torch.cuda.<name> the callable's source uses is in expect
    # fields: the dataclass has each field in expect
    # op: the torch op exists and its schema has expect[0] arguments
    kind: str
    expect: tuple = ()
    where: str = ""
    why: str = ""
    remove_when: str = ""


_RUNNER = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"
_PLATFORM = "vllm.platforms.interface:Platform"

CATALOGUE: tuple[Coupling, ...] = (
    # ------------------------------------------------------------------ vLLM: model runner
    Coupling(f"{_RUNNER}._sample", "callable", ("self", "logits", "spec_decode_metadata"),
             "worker/model_runner.py",
             "applies the grammar bitmask in torch just before vLLM samples (xgrammar's own "
             "apply is float32-only on CPU and torch.compile'd elsewhere)",
             "vLLM exposes a bitmask-apply hook or xgrammar's apply works on this device"),
    Coupling(f"{_RUNNER}._to_list", "callable", ("self", "sampled_token_ids"),
             "worker/model_runner.py",
             "the base copies through a pinned buffer and a CUDA event; on the host "
             "tolist() is the whole job",
             "vLLM's runner skips the pinned copy for host tensors"),
    Coupling(f"{_RUNNER}._sync_device", "callable", ("self",), "worker/model_runner.py",
             "the base calls torch.cuda.synchronize()", "vLLM routes it through the platform"),
    Coupling(f"{_RUNNER}._init_device_properties", "callable", ("self",),
             "worker/model_runner.py", "the base reads CUDA device properties (num_sms)",
             "vLLM asks the platform for device properties"),
    Coupling(f"{_RUNNER}.get_dp_padding", "callable", ("self", "num_tokens"),
             "worker/model_runner.py",
             "no CUDA graphs: data-parallel ranks need no common padded batch size",
             "vLLM skips DP padding when CUDA graphs are off"),
    Coupling(f"{_RUNNER}.may_reinitialize_input_batch", "callable",
             ("self", "kv_cache_config"), "worker/model_runner.py",
             "re-aliases host/device buffers of a rebuilt InputBatch in CPU mode",
             "vLLM's CPU runner stops keeping separate host and device buffers"),
    Coupling(f"{_RUNNER}.execute_model", "callable",
             ("self", "scheduler_output", "intermediate_tensors"), "worker/model_runner.py",
             "takes the grammar bitmask off the SchedulerOutput before vLLM applies it",
             "as for _sample"),
    Coupling(f"{_RUNNER}.load_model", "callable", ("self", "eep_scale_up"),
             "worker/model_runner.py", "prepacks CPU-mode GEMM weights after loading",
             "IPEX-prepacked linear methods chosen by the platform at layer build time"),
    Coupling(f"{_RUNNER}.__init__", "init-assigns",
             ("sampler", "rejection_sampler", "drafter", "cascade_attn_enabled",
              "input_batch"),
             "worker/model_runner.py",
             "the runner replaces the sampler (greedy pick on the device kernel) and the "
             "Triton rejection sampler, warms up the ngram drafter, disables cascade attention",
             "a platform hook for the sampler / rejection sampler classes"),
    Coupling(f"{_RUNNER}.__init__", "cuda-calls",
             ("Event", "Stream", "current_stream", "default_stream", "stream"),
             "device.cuda_api_redirect",
             "GPUModelRunner.__init__ builds torch.cuda.Event / Stream objects; the plugin "
             "points those names at the device's equivalents while it runs",
             "vLLM builds events and streams through current_platform"),
    Coupling("vllm.v1.utils:CpuGpuBuffer.__init__", "callable",
             ("self", "size", "dtype", "device", "pin_memory", "with_numpy"),
             "worker/model_runner.py (_alias_device_buffers_to_host)",
             "CPU mode points each buffer's .gpu at its .cpu: no per-step host-to-host copy",
             "vLLM's GPU runner learns that the device is the host"),
    Coupling("vllm.v1.worker.gpu_input_batch:InputBatch.__init__", "init-assigns",
             ("token_ids_cpu_tensor", "temperature_cpu_tensor", "top_p_cpu_tensor",
              "top_k_cpu_tensor"),
             "worker/model_runner.py (_alias_device_buffers_to_host)",
             "the <name>_cpu_tensor / <name> pairs are aliased in CPU mode", "as above"),
    Coupling("vllm.v1.worker.block_table:MultiGroupBlockTable.__init__", "init-assigns",
             ("block_tables",), "worker/model_runner.py (_alias_device_buffers_to_host)",
             "each group's block table buffers are aliased in CPU mode", "as above"),
    Coupling("vllm.v1.core.sched.output:SchedulerOutput", "fields",
             ("grammar_bitmask", "structured_output_request_ids",
              "scheduled_spec_decode_tokens"),
             "structured_output/grammar_bitmask.py",
             "the bitmask rows are matched to the logits rows by the plugin",
             "as for GPUModelRunner._sample"),
    # ------------------------------------------------------------------ vLLM: worker
    Coupling("vllm.v1.worker.gpu_worker:init_worker_distributed_environment", "callable",
             ("vllm_config", "rank", "distributed_init_method", "local_rank", "backend"),
             "worker/xpu_worker.py", "the plugin's init_device calls it with its backend",
             "a public worker-init helper in vLLM"),
    Coupling("vllm.v1.worker.gpu_worker:Worker.determine_available_memory", "callable",
             ("self",), "worker/xpu_worker.py",
             "CPU mode: a fixed budget; XPU: profiled with torch.xpu memory stats",
             "vLLM profiles memory through the platform"),
    Coupling("vllm.v1.worker.gpu_worker:Worker.init_device", "callable", ("self",),
             "worker/xpu_worker.py", "the base is CUDA-only", "never (device-specific)"),
    Coupling(f"{_RUNNER}.profile_run", "callable", ("self",), "worker/xpu_worker.py",
             "the XPU memory profile runs vLLM's dummy forward", "as above"),
    # ------------------------------------------------------------------ vLLM: platform
    *(Coupling(f"{_PLATFORM}.{name}", "callable", params, "platform.py",
               "overridden by XPUPluginPlatform; a renamed parameter would silently stop "
               "matching vLLM's keyword calls", "never (the platform interface)")
      for name, params in (
          ("pre_register_and_update", ("parser",)),
          ("check_and_update_config", ("vllm_config",)),
          ("validate_request", ("prompt", "params", "processed_inputs")),
          ("get_attn_backend_cls", ("selected_backend", "head_size", "dtype",
                                    "kv_cache_dtype", "block_size", "use_v1", "use_mla",
                                    "has_sink", "use_sparse")),
          ("get_punica_wrapper", ()),
          ("get_device_communicator_cls", ()),
          ("is_kv_cache_dtype_supported", ("kv_cache_dtype", "model_config")),
          ("check_if_supports_dtype", ("torch_dtype",)),
          ("verify_quantization", ("quant",)),
          ("get_vit_attn_backend", ("head_size", "dtype")),
          ("get_current_memory_usage", ("device",)),
      )),
    Coupling("vllm.v1.engine.processor:Processor.process_inputs", "attribute", (),
             "request_checks.py (validate_request sees the preprocessed inputs)",
             "the prompt-id bound runs in the platform's validate_request hook, which vLLM "
             "calls from here after preprocessing (ids of every prompt kind)",
             "vLLM bounding ids by get_vocab_size() itself"),
    Coupling("vllm.entrypoints.openai.cli_args:FrontendArgs", "fields", ("middleware",),
             "request_checks.ClientErrorMiddleware (opt-in: --middleware ...)",
             "turns vLLM's pre-hook 500s into 400s and strips server paths",
             "vLLM fixing those 500s"),
    Coupling("vllm.platforms.interface:_Backend", "attribute", (), "platform.py",
             "the attention-backend enum in get_attn_backend_cls's signature",
             "vLLM makes the enum public"),
    Coupling("argparse:ArgumentParser", "instance-has", ("_actions",),
             "platform.py (pre_register_and_update)",
             "adds --device only if vLLM's parser does not already have it",
             "vLLM's parser exposes its option names"),
    # ------------------------------------------------------------------ vLLM: layers / ops
    Coupling("vllm.model_executor.custom_op:CustomOp.register_oot", "callable",
             ("_decorated_op_cls", "name"), "ops/*.py",
             "one IPEX subclass per op (vllm-gaudi's pattern)", "never (the OOT op API)"),
    Coupling("vllm.model_executor.custom_op:CustomOp.op_registry_oot", "attribute", (),
             "ops/_common.py", "keeps the in-tree op name for -op opt-outs",
             "vLLM keys OOT ops by the in-tree name"),
    Coupling("vllm.model_executor.layers.rotary_embedding:"
             "RotaryEmbedding._match_cos_sin_cache_dtype", "callable", ("self", "query"),
             "ops/ipex_rotary_embedding.py",
             "the cos/sin cache follows the query's device and dtype as in forward_native",
             "vLLM moves the cache once at load"),
    Coupling("vllm.v1.spec_decode.ngram_proposer:NgramProposer.propose", "callable",
             ("self", "sampled_token_ids", "req_ids", "num_tokens_no_spec", "token_ids_cpu",
              "spec_decode_unsupported_reqs"),
             "spec_decode/ngram_setup.py", "a warm-up call compiles numba's kernel at startup",
             "vLLM warms the proposer up itself"),
    Coupling("numba.np.ufunc.parallel:_is_initialized", "attribute", (),
             "spec_decode/ngram_setup.py",
             "numba's threading layer must be chosen before its first parallel launch",
             "vLLM's ngram proposer stops using numba's parallel loops"),
    Coupling("vllm.v1.sample.ops.topk_topp_sampler:apply_top_k_top_p", "attribute", (),
             "spec_decode/rejection_sampler.py", "the torch rejection sampler's top-k/top-p",
             "vLLM's rejection sampler runs without Triton"),
    # ------------------------------------------------------------------ vLLM: LoRA
    Coupling("vllm.lora.punica_wrapper.punica_base:PunicaWrapperBase._update_base_metadata",
             "callable",
             ("self", "mapping", "lora_index_to_id", "max_loras", "vocab_size",
              "extra_vocab_size"),
             "lora/punica_wrapper.py (update_metadata)",
             "builds vLLM's per-token and per-request LoRA index tensors",
             "a public punica metadata API, or the plugin calling convert_mapping itself"),
    Coupling("vllm.lora.punica_wrapper.punica_base:PunicaWrapperBase._apply_bias", "callable",
             ("self", "indices", "output", "output_slices", "lora_bias_stacked"),
             "lora/punica_wrapper.py", "LoRA bias with base (-1) rows left alone",
             "the plugin reimplements it"),
    Coupling("vllm.lora.layers.utils:_get_lora_device", "callable", ("base_layer",),
             "platform.py (GPTQ/AWQ + LoRA refused)",
             "vLLM's LoRA layers need a weight or qweight tensor the plugin's int4 layers "
             "no longer hold", "the int4 layers keep a qweight device tensor"),
    *(Coupling(f"intel_extension_for_pytorch.llm.functional:{name}", "callable", params,
               "kernels/lora.py",
               "IPEX punica kernels (CPU quirks measured: index -1 out of bounds, fp32 a "
               "no-op, sgmv wrong for unequal runs; tests/test_lora.py)",
               "IPEX API change (it ends at 2.8)")
      for name, params in (
          ("bgmv_shrink", ("input", "lora_weights", "output", "token_lora_mapping",
                           "scaling")),
          ("bgmv_expand_slice", ("input", "lora_weights", "output", "token_lora_mapping",
                                 "slice_offset", "slice_size", "add_inputs")),
      )),
    # ------------------------------------------------------------------ vLLM: pooling
    Coupling("vllm.attention.layers.encoder_only_attention:"
             "create_encoder_only_attention_backend", "callable",
             ("underlying_attn_backend",), "attention/ipex_attn.py (encoder-only path)",
             "vLLM's EncoderOnlyAttention subclasses the plugin's backend with a non-causal "
             "builder", "vLLM 0.12's supports_attn_type"),
    Coupling(f"{_RUNNER}.may_add_encoder_only_layers_to_kv_cache_config", "callable",
             ("self",), "worker/model_runner.py (inherited)",
             "encoder-only layers get no KV cache", "a runner rewrite upstream"),
    Coupling("intel_extension_for_pytorch.llm.functional:varlen_attention", "callable",
             ("query", "key", "value", "out", "seqlen_q", "seqlen_k", "alibi_slopes",
              "max_seqlen_q", "max_seqlen_k", "pdropout", "softmax_scale", "zero_tensors",
              "is_causal", "return_softmax", "gen_", "window_size_left", "window_size_right",
              "softcap"),
             "kernels/attention.py (varlen_attention)",
             "non-paged encoder attention; the CPU build ignores softmax_scale (folded into "
             "q) and has no window", "an IPEX fix (then drop the fold)"),
    # ------------------------------------------------------------------ vLLM: Ray
    Coupling("vllm.executor.ray_distributed_executor:RayDistributedExecutor._init_workers_ray",
             "callable", ("self", "placement_group", "ray_remote_kwargs"),
             "distributed/ray_executor.py (rewritten in PluginRayExecutor)",
             "the plugin's actor class, Ray resource (CPU in CPU mode), actor environment "
             "and node identity", "vLLM hooks for the wrapper class and actor options"),
    Coupling("vllm.executor.ray_distributed_executor:RayDistributedExecutor._run_workers",
             "callable",
             ("self", "method", "args", "async_run_tensor_parallel_workers_only",
              "max_concurrent_workers", "kwargs"),
             "distributed/ray_executor.py", "runs init steps on the plugin's workers",
             "as above"),
    Coupling("vllm.executor.ray_distributed_executor:RayDistributedExecutor."
             "_get_env_vars_to_be_updated", "callable", ("self",),
             "distributed/ray_executor.py", "the environment vLLM forwards to workers",
             "as above"),
    Coupling("vllm.executor.ray_utils:_wait_until_pg_ready", "callable",
             ("current_placement_group",), "distributed/ray_executor.py",
             "waits for the placement group with vLLM's messages and timeout",
             "the plugin's own wait loop"),
    Coupling("vllm.executor.ray_utils:RayWorkerWrapper.get_node_and_gpu_ids", "callable",
             ("self",), "distributed/ray_worker.py (overridden)",
             "no accelerator ids for workers on Ray's CPU resource",
             "vLLM support for non-accelerator Ray resources"),
    Coupling("vllm.ray.ray_env:get_env_vars_to_copy", "callable",
             ("exclude_vars", "additional_vars", "destination"),
             "distributed/ray_executor.py", "forwards the same variables vLLM does", "-"),
    # ------------------------------------------------------------------ vLLM: MoE
    Coupling("vllm.model_executor.layers.fused_moe.layer:UnquantizedFusedMoEMethod."
             "forward_cuda", "callable",
             ("self", "layer", "x", "use_grouped_topk", "top_k", "router_logits",
              "renormalize", "topk_group", "num_expert_group", "global_num_experts",
              "expert_map", "custom_routing_function", "scoring_func",
              "routed_scaling_factor", "e_score_correction_bias",
              "apply_router_weight_on_input", "activation", "enable_eplb",
              "expert_load_view", "logical_to_physical_map", "logical_replica_count"),
             "moe/fused_moe_method.py (forward_oot takes the same arguments)",
             "the OOT platform otherwise falls through to forward_cuda (_moe_C ops)",
             "vLLM ships an OOT/CPU MoE path that needs no _moe_C"),
    Coupling("vllm.model_executor.layers.fused_moe.layer:UnquantizedFusedMoEMethod."
             "create_weights", "callable",
             ("self", "layer", "num_experts", "hidden_size", "intermediate_size_per_partition",
              "params_dtype", "extra_weight_attrs"),
             "moe/fused_moe_method.py", "refuses unsupported layer options before loading",
             "as above"),
    Coupling("vllm.model_executor.layers.fused_moe.layer:FusedMoE.__init__", "init-assigns",
             ("activation", "apply_router_weight_on_input", "zero_expert_num", "enable_eplb",
              "use_grouped_topk", "e_score_correction_bias", "custom_routing_function",
              "use_ep", "layer_name"),
             "moe/limits.py, moe/fused_moe_method.py",
             "the layer options the plugin checks and routes with", "vLLM API change"),
    Coupling("vllm.model_executor.layers.fused_moe.config:FusedMoEConfig", "fields",
             ("has_bias",), "moe/limits.py", "expert biases are refused in one line",
             "the IPEX MoE kernels take biases"),
    *(Coupling(f"torch.ops.torch_ipex.{op}", "op", (nargs,), "kernels/moe.py",
               "IPEX's CPU MoE kernels (what GatedMLPMOE runs on CPU), called directly",
               "IPEX changes (it ends at 2.8)")
      for op, nargs in (("convert_weight_packed_moe_bf16", 2), ("fused_experts", 18),
                        ("mixtral_moe_tpp", 10))),
    # ------------------------------------------------------------------ IPEX (CPU build)
    Coupling("intel_extension_for_pytorch.llm.quantization.woq_linear:"
             "IPEXWeightOnlyQuantizedLinear.from_weight", "callable",
             ("qweight", "scales", "zero_points", "in_features", "out_features", "qconfig",
              "bias", "group_size", "g_idx", "quant_method", "dtype", "kwargs"),
             "kernels/int4_gemm.py", "the int4 GEMM on an Intel GPU and CPU mode's fallback "
             "for shapes torch's int4 kernel refuses; resident_bytes() reads its private "
             "_op_context (get_weight/get_scales/get_zero_points) for the memory benchmark",
             "IPEX reports its WOQ memory publicly, or the plugin drops the fallback"),
    Coupling("intel_extension_for_pytorch.nn.utils._weight_prepack:"
             "TPPLinear_weight_prepack", "callable", ("m", "bk", "bc", "layer_dtype"),
             "kernels/gemm.py", "IPEX's own weight blocking for its TPP GEMM (CPU mode), "
             "called with the plugin's output-block width (64/32/16, measured) where IPEX's "
             "Apply_TPPLinear_weight_prepack would always take 16",
             "IPEX exposes a public prepack API with a block size, or CPU mode drops "
             "prepacked GEMMs"),
    Coupling("intel_extension_for_pytorch.nn.utils._weight_prepack:block", "callable",
             ("model",), "kernels/gemm.py",
             "lays the weight out in the blocking TPPLinear_weight_prepack configured",
             "as TPPLinear_weight_prepack"),
    *(Coupling(f"torch.ops.torch_ipex.{op}", "op", (nargs,), where,
               "the kernel IPEX's Python wrapper dispatches to, called directly (skips its "
               "per-call Python dispatch: measured in docs/performance.md)",
               "IPEX's public wrapper gets cheap enough, or the schema changes")
      for op, nargs, where in (
          ("tpp_linear", 3, "kernels/gemm.py"),
          ("tpp_linear_bias", 4, "kernels/gemm.py"),
          ("rmsnorm", 3, "kernels/norms.py"),
          ("add_rmsnorm", 5, "kernels/norms.py"),
          ("rotary_position_embedding", 7, "kernels/rotary.py"),
          ("reshape_and_cache", 8, "kernels/attention.py"),
          ("flash_attn_varlen_func", 18, "kernels/attention.py"),
          ("single_query_cached_kv_attention", 15, "kernels/attention.py"),
      )),
    Coupling("torch.nn:Module", "instance-has", ("_parameters",),
             "quantization/int4_linear.py", "drops the checkpoint's packed int4 tensors once "
             "the int4 kernel holds its own copy",
             "vLLM's weight loader hands the kernel the tensors directly"),
    Coupling("torch._inductor.config:cpp.threads", "attribute", (), "compilation/policy.py",
             "compiled mode keeps inductor's C++ kernels on one thread (decode-sized loops "
             "opened a parallel region each and stalled on a shared machine)",
             "inductor sizing its C++ loops' threads from the trip count"),
    Coupling("torch._inductor.config:compile_threads", "attribute", (), "compilation/policy.py",
             "TORCHINDUCTOR_COMPILE_THREADS=1, as vLLM's CPU platform sets it (async "
             "compile workers fail in daemonic engine processes)",
             "vLLM's engine processes allowing compile worker pools"),
    # ------------------------------------------------------------------ benchmarks only
    *(Coupling(f"{_RUNNER}.{name}", "callable", params, "benchmarks/peer_step_timing.py",
               "times input preparation, sampling and bookkeeping per decode step the same "
               "way in the plugin's and vLLM CPU's runner (overridden, calling super)",
               "a per-phase step-timing hook in vLLM")
      for name, params in (
          ("_update_states", ("self", "scheduler_output")),
          ("_prepare_inputs", ("self", "scheduler_output")),
          ("_preprocess", ("self", "scheduler_output", "intermediate_tensors",
                           "ubatch_slices", "num_tokens_after_padding")),
          ("_bookkeeping_sync", ("self", "scheduler_output", "sampler_output", "logits",
                                 "hidden_states", "num_scheduled_tokens")),
      )),
    *(Coupling(f"vllm.v1.core.sched.scheduler:Scheduler.{name}", "callable", params,
               "benchmarks/peer_step_timing.py",
               "a scheduler_cls subclass times schedule / update_from_output (uni executor: "
               "schedule, execute and update run in one process)",
               "vLLM per-step timing stats")
      for name, params in (("schedule", ("self",)),
                           ("update_from_output",
                            ("self", "scheduler_output", "model_runner_output")))),
    Coupling("vllm.v1.worker.cpu_worker:CPUWorker.init_device", "attribute", (),
             "benchmarks/peer_timed_worker.py",
             "the peer's runner class is swapped for a timed subclass after init_device "
             "builds it", "a runner-class hook on vLLM's CPU worker"),
    # ------------------------------------------------------------------ torch (private ATen)
    *(Coupling(f"torch.ops.aten.{op}", "op", (nargs,), "kernels/int4_gemm.py",
               "CPU mode's int4 GEMM: one bf16/fp16 scale + zero per group (resident at "
               "checkpoint size, issue 18) and a bandwidth-bound decode kernel; IPEX's CPU WOQ "
               "keeps three dtype copies and dequantizes per call without AVX512-FP16",
               "a public torch int4 API (torchao's Int4CPULayout wraps these), or IPEX's CPU "
               "WOQ holding one scale copy")
      for op, nargs in (("_convert_weight_to_int4pack_for_cpu", 2),
                        ("_weight_int4pack_mm_for_cpu", 4))),
    # ------------------------------------------------------------------ torch.compile mode
    Coupling("vllm.config:CompilationConfig", "fields",
             ("level", "backend", "use_inductor", "splitting_ops", "inductor_compile_config",
              "custom_ops", "cudagraph_mode", "cudagraph_capture_sizes", "compile_sizes"),
             "compilation/policy.py",
             "maps -O / --compilation-config to eager or PIECEWISE inductor split at the "
             "attention and MoE ops (docs/compile.md)",
             "never (vLLM's compilation config); revisit when vLLM renames level -> mode"),
    Coupling("vllm.engine.arg_utils:EngineArgs", "fields", ("compilation_config",),
             "compilation/policy.py (mark_command_line_levels)",
             "wraps the parse function (argparse `type`) of the -O / --compilation-config "
             "option so a config where the user named a level carries a mark: vLLM 0.11 "
             "turns 'no level' into level 3 before the platform sees it, so -O3 could not "
             "be told from no -O (tests/test_compile.py parses real command lines)",
             "vLLM keeps 'level not set' visible to check_and_update_config"),
    *(Coupling(f"torch.ops.vllm.{op}", "op", (nargs,), "compilation/policy.py",
               "a splitting op by name: the compiled graph is cut at it, so inductor never "
               "traces the IPEX attention / the plugin's fused MoE",
               "vLLM renames the op (then SPLITTING_OPS must follow)")
      for op, nargs in (("unified_attention", 4), ("unified_attention_with_output", 7),
                        ("moe_forward", 3), ("moe_forward_shared", 3))),
    Coupling("vllm.compilation.fix_functionalization:FixFunctionalizationPass", "attribute",
             (), "compilation/traceable_ops.py, compilation/policy.py",
             "it looks up torch.ops._C ops (absent without vllm._C) once an in-place op sits "
             "in an inductor graph: the plugin's ops are functional and in-place vLLM ops "
             "are splitting ops",
             "the pass skips when vllm._C is not loaded (it already skips on is_xpu())"),
    Coupling("vllm.utils:direct_register_custom_op", "callable",
             ("op_name", "op_func", "mutates_args", "fake_impl", "target_lib",
              "dispatch_key", "tags"),
             "compilation/traceable_ops.py",
             "registers the plugin's opaque ops (torch.ops.vllm_xpu_plugin.*) as vLLM "
             "registers its own", "torch.library.custom_op gets as cheap to dispatch"),
    Coupling("vllm.model_executor.layers.rotary_embedding.base:"
             "RotaryEmbedding._match_cos_sin_cache_dtype", "callable", ("self", "query"),
             "compilation/traceable_ops.py",
             "the rotary kernel table is built before dynamo traces (else rebuilt in the graph "
             "every step), after the cache dtype change forward_oot makes first",
             "the rotary op builds its table at load time"),
    Coupling(f"{_PLATFORM}.opaque_attention_op", "callable", (), "platform.py",
             "True while a compiled model is built: Attention layers call "
             "torch.ops.vllm.unified_attention_with_output (the splitting op)",
             "never (the platform interface)"),
    Coupling("vllm.compilation.counter:compilation_counter", "attribute", (),
             "tests/test_compile.py", "num_graphs_seen shows the model really ran compiled",
             "a public compile-status API"),
)


def _resolve(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split(".") if qualname else ():
        obj = getattr(obj, part)
    return obj


def _init_source(owner: Any) -> str:
    return inspect.getsource(owner.__init__ if inspect.isclass(owner) else owner)


def problem(entry: Coupling) -> Optional[str]:
    """Why the installed packages no longer offer ``entry``, or None."""
    try:
        if entry.kind == "op":
            import torch

            from vllm_xpu_plugin import device

            device.ipex()  # registers torch.ops.torch_ipex
            namespace, name = entry.surface.split(".")[-2:]
            schema = getattr(getattr(torch.ops, namespace), name).default._schema
            if len(schema.arguments) != entry.expect[0]:
                return f"schema changed: {schema}"
            return None
        if entry.kind == "init-assigns":
            source = _init_source(_resolve(entry.surface.removesuffix(".__init__")))
            missing = [n for n in entry.expect if not re.search(rf"self\.{n}\s*[:=]", source)]
            return f"no longer assigns {missing}" if missing else None
        obj = _resolve(entry.surface)
        if entry.kind == "instance-has":
            missing = [n for n in entry.expect if not hasattr(obj(), n)]
            return f"instances lack {missing}" if missing else None
        if entry.kind == "cuda-calls":
            used = set(re.findall(r"torch\.cuda\.(\w+)", inspect.getsource(obj)))
            extra = sorted(used - set(entry.expect))
            return f"also uses torch.cuda.{extra} (not redirected)" if extra else None
        if entry.kind == "callable":
            params = tuple(inspect.signature(obj).parameters)
            return None if params == entry.expect else f"parameters {params} != {entry.expect}"
        if entry.kind == "fields":
            names = {f.name for f in dataclasses.fields(obj)}
            missing = [n for n in entry.expect if n not in names]
            return f"no fields {missing}" if missing else None
        if entry.kind == "attribute":
            return None
        return f"unknown kind {entry.kind!r}"
    except (ImportError, AttributeError, TypeError, ValueError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


def problems() -> dict[str, str]:
    """``{surface: problem}`` for every catalogue entry the installed packages break."""
    found = {}
    for entry in CATALOGUE:
        why = problem(entry)
        if why:
            found[f"{entry.surface} ({entry.kind})"] = why
    return found


def markdown() -> str:
    lines = [
        "# Coupling catalogue: private vLLM / IPEX surfaces the plugin relies on",
        "",
        "Generated from `vllm_xpu_plugin/coupling.py` "
        "(`python -m vllm_xpu_plugin.coupling > docs/dev/vllm_coupling.md`); "
        "`tests/test_vllm_compat.py` checks every row against the installed vLLM 0.11.0 / "
        "IPEX 2.8 and that this page is current. Upgrading vLLM or IPEX: run that test "
        "first; each failure names the surface to revisit.",
        "",
        "| surface | checked | used in | why | remove when |",
        "|---|---|---|---|---|",
    ]
    for e in CATALOGUE:
        checked = e.kind if not e.expect else f"{e.kind}: {', '.join(map(str, e.expect))}"
        lines.append(f"| `{e.surface}` | {checked} | {e.where} | {e.why} | {e.remove_when} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
