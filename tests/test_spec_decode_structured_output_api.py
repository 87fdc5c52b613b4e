"""ngram speculative decoding and structured outputs through the OpenAI server (end to end).

Each server runs both features at once, as a user would enable them:
``vllm serve MODEL --speculative-config '{"method": "ngram", ...}'``:

- SmolLM2-135M-Instruct in bfloat16, xgrammar backend;
- a tiny random-weight Llama in float32, xgrammar backend;
- (slow) the tiny Llama with the guidance backend.

Speculative decoding: greedy completions with ngram drafts must equal the same server's
completions without drafts. The reference requests ask for logprobs, which vLLM 0.11 never
speculates for (``is_spec_decode_unsupported``); /metrics proves it -- no drafts during the
reference batch, drafts and accepted tokens > 0 during the speculative one. The float32 tiny
model is also checked against HF transformers greedy decoding.

Structured outputs: >= 20 JSON-schema / choice / regex requests sent concurrently with
unconstrained ones (greedy and sampled), every answer parsed and validated; unconstrained
greedy answers must equal the same requests served alone (no grammar leaking onto them).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import jsonschema
import pytest

from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
         "prompt_lookup_min": 2}
# Greedy runs that take different kernel paths (a one-token decode vs. a speculative
# verification window, or another batch size) may round differently; they may diverge
# only where the reference's top-2 logprobs are this close. float32: the tiny model's
# decode paths agree to ~1e-3. bfloat16: logits of magnitude 16-32 have a 0.125 ulp,
# so two ulps.
FP32_TIE_MARGIN = 0.02
BF16_TIE_MARGIN = 0.26
REQUEST_TIMEOUT_S = 600

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        # ASCII letters: a random-weight model otherwise emits stray UTF-8 byte tokens,
        # which detokenize to U+FFFD and break the length bound the grammar enforced.
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,15}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "likes_tea": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "likes_tea"],
    "additionalProperties": False,
}
COLORS = ["red", "green", "blue", "yellow"]
CODE_REGEX = r"[A-Z]{2}-[0-9]{3,5}"


# ----------------------------------------------------------------------------- server


@contextmanager
def serve(model: str, *args: str):
    """``vllm serve`` (tests/fixtures/server.py) with these tests' engine options; yields
    the base URL."""
    from tests.fixtures.server import serve as serve_model

    # CPU mode: 0.5 GiB of KV cache is ~20k SmolLM2 tokens, plenty here (default 4 GiB).
    with serve_model(model, "--max-model-len", "1024", "--max-num-seqs", "40", "--seed", "0",
                     *args, env={"VLLM_XPU_PLUGIN_CPU_KVCACHE_GB": "0.5"}) as (base, _):
        yield base


def _server_args(dtype: str, backend: str, any_whitespace: bool = True) -> list[str]:
    structured = {"backend": backend}
    if not any_whitespace:
        # Random weights would happily emit whitespace forever where JSON allows it.
        structured["disable_any_whitespace"] = True
    return ["--dtype", dtype, "--speculative-config", json.dumps(NGRAM),
            "--structured-outputs-config", json.dumps(structured)]


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir):
    with serve(str(smollm2_dir), *_server_args("bfloat16", "xgrammar")) as base:
        yield {"base": base, "model": str(smollm2_dir), "dtype": "bfloat16"}


@pytest.fixture(scope="module")
def tiny_fp32_server(tiny_llama_dir):
    args = _server_args("float32", "xgrammar", any_whitespace=False)
    with serve(str(tiny_llama_dir), *args) as base:
        yield {"base": base, "model": str(tiny_llama_dir), "dtype": "float32"}


@pytest.fixture(scope="module")
def tiny_fp32_guidance_server(tiny_llama_dir):
    args = _server_args("float32", "guidance", any_whitespace=False)
    with serve(str(tiny_llama_dir), *args) as base:
        yield {"base": base, "model": str(tiny_llama_dir), "dtype": "float32"}


def _client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["base"] + "/v1", api_key="unused",
                  timeout=REQUEST_TIMEOUT_S, max_retries=0)


def _concurrently(fn, items):
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def _spec_counters(server) -> dict[str, float]:
    with urllib.request.urlopen(server["base"] + "/metrics", timeout=30) as r:
        text = r.read().decode()
    counters = {}
    for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        pattern = rf"^vllm:spec_decode_{name}_total(?:{{[^}}]*}})? (\S+)$"
        values = [float(v) for v in re.findall(pattern, text, flags=re.M)]
        assert values, f"vllm:spec_decode_{name}_total missing from /metrics"
        counters[name] = sum(values)
    return counters


def _settled_counters(server) -> dict[str, float]:
    """/metrics is updated just after responses are sent: read until it stops moving."""
    last = _spec_counters(server)
    for _ in range(20):
        time.sleep(0.5)
        now = _spec_counters(server)
        if now == last:
            return now
        last = now
    return last


# ----------------------------------------------------------------------------- prompts

REPEAT_TEXT = ("The quick brown fox jumps over the lazy dog. The quick brown fox jumps over "
               "the lazy dog. The quick brown fox jumps over the lazy dog.")
CODE = ("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
        "def mul(a, b):\n    return a * b\n")


def _smollm2_prompts(model_dir: str) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    questions = [f"Repeat this text exactly: {REPEAT_TEXT}",
                 f"Copy this code exactly:\n{CODE}",
                 "Count from 1 to 30, separated by commas.",
                 f"Rewrite this code, renaming add to plus:\n{CODE}"]
    return [tok.apply_chat_template([{"role": "user", "content": q}],
                                    add_generation_prompt=True, tokenize=True)
            for q in questions]


def _tiny_prompts() -> list[list[int]]:
    # Periodic token patterns: a random-weight model falls into loops the ngram can match.
    return [[5 + (i % 7) for i in range(40)], [10, 11, 12, 13] * 8, list(range(20, 60)),
            [100, 200, 300] * 6]


# ----------------------------------------------------------------------------- spec decode


def _complete(server, prompt_ids: list[int], max_tokens: int, reference: bool):
    """Greedy token ids; reference requests also return each step's top-1/top-2 margin."""
    extra = {"return_token_ids": True, "ignore_eos": True}
    kwargs = {"logprobs": 2} if reference else {}
    resp = _client(server).completions.create(
        model=server["model"], prompt=prompt_ids, max_tokens=max_tokens, temperature=0.0,
        extra_body=extra, **kwargs)
    choice = resp.choices[0]
    margins = []
    if reference:
        for top in choice.logprobs.top_logprobs:
            best = sorted(top.values(), reverse=True)
            margins.append(best[0] - best[1] if len(best) > 1 else float("inf"))
    return list(choice.token_ids), margins


