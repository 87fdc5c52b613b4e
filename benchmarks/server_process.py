"""``vllm serve`` on 127.0.0.1 in its own process group, for the soak, the server tests
(tests/fixtures/server.py) and tensor parallel. Always stopped by its own PID / process
group. CPU mode unless the caller runs on an Intel GPU (``device``).

    with ServerProcess(model_dir, ["--max-model-len", "512"]) as server:
        server.url  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from benchmarks._common import free_port

SERVED_MODEL_NAME = "model"


class ServerExited(RuntimeError):
    pass


class ServerProcess:
    def __init__(self, model: Path | str, args: Sequence[str] = (),
                 env: Optional[dict[str, str]] = None, log_path: Optional[Path] = None,
                 served_model_name: Optional[str] = SERVED_MODEL_NAME,
                 startup_timeout: float = 900, device: Optional[str] = None):
        self.model = str(model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # None: requests name the model by its path, as `vllm serve PATH` does by default.
        self.served_model_name = served_model_name or self.model
        self.startup_timeout = startup_timeout
        if device is None:  # CPU mode when the caller is in CPU mode, else the Intel GPU
            device = "cpu" if os.environ.get("VLLM_XPU_PLUGIN_DEVICE") == "cpu" else "xpu"
        self.cmd = [str(Path(sys.executable).parent / "vllm"), "serve", self.model,
                    "--host", "127.0.0.1", "--port", str(self.port), "--device", device,
                    *(["--served-model-name", served_model_name] if served_model_name else []),
                    *args]
        self.env = dict(os.environ)
        if device == "cpu":
            self.env["VLLM_XPU_PLUGIN_DEVICE"] = "cpu"
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("VLLM_NO_USAGE_STATS", "1")
        self.env.update(env or {})
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-xpu-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.proc: Optional[subprocess.Popen] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        # start_new_session: the server and the processes it spawns (engine core,
        # workers) form one process group that stop() ends together.
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        self.wait_healthy(self.startup_timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerExited(f"vllm serve exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if self.health() == 200:
                return
            time.sleep(2)
        raise TimeoutError(f"vllm serve not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        # Whatever the server spawned and left behind in its own group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def health(self) -> Optional[int]:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        """Prometheus samples without labels' detail: name -> sum over label sets."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return out

    def processes(self):
        """psutil.Process objects of the server and everything it spawned."""
        import psutil

        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def rss_bytes(self) -> int:
        import psutil

        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def post(self, path: str, body, timeout: float = 300) -> tuple[int, dict]:
        """POST JSON (or raw bytes/str) and return (status, parsed JSON or {"raw": text})."""
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        data = data.encode() if isinstance(data, str) else data
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}
