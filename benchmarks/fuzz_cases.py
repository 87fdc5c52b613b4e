"""The cases of the hostile-input suite (benchmarks/fuzz.py): each a request and what the
server must answer. Fixed tables plus seeded random combinations, so a seed names a run."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Optional

# --------------------------------------------------------------------------- cases

OK, BAD, EITHER, VLLM5XX = "ok", "4xx", "ok|4xx", "vllm5xx"
MODEL = "model"  # benchmarks.server_process.SERVED_MODEL_NAME
REFERENCE_PROMPTS = ([5, 6, 7, 8], [100, 200, 300, 11, 12], [3] * 40)


@dataclass
class Case:
    name: str
    category: str
    path: str
    body: object = None  # dict/list/str/... -> JSON; bytes sent as they are; None: no body
    expect: str = BAD
    method: str = "POST"
    headers: dict = field(default_factory=lambda: {"Content-Type": "application/json"})

    def payload(self) -> Optional[bytes]:
        if self.body is None:
            return None
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()  # NaN/Infinity as JSON's non-standard literals


def completion_body(**over) -> dict:
    return {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0.0, **over}


def chat_body(**over) -> dict:
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
            **over}


def _nested(depth: int) -> bytes:
    return b'{"model": "model", "prompt": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def malformed_body_cases() -> list[Case]:
    c = "malformed-body"
    path = "/v1/completions"
    cases = [
        Case("truncated-json", c, path, b'{"model": "model", "prompt": [1, 2'),
        Case("empty-body", c, path, b""),
        Case("not-utf8", c, path, b'{"model": "model", "prompt": "\xff\xfe\xfa"}'),
        Case("trailing-garbage", c, path, b'{"model": "model", "prompt": "hi"} xyz'),
        Case("prompt-is-object", c, path, completion_body(prompt={"a": 1})),
        Case("prompt-is-null", c, path, completion_body(prompt=None)),
        Case("max-tokens-is-string", c, path, completion_body(max_tokens="four")),
        Case("max-tokens-is-float", c, path, completion_body(max_tokens=4.5)),
        Case("stream-is-string", c, path, completion_body(stream="yes"), EITHER),
        Case("unknown-fields", c, path, completion_body(no_such_field=1, another={"x": []}), OK),
        Case("nested-depth-100", c, path, _nested(100)),
        Case("nested-depth-100000", c, path, _nested(100_000)),
        Case("wrong-content-type", c, path, completion_body(), headers={"Content-Type": "text/plain"}),
        Case("no-content-type", c, path, completion_body(), headers={}),
        Case("chat-messages-not-a-list", c, "/v1/chat/completions", chat_body(messages="hi")),
        Case("chat-unknown-role", c, "/v1/chat/completions",
             chat_body(messages=[{"role": "wizard", "content": "hi"}]), EITHER),
        Case("chat-content-unknown-part", c, "/v1/chat/completions",
             chat_body(messages=[{"role": "user", "content": [{"type": "hologram"}]}])),
        Case("chat-empty-messages", c, "/v1/chat/completions", chat_body(messages=[])),
        Case("chat-tools-garbage", c, "/v1/chat/completions", chat_body(tools=[{"x": 1}])),
    ]
    # A top-level body that is not a JSON object: vLLM 0.11's request models read it with
    # data.get(...) in a "before" validator (protocol.py, check_cache_salt_support) -> 500.
    for name, raw in (("array", [1, 2]), ("string", "abc"), ("null", None), ("number", 7)):
        cases.append(Case(f"body-is-{name}", c, path,
                          json.dumps(raw).encode(), VLLM5XX))
    return cases


def sampling_limit_cases(vocab: int, max_len: int) -> list[Case]:
    c = "sampling-limits"
    path = "/v1/completions"
    nan, inf = float("nan"), float("inf")
    table: list[tuple[str, dict, str]] = [
        ("temperature-0", {"temperature": 0.0}, OK),
        ("temperature-tiny", {"temperature": 1e-9}, OK),
        ("temperature-huge", {"temperature": 1e6}, EITHER),
        ("temperature-nan", {"temperature": nan}, BAD),
        ("temperature-inf", {"temperature": inf}, BAD),
        ("temperature-negative", {"temperature": -1.0}, BAD),
        ("top-p-0", {"top_p": 0.0, "temperature": 1.0}, BAD),
        ("top-p-tiny", {"top_p": 1e-9, "temperature": 1.0}, OK),
        ("top-p-above-1", {"top_p": 1.0001, "temperature": 1.0}, BAD),
        ("top-p-nan", {"top_p": nan, "temperature": 1.0}, BAD),
        ("top-k-minus-1", {"top_k": -1, "temperature": 1.0}, OK),
        ("top-k-0", {"top_k": 0, "temperature": 1.0}, EITHER),
        ("top-k-minus-2", {"top_k": -2, "temperature": 1.0}, BAD),
        ("top-k-vocab", {"top_k": vocab, "temperature": 1.0}, OK),
        ("top-k-beyond-vocab", {"top_k": vocab + 1, "temperature": 1.0}, EITHER),
        ("top-k-int32-max", {"top_k": 2 ** 31 - 1, "temperature": 1.0}, EITHER),
        ("top-k-beyond-int64", {"top_k": 2 ** 64, "temperature": 1.0}, BAD),
        ("top-k-2-pow-40", {"top_k": 2 ** 40, "temperature": 1.0}, EITHER),
        ("seed-2-pow-64", {"seed": 2 ** 64, "temperature": 1.0}, EITHER),
        ("stop-token-ids-2-pow-64", {"stop_token_ids": [2 ** 64]}, EITHER),
        ("min-p-1", {"min_p": 1.0, "temperature": 1.0}, OK),
        ("min-p-above-1", {"min_p": 1.5, "temperature": 1.0}, BAD),
        ("presence-penalty-2", {"presence_penalty": 2.0}, OK),
        ("presence-penalty-3", {"presence_penalty": 3.0}, BAD),
        ("frequency-penalty-minus-2", {"frequency_penalty": -2.0}, OK),
        ("repetition-penalty-0", {"repetition_penalty": 0.0}, BAD),
        ("repetition-penalty-huge", {"repetition_penalty": 1e30}, EITHER),
        ("repetition-penalty-inf", {"repetition_penalty": inf}, BAD),
        ("max-tokens-0", {"max_tokens": 0}, EITHER),
        ("max-tokens-negative", {"max_tokens": -1}, BAD),
        ("max-tokens-exact-context", {"max_tokens": max_len - 3}, OK),
        ("max-tokens-int64", {"max_tokens": 2 ** 63}, BAD),
        ("min-tokens-above-max", {"min_tokens": 10, "max_tokens": 4}, BAD),
        ("n-0", {"n": 0}, BAD),
        ("n-64", {"n": 64, "max_tokens": 2, "temperature": 1.0}, OK),
        # vLLM 0.11 has no upper bound on n (20000 one-token samples: ~8 s here): 200.
        ("n-20000", {"n": 20_000, "max_tokens": 1, "temperature": 1.0}, EITHER),
        ("logprobs-0", {"logprobs": 0}, OK),
        ("logprobs-20", {"logprobs": 20}, OK),
        ("logprobs-21", {"logprobs": 21}, BAD),
        ("logprobs-vocab", {"logprobs": vocab}, BAD),
        ("prompt-logprobs-20", {"prompt_logprobs": 20}, OK),
        ("prompt-logprobs-negative", {"prompt_logprobs": -5}, BAD),
        ("seed-negative", {"seed": -1, "temperature": 1.0}, EITHER),
        ("seed-beyond-int64", {"seed": 2 ** 70, "temperature": 1.0}, EITHER),
        ("stop-empty-string", {"stop": [""]}, EITHER),
        ("stop-500-strings", {"stop": [f"s{i}" for i in range(500)]}, EITHER),
        ("stop-token-ids-out-of-range", {"stop_token_ids": [-1, vocab, 2 ** 40]}, EITHER),
        ("allowed-token-ids-out-of-range", {"allowed_token_ids": [vocab]}, BAD),
        ("allowed-token-ids-negative", {"allowed_token_ids": [-1]}, BAD),
        ("allowed-token-ids-empty", {"allowed_token_ids": []}, BAD),
        ("bad-words-long", {"bad_words": ["x" * 5000]}, EITHER),
        ("logit-bias-huge", {"logit_bias": {"5": 1e300}}, EITHER),
        ("logit-bias-inf", {"logit_bias": {"5": inf}}, EITHER),  # clamped to 100
        ("logit-bias-negative-id", {"logit_bias": {"-1": 5}}, BAD),
        ("truncate-prompt-tokens-negative", {"truncate_prompt_tokens": -1}, EITHER),
        ("truncate-prompt-tokens-huge", {"truncate_prompt_tokens": 2 ** 40}, BAD),
        ("ignore-eos-long", {"ignore_eos": True, "max_tokens": 64}, OK),
        ("best-of-above-n", {"best_of": 5, "n": 1}, EITHER),
        ("echo-logprobs", {"echo": True, "logprobs": 5}, OK),
        ("guided-regex-invalid", {"structured_outputs": {"regex": "(unclosed"}}, BAD),
        ("guided-choice-empty", {"structured_outputs": {"choice": []}}, EITHER),
        ("response-format-bogus", {"response_format": {"type": "nonsense"}}, BAD),
    ]
    return [Case(name, c, path, completion_body(**over), expect) for name, over, expect in table]


def random_sampling_cases(count: int, seed: int, vocab: int) -> list[Case]:
    """Seeded combinations of limit values; validity unknown a priori (ok or 4xx)."""
    rng = random.Random(seed)
    nan, inf = float("nan"), float("inf")
    values = {
        "temperature": [0.0, 1e-7, 0.5, 2.0, 100.0, -0.1, nan, inf],
        "top_p": [1e-9, 0.5, 1.0, 0.0, 1.5],
        "top_k": [-1, 0, 1, vocab, vocab * 10, -5],
        "min_p": [0.0, 0.99, 1.0, -0.1],
        "presence_penalty": [-2.0, 0.0, 2.0, 5.0],
        "frequency_penalty": [-2.0, 2.0, -inf],
        "repetition_penalty": [0.01, 1.0, 2.0, 100.0],
        "max_tokens": [1, 2, 16, 0, -3],
        "n": [1, 2, 3, 0],
        "logprobs": [None, 0, 5, 20, 50],
        "seed": [None, 0, 2 ** 31, -7],
        "stream": [False, True],
        "min_tokens": [0, 2, 100],
    }
    cases = []
    for i in range(count):
        over = {}
        for name in rng.sample(sorted(values), rng.randint(2, 6)):
            value = rng.choice(values[name])
            if value is not None:
                over[name] = value
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 24))]
        cases.append(Case(f"random-{seed}-{i}", "sampling-random", "/v1/completions",
                          completion_body(prompt=prompt, **over), EITHER))
    return cases


def _embeds_b64(rows: int, hidden: int) -> str:
    import base64
    import io

    import torch

    buf = io.BytesIO()
    torch.save(torch.zeros(rows, hidden), buf)
    return base64.b64encode(buf.getvalue()).decode()


def prompt_id_cases(vocab: int, max_len: int, hidden: int = 128) -> list[Case]:
    c = "prompt-ids"
    path = "/v1/completions"
    garbage_embeds = "QUJDREVGR0g="  # base64 of b"ABCDEFGH": not a torch file
    table: list[tuple[str, object, str]] = [
        ("empty-list", [], BAD),
        ("empty-batch-item", [[]], BAD),
        ("last-vocab-id", [1, vocab - 1], OK),
        ("id-equal-vocab", [1, vocab], BAD),
        ("id-vocab-plus-1", [1, vocab + 1], BAD),
        ("id-minus-1", [1, -1], BAD),
        ("id-int32-min-minus-1", [-(2 ** 31) - 1], BAD),
        ("id-int32-max", [2 ** 31 - 1], BAD),
        ("id-int32-max-plus-1", [2 ** 31], BAD),
        ("id-int64-max-plus-1", [2 ** 63], BAD),
        ("id-huge", [10 ** 40], BAD),
        ("id-float", [1, 2.5], BAD),
        ("id-string", [1, "2"], EITHER),
        ("id-bool", [True, False], EITHER),
        ("batch-mixed-bad", [[1, 2], [3, vocab]], BAD),
        ("batch-all-bad", [[-1], [vocab]], BAD),
        ("exact-context", [7] * (max_len - 1), OK),
        ("context-plus-one", [7] * (max_len + 1), BAD),
        ("text-empty", "", BAD),
        ("text-control-chars", "\x00\x01\x02\u202e\ufffd", OK),
    ]
    cases = [Case(name, c, path, completion_body(prompt=prompt, max_tokens=1), expect)
             for name, prompt, expect in table]
    cases += [
        Case("echo-id-equal-vocab", c, path, completion_body(prompt=[1, vocab], echo=True)),
        Case("echo-negative-id", c, path, completion_body(prompt=[1, -3], echo=True)),
        Case("stream-id-equal-vocab", c, path, completion_body(prompt=[1, vocab], stream=True)),
        Case("stream-negative-id", c, path, completion_body(prompt=[-2], stream=True)),
        Case("chat-continue-bad-ids", c, "/v1/chat/completions",
             chat_body(messages=[{"role": "user", "content": "a"}], prompt_token_ids=[vocab]),
             EITHER),
        # prompt_embeds were never enabled (--enable-prompt-embeds is off), but vLLM 0.11
        # torch.load()s them (weights_only=True) first; garbage -> UnpicklingError -> 500.
        Case("prompt-embeds-garbage", c, path,
             {"model": MODEL, "prompt_embeds": garbage_embeds, "max_tokens": 2}, VLLM5XX),
        # Well-formed embeddings (right and wrong width) on a server without
        # --enable-prompt-embeds: vLLM 0.11 checks the flag after loading them (400).
        Case("prompt-embeds-valid-not-enabled", c, path,
             {"model": MODEL, "prompt_embeds": _embeds_b64(3, hidden), "max_tokens": 2}),
        Case("prompt-embeds-wrong-width", c, path,
             {"model": MODEL, "prompt_embeds": _embeds_b64(3, hidden + 1), "max_tokens": 2}),
        Case("prompt-embeds-not-base64", c, path,
             {"model": MODEL, "prompt_embeds": "!!!not base64!!!", "max_tokens": 2}, BAD),
        Case("tokenize-ok", c, "/tokenize", {"model": MODEL, "prompt": "hello"}, OK),
        Case("detokenize-id-equal-vocab", c, "/detokenize",
             {"model": MODEL, "tokens": [vocab]}, EITHER),
        Case("detokenize-negative", c, "/detokenize", {"model": MODEL, "tokens": [-1]}),
        Case("detokenize-huge", c, "/detokenize", {"model": MODEL, "tokens": [2 ** 64]}),
    ]
    return cases


def oversized_cases(vocab: int) -> list[Case]:
    c = "oversized"
    path = "/v1/completions"
    return [
        Case("text-8MB", c, path, completion_body(prompt="hello " * ((8 << 20) // 6), max_tokens=1)),
        Case("ids-200k", c, path, completion_body(prompt=[5] * 200_000, max_tokens=1)),
        Case("batch-256-prompts", c, path,
             completion_body(prompt=[[5 + i % (vocab - 5)] for i in range(256)], max_tokens=1), OK),
        Case("batch-5000-prompts-too-long", c, path,
             completion_body(prompt=[[5] * 600] * 5000, max_tokens=1)),
        Case("stop-strings-1MB", c, path, completion_body(stop=["x" * 1000] * 1000), EITHER),
        Case("chat-2000-messages", c, "/v1/chat/completions",
             chat_body(messages=[{"role": "user", "content": "hi there"}] * 2000)),
        Case("header-64KB", c, path, completion_body(),
             headers={"Content-Type": "application/json", "X-Junk": "a" * 65536}, expect=EITHER),
    ]


def endpoint_misuse_cases() -> list[Case]:
    c = "endpoint-misuse"
    return [
        Case("get-completions", c, "/v1/completions", None, method="GET"),
        Case("put-completions", c, "/v1/completions", completion_body(), method="PUT"),
        Case("delete-models", c, "/v1/models", None, method="DELETE"),
        Case("post-models", c, "/v1/models", {}),
        Case("unknown-path", c, "/v1/nothing-here", {}),
        Case("path-traversal", c, "/../../etc/passwd", None, method="GET"),
        Case("embeddings-on-generate-model", c, "/v1/embeddings",
             {"model": MODEL, "input": "hi"}, EITHER),
        Case("pooling-on-generate-model", c, "/pooling", {"model": MODEL, "input": "hi"}, EITHER),
        Case("score-on-generate-model", c, "/score",
             {"model": MODEL, "text_1": "a", "text_2": "b"}, EITHER),
        Case("rerank-on-generate-model", c, "/rerank",
             {"model": MODEL, "query": "a", "documents": ["b"]}, EITHER),
        Case("transcriptions-on-text-model", c, "/v1/audio/transcriptions", b"x",
             headers={"Content-Type": "multipart/form-data; boundary=zz"}),
        Case("responses-bad-body", c, "/v1/responses", {"model": MODEL, "input": 5}),
        Case("load-lora-not-enabled", c, "/v1/load_lora_adapter",
             {"lora_name": "x", "lora_path": "/etc"}),
        Case("completions-chat-body", c, "/v1/completions", chat_body()),
        Case("chat-completions-completion-body", c, "/v1/chat/completions", completion_body()),
        Case("health-post", c, "/health", {}, EITHER),
        Case("metrics-post", c, "/metrics", {}, EITHER),
    ]


def all_cases(vocab: int, max_len: int, seed: int, random_cases: int,
              hidden: int = 128) -> list[Case]:
    return [*malformed_body_cases(), *sampling_limit_cases(vocab, max_len),
            *random_sampling_cases(random_cases, seed, vocab),
            *prompt_id_cases(vocab, max_len, hidden),
            *oversized_cases(vocab), *endpoint_misuse_cases()]
