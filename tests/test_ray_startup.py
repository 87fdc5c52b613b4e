"""``--distributed-executor-backend ray`` at startup (issue 16), fast parts.

- Ray missing, or ``RAY_ADDRESS`` naming a cluster that does not answer: ``vllm serve``
  exits non-zero with ONE ``vllm-xpu-plugin: error:`` line and no traceback. Ray missing is
  simulated with a ``ray`` package on PYTHONPATH whose import fails (the installed Ray is
  shadowed, not changed).
- The plugin's Ray pieces without a cluster: the platform's Ray resource, the executor
  swap, the worker actors' environment, the XPU device index from Ray's device mask.

The real two-node runs are in tests/test_ray.py (slow).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ERROR_MARK = "vllm-xpu-plugin: error:"
UNREACHABLE = "127.0.0.2:18690"  # in this suite's Ray port range; nothing listens there


def _fake_ray_that_fails(root: Path) -> Path:
    pkg = root / "fake-ray" / "ray"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "raise ImportError('simulated: ray is not installed')\n")
    return pkg.parent


CASES = {
    "ray-missing": ({"PYTHONPATH": "<fake-ray>"},
                    ["--distributed-executor-backend ray", "ray does not import",
                     "pip install"]),
    "cluster-unreachable": ({"RAY_ADDRESS": UNREACHABLE},
                            [f"no Ray cluster answers at RAY_ADDRESS={UNREACHABLE}",
                             "ray start --head"]),
}


@pytest.fixture(scope="module")
def startup_runs(tiny_llama_dir, tmp_path_factory):
    fake = _fake_ray_that_fails(tmp_path_factory.mktemp("ray-startup"))
    vllm = str(Path(sys.executable).parent / "vllm")
    procs = {}
    try:
        for case, (env_over, _) in CASES.items():
            env = dict(os.environ, VLLM_XPU_PLUGIN_DEVICE="cpu")
            env.pop("RAY_ADDRESS", None)
            env.update({k: v.replace("<fake-ray>", str(fake)) for k, v in env_over.items()})
            cmd = [vllm, "serve", str(tiny_llama_dir), "--host", "127.0.0.1", "--port",
                   "18509", "--device", "cpu", "--tensor-parallel-size", "2",
                   "--distributed-executor-backend", "ray"]
            procs[case] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True,
                                           start_new_session=True)
        return {case: (proc.communicate(timeout=600)[0], proc.returncode)
                for case, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("case", list(CASES))
def test_ray_problem_exits_with_one_line(startup_runs, case):
    out, code = startup_runs[case]
    tail = out[-4000:]
    assert code != 0, tail
    errors = [ln for ln in out.splitlines() if ERROR_MARK in ln]
    assert len(errors) == 1, tail
    for text in CASES[case][1]:
        assert text in errors[0], errors[0]
    assert "Traceback" not in out, tail


# ------------------------------------------------------------------ without a cluster


def test_unreachable_address_checks():
    from vllm_xpu_plugin.distributed.ray_checks import unreachable_cluster_problem as problem

    assert problem("") is None  # vLLM starts a local Ray
    assert problem("auto") is None
    assert "not host:port" in problem("127.0.0.2")
    assert "no Ray cluster answers" in problem(UNREACHABLE)
    with socket.socket() as server:  # a listening port counts as reachable
        server.bind(("127.0.0.2", 0))
        server.listen()
        assert problem(f"127.0.0.2:{server.getsockname()[1]}") is None


def test_platform_places_cpu_mode_workers_on_ray_cpus():
    from vllm.platforms import current_platform

    assert current_platform.ray_device_key == "CPU"


def test_ray_backend_becomes_the_plugin_executor(monkeypatch):
    from vllm.config import ParallelConfig

    from vllm_xpu_plugin.distributed import ray_checks
    from vllm_xpu_plugin.distributed.ray_executor import PluginRayExecutor
    from vllm_xpu_plugin.startup_checks import PluginConfigError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = SimpleNamespace(distributed_executor_backend="ray")
    ray_checks.select_plugin_ray_executor(config)
    assert config.distributed_executor_backend is PluginRayExecutor
    assert ray_checks.is_ray_backend(PluginRayExecutor)
    assert not ray_checks.is_ray_backend("mp")
    # vLLM sees a Ray executor with pipeline parallel support.
    parallel = ParallelConfig(distributed_executor_backend=PluginRayExecutor)
    assert parallel.use_ray and PluginRayExecutor.supports_pp
    monkeypatch.setenv("RAY_ADDRESS", UNREACHABLE)
    with pytest.raises(PluginConfigError, match="no Ray cluster answers"):
        ray_checks.select_plugin_ray_executor(SimpleNamespace(distributed_executor_backend="ray"))


def test_worker_actor_env(monkeypatch):
    from vllm_xpu_plugin.distributed.ray_executor import worker_actor_env

    monkeypatch.setenv("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", "0.5")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("ZE_AFFINITY_MASK", "0,1")
    monkeypatch.setenv("VLLM_HOST_IP", "127.0.0.2")
    env = worker_actor_env()
    # The platform is picked when the actor starts: CPU mode must be in its environment.
    assert env["VLLM_XPU_PLUGIN_DEVICE"] == "cpu"
    assert env["VLLM_XPU_PLUGIN_CPU_KVCACHE_GB"] == "0.5"
    assert env["GLOO_SOCKET_IFNAME"] == "lo"
    # Per-node / per-worker settings stay where they are.
    assert "ZE_AFFINITY_MASK" not in env and "VLLM_HOST_IP" not in env


@pytest.mark.parametrize("ids, mask, selector, index", [
    ([], None, None, None),        # CPU mode: no device
    ([3], None, None, 3),          # no mask: the Ray id is the device index
    ([3], "3", None, 0),           # Ray's per-actor mask: the one visible device
    ([3], "2,3", None, 1),         # a node mask listing several devices
    ([1], None, "level_zero:1", 0),  # older Ray: ONEAPI_DEVICE_SELECTOR
])
def test_xpu_device_index_from_ray_mask(monkeypatch, ids, mask, selector, index):
    from vllm_xpu_plugin.distributed.ray_worker import visible_device_index

    for name, value in (("ZE_AFFINITY_MASK", mask), ("ONEAPI_DEVICE_SELECTOR", selector)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert visible_device_index(ids) == index
