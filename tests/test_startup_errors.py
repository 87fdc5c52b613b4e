"""Startup misconfiguration: ``vllm serve`` exits non-zero with ONE line saying what to do.

Each case is a real ``vllm serve`` process; they run concurrently (one module fixture) since
each spends its time importing vLLM. Conditions that cannot exist on this machine are
simulated without faking an XPU:

- IPEX/torch mismatch: a dist-info directory on PYTHONPATH reports IPEX 2.7.0 (package
  metadata is what the plugin reads; no code is shadowed).
- unsupported head size: the tiny Llama's config with ``head_dim`` 258 (the weights are
  never loaded: the check runs while vLLM builds its config).
- Arc A770 + bfloat16: ``VLLM_XPU_PLUGIN_TEST_DEVICE_NAME`` (test-only, see envs.py) changes
  the device name the platform reports, nothing else.

``--device`` with a wrong value is also covered by tests/test_platform.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ERROR_MARK = "vllm-xpu-plugin: error:"
A770_NAME = "Intel(R) Arc(TM) A770 Graphics"

# id -> (extra serve args, env overrides ("" removes), model ("tiny" | "head258"), expected)
CASES = {
    "no-xpu-no-cpu-mode": ([], {"VLLM_XPU_PLUGIN_DEVICE": ""}, "tiny",
                           ["no usable Intel GPU", "VLLM_XPU_PLUGIN_DEVICE=cpu"]),
    "device-wrong-value": (["--device", "gpu"], {}, "tiny",
                           ["--device 'gpu' is not supported", "--device xpu"]),
    "ipex-torch-mismatch": (["--device", "cpu"], {"PYTHONPATH": "<fake-ipex>"}, "tiny",
                            ["intel-extension-for-pytorch 2.7.0 does not match torch",
                             "install the matching pair"]),
    "head-size": (["--device", "cpu"], {}, "head258",
                  ["head size 258 is not supported", "cannot be served"]),
    "quantization": (["--device", "cpu", "--quantization", "fp8"], {}, "tiny",
                     ["--quantization fp8 is not supported", "ipex_gptq"]),
    "cpu-gemm-setting": (["--device", "cpu"], {"VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS": "lots"},
                         "tiny", ["VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS='lots'", "'auto'"]),
    "a770-bf16": (["--device", "cpu", "--dtype", "bfloat16"],
                  {"VLLM_XPU_PLUGIN_TEST_DEVICE_NAME": A770_NAME}, "tiny",
                  ["A770", "pass --dtype float16"]),
}


def _fake_ipex_metadata(root: Path) -> Path:
    dist = root / "fake-ipex" / "intel_extension_for_pytorch-2.7.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: intel_extension_for_pytorch\nVersion: 2.7.0\n")
    return dist.parent


def _head_size_258_model(tiny: Path, root: Path) -> Path:
    out = root / "head258"
    out.mkdir()
    for f in tiny.iterdir():
        if f.name != "config.json":
            (out / f.name).symlink_to(f)
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["head_dim"] = 258  # IPEX kernels: 1-256 and multiples of 4 up to 1024 on CPU
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def startup_runs(tiny_llama_dir, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("startup")
    models = {"tiny": tiny_llama_dir, "head258": _head_size_258_model(tiny_llama_dir, root)}
    fake_ipex = _fake_ipex_metadata(root)
    vllm = str(Path(sys.executable).parent / "vllm")
    procs = {}
    try:
        for case, (args, env_over, model, _) in CASES.items():
            env = dict(os.environ, VLLM_XPU_PLUGIN_DEVICE="cpu")
            for k, v in env_over.items():
                if v == "":
                    env.pop(k, None)
                else:
                    env[k] = v.replace("<fake-ipex>", str(fake_ipex))
            cmd = [vllm, "serve", str(models[model]), "--host", "127.0.0.1", "--port", "0",
                   *args]
            procs[case] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True,
                                           start_new_session=True)
        results = {}
        for case, proc in procs.items():
            out, _ = proc.communicate(timeout=900)
            results[case] = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # a case that started serving instead of failing
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("case", list(CASES))
def test_misconfiguration_exits_with_one_clear_line(startup_runs, case):
    proc = startup_runs[case]
    expected = CASES[case][3]
    tail = proc.stdout[-4000:]
    assert proc.returncode != 0, tail
    errors = [ln for ln in proc.stdout.splitlines() if ERROR_MARK in ln]
    assert len(errors) == 1, tail
    for text in expected:
        assert text in errors[0], errors[0]
    assert "Traceback" not in proc.stdout, tail


# ------------------------------------------------------------------ the checks themselves


@pytest.mark.parametrize("name,value,expected", [
    ("VLLM_XPU_PLUGIN_CPU_GEMM_MAX_ROWS", "-3", "must be 'auto' or a number of rows"),
    ("VLLM_XPU_PLUGIN_CPU_DECODE_ATTENTION", "fast", "'auto', 'varlen', 'single_query' or 'native'"),
    ("VLLM_XPU_PLUGIN_CPU_GEMM_BLOCK", "8", "must be 'auto', 16, 32 or 64"),
    ("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", "lots", "is not a number of GiB"),
])
def test_bad_plugin_settings_are_a_startup_problem(monkeypatch, name, value, expected):
    from vllm_xpu_plugin import envs

    assert envs.settings_problem() is None
    monkeypatch.setenv(name, value)
    problem = envs.settings_problem()
    assert problem is not None and expected in problem and "\n" not in problem


def test_version_pairs():
    from vllm_xpu_plugin.startup_checks import ipex_torch_version_problem as problem

    assert problem("2.8.0+cpu", "2.8.0+cpu") is None
    assert problem("2.8.0+xpu", "2.8.10+xpu") is None
    assert "does not match" in problem("2.8.0", "2.7.10+xpu")
    assert "does not match" in problem("2.9.1", "2.8.0")
    # The pair installed here (read from package metadata) is a matching one.
    assert problem() is None


def test_head_size_and_dtype_checks():
    import torch

    from vllm_xpu_plugin.kernels import attention
    from vllm_xpu_plugin.startup_checks import dtype_problem, head_size_problem

    sizes = attention.attention_head_sizes()
    assert head_size_problem(64, sizes, "cpu") is None
    assert head_size_problem(260, sizes, "cpu") is None
    assert "258" in head_size_problem(258, sizes, "cpu")
    assert "1-256, 260-1024 step 4" in head_size_problem(258, sizes, "cpu")
    assert dtype_problem(torch.bfloat16, "cpu (x86_64)") is None
    assert dtype_problem(torch.float16, A770_NAME) is None
    assert "--dtype float16" in dtype_problem(torch.bfloat16, A770_NAME)
    assert "not supported" in dtype_problem(torch.int8, "cpu")


def test_formatter_finds_config_error_in_chain():
    from vllm_xpu_plugin.platform import PluginConfigError
    from vllm_xpu_plugin.startup_checks import find_config_error

    inner = PluginConfigError("what to do")
    try:
        try:
            raise inner
        except PluginConfigError as e:
            raise RuntimeError("Engine core initialization failed") from e
    except RuntimeError as outer:
        assert find_config_error(outer) is inner
    assert find_config_error(RuntimeError("unrelated")) is None
