"""LoRA through the OpenAI server: ``vllm serve --enable-lora --lora-modules``, adapters in
/v1/models and selected by ``model``, runtime load/unload, and bad input answered with a
4xx while the server keeps serving. Outputs are checked against HF transformers on the
adapters merged into the weights (tests/fixtures/lora_adapters.py).

Slow (one server start, ~1-2 min on 2 cores): ``make test-slow TESTS=tests/test_lora_server.py``.
Ports 18100-18199.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import socket
import urllib.request

import pytest

from benchmarks.server_process import ServerProcess
from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy
from tests.fixtures.lora_adapters import AdapterSpec, build_adapter, build_merged_model

pytestmark = pytest.mark.slow

MAX_TOKENS = 12
ADAPTER_1 = AdapterSpec(rank=8, seed=1)
ADAPTER_2 = AdapterSpec(rank=8, seed=2)
ADAPTER_RUNTIME = AdapterSpec(rank=4, alpha=8.0, seed=3,
                              target_modules=("k_proj", "gate_proj", "up_proj"))
ADAPTER_RANK_16 = AdapterSpec(rank=16, seed=5)
PORTS = range(18100, 18200)


def _free_port_in_range() -> int:
    for port in PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18100-18199")


def _prompts(lengths, seed):
    rng = random.Random(seed)
    return [[rng.randrange(5, 768) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module")
def lora_server(tiny_llama_dir):
    a1 = build_adapter(tiny_llama_dir, ADAPTER_1)
    a2 = build_adapter(tiny_llama_dir, ADAPTER_2)
    args = ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8",
            "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
            "--lora-modules", f"a1={a1}", f"a2={a2}"]
    server = ServerProcess(tiny_llama_dir, args,
                           env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    port = _free_port_in_range()
    server.cmd[server.cmd.index("--port") + 1] = str(port)
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    with server:
        yield server


def _complete(server, model, prompt):
    status, body = server.post("/v1/completions", {
        "model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
        "ignore_eos": True, "logprobs": 1, "return_tokens_as_token_ids": True})
    assert status == 200, (status, body)
    return [int(t.split(":", 1)[1]) for t in body["choices"][0]["logprobs"]["tokens"]]


def _check_against_hf(model_dirs, prompts, got):
    refs = [hf_greedy(d, [p], MAX_TOKENS, ignore_eos=True)[0]
            for d, p in zip(model_dirs, prompts, strict=True)]
    assert_greedy_close(refs, got, tie_margin=0.02)


def _assert_still_serving(server):
    assert server.health() == 200
    assert len(_complete(server, "model", [5, 6, 7])) == MAX_TOKENS


def test_models_lists_adapters_and_model_selects_them(lora_server, tiny_llama_dir):
    with urllib.request.urlopen(lora_server.url + "/v1/models") as r:
        ids = {m["id"] for m in json.loads(r.read())["data"]}
    assert {"model", "a1", "a2"} <= ids, ids
    p = _prompts([9, 23, 40], seed=13)
    prompts = [p[0], p[1], p[0], p[2]]
    models = ["model", "a1", "a2", "model"]
    # Concurrent: the four land in the same steps, every LoRA slot full.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda mp: _complete(lora_server, *mp), zip(models, prompts,
                                                                          strict=True)))
    m1 = build_merged_model(tiny_llama_dir, ADAPTER_1)
    m2 = build_merged_model(tiny_llama_dir, ADAPTER_2)
    _check_against_hf([tiny_llama_dir, m1, m2, tiny_llama_dir], prompts, got)


def test_runtime_load_and_unload(lora_server, tiny_llama_dir):
    path = build_adapter(tiny_llama_dir, ADAPTER_RUNTIME)
    status, body = lora_server.post("/v1/load_lora_adapter",
                                    {"lora_name": "rt", "lora_path": str(path)})
    assert status == 200, body
    prompt = _prompts([17], seed=4)[0]
    got = _complete(lora_server, "rt", prompt)
    _check_against_hf([build_merged_model(tiny_llama_dir, ADAPTER_RUNTIME)], [prompt], [got])
    status, body = lora_server.post("/v1/unload_lora_adapter", {"lora_name": "rt"})
    assert status == 200, body
    status, body = lora_server.post("/v1/completions", {"model": "rt", "prompt": prompt,
                                                        "max_tokens": 2})
    assert status == 404, (status, body)
    _assert_still_serving(lora_server)


def _bad_target_adapter(tmp_path, tiny_llama_dir):
    """An adapter whose tensors name a module the model does not have."""
    import torch
    from safetensors.torch import save_file

    out = build_adapter(tiny_llama_dir, ADAPTER_1)
    bad = tmp_path / "bad-target"
    bad.mkdir()
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "bogus_proj"]
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    prefix = "base_model.model.model.layers.0.self_attn"
    save_file({f"{prefix}.bogus_proj.lora_A.weight": torch.zeros(8, 128),
               f"{prefix}.bogus_proj.lora_B.weight": torch.zeros(128, 8)},
              str(bad / "adapter_model.safetensors"))
    return bad


def test_bad_adapters_get_4xx_and_server_keeps_serving(lora_server, tiny_llama_dir,
                                                       tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    good = build_adapter(tiny_llama_dir, ADAPTER_1)
    (corrupt / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    cases = {
        "missing_dir": str(tmp_path / "does-not-exist"),
        "missing_weights": str(no_weights),
        "corrupt_weights": str(corrupt),
        "rank_16_above_max_8": str(build_adapter(tiny_llama_dir, ADAPTER_RANK_16)),
        "bad_target_modules": str(_bad_target_adapter(tmp_path, tiny_llama_dir)),
    }
    problems = []
    for name, path in cases.items():
        status, body = lora_server.post("/v1/load_lora_adapter",
                                        {"lora_name": name, "lora_path": path})
        message = json.dumps(body)[:300]
        if not 400 <= status < 500:
            problems.append(f"{name}: HTTP {status}: {message}")
        _assert_still_serving(lora_server)
    # An unknown adapter name as the model.
    status, body = lora_server.post("/v1/completions", {"model": "no-such-adapter",
                                                        "prompt": [5, 6], "max_tokens": 2})
    if status != 404:
        problems.append(f"unknown adapter: HTTP {status}: {json.dumps(body)[:300]}")
    _assert_still_serving(lora_server)
    assert not problems, "\n".join(problems)
