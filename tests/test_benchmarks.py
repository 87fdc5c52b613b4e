"""The benchmark scripts (benchmarks/): their arithmetic against hand-computed or library
references, and smoke runs that the scripts work end to end on tiny inputs.

No timing is asserted anywhere (timings live in the scripts' output, as ratios). The
default suite runs the unit checks, the XPU recipe's dry run and ``benchmarks.kernels
--quick`` (which compares every plugin kernel with its plain-torch reference); the
serving and step-profile smoke runs start engines and are marked slow.
"""

from __future__ import annotations

import json
import math
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


def test_step_summary_takes_the_median_of_each_steps_overhead():
    # Host overhead is small next to a noisy forward: the difference of two medians
    # (step, forward) mixes different steps and can even go negative; the median of the
    # per-step differences cannot. Overheads 2, 3, 4 ms under forwards of 50, 60, 40 ms:
    # median(step) - median(forward) = 52 - 50 = 2 ms, the per-step median is 3 ms.
    def rec(start, forward, runner_rest):
        execute = forward + 0.0005 + runner_rest
        return dict(start=start, end=start + execute, forward=forward, sample=0.0005,
                    num_reqs=1, num_tokens=1)

    steps = [(0.050, 0.002), (0.060, 0.003), (0.040, 0.004)]  # (forward, overhead)
    records, start = [], 0.0
    for forward, overhead in steps:
        # of the overhead: 0.5 ms sampling, the rest split between runner and engine
        records.append(rec(start, forward, (overhead - 0.0005) / 2))
        start += forward + overhead
    records.append(rec(start, 0.05, 0.001))
    s = step_profile.summarize(records, batch=1)
    assert s["host_overhead"] == pytest.approx(0.003)
    assert s["runner_other"] == pytest.approx(0.00125)
    assert s["outside_runner"] == pytest.approx(0.00125)
    assert s["forward"] == pytest.approx(0.050)


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
          str(tiny_llama_dir), "--dtype", "float32", "--batches", "1", "4", "--no-peer",
          "--json", str(out)],
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
    # The plugin's IPEX attention kernel (decode: IPEX's single-query kernel since 78db6a1).
    ipex_attention = [n for n in names if n.startswith(("torch_ipex::", "ipex::"))
                      and ("attn" in n or "attention" in n)]
    assert ipex_attention, sorted(names)


@pytest.mark.slow
def test_serving_quick(tiny_llama_dir, tmp_path):
    # Offline + served with the plugin and HF only (no peer in tests).
    _run([sys.executable, "-m", "benchmarks.serving", "--model", str(tiny_llama_dir),
          "--dtype", "float32", "--no-peer", "--rounds", "1", "--offline-prompts", "2",
          "--offline-input-len", "8", "--offline-output-len", "8", "--hf-batch-sizes", "1", "2",
          "--concurrency", "2", "--num-prompts", "2", "--input-len", "16", "--output-len", "8",
          "--out-dir", str(tmp_path), "--tag", "smoke"], timeout=1500)
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert list(data["offline"]["rates"]) == ["plugin"]
    assert data["offline"]["rates"]["plugin"][0] > 0
    assert set(data["offline"]["hf_sweep"]) == {"1", "2"}
    runs = data["served"]["served"]["2"]["plugin"]
    assert len(runs) == 1 and runs[0]["output_throughput"] > 0
    # HF produced exactly the requested tokens (min_new_tokens = max_new_tokens).
    assert data["served"]["hf"]["2"]["output_tokens"] == 2 * 8


# ------------------------------------------------------------------ the vLLM CPU peer