def _check_ngram_greedy(server, prompts: list[list[int]], max_tokens: int,
                        tie_margin: float):
    """Speculative greedy == the same server's non-speculative greedy. Two decode paths
    (one query token vs. a verification window) may round differently, so a divergence is
    tolerated only where the reference's top-2 logprobs are within ``tie_margin``, and in
    at most one prompt."""
    start = _settled_counters(server)
    reference = _concurrently(lambda p: _complete(server, p, max_tokens, True), prompts)
    after_reference = _settled_counters(server)
    speculative = _concurrently(lambda p: _complete(server, p, max_tokens, False)[0],
                                prompts)
    after_spec = _settled_counters(server)

    assert after_reference["num_drafts"] == start["num_drafts"], (
        "reference requests (with logprobs) were speculated on: not a no-ngram reference")
    drafts = after_spec["num_drafts"] - after_reference["num_drafts"]
    accepted = after_spec["num_accepted_tokens"] - after_reference["num_accepted_tokens"]
    assert drafts > 0 and accepted > 0, (drafts, accepted)
    diverged = [i for i, ((ref, margins), spec)
                in enumerate(zip(reference, speculative, strict=True))
                if _diverges_at_tie(ref, margins, spec, tie_margin, f"ngram, prompt {i}")]
    assert len(diverged) <= 1, f"prompts {diverged} diverged (near-ties)"
    return speculative, drafts, accepted


