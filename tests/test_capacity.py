"""The capacity report (python -m vllm_xpu_plugin.capacity) equals the block count the engine
actually allocates (issue 18). Each engine runs in a fresh interpreter, in process
(VLLM_ENABLE_V1_MULTIPROCESSING=0) so its cache config can be read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENGINE = """
import json, sys
from vllm import LLM
llm = LLM(sys.argv[1], dtype=sys.argv[2], block_size=int(sys.argv[3]), max_model_len=256,
          max_num_seqs=4, enforce_eager=True)
print("BLOCKS", json.dumps(llm.llm_engine.vllm_config.cache_config.num_gpu_blocks))
"""

BUDGET_GB = 0.0123  # not a multiple of any page size: the floor division is exercised


@pytest.mark.parametrize("dtype,block_size", [("float32", 16), ("bfloat16", 64)])
def test_report_matches_the_engines_block_count(tiny_llama_dir, dtype, block_size):
    from vllm_xpu_plugin.capacity import capacity

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_XPU_PLUGIN_CPU_KVCACHE_GB": str(BUDGET_GB)}
    done = subprocess.run([sys.executable, "-c", ENGINE, str(tiny_llama_dir), dtype,
                           str(block_size)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("BLOCKS ")]
    engine_blocks = json.loads(line.split(" ", 1)[1])
    report = capacity(tiny_llama_dir, int(BUDGET_GB * (1 << 30)), dtype=dtype,
                      block_size=block_size, seq_len=256)
    assert report.num_blocks == engine_blocks
    # Independent arithmetic for the tiny Llama: 2 layers x 2 KV heads x head 32, K and V.
    element = 4 if dtype == "float32" else 2
    assert report.kv_bytes_per_token == 2 * 2 * 2 * 32 * element
    assert report.concurrent_sequences == (engine_blocks - 1) // (256 // block_size)


def test_fp8_kv_halves_bytes_per_token_against_bf16(tiny_llama_dir):
    from vllm_xpu_plugin.capacity import capacity

    bf16 = capacity(tiny_llama_dir, 1 << 30, dtype="bfloat16")
    fp8 = capacity(tiny_llama_dir, 1 << 30, dtype="bfloat16", kv_cache_dtype="fp8_e5m2")
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token
    assert fp8.num_blocks == 2 * bf16.num_blocks


def test_cli_prints_one_line_error_for_a_missing_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vllm_xpu_plugin.capacity",
                           str(tmp_path / "none"), "--kv-cache-gb", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("capacity: error: ")
    assert len(done.stderr.strip().splitlines()) == 1
