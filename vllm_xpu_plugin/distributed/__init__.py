"""Collective communication between tensor-parallel workers.

CPU mode: :class:`GlooCommunicator` (torch.distributed over gloo). On an Intel GPU the
platform uses vLLM's ``XpuCommunicator`` (torch.distributed over xccl/oneCCL) as is.
"""
