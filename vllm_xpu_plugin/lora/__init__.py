"""LoRA: the plugin's punica wrapper (``Platform.get_punica_wrapper``) on IPEX's punica
kernels (vllm_xpu_plugin/kernels/lora.py); see docs/lora.md."""
