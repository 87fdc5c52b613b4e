"""IPEX kernels, one module per kernel family; each module is the only place its family
branches on the device (CPU mode vs Intel GPU), with XPU-only lines marked ``# XPU-only``.

Device queries (which device, its memory, the KV-cache layout, the IPEX import) stay in
:mod:`vllm_xpu_plugin.device`; kernels import it, never the other way round.

- :mod:`.activations` SiLU/GELU-and-mul
- :mod:`.norms` RMS norm, fused add + RMS norm
- :mod:`.rotary` rotary embeddings
- :mod:`.attention` paged attention (KV-cache write, varlen causal attention, CPU mode's
  decode-kernel choice)
- :mod:`.native_decode` CPU mode's own decode-attention kernel (C++, built at first use)
- :mod:`.gemm` CPU mode's prepacked linear layers
- :mod:`.int4_gemm` int4 GPTQ/AWQ weight-only GEMMs
- :mod:`.sampling` the greedy pick
- :mod:`.moe` mixture-of-experts routing and experts (FusedMoE)
- :mod:`.cpu_threads` CPU mode's one-thread rule for small kernels (shared by the families)
"""
