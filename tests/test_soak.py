"""Short soak (benchmarks/soak.py; `make soak` runs 500 requests): 80 mixed requests at
concurrency 64 against a server whose KV cache is too small for them (it must preempt),
~10 % cancelled mid-stream. Nothing may be lost: every other request completes, every
greedy one equals the same request sent alone, and the server ends idle and healthy.

The shared server (``small_kv_server``) runs with prefix caching off; the prefix-caching
case is an open bug (docs/reliability.md), kept as a strict xfail in the slow suite.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.server_process import ServerProcess
from benchmarks.soak import SOAK_SERVER_ARGS, build_requests, format_summary, run_soak


def test_build_requests_mix():
    reqs = build_requests(500, vocab_size=1000, seed=0)
    cancelled = sum(r.cancel_after_chunks is not None for r in reqs)
    assert 30 <= cancelled <= 70  # ~10 %
    assert all(r.stream for r in reqs if r.cancel_after_chunks is not None)
    assert any(r.body.get("n", 1) > 1 for r in reqs)
    assert any("stop" in r.body for r in reqs)
    assert sum(r.greedy for r in reqs) > 150
    assert {r.stream for r in reqs} == {True, False}
    assert all(len(r.body["prompt"]) + r.body["max_tokens"] <= 512 for r in reqs)


def _run(server, tiny_llama_dir, count, concurrency, seed):
    vocab = json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"]
    requests = build_requests(count, vocab, seed=seed, model=server.served_model_name)
    summary = run_soak(server, requests, concurrency)
    print(format_summary(summary))
    return summary


def _assert_nothing_lost(s):
    assert s["failed"] == 0 and s["mismatched"] == 0, s
    assert s["completed"] + s["cancelled"] == s["sent"], s
    assert s["cancelled"] > 0 and s["greedy_checked"] > 0, s
    assert s["health"] == 200, s
    assert (s["kv_cache_usage_after"], s["running_after"], s["waiting_after"]) == (0, 0, 0), s
    assert s["rss_growth"] <= s["rss_bound"], s


def test_short_soak(small_kv_server, tiny_llama_dir):
    s = _run(small_kv_server, tiny_llama_dir, count=80, concurrency=64, seed=1)
    _assert_nothing_lost(s)
    assert s["preemptions"] > 0, s  # the KV cache really was too small


@pytest.mark.slow
def test_full_soak(small_kv_server, tiny_llama_dir):
    s = _run(small_kv_server, tiny_llama_dir, count=500, concurrency=64, seed=2)
    _assert_nothing_lost(s)
    assert s["preemptions"] > 0, s


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="open bug: with prefix caching on (vLLM's default), "
                   "greedy results under load differ from the same request alone; "
                   "docs/reliability.md")
def test_short_soak_with_prefix_caching(tiny_llama_dir):
    with ServerProcess(tiny_llama_dir, SOAK_SERVER_ARGS) as server:
        s = _run(server, tiny_llama_dir, count=80, concurrency=64, seed=0)
    _assert_nothing_lost(s)