def _diverges_at_tie(ref: list, ref_margins: list[float], other: list, tie_margin: float,
                     what: str) -> bool:
    """False if ``other`` equals ``ref``; True if it first differs where the reference's
    top-2 logprobs are within ``tie_margin``; fails otherwise."""
    assert len(ref) == len(other), f"{what}: {len(ref)} vs {len(other)} tokens"
    step = next((j for j, (a, b) in enumerate(zip(ref, other, strict=True)) if a != b), None)
    if step is None:
        return False
    assert ref_margins[step] < tie_margin, (
        f"{what}: diverges at step {step} where the reference's top-2 margin is "
        f"{ref_margins[step]:.4f} (not a tie)\nref:   {ref}\nother: {other}")
    return True


def test_ngram_greedy_equals_no_ngram_smollm2_bf16(smollm2_server):
    prompts = _smollm2_prompts(smollm2_server["model"])
    _, drafts, accepted = _check_ngram_greedy(smollm2_server, prompts, max_tokens=48,
                                          tie_margin=BF16_TIE_MARGIN)
    print(f"smollm2 bf16: {drafts:.0f} drafts, {accepted:.0f} accepted tokens, "
          f"mean acceptance length {1 + accepted / drafts:.2f}")


def test_ngram_greedy_equals_no_ngram_and_hf_tiny_fp32(tiny_fp32_server):
    prompts = _tiny_prompts()
    outputs, drafts, accepted = _check_ngram_greedy(tiny_fp32_server, prompts, max_tokens=48,
                                                 tie_margin=FP32_TIE_MARGIN)
    reference = hf_greedy(tiny_fp32_server["model"], prompts, 48, ignore_eos=True)
    assert_greedy_close(reference, outputs, tie_margin=FP32_TIE_MARGIN)
    print(f"tiny fp32: {drafts:.0f} drafts, {accepted:.0f} accepted tokens")


