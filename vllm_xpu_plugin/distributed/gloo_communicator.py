"""CPU-mode device communicator: every collective through torch.distributed (gloo).

vLLM 0.11's ``CpuCommunicator`` switches to a shared-memory fast path when
``torch.ops._C.init_shm_manager`` exists. Those ops live in ``vllm._C``, which cannot run
here (the installed vLLM is a CUDA build); today the check happens to be False, but the
plugin must not depend on that accident, so this subclass always uses torch.distributed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.distributed import ProcessGroup
from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)
from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator


class GlooCommunicator(CpuCommunicator):
    """``CpuCommunicator``'s all_reduce / gather / all_gather on plain torch.distributed."""

    def __init__(self,
                 cpu_group: ProcessGroup,
                 device: Optional[torch.device] = None,
                 device_group: Optional[ProcessGroup] = None,
                 unique_name: str = ""):
        # Skip CpuCommunicator.__init__: it is where the vllm._C shared-memory path is picked.
        DeviceCommunicatorBase.__init__(self, cpu_group, device, device_group, unique_name)
        self.dist_module = torch.distributed

    def send_tensor_dict(self, tensor_dict, dst):
        # Only reached when vLLM picks the CPU custom send/recv path (its own CPU
        # platform); the plugin's platform uses GroupCoordinator's generic path.
        raise NotImplementedError("GlooCommunicator has no tensor-dict send; vLLM's "
                                  "GroupCoordinator sends tensor dicts itself")

    def recv_tensor_dict(self, src):
        raise NotImplementedError("GlooCommunicator has no tensor-dict recv; vLLM's "
                                  "GroupCoordinator receives tensor dicts itself")
