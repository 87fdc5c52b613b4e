"""How GPTQ/AWQ checkpoints are routed to the plugin's configs, and how unsupported
settings fail: at startup, in one line naming the setting."""

from __future__ import annotations

import json

import pytest

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": True,
        "checkpoint_format": "gptq", "lm_head": False}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
       "version": "gemm", "modules_to_not_convert": None}


@pytest.fixture(scope="module", autouse=True)
def registered():
    from vllm_xpu_plugin.quantization import register_quantization_configs

    register_quantization_configs()


def _checkpoint_dir(tmp_path, quantization_config):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "vocab_size": 256, "max_position_embeddings": 256,
           "torch_dtype": "bfloat16", "quantization_config": quantization_config}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def test_registration_is_idempotent_and_names_are_known():
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        get_quantization_config,
    )

    from vllm_xpu_plugin.quantization import register_quantization_configs
    from vllm_xpu_plugin.quantization.awq import IPEXAWQConfig
    from vllm_xpu_plugin.quantization.gptq import IPEXGPTQConfig

    register_quantization_configs()
    register_quantization_configs()
    assert QUANTIZATION_METHODS.count("ipex_gptq") == 1
    assert QUANTIZATION_METHODS.count("ipex_awq") == 1
    assert get_quantization_config("ipex_gptq") is IPEXGPTQConfig
    assert get_quantization_config("ipex_awq") is IPEXAWQConfig


def test_platform_lists_what_is_supported():
    from vllm_xpu_plugin.platform import PluginConfigError, XPUPluginPlatform
    from vllm_xpu_plugin.quantization import SUPPORTED_QUANTIZATION

    assert list(XPUPluginPlatform.supported_quantization) == list(SUPPORTED_QUANTIZATION)
    XPUPluginPlatform.verify_quantization("ipex_awq")
    with pytest.raises(PluginConfigError, match="--quantization fp8 is not supported"):
        XPUPluginPlatform.verify_quantization("fp8")


@pytest.mark.parametrize("hf_cfg,user,expected", [
    (GPTQ, None, "ipex_gptq"),
    (GPTQ, "gptq", "ipex_gptq"),
    (GPTQ, "ipex_gptq", "ipex_gptq"),
    (AWQ, None, "ipex_awq"),
    (AWQ, "awq", "ipex_awq"),
    (AWQ, "ipex_awq", "ipex_awq"),
])
def test_checkpoint_quant_method_selects_plugin_config(tmp_path, hf_cfg, user, expected):
    from vllm.config import ModelConfig

    config = ModelConfig(model=_checkpoint_dir(tmp_path, hf_cfg), quantization=user,
                         skip_tokenizer_init=True)
    assert config.quantization == expected


def test_mismatched_quantization_flag_is_rejected(tmp_path):
    from vllm.config import ModelConfig

    with pytest.raises(Exception, match="does not match"):
        ModelConfig(model=_checkpoint_dir(tmp_path, GPTQ), quantization="ipex_awq",
                    skip_tokenizer_init=True)


@pytest.mark.parametrize("base,change,needle", [
    (GPTQ, {"bits": 8}, "quantization_config.bits=8"),
    (GPTQ, {"bits": 3}, "quantization_config.bits=3"),
    (GPTQ, {"group_size": 16}, "quantization_config.group_size=16"),
    (GPTQ, {"checkpoint_format": "gptq_v2"}, "quantization_config.checkpoint_format='gptq_v2'"),
    (GPTQ, {"checkpoint_format": "marlin"}, "quantization_config.checkpoint_format='marlin'"),
    (GPTQ, {"is_marlin_format": True}, "quantization_config.is_marlin_format=True"),
    (GPTQ, {"lm_head": True}, "quantization_config.lm_head=True"),
    (GPTQ, {"dynamic": {"-:.*mlp.*": {}}}, "quantization_config.dynamic"),
    (AWQ, {"bits": 8}, "quantization_config.bits=8"),
    (AWQ, {"version": "gemv"}, "quantization_config.version='gemv'"),
    (AWQ, {"version": "exllama"}, "quantization_config.version='exllama'"),
    (AWQ, {"zero_point": False}, "quantization_config.zero_point=False"),
    (AWQ, {"group_size": 256}, "quantization_config.group_size=256"),
])
def test_unsupported_settings_fail_at_startup_in_one_line(tmp_path, base, change, needle):
    from vllm.config import ModelConfig

    from vllm_xpu_plugin.quantization.awq import IPEXAWQConfig
    from vllm_xpu_plugin.quantization.gptq import IPEXGPTQConfig
    from vllm_xpu_plugin.quantization.settings import UnsupportedQuantizationError

    hf_cfg = {**base, **change}
    config_cls = IPEXGPTQConfig if base is GPTQ else IPEXAWQConfig
    with pytest.raises(UnsupportedQuantizationError) as info:
        config_cls.from_config(hf_cfg)
    message = str(info.value)
    assert needle in message and "\n" not in message and "vllm-xpu-plugin" in message
    # The same line surfaces while vLLM builds its model config (the front-end, before
    # any worker starts).
    with pytest.raises(Exception, match=needle.replace("(", r"\(").replace("[", r"\[")):
        ModelConfig(model=_checkpoint_dir(tmp_path, hf_cfg), skip_tokenizer_init=True)


def test_old_style_awq_keys_are_read():
    from vllm_xpu_plugin.quantization.awq import IPEXAWQConfig

    cfg = IPEXAWQConfig.from_config({"w_bit": 4, "q_group_size": 64, "zero_point": True,
                                     "version": "GEMM", "modules_to_not_convert": ["visual"]})
    assert (cfg.weight_bits, cfg.group_size, cfg.modules_to_not_convert) == (4, 64, ["visual"])


def test_other_platforms_keep_their_own_methods(monkeypatch):
    """Installed next to a CUDA/CPU vLLM, the plugin must not take GPTQ/AWQ checkpoints."""
    from vllm_xpu_plugin.quantization import config_base
    from vllm_xpu_plugin.quantization.gptq import IPEXGPTQConfig

    monkeypatch.setattr(config_base, "plugin_platform_active", lambda: False)
    assert IPEXGPTQConfig.override_quantization_method(dict(GPTQ), None) is None


def test_layers_outside_decoder_stay_unquantized():
    import torch
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    from vllm_xpu_plugin.quantization.gptq import IPEXGPTQConfig

    cfg = IPEXGPTQConfig.from_config(dict(GPTQ))
    assert cfg.get_quant_method(torch.nn.LayerNorm(4), "model.norm") is None
    embedding = VocabParallelEmbedding.__new__(VocabParallelEmbedding)
    assert cfg.get_quant_method(embedding, "lm_head") is None
