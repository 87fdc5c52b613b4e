"""Plugin activation, --device handling and startup misconfiguration (no engine needed)."""

import os
import subprocess
import sys

import pytest

PLUGIN_QUALNAME = "vllm_xpu_plugin.platform.XPUPluginPlatform"


def _env(**overrides):
    env = {k: v for k, v in os.environ.items() if k != "VLLM_XPU_PLUGIN_DEVICE"}
    env.update(overrides)
    return env


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=_env(**env),
                          capture_output=True, text=True, timeout=300)


def test_register_returns_none_without_xpu_or_cpu_mode(monkeypatch):
    # This machine has no Intel GPU: an installed plugin must not take it over.
    import vllm_xpu_plugin

    monkeypatch.delenv("VLLM_XPU_PLUGIN_DEVICE", raising=False)
    monkeypatch.setattr(sys, "argv", ["vllm", "serve", "m"])
    assert vllm_xpu_plugin.register() is None


def test_register_activates_for_explicit_device_xpu(monkeypatch):
    # `--device xpu` names this plugin: activate so it can say why no GPU is usable.
    import vllm_xpu_plugin

    monkeypatch.delenv("VLLM_XPU_PLUGIN_DEVICE", raising=False)
    monkeypatch.setattr(sys, "argv", ["vllm", "serve", "m", "--device", "xpu"])
    assert vllm_xpu_plugin.register() == PLUGIN_QUALNAME


def test_register_returns_platform_in_cpu_mode(monkeypatch):
    import vllm_xpu_plugin

    monkeypatch.setenv("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    assert vllm_xpu_plugin.register() == PLUGIN_QUALNAME


def test_vllm_resolves_plugin_platform_in_cpu_mode():
    from vllm.platforms import current_platform as p

    assert f"{type(p).__module__}.{type(p).__name__}" == PLUGIN_QUALNAME
    assert (p.device_type, p.dist_backend, p.is_out_of_tree()) == ("cpu", "gloo", True)


def _serve(args, **env) -> subprocess.CompletedProcess:
    vllm = os.path.join(os.path.dirname(sys.executable), "vllm")
    return subprocess.run([vllm, "serve", "/nonexistent-model", *args], env=_env(**env),
                          capture_output=True, text=True, timeout=300)


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("vllm-xpu-plugin: error:")]


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--device", "bogus"], {"VLLM_XPU_PLUGIN_DEVICE": "cpu"}, "--device 'bogus'"),
        (["--device", "xpu"], {}, "no usable Intel GPU"),
    ],
    ids=["bogus", "xpu-without-gpu"],
)
def test_bad_device_fails_with_one_clear_line(args, env, expected):
    proc = _serve(args, **env)
    assert proc.returncode != 0
    errors = _error_lines(proc)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert expected in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "requested, cpu_mode, expected",
    [
        ("bogus", True, "--device 'bogus' is not supported"),
        ("xpu", True, "selects CPU mode"),
        ("cpu", False, "needs CPU mode"),
        ("xpu", False, "no usable Intel GPU"),
        ("cpu", True, None),
    ],
)
def test_device_flag_validation(monkeypatch, requested, cpu_mode, expected):
    from vllm_xpu_plugin import platform

    if cpu_mode:
        monkeypatch.setenv("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    else:
        monkeypatch.delenv("VLLM_XPU_PLUGIN_DEVICE", raising=False)
    problem = platform._device_setting_problem(requested)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and "\n" not in problem


def test_unknown_env_value_is_a_startup_problem(monkeypatch):
    from vllm_xpu_plugin import platform

    monkeypatch.setenv("VLLM_XPU_PLUGIN_DEVICE", "gpu")
    assert "VLLM_XPU_PLUGIN_DEVICE='gpu'" in platform.startup_problem()


@pytest.mark.parametrize("user_value, expected", [(None, "<unset>"), ("ACTIVE", "ACTIVE")])
def test_cpu_mode_engine_omp_wait_policy(user_value, expected):
    """Building a config in CPU mode leaves OMP_WAIT_POLICY as it was: unset (libgomp's
    default, with the runner's spin governor), or the user's own value."""
    code = ("import os\nfrom vllm.config import VllmConfig\nVllmConfig()\n"
            "print('policy=' + os.environ.get('OMP_WAIT_POLICY', '<unset>'))")
    env = {"VLLM_XPU_PLUGIN_DEVICE": "cpu"}
    if user_value is not None:
        env["OMP_WAIT_POLICY"] = user_value
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], env={**base, **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"policy={expected}" in proc.stdout.splitlines()
