"""Ray vs multiprocessing: the per-step overhead of vLLM's Ray executor with the plugin.

    python -m benchmarks.ray_overhead                 # tiny Llama (tests/fixtures), CPU mode
    python -m benchmarks.ray_overhead --model DIR --concurrency 16 --output-len 64

Starts a two-node Ray cluster on this machine (:class:`LocalRayCluster`: two ``ray start``
processes on 127.0.0.2 / 127.0.0.3, one Ray CPU each, so every TP=2 or PP=2 run spans both
nodes), then serves the model in turn as one worker (``uni``), TP=2 and PP=2 on ``mp``, and
TP=2 and PP=2 on ``ray``; each server gets ``--concurrency`` concurrent greedy completions of
``--output-len`` tokens (``ignore_eos``), twice, and the faster round counts. Prints one
table: output tok/s, wall time, decode step time (wall / output_len, every request runs in
one batch) and the Ray step's overhead over mp's for the same layout. Every process it
starts (Ray nodes, servers) is stopped by its own process group.

No target: on a 2-core machine two workers fight over two cores with the API server and
the Ray daemons; the numbers say what the Ray path costs per step, not how fast TP is.
:class:`LocalRayCluster` is also what tests/test_ray.py uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402

RAY_BIN = str(Path(sys.executable).parent / "ray")
# 127.0.0.1 is not usable as a Ray node address: Ray replaces it with the host's outward
# IP. Other loopback addresses are kept, and each names one Ray node.
NODE_IPS = ("127.0.0.2", "127.0.0.3")


class LocalRayCluster:
    """A Ray cluster of ``len(cpus)`` nodes on this machine, ports from ``base_port``.

    Node i listens on ``NODE_IPS[i]``; the head's GCS is ``base_port``; node i's raylet,
    object manager, metrics, agent and runtime-env ports are ``base_port + 10*i + 1..7``
    and its worker ports ``base_port + 100 + 50*i ...+49``. Dashboard off. Each node is a
    ``ray start --block`` process in its own session; :meth:`stop` ends those sessions.
    """

    def __init__(self, base_port: int, cpus: tuple[int, ...] = (1, 1),
                 temp_dir: Optional[str] = None, log_dir: Optional[Path] = None):
        self.base_port = base_port
        self.cpus = cpus
        # Short: Ray's unix sockets live below it (108-byte path limit).
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="vxr")
        self.log_dir = Path(log_dir or self.temp_dir)
        self.procs: list[subprocess.Popen] = []
        self.address = f"{NODE_IPS[0]}:{base_port}"

    def _node_cmd(self, i: int) -> list[str]:
        p = self.base_port + 10 * i
        w = self.base_port + 100 + 50 * i
        cmd = [RAY_BIN, "start", "--block", "--node-ip-address", NODE_IPS[i],
               "--num-cpus", str(self.cpus[i]), "--num-gpus", "0",
               "--node-manager-port", str(p + 1), "--object-manager-port", str(p + 2),
               "--metrics-export-port", str(p + 4), "--dashboard-agent-listen-port", str(p + 5),
               "--dashboard-agent-grpc-port", str(p + 6), "--runtime-env-agent-port", str(p + 7),
               "--min-worker-port", str(w), "--max-worker-port", str(w + 49),
               "--object-store-memory", str(256 << 20),
               "--temp-dir", self.temp_dir, "--disable-usage-stats"]
        if i == 0:
            return [*cmd, "--head", "--port", str(self.base_port), "--include-dashboard",
                    "false"]
        return [*cmd, "--address", self.address]

    def start(self, timeout: float = 120) -> LocalRayCluster:
        # RAY_memory_monitor_refresh_ms=0: no Ray OOM killer. On a shared machine other
        # people's processes push memory past Ray's 95 % threshold and Ray then kills this
        # cluster's workers (seen: "1 worker(s) were killed due to the node running low on
        # memory" at 22.4 of 23.5 GB, with the plugin's workers using < 1 GB).
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_memory_monitor_refresh_ms="0")
        for i in range(len(self.cpus)):
            log = self.log_dir / f"ray-node{i}.log"
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(
                    self._node_cmd(i), stdout=out, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True))
            self._wait_started(i, log, timeout)
        return self

    def _wait_started(self, i: int, log: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "Ray runtime started" in text:
                return
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"ray node {i} exited:\n{text[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"ray node {i} not started after {timeout:.0f}s")

    def stop(self) -> None:
        """SIGTERM each node's `ray start --block` (it stops its raylet/GCS and workers),
        then SIGKILL whatever is left in those process groups. Only these processes."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)
        self.procs = []

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def server_env(cluster: LocalRayCluster, threads: int) -> dict[str, str]:
    """Environment of a `vllm serve` that uses ``cluster``: its address, the engine on the
    head's Ray node, gloo on loopback (torch.distributed between the workers)."""
    return {"RAY_ADDRESS": cluster.address, "VLLM_HOST_IP": NODE_IPS[0],
            "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(threads),
            "RAY_USAGE_STATS_ENABLED": "0"}


