"""Prompt token ids a client controls cannot crash the engine (issue 19).

vLLM 0.11 admits prompt ids up to and including the vocabulary size: its bound is
``max(tokenizer.max_token_id, model vocab - 1)`` and ``tokenizer.max_token_id`` is
``max(max id in the vocab, tokenizer.vocab_size)``, a count. Id ``vocab_size`` then reaches
the embedding lookup in the engine process ("INDICES element is out of DATA bounds"), the
engine dies and ``vllm serve`` exits: one request from anyone who can reach the port. The
plugin's ``validate_request`` (vllm_xpu_plugin/request_checks.py) rejects ids outside
``[0, embedding rows)`` with a 400 before the request reaches the engine.

Each case here is a real ``vllm serve`` (CPU mode, 127.0.0.1, ports 18700-18799); after it,
the same server must still give the greedy answer it gave before the hostile request. The
tiny Llama (vocab 768) runs in the default suite; SmolLM2-135M (vocab 49152, the model of
the issue) in the slow suite.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.fuzz import hostile_server, stream_error

NORMAL = {"model": "model", "prompt": [5, 6, 7, 8], "max_tokens": 6, "temperature": 0.0}


def _one_line_message(data: dict) -> str:
    error = data.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    assert message, data
    assert "\n" not in message and 'File "' not in message, message
    return message


def _normal_answer(server) -> str:
    status, data = server.post("/v1/completions", NORMAL)
    assert status == 200, data
    return data["choices"][0]["text"]


def _hostile_prompts(vocab: int) -> dict[str, list]:
    return {
        # The request of the issue: id == vocab size (the first id past the embedding).
        "id-equal-to-vocab": [1, vocab],
        "id-past-vocab": [1, vocab + 1],
        "negative-id": [1, -1],
        "very-negative-id": [1, -(2 ** 31) - 1],
        "int32-max-plus-one": [1, 2 ** 31],
        "beyond-int64": [1, 2 ** 64 + 3],
        "batch-with-one-bad-prompt": [[1, 2, 3], [1, vocab]],
    }


def _check_server(server, vocab: int) -> None:
    before = _normal_answer(server)
    # The last real embedding row is a valid prompt id: the check is not one too strict.
    status, data = server.post("/v1/completions", {**NORMAL, "prompt": [1, vocab - 1]})
    assert status == 200, data
    failures = []
    for name, prompt in _hostile_prompts(vocab).items():
        for stream in (False, True):
            body = {"model": "model", "prompt": prompt, "max_tokens": 4, "stream": stream}
            status, data = server.post("/v1/completions", body)
            if stream and status == 200:
                # vLLM 0.11 starts a stream's response before the engine sees the request:
                # the 400 arrives as the stream's only event (then [DONE]), no text.
                status, data = stream_error(data)
            if status != 400:
                failures.append((name, stream, status, data))
                continue
            message = _one_line_message(data)
            if not message.startswith("prompt token id"):
                failures.append((name, stream, status, message))
        assert server.health() == 200, (name, server.log_tail())
    assert not failures, failures
    # An integer sampling parameter past int64: was a 500 with an empty message.
    status, data = server.post("/v1/completions", {**NORMAL, "top_k": 2 ** 64,
                                                   "temperature": 1.0})
    assert status == 400 and "top_k" in _one_line_message(data), (status, data)
    assert _normal_answer(server) == before


def test_out_of_vocab_prompt_ids_get_400_tiny_llama(tiny_llama_dir):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_llama_dir).vocab_size
    assert vocab == 768
    with hostile_server(tiny_llama_dir, ["--dtype", "float32", "--max-model-len", "256"]) \
            as server:
        _check_server(server, vocab)
        # Chat: the rendered prompt's ids are checked too (all valid here: 200).
        status, data = server.post("/v1/chat/completions", {
            "model": "model", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]})
        assert status in (200, 400), data  # the tiny tokenizer may have no chat template
        assert server.health() == 200


@pytest.mark.slow
def test_out_of_vocab_prompt_ids_get_400_smollm2(smollm2_dir):
    vocab = json.loads((smollm2_dir / "config.json").read_text())["vocab_size"]
    assert vocab == 49152
    with hostile_server(smollm2_dir, ["--dtype", "float32", "--max-model-len", "512"]) \
            as server:
        _check_server(server, vocab)


def test_prompt_id_problem_bounds():
    """The check itself against plain arithmetic: [0, rows) is accepted, nothing else."""
    from vllm_xpu_plugin.request_checks import prompt_ids_problem

    assert prompt_ids_problem([0, 1, 767], 768) is None
    for bad in (768, 769, -1, 2 ** 31, 2 ** 80, -(2 ** 63)):
        problem = prompt_ids_problem([3, bad, 4], 768)
        assert problem and str(bad) in problem and "\n" not in problem
    # Placeholder positions (multimodal) are replaced by embeddings: not looked up.
    assert prompt_ids_problem([1, 900, 900, 2], 768, skip=[range(1, 3)]) is None
    assert prompt_ids_problem([1, 900, 900, 2], 768, skip=[range(1, 2)]) is not None


def test_integer_sampling_params_bounded():
    from vllm import SamplingParams

    from vllm_xpu_plugin.request_checks import sampling_params_problem

    assert sampling_params_problem(SamplingParams(top_k=2 ** 31 - 1, seed=2 ** 63 - 1)) is None
    assert "top_k" in sampling_params_problem(SamplingParams(top_k=2 ** 31))
    assert "seed" in sampling_params_problem(SamplingParams(seed=2 ** 64))
    assert "stop_token_ids" in sampling_params_problem(SamplingParams(stop_token_ids=[2 ** 63]))
