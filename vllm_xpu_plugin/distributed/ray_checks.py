"""``--distributed-executor-backend ray`` at startup: problems in one line, and the
plugin's Ray executor in place of vLLM's.

- Ray not installed: vLLM fails while validating its parallel config, with a traceback.
  On the command line :func:`install_backend_check` checks the flag's value as it is
  parsed and exits with one line.
- Ray cluster unreachable (``RAY_ADDRESS`` names a host:port where nothing answers): Ray
  would retry for a minute inside the engine process and end in a traceback;
  :func:`ray_backend_problem` tries a TCP connection first (the platform calls it while
  vLLM builds the config, in the API-server process).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import Optional

EXECUTOR_QUALNAME = "vllm_xpu_plugin.distributed.ray_executor.PluginRayExecutor"
CONNECT_TIMEOUT_S = 5.0


def ray_missing_problem() -> Optional[str]:
    if importlib.util.find_spec("ray") is not None:
        try:
            import ray  # noqa: F401
            return None
        except ImportError as e:
            reason = f"ray does not import ({e})"
    else:
        reason = "ray is not installed"
    return (f"--distributed-executor-backend ray: {reason}; pip install 'ray[cgraph]>=2.48' "
            "(vLLM 0.11's ray extra) or use --distributed-executor-backend mp")


def _ray_address() -> str:
    # Ray's own variable (what ray.init() connects to), read where Ray reads it.
    return os.environ.get("RAY_ADDRESS", "").strip()


def unreachable_cluster_problem(address: Optional[str] = None) -> Optional[str]:
    """Why the Ray cluster at ``address`` (default ``RAY_ADDRESS``) cannot be reached, or
    None (also None when no address is set: vLLM then starts a local Ray instance)."""
    address = _ray_address() if address is None else address
    if not address or address == "auto" or address.startswith(("ray://", "local")):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return (f"RAY_ADDRESS={address!r} is not host:port (the head's `ray start --head "
                "--port` address, e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            return None
    except OSError as e:
        return (f"no Ray cluster answers at RAY_ADDRESS={address} ({e.strerror or e}); start "
                "the head with `ray start --head --port ...` (and each node with `ray start "
                "--address ...`), or unset RAY_ADDRESS to let vLLM start a local Ray")


def ray_backend_problem() -> Optional[str]:
    return ray_missing_problem() or unreachable_cluster_problem()


def plugin_ray_executor() -> type:
    from vllm_xpu_plugin.distributed.ray_executor import PluginRayExecutor

    return PluginRayExecutor


def install_backend_check(parser) -> None:
    """Make ``--distributed-executor-backend ray`` exit with one line when Ray is missing
    or the cluster is unreachable (checked when the flag is parsed)."""
    for action in parser._actions:
        if "--distributed-executor-backend" not in action.option_strings:
            continue
        if getattr(action.type, "vllm_xpu_plugin_ray_check", False):
            return
        convert = action.type

        def checked(value, _convert=convert):
            value = _convert(value) if _convert is not None else value
            problem = ray_backend_problem() if value == "ray" else None
            if problem:
                parser.exit(2, f"vllm-xpu-plugin: error: {problem}\n")
            return value

        checked.vllm_xpu_plugin_ray_check = True
        action.type = checked
        return


def is_ray_backend(backend) -> bool:
    """``ray``, or the plugin's Ray executor already put in its place."""
    return backend == "ray" or getattr(backend, "__qualname__", None) == "PluginRayExecutor"


def select_plugin_ray_executor(parallel_config) -> None:
    """Check Ray and the cluster address, then run vLLM's Ray executor with the plugin's
    workers (:mod:`vllm_xpu_plugin.distributed.ray_executor`)."""
    from vllm_xpu_plugin.startup_checks import PluginConfigError

    problem = ray_backend_problem()
    if problem:
        raise PluginConfigError(problem)
    parallel_config.distributed_executor_backend = plugin_ray_executor()