def test_cpu_flags_parser():
    amd = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 vaes\n"
    xeon = ("processor\t: 0\nflags\t\t: avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile "
            "amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    f = _common.cpu_flags(amd)
    assert f["avx512f"] and f["avx512_bf16"]
    assert not f["avx512_fp16"] and not any(v for k, v in f.items() if k.startswith("amx"))
    assert _common.describe_cpu_flags(f).startswith("no AMX")
    g = _common.cpu_flags(xeon)  # the first CPU's flags line decides
    assert g["amx_bf16"] and g["amx_tile"] and g["amx_int8"] and g["avx512_fp16"]
    assert not g["amx_fp16"]
    assert _common.describe_cpu_flags(g).startswith("AMX")
    assert not any(_common.cpu_flags("no flags here").values())


def test_port_range_and_taken_ports():
    assert _common.port_range("18200-18299") == range(18200, 18300)
    assert _common.port_range("18250") == range(18250, 18251)
    with pytest.raises(ValueError):
        _common.port_range("18299-18200")
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        # A bound port is skipped; the next one of the list is returned.
        assert _common.free_port(ports=[busy, busy + 1, busy + 2]) != busy


def test_offline_ratios_from_canned_numbers():
    from benchmarks import serving

    rows, s = serving.offline_rows(
        {serving.PLUGIN: [200.0, 220.0], serving.PEER: [100.0, 140.0]},
        {16: [60.0, 64.0], 4: [30.0], 8: [70.0]})
    assert s["plugin"] == 210.0 and s["peer"] == 120.0
    assert s["hf_best_batch"] == 8 and s["hf_best"] == 70.0
    assert s["plugin_vs_peer"] == pytest.approx(1.75)
    assert s["plugin_vs_hf_best"] == pytest.approx(3.0)
    labels = [r[0] for r in rows]
    assert labels == [serving.PLUGIN, serving.PEER, f"{serving.HF} bs=4",
                      f"{serving.HF} bs=8 (best)", f"{serving.HF} bs=16"]
    assert rows[1][1] == "100.0 / 140.0" and rows[4][2] == 62.0
    lines = serving.target_lines(s, {}, 16)
    assert lines[0].endswith("1.75x -> MET") and "bs=8" in lines[1]
    assert lines[1].endswith("3.00x -> MET")
    # No peer in the run: the target is reported as not measured, not as met.
    _, s2 = serving.offline_rows({serving.PLUGIN: [100.0]}, {16: [50.0]})
    assert serving.target_lines(s2, {}, 16)[0].endswith("not measured")


def test_served_ratios_from_canned_numbers():
    from benchmarks import serving

    def m(tok_s, tpot):
        return {k: 1.0 for k in serving.METRICS} | {"output_throughput": tok_s,
                                                    "mean_tpot_ms": tpot}

    served = {16: {serving.PLUGIN: [m(150, 90), m(170, 80), m(160, 100)],
                   serving.PEER: [m(200, 70), m(240, 60)]}}
    rows, s = serving.served_rows(served, {16: m(50, 300)})
    assert s[16]["medians"][serving.PLUGIN]["output_throughput"] == 160
    assert s[16]["medians"][serving.PLUGIN]["mean_tpot_ms"] == 90
    assert s[16]["medians"][serving.PEER]["output_throughput"] == 220
    assert s[16]["plugin_vs_peer"] == pytest.approx(160 / 220)
    assert s[16]["plugin_vs_hf"] == pytest.approx(3.2)
    ratio_rows = {r[0]: r for r in rows if r[0].startswith("  plugin/")}
    tpot = 2 + serving.METRICS.index("mean_tpot_ms")
    assert ratio_rows[f"  plugin/{serving.PEER}"][tpot] == pytest.approx(90 / 65)
    lines = serving.target_lines(None, s, 16)
    assert lines[0].endswith(f"{160 / 220:.2f}x -> NOT MET")
    assert lines[1].endswith("3.20x -> MET")


def test_bench_serve_command_is_the_issue_workload(tmp_path):
    from benchmarks import serving

    cmd = serving.bench_serve_cmd("http://127.0.0.1:18201", Path("/m"), 256, 128, 32, 16, 0,
                                  tmp_path / "r.json")
    text = " ".join(cmd)
    assert cmd[0] == str(Path(sys.executable).parent / "vllm")  # one client for every side
    for flag in ("bench serve", "--base-url http://127.0.0.1:18201", "--dataset-name random",
                 "--random-input-len 256", "--random-output-len 128", "--num-prompts 32",
                 "--max-concurrency 16", "--ignore-eos", f"--result-dir {tmp_path}"):
        assert flag in text, flag


def test_peer_environment_and_staged_modules_keep_the_plugin_out(tmp_path):
    import ast

    from benchmarks import peer_setup

    stage = peer_setup.stage_peer_modules(tmp_path / "stage")
    base = {"VLLM_XPU_PLUGIN_DEVICE": "cpu", "VLLM_XPU_PLUGIN_CPU_KVCACHE_GB": "2",
            "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1",
            "OMP_NUM_THREADS": "2", "HOME": "/root"}
    env = peer_setup.peer_env(base, stage)
    assert not [k for k in env if k.startswith("VLLM_XPU_PLUGIN")]
    assert "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env
    assert env["PYTHONPATH"] == str(stage) and env["OMP_NUM_THREADS"] == "2"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == str(peer_setup.KV_CACHE_GIB)
    side = peer_setup.peer_side(Path("/venv"), stage)
    assert side.python == "/venv/bin/python" and side.cwd == stage
    assert not side.cwd.is_relative_to(REPO_ROOT)
    # The staged directory is the whole import path of the peer: only the peer modules,
    # and they import nothing of the plugin or of the other benchmark modules.
    staged = sorted(p.name for p in (stage / "benchmarks").iterdir())
    assert staged == sorted(["__init__.py", *peer_setup.PEER_MODULES])
    for name in peer_setup.PEER_MODULES:
        tree = ast.parse((stage / "benchmarks" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for mod in mods:
                assert not mod.startswith("vllm_xpu_plugin"), (name, mod)
                if mod.startswith("benchmarks."):
                    assert mod.split(".")[1] + ".py" in peer_setup.PEER_MODULES, (name, mod)
    plugin = peer_setup.plugin_env({"PYTHONPATH": "/x"})
    assert plugin["VLLM_XPU_PLUGIN_DEVICE"] == "cpu"
    assert plugin["PYTHONPATH"].split(os.pathsep) == [str(REPO_ROOT), "/x"]


def test_peer_info_check():
    from benchmarks import peer_setup

    good = dict(platform="CpuPlatform", platform_module="vllm.platforms.cpu",
                plugin_importable=False, plugin_loaded=False, env={})
    peer_setup.check_peer_info(good)
    for bad in (dict(good, platform="XPUPluginPlatform"), dict(good, plugin_importable=True),
                dict(good, env={"VLLM_XPU_PLUGIN_DEVICE": "cpu"})):
        with pytest.raises(RuntimeError, match="not vLLM's own CPU backend"):
            peer_setup.check_peer_info(bad)
    with pytest.raises(RuntimeError):
        peer_setup.check_plugin_info(good)


def test_peer_engine_protocol_with_a_stub_engine():
    import io

    from benchmarks import peer_engine

    class Stub:
        def info(self):
            return {"platform": "CpuPlatform"}

        def offline(self, n, i, o):
            return {"tok_s": n * o / 2.0, "input_len": i}

        def steps(self, batch, i, o, seed):
            raise ValueError("no timed worker")

    commands = io.StringIO('{"cmd": "info"}\n\n{"cmd": "offline", "num_prompts": 4, '
                           '"input_len": 8, "output_len": 10}\n{"cmd": "steps", "batch": 1, '
                           '"input_len": 1, "output_len": 1}\n{"cmd": "quit"}\n'
                           '{"cmd": "info"}\n')
    out = io.StringIO()
    peer_engine.serve_commands(Stub(), commands, out)
    replies = [json.loads(x) for x in out.getvalue().splitlines()]
    assert replies[0] == {"ok": True, "result": {"platform": "CpuPlatform"}}
    assert replies[1] == {"ok": True, "result": {"tok_s": 20.0, "input_len": 8}}
    assert replies[2]["ok"] is False and "no timed worker" in replies[2]["error"]
    assert len(replies) == 3  # nothing after quit
    prompts = peer_engine.offline_prompts(3, 5)
    assert [len(p) for p in prompts] == [6, 6, 6] and prompts[1][:2] == [1, 107]


def test_host_overhead_side_by_side():
    def s(step, forward, prep, sample, bookkeep, execute):
        return dict(step=step, forward=forward, prep=prep, sample=sample, bookkeep=bookkeep,
                    runner_other=execute - forward - prep - sample - bookkeep,
                    schedule=0.0005, update=0.0005, outside_other=step - execute - 0.001,
                    host_overhead=step - forward)

    plugin = {16: s(0.080, 0.070, 0.004, 0.001, 0.001, 0.078)}
    peer = {16: s(0.100, 0.095, 0.002, 0.001, 0.0005, 0.099), 1: s(0.05, 0.04, 0, 0, 0, 0.05)}
    table, ratios = step_profile.host_overhead_table(plugin, peer)
    assert list(ratios) == [16]  # only batches both sides ran
    assert ratios[16] == pytest.approx(0.010 / 0.005)
    lines = table.splitlines()
    assert lines[2].split()[:3] == ["plugin", "16", "80.0"]
    assert lines[3].split()[:4] == ["vLLM", "CPU", "16", "100"]
    assert lines[4].split()[:2] == ["plugin/peer", "16"]


def test_step_summary_with_prep_and_bookkeeping():
    def rec(start, execute, forward, sample, prep, bookkeep):
        return dict(start=start, end=start + execute, forward=forward, sample=sample,
                    prep=prep, bookkeep=bookkeep, num_reqs=2, num_tokens=2)

    records = [rec(0.0, 0.008, 0.005, 0.001, 0.0015, 0.0005), rec(0.01, 0.008, 0.005, 0.001,
                                                                   0.0015, 0.0005)]
    records[0].update(schedule=0.0004, update=0.0006)
    s = step_profile.summarize(records, batch=2)
    assert s["prep"] == pytest.approx(0.0015) and s["bookkeep"] == pytest.approx(0.0005)
    assert s["runner_other"] == pytest.approx(0.008 - 0.005 - 0.001 - 0.0015 - 0.0005)
    assert s["schedule"] == pytest.approx(0.0004) and s["update"] == pytest.approx(0.0006)
    assert s["outside_other"] == pytest.approx(0.010 - 0.008 - 0.001)
    # Without the timed scheduler the split is unknown (NaN, printed "-"), not zero.
    for r in records:
        r.pop("schedule", None), r.pop("update", None)
    s = step_profile.summarize(records, batch=2)
    assert math.isnan(s["schedule"]) and math.isnan(s["outside_other"])
    assert s["outside_runner"] == pytest.approx(0.002)


def test_timed_scheduler_hands_its_times_to_the_step_record():
    from benchmarks import peer_step_timing as t

    class Runner:  # the parts of GPUModelRunner.execute_model the mixin calls
        def execute_model(self, scheduler_output, intermediate_tensors=None):
            return "out"

    class Timed(t.StepTimingMixin, Runner):
        pass

    class Out:
        num_scheduled_tokens = {"a": 1, "b": 1}
        total_num_scheduled_tokens = 2

    runner = Timed()
    runner._init_timing()
    t._SCHEDULER_HANDOFF.update(schedule=0.003, record=None)
    assert runner.execute_model(Out()) == "out"
    record = runner.step_records[-1]
    assert record["schedule"] == 0.003 and record["num_reqs"] == 2
    assert t._SCHEDULER_HANDOFF["record"] is record  # update_from_output completes it
    runner.execute_model(Out())  # no schedule() in between: nothing stale is reused
    assert "schedule" not in runner.step_records[-1]


def test_missing_peer_is_said_not_hidden(tmp_path, capsys):
    import argparse

    from benchmarks import peer_setup

    ap = argparse.ArgumentParser()
    peer_setup.add_peer_args(ap)
    args = ap.parse_args(["--peer-venv", str(tmp_path / "none"),
                          "--peer-script", str(tmp_path / "no_script.sh")])
    assert peer_setup.ensure_peer(args) is None
    assert "peer: NOT RUN" in capsys.readouterr().out
    assert peer_setup.ensure_peer(ap.parse_args(["--no-peer"])) is None
    assert "--no-peer" in capsys.readouterr().out
    # A venv with its python and vllm is used as it is (no build).
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    for exe in ("python", "vllm"):
        (tmp_path / "venv" / "bin" / exe).write_text("")
    args = ap.parse_args(["--peer-venv", str(tmp_path / "venv"), "--peer-script", "/nonexistent"])
    assert peer_setup.ensure_peer(args) == tmp_path / "venv"


def test_env_ab_candidates_split_engine_arguments_from_environment():
    """engine_env_ab: NAME=VALUE is the engine's environment, --name=value an engine
    argument handed to the workload's engine_args() (json in BENCH_ENGINE_ARGS)."""
    from benchmarks import engine_env_ab, wait_policy

    label, env = engine_env_ab.parse_candidate(
        "fp32:--dtype=float32,--max-num-seqs=8,GOMP_SPINCOUNT=100")
    assert label == "fp32" and env["GOMP_SPINCOUNT"] == "100"
    assert json.loads(env["BENCH_ENGINE_ARGS"]) == {"dtype": "float32", "max_num_seqs": "8"}
    assert engine_env_ab.parse_candidate("default:") == ("default", {})
    namespace: dict = {}
    exec(wait_policy.WORKLOAD, namespace)  # what each engine's driver process runs first
    os.environ["BENCH_ENGINE_ARGS"] = env["BENCH_ENGINE_ARGS"]
    try:
        args = namespace["engine_args"]()
    finally:
        del os.environ["BENCH_ENGINE_ARGS"]
    assert args["dtype"] == "float32" and args["max_model_len"] == 512


def test_benchmarks_keep_the_shipped_wait_policy_on_a_busy_machine(monkeypatch):
    """``--omp-wait-policy auto`` measures what ships: on a loaded machine it used to set
    OMP_WAIT_POLICY=PASSIVE for every process, which turns the engine's spin governor off
    (a user's OMP_WAIT_POLICY wins over it), so "shipped defaults" runs were not."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # restored after the test
        monkeypatch.setenv(name, os.environ.get(name, "2"))
    monkeypatch.setattr(os, "getloadavg", lambda: (14.0, 14.0, 14.0))
    _common.pin_threads(2, "auto")
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    _common.pin_threads(2, "auto")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    _common.pin_threads(2, "passive")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_plugin_variant_sides_parse_and_compare_with_the_default():
    import argparse

    from benchmarks import serving

    name, env = serving.plugin_variant("full spin:GOMP_SPINCOUNT=300000,FOO=a=b")
    assert (name, env) == ("plugin (full spin)", {"GOMP_SPINCOUNT": "300000", "FOO": "a=b"})
    assert serving.is_plugin_side(name) and not serving.is_plugin_side(serving.PEER)
    for bad in ("nospec", "x:", ":A=1", "x:A"):
        with pytest.raises(argparse.ArgumentTypeError):
            serving.plugin_variant(bad)
    args = serving.parse_args(["--plugin-variant", "p:OMP_WAIT_POLICY=PASSIVE"])
    assert args.plugin_variant == [("plugin (p)", {"OMP_WAIT_POLICY": "PASSIVE"})]

    def m(tok_s):
        return {k: 1.0 for k in serving.METRICS} | {"output_throughput": tok_s}

    served = {16: {serving.PLUGIN: [m(200)], name: [m(250)], serving.PEER: [m(100)]}}
    rows, s = serving.served_rows(served, {})
    ratio_rows = {r[0]: r[2] for r in rows if r[0].startswith("  plugin/")}
    assert ratio_rows == {f"  plugin/{name}": pytest.approx(0.8),
                          f"  plugin/{serving.PEER}": pytest.approx(2.0)}
    assert s[16]["plugin_vs_peer"] == pytest.approx(2.0)
