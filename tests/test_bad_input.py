"""Bad requests cost only themselves: each gets a 4xx with a message, and the server
answers a normal request right after (same server, tiny Llama, CPU mode).

The server is ``small_kv_server`` (tests/conftest.py): max_model_len 512, a 64-block KV
cache; tests/test_soak.py runs its load on the same instance.
"""

from __future__ import annotations

import base64
import json

import pytest

from benchmarks.soak import MAX_MODEL_LEN

MODEL = "model"  # benchmarks.server_process.SERVED_MODEL_NAME
NAN = float("nan")


def _completion(**over):
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": 4, "temperature": 0.0}
    body.update(over)
    return body


def _chat_with_image(data_url: str):
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": data_url}}]}]}


_NOT_A_PNG = "data:image/png;base64," + base64.b64encode(b"this is plain text").decode()

# id -> (path, body: dict or raw str)
BAD_REQUESTS = {
    "malformed-json": ("/v1/completions", '{"model": "model", "prompt": "hi", '),
    "unknown-model": ("/v1/completions", _completion(model="no-such-model")),
    "prompt-longer-than-context": ("/v1/completions",
                                   _completion(prompt=[7] * (MAX_MODEL_LEN + 10))),
    "max-tokens-beyond-context": ("/v1/completions", _completion(max_tokens=MAX_MODEL_LEN * 4)),
    "negative-temperature": ("/v1/completions", _completion(temperature=-0.5)),
    # json.dumps writes NaN as the (non-standard) literal NaN, which the server parses.
    "nan-temperature": ("/v1/completions", _completion(temperature=NAN)),
    "logit-bias-not-a-token": ("/v1/completions", _completion(logit_bias={"abc": 5})),
    "logit-bias-out-of-vocab": ("/v1/completions", _completion(logit_bias={"99999999": 5})),
    "invalid-json-schema": ("/v1/chat/completions", {
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "bad", "schema": {"type": "no-such-type", "minimum": "x"}}}}),
    "non-image-as-image": ("/v1/chat/completions", _chat_with_image(_NOT_A_PNG)),
}


def _body(raw):
    return raw if isinstance(raw, str) else json.dumps(raw)


def _normal_request_works(server):
    status, data = server.post("/v1/completions", _completion(prompt=[5, 6, 7, 8],
                                                              max_tokens=6))
    assert status == 200, data
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length" and choice["text"], data


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_4xx_and_server_keeps_serving(small_kv_server, case):
    path, raw = BAD_REQUESTS[case]
    status, data = small_kv_server.post(path, _body(raw))
    assert 400 <= status < 500, (status, data)
    message = (data.get("error") or {}).get("message") if isinstance(
        data.get("error"), dict) else data.get("message") or data.get("detail")
    assert message, data
    assert small_kv_server.health() == 200
    _normal_request_works(small_kv_server)


def test_non_finite_sampling_params_are_named():
    from vllm import SamplingParams

    from vllm_xpu_plugin.request_checks import sampling_params_problem

    assert sampling_params_problem(SamplingParams(temperature=0.7, top_p=0.9)) is None
    assert "temperature" in sampling_params_problem(SamplingParams(temperature=NAN))
    # (vLLM's own range checks already reject NaN top_p, min_p and penalties.)
    assert "logit_bias" in sampling_params_problem(
        SamplingParams(logit_bias={3: float("inf")}))
