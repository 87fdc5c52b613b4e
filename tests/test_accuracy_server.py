"""The accuracy runner evaluates a running `vllm serve` (lm-eval's local-completions model),
checked sample by sample against lm-eval's hf backend on the same tiny weights (issue 20).

The config's expected values are placeholders: ``smoke`` runs only the parity rows, which
compare every log-likelihood and greedy text with the independent hf run.
"""

from __future__ import annotations

import pytest

CONFIG = """
name: tiny-llama-fp32-server-{tag}
tier: cpu
model: {model}
dtype: float32
quantization: null
reference: "test config: parity with the hf backend only"
max_gen_toks: 16
engine:
  max_model_len: 2048
parity:
  loglik_atol: 0.002
  loglik_rtol: 0.0005
  accuracy_points: 1.0
  generation_prefix_agreement: 0.9
tasks:
  - name: offline_gsm8k_mc
    num_fewshot: 0
    limit: 6
    smoke_limit: 6
    metrics:
      - {{name: "acc,none", value: 0.0, tolerance: 1.0}}
  - name: offline_gsm8k
    num_fewshot: 0
    limit: 2
    smoke_limit: 2
    metrics:
      - {{name: "exact_match,strict-match", value: 0.0, tolerance: 1.0}}
"""


@pytest.fixture(scope="module")
def tiny_server(tiny_llama_dir):
    from benchmarks.server_process import ServerProcess

    with ServerProcess(tiny_llama_dir, ["--dtype", "float32", "--max-model-len", "2048"],
                       served_model_name="tiny") as server:
        yield server


def test_server_run_matches_the_hf_backend_sample_by_sample(tiny_server, tiny_llama_dir,
                                                             tmp_path):
    from accuracy.config import load_config
    from accuracy.run import ServerTarget, run_config, served_model

    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG.format(tag=tiny_llama_dir.name, model=tiny_llama_dir))
    cfg = load_config(path)
    server = ServerTarget(tiny_server.url, served_model(tiny_server.url))
    assert server.model == "tiny"
    rows, notes = run_config(cfg, smoke=True, server=server)
    parity = [r for r in rows if r.variant.startswith("parity")]
    # per-choice loglik + acc info for the MC task, text prefix + exact match for GSM8K,
    # pooled acc: every one must pass, and there must be something to pass.
    assert len(parity) == 5, rows
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    assert any("server" in n for n in notes), notes
