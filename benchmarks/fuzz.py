"""Hostile-input suite (``make fuzz``): a bounded, seeded, replayable run of malformed and
hostile requests against a real ``vllm serve`` on 127.0.0.1 (issue 19).

    python -m benchmarks.fuzz [--model tiny|smollm2|PATH] [--seed 0] [--random-cases 60]
                              [--only NAME-SUBSTRING] [--list] [--json report.json]

Categories: malformed bodies, sampling parameters at their limits (a fixed table plus
``--random-cases`` seeded combinations), prompt-id edge cases, oversized bodies, endpoint
misuse, and concurrent streams of which half disconnect mid-stream (on a KV cache small
enough to preempt). Every case has an expectation: ``ok`` (200), ``4xx``, ``ok|4xx`` (either:
a limit value vLLM may accept) or ``vllm5xx`` (a 5xx that is vLLM 0.11's own, listed in
docs/limitations.md with this request). The run fails on any other 5xx, on a dropped
connection, when /health is not 200 after a case, when a reference greedy answer changes,
or when running/waiting requests and KV-cache usage in /metrics are not back to 0.

Bounded: the case list is fixed by the seed (``--list`` prints it; ``--only`` replays some),
each request has a timeout, and the run stops at ``--max-seconds``. Servers listen on
127.0.0.1, ports 18700-18799 only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmarks._common import ensure_repo_on_path

ensure_repo_on_path()

from benchmarks.fuzz_cases import (  # noqa: E402
    BAD,
    EITHER,
    MODEL,
    OK,
    REFERENCE_PROMPTS,
    VLLM5XX,
    Case,
    all_cases,
    completion_body,
)
from benchmarks.server_process import ServerProcess  # noqa: E402

# This suite's servers listen here only (other suites on the shared machine use other ports).
PORT_RANGE = range(18700, 18800)


def _claim_port(ports: Sequence[int] = PORT_RANGE):
    """(port, lock file) of a port of ``ports`` free on 127.0.0.1 and not claimed by another
    of this suite's servers: the port is only bound once the server is up (tens of seconds
    later), so a bind test alone lets two servers starting together pick the same one. The
    lock (flock) is held until the file is closed and dies with the process."""
    import fcntl
    import tempfile

    lock_dir = Path(tempfile.gettempdir()) / "vllm-xpu-plugin-ports"
    lock_dir.mkdir(exist_ok=True)
    for port in ports:
        lock = open(lock_dir / f"{port}.lock", "w")  # noqa: SIM115 - held by the caller
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                lock.close()
                continue
        return port, lock
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1} on 127.0.0.1")


@contextmanager
def hostile_server(model: Path | str, args: Sequence[str] = (),
                   env: Optional[dict[str, str]] = None,
                   log_path: Optional[Path] = None) -> Iterator[ServerProcess]:
    """A ServerProcess (served as "model") on a free port of PORT_RANGE, always stopped."""
    server = ServerProcess(model, args, env=env, log_path=log_path)
    port, lock = _claim_port()
    try:
        server.cmd[server.cmd.index("--port") + 1] = str(port)
        server.port, server.url = port, f"http://127.0.0.1:{port}"
        with server:
            yield server
    finally:
        lock.close()


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


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    case: Case
    status: Optional[int]  # None: no HTTP answer (connection dropped / timed out)
    message: str = ""
    seconds: float = 0.0
    verdict: str = "pass"  # pass | FAIL | known (a vLLM 5xx listed in docs/limitations.md)
    leaks_path: bool = False  # the error body names a server file ('File "/...py"')


def _error_message(raw: bytes) -> tuple[Optional[int], str]:
    """(code of a stream's error event or None, the error message) of a response body."""
    text = raw.decode(errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
        if text.startswith("data:"):
            code, event = stream_error({"raw": text})
            if code is not None:
                return code, str(event["error"].get("message", ""))
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return None, str(err.get("message", ""))
        return None, str(data.get("detail") or data.get("message") or "")
    return None, text[:200]


def send(host: str, port: int, case: Case, timeout: float, middleware: bool = True) -> Outcome:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(case.method, case.path, body=case.payload(), headers=case.headers)
        resp = conn.getresponse()
        raw = resp.read()
        status = resp.status
    except (OSError, http.client.HTTPException) as e:
        return Outcome(case, None, f"{type(e).__name__}: {e}", time.monotonic() - t0)
    finally:
        conn.close()
    stream_code, message = _error_message(raw) if status != 200 or raw.startswith(
        b"data:") else (None, "")
    if status == 200 and stream_code is not None:
        status = stream_code  # a stream whose only event is an error: judge by its code
    out = Outcome(case, status, message.splitlines()[0][:200] if message else "",
                  time.monotonic() - t0, leaks_path='File "' in message)
    # With the middleware, vLLM's own 5xx of these cases must be 4xx.
    expect = BAD if middleware and case.expect == VLLM5XX else case.expect
    out.verdict = judge(expect, status, message)
    return out


# The plugin's ASGI middleware (vllm_xpu_plugin/request_checks.py), via vLLM's --middleware.
MIDDLEWARE_ARGS = ["--middleware", "vllm_xpu_plugin.request_checks.ClientErrorMiddleware"]


def documented_logging_config() -> str:
    """The VLLM_LOGGING_CONFIG_PATH file of docs/reliability.md (with the client-error
    log filter): the first json block there."""
    from benchmarks._common import REPO_ROOT

    doc = (REPO_ROOT / "docs" / "reliability.md").read_text()
    block = doc.split("```json\n", 1)[1].split("```", 1)[0]
    json.loads(block)
    return block


def judge(expect: str, status: Optional[int], message: str) -> str:
    if status is None:
        return "FAIL"
    if status >= 500:
        return "known" if expect == VLLM5XX else "FAIL"
    if 400 <= status < 500:
        if expect in (BAD, EITHER, VLLM5XX) and message:
            return "pass"
        return "FAIL"  # a 4xx for a valid request, or one without a message
    if status == 200:
        return "pass" if expect in (OK, EITHER, VLLM5XX) else "FAIL"
    return "FAIL"


async def _one_stream(session, url: str, body: dict, close_after: Optional[int],
                      timeout: float) -> str:
    """'completed', 'disconnected' (closed by us) or what went wrong."""
    import aiohttp

    try:
        async with session.post(url + "/v1/completions", json=body,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return f"http {resp.status}"
            chunks = 0
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return "completed"
                if "error" in json.loads(payload):
                    return f"error event {payload[:120]}"
                chunks += 1
                if close_after is not None and chunks >= close_after:
                    resp.close()  # the client goes away mid-stream
                    return "disconnected"
            return "no [DONE]"
    except Exception as e:  # noqa: BLE001 - every failure is reported
        return f"{type(e).__name__}: {e}"[:160]


async def concurrent_streams(url: str, count: int, vocab: int, seed: int,
                             timeout: float = 600) -> dict[str, int]:
    """``count`` streams at once (long enough to preempt on the small KV cache); half the
    clients disconnect after 1-3 chunks."""
    import aiohttp

    rng = random.Random(seed + 1)
    jobs = []
    for i in range(count):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(8, 200))]
        body = {"model": MODEL, "prompt": prompt, "stream": True,
                "max_tokens": rng.randint(32, 160), "temperature": rng.choice([0.0, 0.9])}
        if body["temperature"] > 0 and rng.random() < 0.4:
            body["n"] = 2  # (n > 1 needs sampling)
        jobs.append((body, rng.randint(1, 3) if i % 2 else None))
    connector = aiohttp.TCPConnector(limit=count, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(*(_one_stream(session, url, b, c, timeout)
                                         for b, c in jobs))
    tally: dict[str, int] = {}
    for r in results:
        tally[r] = tally.get(r, 0) + 1
    return tally


def reference_answers(server) -> list[str]:
    out = []
    for prompt in REFERENCE_PROMPTS:
        status, data = server.post("/v1/completions", completion_body(prompt=prompt, max_tokens=12))
        out.append(data["choices"][0]["text"] if status == 200 else f"HTTP {status}: {data}")
    return out


def _log_counts(log_path: Path) -> dict[str, int]:
    text = log_path.read_text(errors="replace")
    return {"error_lines": sum(1 for line in text.splitlines() if " ERROR " in line),
            "tracebacks": text.count("Traceback (most recent call last)")}


def run_fuzz(server, vocab: int, max_len: int, seed: int = 0, random_cases: int = 60,
             only: Optional[str] = None, streams: int = 32, max_seconds: float = 900,
             timeout: float = 180, log=print, middleware: bool = True,
             hidden: int = 128) -> dict:
    from benchmarks.soak import wait_idle

    t_start = time.monotonic()
    cases = all_cases(vocab, max_len, seed, random_cases, hidden)
    if only:
        cases = [c for c in cases if only in c.name]
    before = reference_answers(server)
    outcomes: list[Outcome] = []
    stopped = None
    for case in cases:
        if time.monotonic() - t_start > max_seconds:
            stopped = f"time budget {max_seconds:.0f}s reached before {case.name}"
            break
        out = send("127.0.0.1", server.port, case, timeout, middleware)
        health = server.health()
        if health != 200:
            out.verdict = "FAIL"
            out.message = f"/health {health} after this case; {out.message}"
        outcomes.append(out)
        if out.verdict != "pass":
            log(f"{out.verdict:5} {case.category}/{case.name}: HTTP {out.status} "
                f"{out.message[:160]}")
        if health != 200:
            stopped = f"server unhealthy after {case.name}"
            break
    stream_tally: dict[str, int] = {}
    if not stopped and streams and not only:
        stream_tally = asyncio.run(concurrent_streams(server.url, streams, vocab, seed))
    idle = wait_idle(server) if not stopped else {}
    after = reference_answers(server) if not stopped else []
    counts = _log_counts(server.log_path)
    failed = [o for o in outcomes if o.verdict == "FAIL"]
    bad_streams = {k: v for k, v in stream_tally.items()
                   if k not in ("completed", "disconnected")}
    summary = {
        "seed": seed, "middleware": middleware, "cases": len(outcomes),
        "of_cases": len(cases),
        "by_status": _tally(str(o.status) for o in outcomes),
        "by_category": _tally(o.case.category for o in outcomes),
        "failed": [f"{o.case.name}: HTTP {o.status} {o.message[:120]}" for o in failed],
        "known_vllm_5xx": [o.case.name for o in outcomes if o.verdict == "known"],
        "known_5xx_now_fixed": [o.case.name for o in outcomes
                                if o.case.expect == VLLM5XX and o.verdict == "pass"],
        "bodies_with_server_paths": [o.case.name for o in outcomes if o.leaks_path],
        "streams": stream_tally,
        "health": server.health(),
        "running_after": idle.get("vllm:num_requests_running"),
        "waiting_after": idle.get("vllm:num_requests_waiting"),
        "kv_cache_usage_after": idle.get("vllm:kv_cache_usage_perc"),
        "preemptions": idle.get("vllm:num_preemptions_total"),
        "reference_before": before, "reference_after": after,
        "server_log": counts, "stopped": stopped,
        "seconds": round(time.monotonic() - t_start, 1),
        "outcomes": [{"name": o.case.name, "expect": o.case.expect, "status": o.status,
                      "verdict": o.verdict, "message": o.message[:160],
                      "seconds": round(o.seconds, 2)} for o in outcomes],
        "slowest": sorted(((round(o.seconds, 1), o.case.name) for o in outcomes),
                          reverse=True)[:5],
    }
    summary["ok"] = (not failed and not bad_streams and stopped is None
                     and summary["health"] == 200 and after == before
                     and summary["running_after"] == 0 and summary["waiting_after"] == 0
                     and summary["kv_cache_usage_after"] == 0)
    return summary


def _tally(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def format_summary(s: dict) -> str:
    lines = [
        f"fuzz seed={s['seed']} middleware={s['middleware']}: {s['cases']}/{s['of_cases']} "
        f"cases in {s['seconds']} s; "
        f"status {s['by_status']}",
        f"failed={len(s['failed'])} known vLLM 5xx={len(s['known_vllm_5xx'])} "
        f"{s['known_vllm_5xx']}",
        f"concurrent streams {s['streams']}; preemptions so far {s['preemptions']}",
        f"health={s['health']} running_after={s['running_after']} "
        f"waiting_after={s['waiting_after']} kv_cache_usage_after={s['kv_cache_usage_after']}",
        f"reference greedy answers unchanged: {s['reference_after'] == s['reference_before']}",
        f"error bodies naming server files: {len(s['bodies_with_server_paths'])}; server log: "
        f"{s['server_log']['error_lines']} ERROR lines, {s['server_log']['tracebacks']} "
        f"tracebacks",
    ]
    lines += [f"  FAILED {f}" for f in s["failed"]]
    if s["known_5xx_now_fixed"]:
        why = "the middleware" if s["middleware"] else "?"
        lines.append(f"  vLLM 5xx answered 4xx by {why}: {s['known_5xx_now_fixed']}")
    if s["stopped"]:
        lines.append(f"  STOPPED: {s['stopped']}")
    lines.append(f"fuzz: {'OK' if s['ok'] else 'FAILED'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks.soak import SOAK_SERVER_ARGS, _resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (default), 'smollm2' or a path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-cases", type=int, default=60)
    ap.add_argument("--streams", type=int, default=32,
                    help="concurrent streams at the end (half disconnect); 0: none")
    ap.add_argument("--only", help="run only the cases whose name contains this")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--threads", type=int, default=2, help="OMP threads of the server")
    ap.add_argument("--no-middleware", action="store_true",
                    help="vLLM 0.11's own answers: without the plugin's --middleware and "
                         "without docs/reliability.md's logging configuration")
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)

    model = _resolve_model(args.model)
    cfg = json.loads((model / "config.json").read_text())
    text_cfg = cfg.get("text_config") or cfg
    vocab, hidden = text_cfg["vocab_size"], text_cfg["hidden_size"]
    middleware = not args.no_middleware
    max_len = int(SOAK_SERVER_ARGS[SOAK_SERVER_ARGS.index("--max-model-len") + 1])
    if args.list:
        for c in all_cases(vocab, max_len, args.seed, args.random_cases, hidden):
            print(f"{c.category:16} {c.name:36} {c.expect:8} {c.method} {c.path}")
        return 0
    env = {"OMP_NUM_THREADS": str(args.threads)}
    if middleware:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(documented_logging_config())
        env["VLLM_LOGGING_CONFIG_PATH"] = f.name
    server_args = [*SOAK_SERVER_ARGS, *(MIDDLEWARE_ARGS if middleware else []),
                   *args.server_arg]
    with hostile_server(model, server_args, env=env) as server:
        print(f"fuzz: {model} on {server.url} (log {server.log_path})", flush=True)
        summary = run_fuzz(server, vocab, max_len, seed=args.seed,
                           random_cases=args.random_cases, only=args.only,
                           streams=args.streams, max_seconds=args.max_seconds,
                           middleware=middleware, hidden=hidden)
    summary["model"] = str(model)
    print(format_summary(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    sys.exit(main())
