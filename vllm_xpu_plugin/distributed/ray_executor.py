"""vLLM's Ray executor (``--distributed-executor-backend ray``) for the plugin's workers.

The platform swaps the ``ray`` backend for :class:`PluginRayExecutor`, a subclass of
vLLM 0.11's V1 ``RayDistributedExecutor``: the same placement group, compiled Ray DAG,
tensor/pipeline parallel ranks and shutdown. What differs:

- Placement. vLLM's platform key ``ray_device_key`` is ``GPU`` on an Intel GPU and Ray's
  ``CPU`` resource in CPU mode (vLLM's own CPU platform has no Ray support). Each worker
  is an actor holding one bundle of that resource. The placement group is created here,
  with bundle 0 pinned to the Ray node this engine process is attached to (vLLM pins it to
  ``node:<get_ip()>``, the host's outward address, which no Ray node started with
  ``--node-ip-address`` has, and then waits 30 minutes for it).
- Worker environment. Ray actors inherit the environment of ``ray start`` on their node,
  not of ``vllm serve``; the platform is chosen when the actor is built, before vLLM sends
  its environment updates, so the plugin's settings (CPU mode above all) travel in each
  actor's ``runtime_env``.
- Node identity. Nodes are told apart by Ray's node id and node IP (vLLM uses ``get_ip()``,
  which is one address for every Ray node on a host).
- DAG channels. Shared-memory channels between pipeline stages (vLLM does the same for
  its built-in XPU platform; the default would pick a CUDA communicator).

A worker actor that dies mid-generation needs nothing extra: the compiled DAG's read in
the engine's step raises Ray's ``ActorDiedError`` at once, the engine core fails and the
API server exits (tests/test_ray.py bounds it at 60 s).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import ray
import vllm.envs as vllm_envs
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from vllm.executor.ray_utils import _wait_until_pg_ready
from vllm.platforms import current_platform
from vllm.ray.ray_env import get_env_vars_to_copy
from vllm.utils import get_distributed_init_method, get_open_port
from vllm.v1.executor.ray_distributed_executor import RayDistributedExecutor

from vllm_xpu_plugin import device
from vllm_xpu_plugin.distributed.ray_worker import PluginRayWorkerWrapper
from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)

# Process settings every worker actor needs from the `vllm serve` environment (besides
# vLLM's own VLLM_* variables and the plugin's VLLM_XPU_PLUGIN_*). Never the device masks:
# those belong to the node the actor runs on.
FORWARDED_ENV_VARS = (
    "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_AFFINITY", "GLOO_SOCKET_IFNAME",
    "TP_SOCKET_IFNAME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
    "DO_NOT_TRACK",
    # XPU-only: oneCCL / Level Zero settings (docs/multi_node.md).
    "CCL_ATL_TRANSPORT", "CCL_ZE_IPC_EXCHANGE", "CCL_SOCKET_IFNAME", "CCL_PROCESS_LAUNCHER",
    "FI_PROVIDER", "CCL_LOG_LEVEL",
)
# Set per node or per worker by vLLM / Ray; never copied from the engine process.
WORKER_SPECIFIC_ENV_VARS = {"VLLM_HOST_IP", "VLLM_HOST_PORT", "LOCAL_RANK",
                            "CUDA_VISIBLE_DEVICES", "ZE_AFFINITY_MASK",
                            "ONEAPI_DEVICE_SELECTOR"}


def worker_actor_env() -> dict[str, str]:
    """The environment every worker actor is created with (its ``runtime_env``)."""
    names = set(get_env_vars_to_copy(exclude_vars=WORKER_SPECIFIC_ENV_VARS,
                                     destination="vllm-xpu-plugin Ray workers"))
    names.update(FORWARDED_ENV_VARS)
    names.update(n for n in os.environ if n.startswith("VLLM_XPU_PLUGIN_"))
    return {n: os.environ[n] for n in sorted(names - WORKER_SPECIFIC_ENV_VARS)
            if n in os.environ}


def worker_actor_resources() -> dict[str, Any]:
    """``ray.remote`` resource options of one worker actor (inside its bundle)."""
    if device.is_cpu_mode():
        return {"num_cpus": 1, "num_gpus": 0}
    # XPU-only: one Ray GPU (an Intel GPU) per worker, as vLLM does for its XPU platform.
    return {"num_cpus": 0, "num_gpus": vllm_envs.VLLM_RAY_PER_WORKER_GPUS}


class PluginRayExecutor(RayDistributedExecutor):
    uses_ray: bool = True
    supports_pp: bool = True

    def _init_executor(self) -> None:
        # Read by vLLM's compiled-DAG setup: shared memory between pipeline stages.
        os.environ.setdefault("VLLM_USE_RAY_COMPILED_DAG_CHANNEL_TYPE", "shm")
        if self.parallel_config.placement_group is None:
            self._connect_and_reserve()
        super()._init_executor()

    # ------------------------------------------------------------------ placement

    def _connect_and_reserve(self) -> None:
        """Join the Ray cluster (``RAY_ADDRESS``, else a local one) and reserve one bundle
        per worker, the first on this engine's Ray node."""
        if not ray.is_initialized():
            ray.init(runtime_env=self.parallel_config.ray_runtime_env)
        if ray.util.get_current_placement_group() is not None:
            return  # vLLM uses the placement group the caller runs in
        key = current_platform.ray_device_key
        world_size = self.parallel_config.world_size
        have = ray.cluster_resources().get(key, 0)
        if have < world_size:
            raise RuntimeError(
                f"vllm-xpu-plugin: the Ray cluster has {have:g} {key} for {world_size} "
                f"workers (tensor x pipeline parallel); start the nodes with enough "
                f"{'--num-cpus' if key == 'CPU' else '--num-gpus'} (see `ray status`)")
        bundles: list[dict[str, float]] = [{key: 1.0} for _ in range(world_size)]
        bundles[0][f"node:{ray.util.get_node_ip_address()}"] = 0.001
        pg = ray.util.placement_group(bundles, strategy="PACK")
        _wait_until_pg_ready(pg)
        self.parallel_config.placement_group = pg

    def _init_workers_ray(self, placement_group, **ray_remote_kwargs) -> None:
        """vLLM 0.11's ``_init_workers_ray`` for the V1 SPMD path (no driver worker),
        with the plugin's actor class, resources, environment and node identity."""
        assert self.use_ray_spmd_worker, "vLLM V1 runs Ray workers in SPMD mode"
        self.driver_dummy_worker = None
        self.pp_tp_workers = []
        parallel = self.parallel_config
        key = current_platform.ray_device_key
        bundle_ids = [i for i, b in enumerate(placement_group.bundle_specs)
                      if b.get(key, 0)][:parallel.world_size]
        if vllm_envs.VLLM_RAY_BUNDLE_INDICES:
            bundle_ids = [int(i) for i in vllm_envs.VLLM_RAY_BUNDLE_INDICES.split(",")]
        runtime_env = dict(ray_remote_kwargs.pop("runtime_env", None) or {})
        runtime_env["env_vars"] = {**worker_actor_env(), **runtime_env.get("env_vars", {})}

        actors = []
        for rank, bundle_id in enumerate(bundle_ids):
            strategy = PlacementGroupSchedulingStrategy(
                placement_group=placement_group, placement_group_bundle_index=bundle_id,
                placement_group_capture_child_tasks=True)
            actors.append(ray.remote(
                **worker_actor_resources(), scheduling_strategy=strategy,
                runtime_env=runtime_env, **ray_remote_kwargs,
            )(PluginRayWorkerWrapper).remote(vllm_config=self.vllm_config, rpc_rank=rank))
        placements = ray.get([a.get_placement.remote() for a in actors])

        # Workers on the engine's node first, then nodes with fewer workers, then by IP
        # (vLLM's order); ranks follow this order.
        here = ray.get_runtime_context().get_node_id()
        per_node: dict[str, int] = defaultdict(int)
        for p in placements:
            per_node[p["node_id"]] += 1
        order = sorted(range(len(actors)), key=lambda i: (
            placements[i]["node_id"] != here, per_node[placements[i]["node_id"]],
            placements[i]["node_ip"], i))
        self.workers = [actors[i] for i in order]
        placements = [placements[i] for i in order]
        self._run_workers("adjust_rank", {created: rank for rank, created in enumerate(order)})

        node_ranks: dict[str, list[int]] = defaultdict(list)
        for rank, p in enumerate(placements):
            node_ranks[p["node_id"]].append(rank)
        logger.info("Ray worker placement: %s", ", ".join(
            f"rank {r} on {p['node_ip']}" for r, p in enumerate(placements)))

        self._env_vars_for_all_workers = [worker_actor_env() for _ in placements]
        self._run_workers("update_environment_variables", self._get_env_vars_to_be_updated())

        # The rank-0 worker hosts torch.distributed's store: its node's address (loopback
        # when every worker shares one node).
        host = "127.0.0.1" if len(node_ranks) == 1 else placements[0]["node_ip"]
        init_method = get_distributed_init_method(host, get_open_port())
        all_kwargs = []
        for rank, p in enumerate(placements):
            local_rank = node_ranks[p["node_id"]].index(rank)
            if p["device_index"] is not None:  # XPU-only: the device Ray gave this worker
                local_rank = p["device_index"]
            all_kwargs.append(dict(
                vllm_config=self.vllm_config, local_rank=local_rank, rank=rank,
                distributed_init_method=init_method,
                is_driver_worker=rank % parallel.tensor_parallel_size == 0))
        self._run_workers("init_worker", all_kwargs)
        self._run_workers("init_device")
        self._run_workers("load_model",
                          max_concurrent_workers=parallel.max_parallel_loading_workers)

        tp = parallel.tensor_parallel_size
        self.pp_tp_workers = [self.workers[pp * tp:(pp + 1) * tp]
                              for pp in range(parallel.pipeline_parallel_size)]
        self.tp_driver_workers = [w for i, w in enumerate(self.workers) if i and i % tp == 0]
        self.non_driver_workers = [w for i, w in enumerate(self.workers) if i % tp != 0]