def serve(model, args, port: int, env: dict[str, str], log_path: Optional[Path] = None):
    """A ServerProcess on ``port`` (the caller's range) instead of a random free port."""
    from benchmarks.server_process import ServerProcess

    server = ServerProcess(model, args, env=env, log_path=log_path)
    i = server.cmd.index("--port")
    server.cmd[i + 1] = str(port)
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    return server


# --------------------------------------------------------------------------- benchmark

LAYOUTS = {  # name -> serve args
    "1 worker": ["--distributed-executor-backend", "uni"],
    "TP=2 mp": ["--tensor-parallel-size", "2", "--distributed-executor-backend", "mp"],
    "TP=2 ray": ["--tensor-parallel-size", "2", "--distributed-executor-backend", "ray"],
    "PP=2 mp": ["--pipeline-parallel-size", "2", "--distributed-executor-backend", "mp"],
    "PP=2 ray": ["--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray"],
}
SERVE_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--seed", "0",
              "--max-num-seqs", "64"]


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


async def _burst(url: str, concurrency: int, output_len: int, prompt_len: int) -> tuple:
    loop = asyncio.get_running_loop()
    bodies = [{"model": "model", "prompt": [(7 * i + j) % 700 + 5 for j in range(prompt_len)],
               "max_tokens": output_len, "temperature": 0.0, "ignore_eos": True}
              for i in range(concurrency)]
    start = time.perf_counter()
    outs = await asyncio.gather(*(loop.run_in_executor(None, _post, url, b) for b in bodies))
    wall = time.perf_counter() - start
    return wall, sum(o["usage"]["completion_tokens"] for o in outs)


def measure(server, concurrency: int, output_len: int, prompt_len: int, rounds: int) -> dict:
    url = server.url + "/v1/completions"
    _post(url, {"model": "model", "prompt": [5, 6, 7], "max_tokens": 4})  # warm-up
    best = None
    for _ in range(rounds):
        wall, tokens = asyncio.run(_burst(url, concurrency, output_len, prompt_len))
        if best is None or wall < best[0]:
            best = (wall, tokens)
    wall, tokens = best
    return {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall,
            "step_ms": 1000 * wall / output_len}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model dir (default: the tiny Llama test fixture)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per worker")
    ap.add_argument("--ray-base-port", type=int, default=18800,
                    help="Ray ports: base..base+199 (default 18800)")
    ap.add_argument("--port", type=int, default=18590, help="vLLM server port")
    ap.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = ap.parse_args(argv)
    _common.pin_threads(args.threads, "passive")
    _common.ensure_cpu_mode()
    _common.ensure_repo_on_path()
    if args.model:
        model = Path(args.model)
    else:
        from tests.fixtures.tiny_models import build_tiny_model

        model = build_tiny_model("llama")
    info = _common.machine_info(args.threads)
    results: dict[str, dict] = {}
    with LocalRayCluster(args.ray_base_port) as cluster:
        env = server_env(cluster, args.threads)
        for name in args.layouts:
            with serve(model, [*SERVE_ARGS, *LAYOUTS[name]], args.port, env) as server:
                results[name] = measure(server, args.concurrency, args.output_len,
                                        args.prompt_len, args.rounds)
            print(f"{name}: {results[name]['tok_s']:.1f} tok/s", file=sys.stderr)
    rows = []
    for name, r in results.items():
        mp = results.get(name.replace("ray", "mp")) if name.endswith("ray") else None
        over = f"{r['step_ms'] - mp['step_ms']:+.1f}" if mp else ""
        rows.append([name, f"{r['tok_s']:.1f}", f"{r['wall_s']:.2f}", f"{r['step_ms']:.1f}",
                     over])
    print(f"Ray vs mp, c={args.concurrency}, {args.output_len} output tokens each, "
          f"{model.name}; {_common.describe_machine(info)}")
    print(_common.format_table(
        ["layout", "tok/s", "wall s", "step ms", "Ray step overhead vs mp, ms"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
