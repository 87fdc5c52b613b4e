"""Soak: a server with a deliberately small KV cache under mixed load loses nothing.

``make soak`` (``python -m benchmarks.soak``): ``vllm serve`` in CPU mode with a KV cache
of a few dozen blocks (``--num-gpu-blocks-override``) so the scheduler must preempt, then
>= 500 mixed /v1/completions requests at concurrency 64: short and long prompts,
streaming and not, ``n > 1``, stop strings, temperatures 0-1.2, ~10 % cancelled
mid-stream (the client closes the connection after a few chunks). Afterwards:

- every request that was not cancelled completed (HTTP 200, a finish_reason per choice);
- every greedy request's text equals the same request sent alone to the idle server;
- ``/health`` is 200; ``vllm:kv_cache_usage_perc`` and running/waiting requests in
  ``/metrics`` are back to 0; the server's RSS (all its processes) grew by at most
  ``--rss-bound`` (default 10 %) over its value after warm-up.

Prints sent / completed / cancelled / failed / mismatched and the features in the mix, and
exits 1 unless everything holds. tests/test_soak.py runs a short version (80 requests) in the
default suite. ``--features structured,ngram`` adds features (see ``FEATURES``): their
server arguments, and a share of the greedy requests rewritten to use them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchmarks._common import ensure_repo_on_path

# A small KV cache: 64 blocks x 16 tokens = 1024 tokens for up to 64 sequences of up to
# 512 tokens, so running requests outgrow it and get preempted (recomputed later).
SOAK_SERVER_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--block-size", "16",
                    "--num-gpu-blocks-override", "64", "--max-num-seqs", "64", "--seed", "0"]
MAX_MODEL_LEN = 512
STOP_STRINGS = ["e", "th", ".", "\n", "in", "an"]


# What every soak mixes (the report lists these plus the --features it was run with).
BASE_FEATURES = ("completions", "streaming", "n>1", "sampled", "greedy", "stop strings",
                 "cancelled mid-stream", "preemption (small KV cache)",
                 "prefix caching (vLLM default)")


@dataclass(frozen=True)
class SoakFeature:
    """A feature the soak can mix in: server arguments, and a rewrite applied to a share of
    the greedy requests (still compared with the same request alone afterwards)."""

    name: str
    server_args: tuple[str, ...] = ()
    share: float = 0.0
    rewrite: Optional[Callable[[dict, random.Random], None]] = None
    note: str = ""


def _structured(body: dict, rng: random.Random) -> None:
    # Grammar-constrained greedy decoding (xgrammar); either constraint ends the text early.
    body["structured_outputs"] = rng.choice([
        {"choice": ["alpha", "beta", "gamma delta"]},
        {"regex": "[a-z]{2,12}( [a-z]{2,12}){0,3}"},
    ])
    body.pop("stop", None)


def _repetitive_prompt(body: dict, rng: random.Random) -> None:
    # ngram drafts come from repeats in the context: give the prompt some.
    pattern = body["prompt"][:rng.randint(3, 8)]
    body["prompt"] = (pattern * (len(body["prompt"]) // len(pattern) + 1))[:len(body["prompt"])]


def _not_built(name: str) -> Callable[[dict, random.Random], None]:
    def rewrite(body: dict, rng: random.Random) -> None:
        raise NotImplementedError(f"soak feature {name!r} is a hook: see FEATURES")
    return rewrite


FEATURES: dict[str, SoakFeature] = {
    "structured": SoakFeature("structured outputs", share=0.3, rewrite=_structured),
    "ngram": SoakFeature(
        "ngram speculation",
        ("--speculative-config", json.dumps({"method": "ngram", "num_speculative_tokens": 3,
                                             "prompt_lookup_max": 3, "prompt_lookup_min": 2})),
        share=0.3, rewrite=_repetitive_prompt),
    # Hooks for this round's LoRA and MoE work (not built here): LoRA adds --enable-lora
    # --lora-modules NAME=PATH and sets body["model"] = NAME on a share of the requests;
    # MoE is its own soak run (--model <tiny MoE dir>) and needs no rewrite.
    "lora": SoakFeature("LoRA requests", share=0.3, rewrite=_not_built("lora"),
                        note="hook only"),
    "moe": SoakFeature("MoE model", note="hook only: run with --model <MoE model>"),
}


def feature_list(names: Sequence[str]) -> list[SoakFeature]:
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown soak features {unknown}; known: {sorted(FEATURES)}")
    return [FEATURES[n] for n in names]


@dataclass
class SoakRequest:
    index: int
    body: dict
    greedy: bool
    cancel_after_chunks: Optional[int] = None  # streaming: close after this many chunks
    features: list[str] = field(default_factory=list)  # SoakFeature names this one uses

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass
class SoakResult:
    request: SoakRequest
    status: Optional[int] = None
    texts: dict[int, str] = field(default_factory=dict)
    finish_reasons: dict[int, Optional[str]] = field(default_factory=dict)
    cancelled: bool = False
    error: Optional[str] = None

    @property
    def completed(self) -> bool:
        n = self.request.body.get("n", 1)
        return (self.status == 200 and self.error is None and len(self.texts) == n
                and all(self.finish_reasons.get(i) in ("stop", "length") for i in range(n)))


def build_requests(count: int, vocab_size: int, seed: int = 0, model: str = "model",
                   cancel_fraction: float = 0.1, greedy_only: bool = False,
                   features: Sequence[str] = ()) -> list[SoakRequest]:
    """A reproducible mix of requests (prompts are token ids, so any tokenizer works).
    ``features`` (FEATURES keys) rewrite a share of the greedy requests; without them the
    mix is the same as before features existed."""
    out = _base_requests(count, vocab_size, seed, model, cancel_fraction, greedy_only)
    rng = random.Random(seed + 7919)
    for feature in feature_list(features):
        if feature.rewrite is None:
            continue
        for req in out:
            if req.greedy and not req.features and rng.random() < feature.share:
                feature.rewrite(req.body, rng)
                req.features.append(feature.name)
    return out


def _base_requests(count: int, vocab_size: int, seed: int, model: str,
                   cancel_fraction: float, greedy_only: bool) -> list[SoakRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        long_prompt = rng.random() < 0.3
        prompt_len = rng.randint(128, 320) if long_prompt else rng.randint(4, 32)
        prompt = [rng.randrange(3, vocab_size) for _ in range(prompt_len)]
        body: dict = {"model": model, "prompt": prompt, "stream": rng.random() < 0.5}
        roll = rng.random()
        cancel = None
        greedy = False
        if greedy_only:
            roll = 1.0 if roll >= cancel_fraction else roll
        if roll < cancel_fraction:
            # Long enough to still be running when the client goes away.
            body.update(stream=True, max_tokens=rng.randint(64, 128),
                        temperature=rng.choice([0.0, 0.8]))
            cancel = rng.randint(1, 4)
        elif roll < cancel_fraction + 0.15:
            body.update(n=rng.randint(2, 3), temperature=rng.uniform(0.6, 1.2), top_p=0.9,
                        max_tokens=rng.randint(8, 40))
        elif roll < cancel_fraction + 0.4:
            body.update(temperature=rng.uniform(0.3, 1.2), max_tokens=rng.randint(8, 48))
            if rng.random() < 0.5:
                body["seed"] = rng.randrange(1 << 30)
        else:
            greedy = True
            body.update(temperature=0.0, max_tokens=rng.randint(8, 48))
            if rng.random() < 0.5:
                body["stop"] = [rng.choice(STOP_STRINGS)]
        body["max_tokens"] = min(body["max_tokens"], MAX_MODEL_LEN - prompt_len)
        out.append(SoakRequest(i, body, greedy, cancel))
    return out


# --------------------------------------------------------------------------- client


async def _send(session, url: str, req: SoakRequest, timeout: float) -> SoakResult:
    import aiohttp

    result = SoakResult(req)
    try:
        async with session.post(url + "/v1/completions", json=req.body,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            result.status = resp.status
            if resp.status != 200:
                result.error = (await resp.text())[:300]
                return result
            if not req.stream:
                data = await resp.json()
                for choice in data["choices"]:
                    result.texts[choice["index"]] = choice["text"]
                    result.finish_reasons[choice["index"]] = choice["finish_reason"]
                return result
            chunks = 0
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    result.error = str(data["error"])[:300]
                    break
                for choice in data.get("choices", []):
                    i = choice["index"]
                    result.texts[i] = result.texts.get(i, "") + (choice.get("text") or "")
                    if choice.get("finish_reason"):
                        result.finish_reasons[i] = choice["finish_reason"]
                chunks += 1
                if req.cancel_after_chunks is not None and chunks >= req.cancel_after_chunks:
                    # Client disconnect mid-stream: drop the connection, read no more.
                    resp.close()
                    result.cancelled = True
                    return result
    except Exception as e:  # noqa: BLE001 - every failure is counted and reported
        result.error = f"{type(e).__name__}: {e}"[:300]
    return result


async def run_load(url: str, requests: list[SoakRequest], concurrency: int,
                   timeout: float = 1800) -> list[SoakResult]:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(req):
            async with sem:
                return await _send(session, url, req, timeout)

        return await asyncio.gather(*(one(r) for r in requests))


async def replay_alone(url: str, results: list[SoakResult],
                       timeout: float = 600) -> list[tuple[SoakResult, SoakResult]]:
    """Send each completed greedy request again, one at a time; return the mismatches."""
    import aiohttp

    mismatches = []
    async with aiohttp.ClientSession() as session:
        for r in results:
            if not (r.request.greedy and r.completed):
                continue
            alone = await _send(session, url, r.request, timeout)
            if (alone.texts, alone.finish_reasons) != (r.texts, r.finish_reasons):
                mismatches.append((r, alone))
    return mismatches


# --------------------------------------------------------------------------- offline


def _sampling_params(body: dict):
    from vllm import SamplingParams

    return SamplingParams(n=body.get("n", 1), temperature=body.get("temperature", 1.0),
                          top_p=body.get("top_p", 1.0), max_tokens=body["max_tokens"],
                          seed=body.get("seed"), stop=body.get("stop"))


def _drain(engine, texts: dict[str, list[str]]) -> None:
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                texts[out.request_id] = [c.text for c in out.outputs]


def offline_interleaved_mismatches(engine, requests: list[SoakRequest],
                                   seed: int = 0) -> tuple[int, list[int]]:
    """The soak's request mix on an in-process ``LLMEngine`` with a reproducible schedule:
    0-8 requests join before each step, "cancelled" ones are aborted after their
    ``cancel_after_chunks``-th output. Then each completed greedy request runs alone.

    Unlike the server soak, whose interleaving depends on timing, a failure here replays
    exactly. Returns (greedy requests checked, indices of those whose text differs).
    """
    from vllm.inputs import TokensPrompt

    rng = random.Random(seed)
    pending = list(requests)
    texts: dict[str, list[str]] = {}
    outputs_seen: dict[str, int] = {}
    abort_after: dict[str, int] = {}
    while pending or engine.has_unfinished_requests():
        for _ in range(rng.choice([0, 0, 1, 2, 4, 8])):
            if pending:
                req = pending.pop(0)
                engine.add_request(f"load-{req.index}",
                                   TokensPrompt(prompt_token_ids=req.body["prompt"]),
                                   _sampling_params(req.body))
                if req.cancel_after_chunks is not None:
                    abort_after[f"load-{req.index}"] = req.cancel_after_chunks
        if not engine.has_unfinished_requests():
            continue
        for out in engine.step():
            rid = out.request_id
            if out.finished:
                texts[rid] = [c.text for c in out.outputs]
                continue
            outputs_seen[rid] = outputs_seen.get(rid, 0) + 1
            if outputs_seen[rid] >= abort_after.get(rid, 1 << 30):
                engine.abort_request([rid])
    checked, mismatched = 0, []
    for req in requests:
        under_load = texts.get(f"load-{req.index}")
        if not req.greedy or under_load is None:
            continue
        engine.add_request(f"alone-{req.index}",
                           TokensPrompt(prompt_token_ids=req.body["prompt"]),
                           _sampling_params(req.body))
        alone: dict[str, list[str]] = {}
        _drain(engine, alone)
        checked += 1
        if alone[f"alone-{req.index}"] != under_load:
            mismatched.append(req.index)
    return checked, mismatched


# --------------------------------------------------------------------------- checks


def wait_idle(server, timeout: float = 120) -> dict[str, float]:
    """Poll /metrics until no request runs or waits and the KV cache is empty."""
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        idle = (m.get("vllm:num_requests_running", 0) == 0
                and m.get("vllm:num_requests_waiting", 0) == 0
                and m.get("vllm:kv_cache_usage_perc", 0) == 0)
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(1)


def run_soak(server, requests: list[SoakRequest], concurrency: int,
             rss_bound: float = 0.10, log=print, features: Sequence[str] = ()) -> dict:
    """Warm up, measure RSS, run the load, replay greedy requests alone, check the server."""
    url = server.url
    warm = [SoakRequest(-1, {"model": server.served_model_name, "prompt": [5, 6, 7],
                             "max_tokens": 4, "temperature": 0.0}, True)]
    asyncio.run(run_load(url, warm * 4, 4))
    rss_start = server.rss_bytes()
    preempt_start = server.metrics().get("vllm:num_preemptions_total", 0)

    t0 = time.monotonic()
    results = asyncio.run(run_load(url, requests, concurrency))
    load_s = time.monotonic() - t0
    metrics = wait_idle(server)
    rss_end = server.rss_bytes()

    cancelled = [r for r in results if r.cancelled]
    not_cancelled = [r for r in results if not r.cancelled]
    completed = [r for r in not_cancelled if r.completed]
    failed = [r for r in not_cancelled if not r.completed]
    t1 = time.monotonic()
    mismatches = asyncio.run(replay_alone(url, results))
    replay_s = time.monotonic() - t1
    health = server.health()
    final = wait_idle(server)

    summary = {
        "sent": len(results),
        "completed": len(completed),
        "cancelled": len(cancelled),
        "failed": len(failed),
        "greedy_checked": sum(1 for r in completed if r.request.greedy),
        "mismatched": len(mismatches),
        "preemptions": metrics.get("vllm:num_preemptions_total", 0) - preempt_start,
        "health": health,
        "kv_cache_usage_after": final.get("vllm:kv_cache_usage_perc"),
        "running_after": final.get("vllm:num_requests_running"),
        "waiting_after": final.get("vllm:num_requests_waiting"),
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1),
        "rss_growth": round(rss_end / rss_start - 1, 4),
        "rss_bound": rss_bound,
        "load_seconds": round(load_s, 1),
        "replay_seconds": round(replay_s, 1),
        "concurrency": concurrency,
        "features": [*BASE_FEATURES, *(f.name for f in feature_list(features))],
        # Per added feature: its greedy requests completed and compared / mismatched.
        "feature_requests": {
            f.name: {"checked": sum(1 for r in completed
                                    if r.request.greedy and f.name in r.request.features),
                     "mismatched": sum(1 for r, _ in mismatches
                                       if f.name in r.request.features)}
            for f in feature_list(features)},
    }
    summary["ok"] = (summary["failed"] == 0 and summary["mismatched"] == 0
                     and summary["completed"] + summary["cancelled"] == summary["sent"]
                     and health == 200 and summary["kv_cache_usage_after"] == 0
                     and summary["running_after"] == 0 and summary["waiting_after"] == 0
                     and summary["rss_growth"] <= rss_bound)
    for r in failed[:5]:
        log(f"FAILED request {r.request.index}: status={r.status} error={r.error} "
            f"finish={r.finish_reasons}")
    for r, alone in mismatches[:5]:
        log(f"MISMATCH request {r.request.index}: under load {r.texts} "
            f"{r.finish_reasons} / alone {alone.texts} {alone.finish_reasons}")
    return summary


def format_summary(s: dict) -> str:
    return (f"sent={s['sent']} completed={s['completed']} cancelled={s['cancelled']} "
            f"failed={s['failed']} mismatched={s['mismatched']} "
            f"(greedy checked={s['greedy_checked']}) preemptions={s['preemptions']:.0f}\n"
            f"health={s['health']} kv_cache_usage_after={s['kv_cache_usage_after']} "
            f"running_after={s['running_after']} waiting_after={s['waiting_after']}\n"
            f"rss {s['rss_start_mib']} MiB -> {s['rss_end_mib']} MiB "
            f"({s['rss_growth']:+.1%}, bound +{s['rss_bound']:.0%}); "
            f"load {s['load_seconds']} s at concurrency {s['concurrency']}, "
            f"replay {s['replay_seconds']} s\n"
            f"features: {', '.join(s.get('features', BASE_FEATURES))}\n"
            + "".join(f"  {name}: {c['checked']} greedy requests checked, "
                      f"{c['mismatched']} mismatched\n"
                      for name, c in s.get("feature_requests", {}).items())
            + f"soak: {'OK' if s['ok'] else 'FAILED'}")


# --------------------------------------------------------------------------- main


def _resolve_model(name: str) -> Path:
    ensure_repo_on_path()
    if name == "tiny":
        from tests.fixtures.tiny_models import build_tiny_model

        return build_tiny_model("llama")
    if name == "smollm2":
        from tests.fixtures.smollm2 import build_smollm2

        return build_smollm2()
    return Path(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny",
                    help="'tiny' (random-weight tiny Llama, default), 'smollm2', or a path")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="OMP threads of the server")
    ap.add_argument("--rss-bound", type=float, default=0.10,
                    help="allowed RSS growth over the warmed-up server (fraction)")
    ap.add_argument("--cancel-fraction", type=float, default=0.1)
    ap.add_argument("--greedy-only", action="store_true",
                    help="no sampled / n>1 requests (to bisect a mismatch)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra vllm serve argument, e.g. --server-arg=--no-enable-prefix-caching")
    ap.add_argument("--features", default="",
                    help=f"comma-separated features to mix in: {', '.join(sorted(FEATURES))}")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)

    from benchmarks.fuzz import hostile_server  # a server on this suite's port range

    features = [f for f in args.features.split(",") if f]
    feature_args = [a for f in feature_list(features) for a in f.server_args]

    model = _resolve_model(args.model)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    requests = build_requests(args.requests, vocab, seed=args.seed,
                              cancel_fraction=args.cancel_fraction,
                              greedy_only=args.greedy_only, features=features)
    env = {"OMP_NUM_THREADS": str(args.threads)}
    print(f"soak: {args.requests} requests at concurrency {args.concurrency} on {model}",
          flush=True)
    server_args = [*SOAK_SERVER_ARGS, *feature_args, *args.server_arg]
    with hostile_server(model, server_args, env=env) as server:
        print(f"server {server.url} (log {server.log_path})", flush=True)
        summary = run_soak(server, requests, args.concurrency, args.rss_bound,
                           features=features)
    summary["model"] = str(model)
    print(format_summary(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    sys.exit(main())
