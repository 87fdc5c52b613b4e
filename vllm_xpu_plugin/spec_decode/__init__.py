"""Speculative decoding without Triton: a torch rejection sampler the runner injects."""

from vllm_xpu_plugin.spec_decode.ngram_setup import prepare_ngram_proposer
from vllm_xpu_plugin.spec_decode.rejection_sampler import TorchRejectionSampler

__all__ = ["TorchRejectionSampler", "prepare_ngram_proposer"]
