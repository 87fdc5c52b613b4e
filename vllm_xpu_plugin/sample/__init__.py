"""Sampling: vLLM's sampler with the greedy pick on this device's fastest argmax."""

from vllm_xpu_plugin.sample.sampler import XPUPluginSampler

__all__ = ["XPUPluginSampler"]
