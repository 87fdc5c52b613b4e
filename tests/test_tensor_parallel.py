"""Tensor parallel in CPU mode: TP=2 (spawned workers, gloo through the plugin's
GlooCommunicator) gives the same greedy tokens as TP=1, and a killed worker makes the
server exit with a clear error within a bounded time instead of hanging.

Marked slow (a TP=2 server is four processes): `make test-slow TESTS=tests/test_tensor_parallel.py`.
The XPU path uses torch.distributed over xccl/oneCCL (vLLM's XpuCommunicator); it needs
real Intel GPUs and is not exercised here.
"""

from __future__ import annotations

import random
import time

import pytest

from benchmarks.server_process import ServerProcess
from benchmarks.soak import SOAK_SERVER_ARGS

MAX_TOKENS = 24
EXIT_BOUND_S = 180  # a dead worker must bring the server down within this


def test_gloo_communicator_is_selected_in_cpu_mode():
    from vllm.platforms import current_platform

    assert current_platform.get_device_communicator_cls() == (
        "vllm_xpu_plugin.distributed.gloo_communicator.GlooCommunicator")


def _greedy_texts(server, prompts):
    texts = []
    for prompt in prompts:
        status, data = server.post("/v1/completions", {
            "model": server.served_model_name, "prompt": prompt, "max_tokens": MAX_TOKENS,
            "temperature": 0.0})
        assert status == 200, data
        texts.append(data["choices"][0]["text"])
    return texts


@pytest.fixture(scope="module")
def tp2_server(tiny_llama_dir):
    with ServerProcess(tiny_llama_dir, [*SOAK_SERVER_ARGS, "--tensor-parallel-size", "2"],
                       env={"OMP_NUM_THREADS": "1"}) as server:
        yield server


@pytest.mark.slow
def test_tp2_equals_tp1_greedy(small_kv_server, tp2_server):
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (3, 17, 64, 200)]
    tp1 = _greedy_texts(small_kv_server, prompts)
    tp2 = _greedy_texts(tp2_server, prompts)
    assert all(tp1), tp1
    assert tp2 == tp1


def _worker_processes(server):
    procs = server.processes()
    workers = [p for p in procs if "worker" in " ".join(p.cmdline() + [p.name()]).lower()]
    return workers or procs[2:]  # api server, engine core, then the workers


@pytest.mark.slow
def test_killed_worker_makes_server_exit(tiny_llama_dir):
    with ServerProcess(tiny_llama_dir, [*SOAK_SERVER_ARGS, "--tensor-parallel-size", "2"],
                       env={"OMP_NUM_THREADS": "1"}) as server:
        workers = _worker_processes(server)
        assert len(workers) >= 2, [p.cmdline() for p in server.processes()]
        victim = workers[-1]
        victim.kill()  # a process this test's server spawned
        start = time.monotonic()
        while server.proc.poll() is None and time.monotonic() - start < EXIT_BOUND_S:
            server.post("/v1/completions", {"model": server.served_model_name,
                                            "prompt": [5, 6, 7], "max_tokens": 4},
                        timeout=30) if server.health() == 200 else time.sleep(1)
        exited_after = time.monotonic() - start
        log = server.log_path.read_text(errors="replace")
        assert server.proc.poll() is not None, (
            f"server still running {exited_after:.0f}s after a worker was killed:\n"
            + server.log_tail())
        assert server.proc.returncode != 0 or "died" in log.lower(), server.log_tail()
        assert any(w in log for w in ("died unexpectedly", "Engine core proc", "EngineDeadError",
                                      "Worker proc")), server.log_tail()
