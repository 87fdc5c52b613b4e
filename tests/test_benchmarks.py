"""The benchmark scripts (benchmarks/): their arithmetic against hand-computed or library
references, and smoke runs that the scripts work end to end on tiny inputs.

No timing is asserted anywhere (timings live in the scripts' output, as ratios). The
default suite runs the unit checks, the XPU recipe's dry run and ``benchmarks.kernels
--quick`` (which compares every plugin kernel with its plain-torch reference); the
serving and step-profile smoke runs start engines and are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _common, step_profile, xpu_roofline

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: float, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", "VLLM_XPU_PLUGIN_DEVICE": "cpu", **env}
    proc = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------ arithmetic


def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    values = [5.0, 1.0, 9.0, 3.5, 7.25, 2.0, 8.0]
    for q in (0, 25, 50, 90, 99, 100):
        assert _common.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_step_summary_splits_host_overhead():
    # Three steady decode steps at batch 4 (10 ms apart), then a prefill step that only
    # closes the last interval, then a final decode step with no successor (not counted).
    def rec(start, execute, forward, sample, reqs=4, tokens=4):
        return dict(start=start, end=start + execute, forward=forward, sample=sample,
                    num_reqs=reqs, num_tokens=tokens)

    records = [rec(0.000, 0.008, 0.006, 0.001), rec(0.010, 0.009, 0.007, 0.001),
               rec(0.020, 0.007, 0.005, 0.001), rec(0.030, 0.050, 0.045, 0.001, tokens=300),
               rec(0.100, 0.008, 0.006, 0.001)]
    s = step_profile.summarize(records, batch=4)
    assert s["decode_steps"] == 3
    assert s["step"] == pytest.approx(0.010)
    assert s["execute"] == pytest.approx(0.008)
    assert s["forward"] == pytest.approx(0.006)
    assert s["host_overhead"] == pytest.approx(0.004)
    assert s["outside_runner"] == pytest.approx(0.002)
    assert s["runner_other"] == pytest.approx(0.001)
    with pytest.raises(RuntimeError, match="no steady decode steps"):
        step_profile.summarize(records, batch=8)


def test_model_costs_tied_and_untied_embeddings():
    config = dict(num_attention_heads=4, hidden_size=64, num_hidden_layers=2)

    def w(name, shape):
        n = 1
        for d in shape:
            n *= d
        return dict(name=name, shape=shape, bytes=2 * n)

    layer = [w("model.layers.0.self_attn.qkv_proj.weight", [128, 64]),
             w("model.layers.0.mlp.down_proj.weight", [64, 256]),
             w("model.layers.0.input_layernorm.weight", [64])]
    embed = w("model.embed_tokens.weight", [1000, 64])
    # Tied: the embedding is the LM head, read whole every step.
    b, lin, attn, shapes = step_profile.model_costs(layer + [embed], config, batch=8, context=10)
    assert b == 2 * (128 * 64 + 64 * 256 + 64 + 1000 * 64)
    assert sorted(shapes) == sorted([(64, 128), (256, 64), (64, 1000)])
    assert lin == 2 * 8 * (64 * 128 + 256 * 64 + 64 * 1000)
    assert attn == 4 * 8 * 10 * 4 * 16 * 2
    # Untied: the LM head is read, the embedding table is not (only 8 rows of it).
    head = w("lm_head.weight", [1000, 64])
    b2, lin2, _, shapes2 = step_profile.model_costs(layer + [embed, head], config, 8, 10)
    assert b2 == b and lin2 == lin and sorted(shapes2) == sorted(shapes)


def test_kv_bytes_counts_every_layer_k_and_v():
    config = dict(num_attention_heads=8, num_key_value_heads=2, hidden_size=256,
                  num_hidden_layers=3)
    # 4 sequences x 10 tokens x 3 layers x (K + V) x 2 KV heads x 32 dims x 2 bytes
    assert step_profile.kv_bytes(config, batch=4, context=10, element_size=2) == (
        4 * 10 * 3 * 2 * 2 * 32 * 2)
    config["head_dim"] = 64  # an explicit head_dim wins over hidden_size / heads
    assert step_profile.kv_bytes(config, 4, 10, 2) == 4 * 10 * 3 * 2 * 2 * 64 * 2


@pytest.mark.parametrize("name,expected", [
    ("Intel(R) Arc(TM) B580 Graphics", 456.0),
    ("Intel(R) Arc(TM) Pro B60 Graphics", 456.0),
    ("Intel(R) Arc(TM) A770 Graphics", 560.0),
    ("Intel(R) Data Center GPU Max 1550", 3280.0),
])
def test_gpu_bandwidth_table(name, expected):
    assert xpu_roofline.lookup_bandwidth(name)[1] == expected


def test_unknown_gpu_is_not_guessed():
    assert xpu_roofline.lookup_bandwidth("Intel(R) Arc(TM) A380 Graphics") is None
    assert xpu_roofline.lookup_bandwidth("Intel(R) Data Center GPU Max 1100") is None


def test_roofline_against_loaded_checkpoint(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file

    tensors = {}
    for path in Path(tiny_llama_dir).glob("*.safetensors"):
        tensors.update(load_file(str(path)))
    expected_weights = sum(t.numel() * t.element_size() for t in tensors.values())
    config = json.loads((Path(tiny_llama_dir) / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2

    r = xpu_roofline.roofline(Path(tiny_llama_dir), bandwidth_gbs=456.0, concurrency=16,
                              input_len=1024, output_len=1024)
    assert r["weight_bytes"] == expected_weights
    assert r["kv_bytes_per_token"] == kv_per_token
    step_bytes = expected_weights + 16 * 1536 * kv_per_token
    assert r["floor_step_ms"] == pytest.approx(step_bytes / 456e9 * 1e3)
    assert r["ceiling_output_tok_s"] == pytest.approx(16 / (step_bytes / 456e9))

    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"mean_tpot_ms": 4 * r["floor_step_ms"],
                                  "output_throughput": 123.0}))
    proc = _run([sys.executable, "-m", "benchmarks.xpu_roofline", "--model",
                 str(tiny_llama_dir), "--gpu", "Intel(R) Arc(TM) B580 Graphics",
                 "--result", str(result)], timeout=120)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["bandwidth_gbs"] == 456.0
    assert summary["achieved_fraction"] == pytest.approx(0.25)
    assert "25% of the bandwidth roofline" in proc.stdout


def test_xpu_seed_workload_dry_run():
    proc = _run(["bash", "benchmarks/xpu_seed_workload.sh", "some/model"], timeout=60,
                DRY_RUN="1", PORT="8123")
    out = proc.stdout
    assert "vllm serve some/model --device xpu" in out
    assert "--host 127.0.0.1 --port 8123" in out
    for flag in ("--random-input-len 1024", "--random-output-len 1024",
                 "--max-concurrency 16", "--ignore-eos", "--dataset-name random"):
        assert flag in out, flag
    assert "benchmarks.xpu_roofline" in out


# ------------------------------------------------------------------ smoke runs


def test_kernels_quick(tmp_path):
    """Every kernel case runs, and the plugin's output matches the torch reference (bf16:
    outputs are O(1), a wrong kernel is off by O(1); rounding is < 0.1)."""
    out = tmp_path / "kernels.json"
    proc = _run([sys.executable, "-m", "benchmarks.kernels", "--quick", "--json", str(out)],
                timeout=600)
    data = json.loads(out.read_text())
    names = [k["name"] for k in data["kernels"]]
    assert names == ["attn decode", "attn decode, IPEX single-query kernel (alt.)",
                     "attn chunked prefill", "RMSNorm", "fused add+RMSNorm", "rotary (neox)",
                     "SiluAndMul"]
    for k in data["kernels"]:
        assert k["max_abs_err"] < 0.1, k
        assert k["plugin_us"] > 0 and k["torch_us"] > 0 and k["bytes"] > 0
    assert data["bandwidth_bytes_per_s"] > 0
    assert "% BW" in proc.stdout and "target: decode attention" in proc.stdout


@pytest.mark.slow
def test_step_profile_quick(tiny_llama_dir, tmp_path):
    out = tmp_path / "step.json"
    _run([sys.executable, "-m", "benchmarks.step_profile", "--quick", "--model",
          str(tiny_llama_dir), "--dtype", "float32", "--batches", "1", "4", "--json", str(out)],
         timeout=900)
    data = json.loads(out.read_text())
    for batch in ("1", "4"):
        s = data["batches"][batch]
        assert s["decode_steps"] >= 5
        assert 0 < s["forward"] <= s["execute"] <= s["step"]
        assert s["floor"] > 0
        assert s["floor_with_kv"] >= s["floor"]
    # The op profile covers the decode steps asked for and sees the plugin's kernels.
    profile = data["op_profile"]
    assert profile["batch"] == 4 and profile["steps"] == 8
    names = {op["name"] for op in profile["ops"]}
    assert "torch_ipex::flash_attn_varlen_func" in names, sorted(names)[:40]


@pytest.mark.slow
def test_serving_quick(tiny_llama_dir, tmp_path):
    _run([sys.executable, "-m", "benchmarks.serving", "--model", str(tiny_llama_dir),
          "--dtype", "float32", "--concurrency", "1", "2", "--input-len", "16",
          "--output-len", "8", "--hf-batch-sizes", "1", "--out-dir", str(tmp_path),
          "--tag", "smoke"], timeout=1500)
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert [r["concurrency"] for r in data["rows"]] == [1, 2]
    for row in data["rows"]:
        for side in ("plugin", "hf"):
            assert row[side]["output_throughput"] > 0
        # HF produced exactly the requested tokens (min_new_tokens = max_new_tokens).
        assert row["hf"]["output_tokens"] == row["num_prompts"] * 8
    assert set(data["hf_sweep"]) == {"1", "2"}
