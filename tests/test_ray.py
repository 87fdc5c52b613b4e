"""Multi-node on Ray, and data parallel (issue 16): real ``vllm serve`` processes.

A two-node Ray cluster on this machine (benchmarks.ray_overhead.LocalRayCluster: `ray start
--head` on 127.0.0.2 and `ray start --address ...` on 127.0.0.3, one Ray CPU each, so any
two workers land on different nodes), started by this module and stopped by its process
groups. Against it, ``--distributed-executor-backend ray`` with TP=2 and with PP=2 across
both nodes must give the greedy tokens of one worker (TP=1/PP=1) and of HF transformers;
``--data-parallel-size 2`` (mp) those of DP=1; a killed Ray worker must bring the server
down within 60 s. The fast startup checks are in tests/test_ray_startup.py.

Slow (each server is ~1 min to start on 2 cores):
    make test-slow TESTS=tests/test_ray.py
Ports: vLLM 18500-18509, Ray 18600-18799.
"""

from __future__ import annotations

import random
import threading
import time

import psutil
import pytest

from benchmarks.ray_overhead import NODE_IPS, LocalRayCluster, serve, server_env

pytestmark = pytest.mark.slow

RAY_BASE_PORT = 18600
MAX_TOKENS = 16
SERVE_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--seed", "0",
              "--max-num-seqs", "16"]
EXIT_BOUND_S = 60
_rng = random.Random(16)
PROMPTS = [[_rng.randrange(5, 760) for _ in range(n)] for n in (3, 17, 64, 150)]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    with LocalRayCluster(RAY_BASE_PORT, cpus=(1, 1),
                         log_dir=tmp_path_factory.mktemp("ray")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def hf_tokens(tiny_llama_dir):
    from tests.fixtures.hf_reference import hf_greedy

    return hf_greedy(tiny_llama_dir, PROMPTS, max_new_tokens=MAX_TOKENS, ignore_eos=True)


def _greedy_token_ids(server) -> list[list[int]]:
    out = []
    for prompt in PROMPTS:
        status, data = server.post("/v1/completions", {
            "model": "model", "prompt": prompt, "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "return_token_ids": True})
        assert status == 200, data
        out.append(list(data["choices"][0]["token_ids"]))
    return out


@pytest.fixture(scope="module")
def one_worker_tokens(tiny_llama_dir):
    with serve(tiny_llama_dir, SERVE_ARGS, 18500, {"OMP_NUM_THREADS": "1"}) as server:
        return _greedy_token_ids(server)


def _placement(log: str) -> str:
    lines = [ln for ln in log.splitlines() if "Ray worker placement:" in ln]
    assert lines, "no 'Ray workers:' line in the server log"
    return lines[-1].split("Ray worker placement:", 1)[1].strip()


@pytest.mark.parametrize("layout", [["--tensor-parallel-size", "2"],
                                    ["--pipeline-parallel-size", "2"]],
                         ids=["tp2", "pp2"])
def test_ray_across_two_nodes_matches_one_worker_and_hf(
        layout, tiny_llama_dir, ray_cluster, one_worker_tokens, hf_tokens):
    from tests.fixtures.hf_reference import assert_greedy_close

    args = [*SERVE_ARGS, *layout, "--distributed-executor-backend", "ray"]
    with serve(tiny_llama_dir, args, 18501, server_env(ray_cluster, 1)) as server:
        got = _greedy_token_ids(server)
        placement = _placement(server.log_path.read_text(errors="replace"))
    # One worker per Ray node: rank 0 with the engine on the head, rank 1 on the other.
    assert placement == f"rank 0 on {NODE_IPS[0]}, rank 1 on {NODE_IPS[1]}", placement
    assert all(len(t) == MAX_TOKENS for t in got), got
    assert got == one_worker_tokens
    assert_greedy_close(hf_tokens, got)


def test_data_parallel_2_matches_dp1(tiny_llama_dir, ray_cluster, one_worker_tokens,
                                     hf_tokens):
    from tests.fixtures.hf_reference import assert_greedy_close

    args = [*SERVE_ARGS, "--data-parallel-size", "2"]
    with serve(tiny_llama_dir, args, 18502, {"OMP_NUM_THREADS": "1"}) as server:
        # Concurrent requests, so both engines serve some of them.
        results: dict[int, list[int]] = {}

        def ask(i):
            status, data = server.post("/v1/completions", {
                "model": "model", "prompt": PROMPTS[i], "max_tokens": MAX_TOKENS,
                "temperature": 0.0, "ignore_eos": True, "return_token_ids": True})
            assert status == 200, data
            results[i] = list(data["choices"][0]["token_ids"])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        engines = [p for p in server.processes() if "EngineCore" in p.name()]
        got = [results[i] for i in range(len(PROMPTS))]
    assert len(engines) == 2, [p.name() for p in engines]
    assert got == one_worker_tokens
    assert_greedy_close(hf_tokens, got)


def _ray_worker_actor_pids(cluster: LocalRayCluster) -> list[int]:
    """PIDs of the plugin's worker actors (children of this cluster's raylets)."""
    pids = []
    for node in cluster.procs:
        for p in psutil.Process(node.pid).children(recursive=True):
            try:
                if "PluginRayWorkerWrapper" in " ".join([p.name(), *p.cmdline()]):
                    pids.append(p.pid)
            except psutil.NoSuchProcess:
                continue
    return pids


def test_killed_ray_worker_makes_server_exit(tiny_llama_dir, ray_cluster):
    args = [*SERVE_ARGS, "--tensor-parallel-size", "2", "--distributed-executor-backend",
            "ray"]
    with serve(tiny_llama_dir, args, 18503, server_env(ray_cluster, 1)) as server:
        workers = _ray_worker_actor_pids(ray_cluster)
        assert len(workers) == 2, workers
        # Keep generation going while the worker dies.
        stop = threading.Event()

        def load():
            while not stop.is_set() and server.proc.poll() is None:
                try:
                    server.post("/v1/completions", {"model": "model", "prompt": PROMPTS[2],
                                                    "max_tokens": 200, "ignore_eos": True},
                                timeout=EXIT_BOUND_S + 30)
                except OSError:  # the server went down under this request: expected
                    return

        client = threading.Thread(target=load, daemon=True)
        client.start()
        time.sleep(3)
        psutil.Process(workers[-1]).kill()  # an actor of the cluster this module started
        killed = time.monotonic()
        while server.proc.poll() is None and time.monotonic() - killed < EXIT_BOUND_S + 30:
            time.sleep(0.5)
        exited_after = time.monotonic() - killed
        stop.set()
        log = server.log_path.read_text(errors="replace")
        assert server.proc.poll() is not None, (
            f"server still running {exited_after:.0f}s after a Ray worker was killed:\n"
            + server.log_tail(60))
        assert exited_after <= EXIT_BOUND_S, f"exited after {exited_after:.0f}s"
        print(f"server exited {exited_after:.1f}s after the Ray worker was killed")
        # Reported: Ray's ActorDiedError from the compiled DAG, then the dead engine.
        assert "ActorDiedError" in log and "EngineDeadError" in log, server.log_tail(60)
