"""The Ray actor that hosts one plugin worker (vLLM's ``RayWorkerWrapper``, narrowed).

vLLM's wrapper asks Ray for the worker's accelerator ids under the platform's
``ray_device_key``. In CPU mode that key is Ray's ``CPU`` resource, which Ray does not
report as an accelerator, so :meth:`get_node_and_gpu_ids` returns no device ids there.
:meth:`get_placement` tells the plugin's executor where the actor landed: Ray's own node
(id and IP, so two Ray nodes on one host stay two nodes) and, on an Intel GPU, which device
index the worker must open.
"""

from __future__ import annotations

import os

import ray
from vllm.executor.ray_utils import RayWorkerWrapper

from vllm_xpu_plugin import device


class PluginRayWorkerWrapper(RayWorkerWrapper):

    def get_node_ip(self) -> str:
        # Ray's address for this node, not vLLM's get_ip() (the host's outward address),
        # which is the same for every Ray node started on one machine.
        return ray.util.get_node_ip_address()

    def get_node_and_gpu_ids(self) -> tuple[str, list[int]]:
        return ray.get_runtime_context().get_node_id(), self._assigned_device_ids()

    def get_placement(self) -> dict:
        """Where this actor runs: Ray node id and IP, the Ray GPU ids it was given, and
        the index of its device among the devices this process can see."""
        ids = self._assigned_device_ids()
        return {"node_id": ray.get_runtime_context().get_node_id(),
                "node_ip": self.get_node_ip(),
                "device_ids": ids,
                "device_index": visible_device_index(ids)}

    def _assigned_device_ids(self) -> list[int]:
        if device.is_cpu_mode():
            return []
        # XPU-only: Ray's GPU resource covers Intel GPUs (ray._private.accelerators.intel_gpu).
        return [int(i) for i in ray.get_runtime_context().get_accelerator_ids()["GPU"]]


def visible_device_index(assigned_ids: list[int], mask: str | None = None) -> int | None:
    """Index of the worker's first Ray-assigned GPU among the devices this process sees.

    Ray restricts each Intel GPU actor to its own devices with ``ZE_AFFINITY_MASK``
    (Ray >= 2.5x; older Ray used ``ONEAPI_DEVICE_SELECTOR=level_zero:<ids>``). The Level
    Zero runtime applies the mask when it starts, which happens as soon as the platform is
    resolved in the actor, so vLLM's later ``update_environment_variables`` of the mask
    cannot widen it; the worker opens its device by the position of its Ray id in the mask.
    Without a mask the Ray id is the device index. None in CPU mode (no device ids).
    """
    if not assigned_ids:
        return None
    if mask is None:
        mask = os.environ.get("ZE_AFFINITY_MASK")
        if mask is None:
            selector = os.environ.get("ONEAPI_DEVICE_SELECTOR", "")
            mask = selector.split(":", 1)[1] if selector.startswith("level_zero:") else None
    if not mask or mask == "*":
        return assigned_ids[0]
    visible = [part.strip() for part in mask.split(",")]
    wanted = str(assigned_ids[0])
    return visible.index(wanted) if wanted in visible else 0
