"""Hostile-input suite (``make fuzz``): a bounded, seeded, replayable run of malformed and
hostile requests against a real ``vllm serve`` on 127.0.0.1 (issue 19).

Filled in below; ``hostile_server`` is shared with tests/test_hostile_inputs.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from benchmarks._common import ensure_repo_on_path

ensure_repo_on_path()

from benchmarks.server_process import ServerProcess  # noqa: E402

# This suite's servers listen here only (other suites on the shared machine use other ports).
PORT_RANGE = range(18700, 18800)


def free_port_in_range(ports: Sequence[int] = PORT_RANGE) -> int:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1} on 127.0.0.1")


@contextmanager
def hostile_server(model: Path | str, args: Sequence[str] = (),
                   env: Optional[dict[str, str]] = None,
                   log_path: Optional[Path] = None) -> Iterator[ServerProcess]:
    """A ServerProcess (served as "model") on a free port of PORT_RANGE, always stopped."""
    server = ServerProcess(model, args, env=env, log_path=log_path)
    port = free_port_in_range()
    server.cmd[server.cmd.index("--port") + 1] = str(port)
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    with server:
        yield server


def sse_events(raw: str) -> list:
    """The JSON payloads of a server-sent-event body (``[DONE]`` as the string)."""
    events = []
    for line in raw.splitlines():
        if line.startswith("data:"):
            payload = line[len("data:"):].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def stream_error(data: dict) -> tuple[Optional[int], dict]:
    """(code, {"error": ...}) of a stream that is one error event then [DONE], else
    (None, data): how vLLM 0.11 reports a request rejected after the stream started."""
    events = sse_events(data.get("raw", "")) if isinstance(data, dict) else []
    if len(events) == 2 and events[1] == "[DONE]" and isinstance(events[0], dict) \
            and isinstance(events[0].get("error"), dict):
        return events[0]["error"].get("code"), events[0]
    return None, data