def test_ngram_random_sampling_mixed_batch_serves(tiny_fp32_server):
    """Greedy and differently-sampled requests in one speculative batch: all finish with
    the requested number of in-vocabulary tokens, and seeded requests are reproducible."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_fp32_server["model"]).vocab_size
    settings = [dict(temperature=0.0), dict(temperature=0.7, seed=1),
                dict(temperature=1.0, top_p=0.8, seed=2),
                dict(temperature=0.9, extra_body={"top_k": 20}, seed=3)]

    def run(args):
        prompt, setting = args
        extra = {"return_token_ids": True, "ignore_eos": True,
                 **setting.get("extra_body", {})}
        kwargs = {k: v for k, v in setting.items() if k != "extra_body"}
        resp = _client(tiny_fp32_server).completions.create(
            model=tiny_fp32_server["model"], prompt=prompt, max_tokens=32,
            extra_body=extra, **kwargs)
        return list(resp.choices[0].token_ids)

    jobs = [(p, s) for p in _tiny_prompts() for s in settings]
    first = _concurrently(run, jobs)
    second = _concurrently(run, jobs)
    for ids in first:
        assert len(ids) == 32 and all(0 <= t < vocab for t in ids)
    assert first == second, "seeded / greedy requests changed between identical batches"


# ----------------------------------------------------------------------------- structured


def _structured_jobs(n_each: int = 7):
    """(kind, chat kwargs): n_each JSON-schema, choice and regex requests (alternately
    greedy and sampled) and four unconstrained ones (two greedy with top-2 logprobs)."""
    jobs = []
    for i in range(n_each):
        sampled = {"temperature": 0.8, "seed": i} if i % 2 else {"temperature": 0.0}
        jobs.append(("json", dict(
            messages=[{"role": "user", "content": "Describe a person as JSON with name, "
                       f"age, city and likes_tea. Person number {i}."}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
            max_tokens=120, **sampled)))
        jobs.append(("choice", dict(
            messages=[{"role": "user", "content": f"Pick a color for item {i}."}],
            extra_body={"guided_choice": COLORS}, max_tokens=10, **sampled)))
        jobs.append(("regex", dict(
            messages=[{"role": "user", "content": f"Give product code number {i}, like "
                       "AB-1234."}],
            extra_body={"guided_regex": CODE_REGEX}, max_tokens=20, **sampled)))
    for i in range(4):
        sampled = ({"temperature": 0.0, "logprobs": True, "top_logprobs": 2} if i < 2
                   else {"temperature": 0.8, "top_p": 0.9, "seed": i})
        jobs.append(("free", dict(
            messages=[{"role": "user", "content": f"Tell me about the number {i}."}],
            max_tokens=24, extra_body={"ignore_eos": True}, **sampled)))
    return jobs


def _chat(server, kwargs):
    """(content, finish_reason, tokens, top-2 margins); the last two only with logprobs."""
    resp = _client(server).chat.completions.create(model=server["model"], **kwargs)
    choice = resp.choices[0]
    tokens, margins = [], []
    if choice.logprobs is not None:
        for entry in choice.logprobs.content:
            tokens.append(entry.token)
            best = sorted((t.logprob for t in entry.top_logprobs), reverse=True)
            margins.append(best[0] - best[1] if len(best) > 1 else float("inf"))
    return choice.message.content, choice.finish_reason, tokens, margins


def _validate(kind: str, content: str, finish_reason: str) -> None:
    if kind == "free":
        assert isinstance(content, str) and finish_reason == "length"
        return
    assert finish_reason == "stop", f"{kind}: truncated ({finish_reason}): {content!r}"
    if kind == "json":
        jsonschema.validate(json.loads(content), PERSON_SCHEMA)
    elif kind == "choice":
        assert content in COLORS, content
    elif kind == "regex":
        assert re.fullmatch(CODE_REGEX, content), content


def _check_structured_mixed_batch(server, tie_margin: float):
    jobs = _structured_jobs()
    assert sum(kind != "free" for kind, _ in jobs) >= 20
    is_free_greedy = [kind == "free" and kw["temperature"] == 0.0 for kind, kw in jobs]
    free_greedy = [kw for (_, kw), flag in zip(jobs, is_free_greedy, strict=True) if flag]
    # The unconstrained greedy requests served without any grammar request next to them.
    alone = _concurrently(lambda kw: _chat(server, kw), free_greedy)

    results = _concurrently(lambda job: _chat(server, job[1]), jobs)
    failures = []
    for (kind, kwargs), (content, finish, _, _) in zip(jobs, results, strict=True):
        try:
            _validate(kind, content, finish)
        except (AssertionError, ValueError, jsonschema.ValidationError) as e:
            failures.append(f"{kind} seed={kwargs.get('seed')}: {e}")
    assert not failures, "\n".join(failures)
    # A grammar row applied to the wrong request would force JSON / a color / a code on an
    # unconstrained answer: a divergence with a large margin at the first steps.
    mixed = [r for r, flag in zip(results, is_free_greedy, strict=True) if flag]
    for i, (ref, got) in enumerate(zip(alone, mixed, strict=True)):
        _diverges_at_tie(ref[2], ref[3], got[2], tie_margin,
                         f"unconstrained request {i} next to grammar requests")


def test_structured_outputs_concurrent_smollm2_bf16(smollm2_server):
    _check_structured_mixed_batch(smollm2_server, tie_margin=BF16_TIE_MARGIN)


def test_structured_outputs_concurrent_tiny_fp32(tiny_fp32_server):
    _check_structured_mixed_batch(tiny_fp32_server, tie_margin=FP32_TIE_MARGIN)


@pytest.mark.slow
def test_structured_outputs_concurrent_guidance_backend(tiny_fp32_guidance_server):
    _check_structured_mixed_batch(tiny_fp32_guidance_server, tie_margin=FP32_TIE_MARGIN)
