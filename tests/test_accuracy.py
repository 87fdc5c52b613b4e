"""The accuracy suites (accuracy/, docs/accuracy.md) as tests.

Default suite:
- configs and list files load and say where their expected values come from;
- the data preparation (GSM8K rows, BIG-bench formatting) on small hand-made inputs;
- the parity comparison flags what it must flag (synthetic samples);
- a short subset: SmolLM2-135M-Instruct float32 at block size 32 through the plugin (lm-eval's
  vllm backend) against lm-eval's hf backend on the same weights, sample by sample
  (``smoke_limit`` documents; ~3 CPU-minutes with the hf reference).

``@pytest.mark.slow``: every CPU-tier config at every block size at full limits (what
``make accuracy`` runs through ``python -m accuracy.run``). ``@pytest.mark.xpu``: the XPU tier,
skipped without an Intel GPU.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile

import pytest

from accuracy import prepare_data
from accuracy.config import (
    ACCURACY_DIR,
    CONFIG_DIR,
    TASK_DIR,
    ConfigError,
    load_config,
    read_model_list,
)

CPU_CONFIGS = read_model_list(ACCURACY_DIR / "models-cpu.txt")
XPU_CONFIGS = read_model_list(ACCURACY_DIR / "models-xpu.txt")
# The default suite's short subset: float32 (the tightest parity) at block size 32 (the size
# an older stack got wrong). bfloat16 at 64 is in the slow set: ~3 CPU-minutes each.
SMOKE_RUNS = [("SmolLM2-135M-Instruct-fp32", 32)]
SLOW_SMOKE_RUNS = [("SmolLM2-135M-Instruct-bf16", 64)]


# --------------------------------------------------------------------------- configs


def test_every_config_loads_and_is_listed_once():
    listed = CPU_CONFIGS + XPU_CONFIGS
    assert sorted(p.name for p in listed) == sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    assert all(load_config(p).tier == "cpu" for p in CPU_CONFIGS)
    assert all(load_config(p).tier == "xpu" for p in XPU_CONFIGS)


def test_cpu_tier_runs_three_block_sizes_with_parity():
    for path in CPU_CONFIGS:
        cfg = load_config(path)
        # Block sizes are covered by the bf16/fp32 configs; the fp8-KV config runs one.
        fp8_kv = cfg.engine.get("kv_cache_dtype", "auto") != "auto"
        assert cfg.variants() == ((64,) if fp8_kv else (16, 32, 64)), cfg.name
        assert cfg.parity is not None, cfg.name
        kinds = {t.name.split("_")[1] for t in cfg.tasks}
        assert {"bigbench", "gsm8k"} <= kinds, cfg.name
        assert sum(t.name.startswith("offline_bigbench_") for t in cfg.tasks) >= 4


def test_xpu_configs_cite_a_source_or_say_reference_missing():
    names = {load_config(p).name for p in XPU_CONFIGS}
    for required in ("Llama-3.1-8B-Instruct-AWQ-INT4", "Llama-3.1-8B-Instruct-GPTQ-INT4",
                     "Qwen2-7B-Instruct-GPTQ-Int4", "Mistral-7B-Instruct-v0.2-AWQ",
                     "DeepSeek-R1-Distill-Qwen-7B", "Phi-3-mini-128k-instruct"):  # fmt: skip
        assert required in names
    for path in XPU_CONFIGS:
        cfg = load_config(path)
        values = [m.value for t in cfg.tasks for m in t.metrics]
        assert any(t.name.startswith("offline_gsm8k") for t in cfg.tasks), cfg.name
        assert all((TASK_DIR / "gsm8k" / f"{t.name}.yaml").is_file() for t in cfg.tasks)
        if any(v is None for v in values):
            assert all(v is None for v in values), cfg.name
            assert cfg.reference.startswith("reference missing"), cfg.name
        else:
            # A published value: the repo@commit it came from, and a link, are in the file.
            text = path.read_text()
            assert "@" in cfg.reference and "https://" in text, cfg.name
            for v in values:
                assert f"{v}" in cfg.reference, (cfg.name, v)


def test_missing_reference_is_reported_and_is_not_a_pass():
    from accuracy.config import AccuracyConfig, MetricSpec, TaskSpec
    from accuracy.evaluation import EngineRun, TaskRun
    from accuracy.run import check_expected, exit_status, markdown_report

    specs = (TaskSpec("offline_gsm8k", 5, 4, (MetricSpec("exact_match,strict-match", None, 0.03),
                                              MetricSpec("exact_match,flexible-extract", 0.5,
                                                         0.03))),)  # fmt: skip
    cfg = AccuracyConfig(path=CONFIG_DIR / "x.yaml", name="x", tier="xpu", model="m",
                         dtype="float16", quantization=None, tasks=specs,
                         reference="reference missing")  # fmt: skip
    metrics = {"exact_match,strict-match": 0.25, "exact_match,flexible-extract": 0.5}
    rows = check_expected(cfg, EngineRun("vllm", 64, {"offline_gsm8k": TaskRun(metrics, [], 4)}))
    missing, checked = rows
    assert (missing.passed, missing.reference_missing, missing.measured) == (False, True, "0.2500")
    assert checked.passed and not checked.reference_missing
    report = markdown_report(rows, "t", [])
    assert "| reference missing |" in report
    assert "**1 passed, 0 failed, 1 reference missing**" in report
    assert exit_status(rows) == 3
    metrics["exact_match,flexible-extract"] = 0.4  # outside ±0.03: a failure outranks it
    rows = check_expected(cfg, EngineRun("vllm", 64, {"offline_gsm8k": TaskRun(metrics, [], 4)}))
    assert exit_status(rows) == 1 and "**FAIL**" in markdown_report(rows, "t", [])
    assert exit_status([]) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\ntier: gpu\n", "tier 'gpu'"),
        ("name: x\ntier: cpu\nmodel: m\ndtype: bfloat16\nreference: r\ntasks: []\n",
         "'tasks' is empty"),
        ("name: x\ntier: cpu\nmodel: m\ndtype: bfloat16\nreference: r\nengine: {blok_size: 8}\n"
         "tasks: [{name: t, num_fewshot: 0, metrics: []}]\n", "unknown engine option"),
        ("name: x\ntier: cpu\nmodel: m\ndtype: bfloat16\nreference: r\n"
         "tasks: [{name: t, num_fewshot: 0, metrics: []}]\n", "nothing would be checked"),
        ("name: x\ntier: cpu\nmodel: m\ndtype: bfloat16\n"
         "tasks: [{name: t, num_fewshot: 0, metrics: [{name: 'acc,none', value: 1, "
         "tolerance: 0}]}]\n", "'reference'"),
    ],
)  # fmt: skip
def test_bad_config_fails_in_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_runner_skips_xpu_tier_in_one_line_without_an_intel_gpu():
    from vllm_xpu_plugin import device

    if device.xpu_usable():
        pytest.skip("an Intel GPU is present: the XPU tier would run")
    proc = subprocess.run([sys.executable, "-m", "accuracy.run", "--device", "xpu"],
                          cwd=ACCURACY_DIR.parent, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith("accuracy: XPU tier skipped: no usable Intel GPU")


# --------------------------------------------------------------------------- data


def test_gsm8k_rows_are_copied_from_the_wheel(tmp_path):
    rows = [{"question": f"q{i}?", "answer": f"a\n#### {i}"} for i in range(prepare_data.GSM8K_ROWS)]
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(prepare_data.GSM8K_MEMBER, "\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "gsm8k" / "test.jsonl"
    assert prepare_data.extract_gsm8k(wheel, out) == prepare_data.GSM8K_ROWS
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows

    with zipfile.ZipFile(wheel, "w") as zf:  # a truncated file is refused
        zf.writestr(prepare_data.GSM8K_MEMBER, json.dumps(rows[0]) + "\n")
    with pytest.raises(RuntimeError, match="expected 1319"):
        prepare_data.extract_gsm8k(wheel, out)


def test_gsm8k_multiple_choice_rows():
    # Each question's choices: its own final answer and the next rows' distinct ones, the
    # gold one at a position that moves with the row (a model cannot win by position).
    gsm8k = [{"question": "Tom has 3 apples and eats 1. How many are left?",
              "answer": "3 - 1 = <<3-1=2>>2\n#### 2"},
             {"question": "q1?", "answer": "x\n#### 1,000"},
             {"question": "q2?", "answer": "x\n#### 2"},  # the same answer as row 0
             {"question": "q3?", "answer": "x\n#### 7"},
             {"question": "q4?", "answer": "x\n#### -3"}]  # fmt: skip
    rows = prepare_data.gsm8k_multiple_choice(gsm8k)
    assert len(rows) == len(gsm8k)
    first = rows[0]
    assert first["inputs"] == "\nQ: Tom has 3 apples and eats 1. How many are left?\nA:"
    assert sorted(first["choices"]) == sorted(["2", "1000", "7", "-3"])
    assert first["choices"][first["target"]] == "2" and first["idx"] == 0
    for i, row in enumerate(rows):
        own = gsm8k[i]["answer"].split("####")[-1].strip().replace(",", "")
        assert row["choices"][row["target"]] == own
        assert len(row["choices"]) == prepare_data.GSM8K_MC_CHOICES == len(set(row["choices"]))
    assert len({row["target"] for row in rows}) > 1


def test_data_builds_without_bigbench_when_the_index_does_not_serve_it(tmp_path,
                                                                       monkeypatch):
    rows = [{"question": f"q{i}?", "answer": f"a\n#### {i}"} for i in range(prepare_data.GSM8K_ROWS)]
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(prepare_data.GSM8K_MEMBER, "\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(prepare_data, "GSM8K_WHEEL_SHA256", prepare_data.file_sha256(wheel))

    def refused(package, sha256, workdir):
        raise RuntimeError(f"https://index/simple/{package}/: no file with sha256 {sha256}")

    monkeypatch.setattr(prepare_data, "_download_sdist", refused)
    out = prepare_data.build_data(tmp_path / "data", gsm8k_wheel=wheel)
    assert len((out / "gsm8k_mc" / "test.jsonl").read_text().splitlines()) == len(rows)
    assert not (out / "bigbench").exists()
    why = prepare_data.bigbench_unavailable(out)
    assert "no file with sha256" in why
    # Where it can be had, nothing is unavailable.
    sdist = _sdist_with(tmp_path, {t: {"examples": [
        {"input": "?", "target_scores": {"a": 1, "b": 0}}]} for t in prepare_data.BIGBENCH_TASKS})
    monkeypatch.setattr(prepare_data, "BIGBENCH_SDIST_SHA256", prepare_data.file_sha256(sdist))
    out = prepare_data.build_data(tmp_path / "data2", gsm8k_wheel=wheel, bigbench_sdist=sdist)
    assert prepare_data.bigbench_unavailable(out) == ""
    assert (out / "bigbench" / f"{prepare_data.BIGBENCH_TASKS[0]}.jsonl").is_file()


def test_bigbench_tasks_without_data(monkeypatch, tmp_path):
    from accuracy import evaluation, run

    cfg = load_config(CONFIG_DIR / "SmolLM2-135M-Instruct-fp32.yaml")
    monkeypatch.setattr(evaluation, "data_dir", lambda: tmp_path)
    monkeypatch.setattr(prepare_data, "bigbench_unavailable", lambda out: "index says no")
    # A full run checks the BIG-bench tasks' expected values: it stops, in one line.
    with pytest.raises(ConfigError, match="no data for offline_bigbench_.*: index says no"):
        run.tasks_with_data(cfg, smoke=False)
    # The short subset (parity only) goes on without them and says so.
    kept, note = run.tasks_with_data(cfg, smoke=True)
    assert [t.name for t in kept.tasks] == [t.name for t in cfg.tasks
                                            if not t.name.startswith("offline_bigbench_")]
    assert "offline_gsm8k_mc" in [t.name for t in kept.tasks]
    assert note.startswith(f"{cfg.name}: not run, no data here: offline_bigbench_")
    monkeypatch.setattr(prepare_data, "bigbench_unavailable", lambda out: "")
    assert run.tasks_with_data(cfg, smoke=False) == (cfg, "")


def _sdist_with(tmp_path, tasks: dict[str, dict]):
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in tasks.items():
            blob = json.dumps(data).encode()
            info = tarfile.TarInfo(f"{prepare_data.BIGBENCH_TASK_DIR}/{name}/task.json")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return sdist


def test_bigbench_task_json_is_read_and_formatted_as_cloze(tmp_path):
    task = {
        "task_prefix": "Answer the questions.\n",
        "append_choices_to_input": True,  # BIG-bench would list the choices; the suite does not
        "examples": [
            {"input": "Is fire hot?", "target_scores": {"yes": 1, "no": 0}},
            {"input": "Is fire hot?", "target_scores": {"yes": 1, "no": 0}},  # duplicate
            {"input": "Is ice hot?", "target_scores": {"yes": 0, "no": 1}},
        ],
    }
    sdist = _sdist_with(tmp_path, {"fire": task, "other": {"examples": []}})
    data = prepare_data.read_bigbench_task_json(sdist, ("fire",))
    rows = prepare_data.convert_bigbench_task(data["fire"])
    # BIG-bench's default framing: "\nQ: " before the input, "\nA: " after (trailing space
    # cut: lm-eval puts one space between prompt and choice); duplicates dropped.
    assert rows == [
        {"inputs": "Answer the questions.\n\nQ: Is fire hot?\nA:", "choices": ["yes", "no"],
         "target": 0, "idx": 0},
        {"inputs": "Answer the questions.\n\nQ: Is ice hot?\nA:", "choices": ["yes", "no"],
         "target": 1, "idx": 1},
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="missing"):
        prepare_data.read_bigbench_task_json(sdist, ("missing", "fire"))


def test_bigbench_task_prefixes_and_gold_choice():
    task = {"example_input_prefix": "\nQuestion: ", "example_output_prefix": "\nAnswer: "}
    row = prepare_data.format_bigbench_example(
        {"input": "2+2?", "target_scores": {"3": 0, "4": 1, "5": 0.5}}, task
    )
    assert row == {"inputs": "\nQuestion: 2+2?\nAnswer:", "choices": ["3", "4", "5"],
                   "target": 1}  # fmt: skip
    with pytest.raises(ValueError, match="no single correct choice"):
        prepare_data.format_bigbench_example({"input": "?", "target_scores": {"a": 1, "b": 1}},
                                             task)  # fmt: skip


# --------------------------------------------------------------------------- parity logic


def _mc_sample(doc_id: int, lls: list[float], acc: float) -> dict:
    return {"doc_id": doc_id, "resps": [[[ll, False]] for ll in lls], "acc": acc}


def test_loglik_comparison_flags_one_bad_choice():
    from accuracy.parity import loglik_deltas

    hf = [_mc_sample(0, [-1.0, -2.0], 1.0), _mc_sample(1, [-10.0, -3.0], 1.0)]
    close = [_mc_sample(0, [-1.001, -2.0], 1.0), _mc_sample(1, [-10.02, -3.0], 1.0)]
    worst, outside, count = loglik_deltas(close, hf, atol=0.005, rtol=0.005)
    assert (outside, count) == (0, 4) and worst == pytest.approx(0.02)
    off = [_mc_sample(0, [-1.0, -2.0], 1.0), _mc_sample(1, [-10.0, -3.2], 1.0)]
    assert loglik_deltas(off, hf, atol=0.005, rtol=0.005)[1] == 1


def test_generation_agreement_is_the_common_prefix_fraction():
    from accuracy.parity import generation_agreement

    def gen(doc_id, text):
        return {"doc_id": doc_id, "resps": [[text]], "filter": "strict-match"}

    hf = [gen(0, "abcdefghij"), gen(1, "0123456789")]
    vl = [gen(0, "abcdefghij"), gen(1, "01234xxxxx")]
    assert generation_agreement(vl, hf) == pytest.approx((1.0 + 0.5) / 2)


def test_parity_rows_fail_when_accuracy_moves():
    from accuracy.config import AccuracyConfig, MetricSpec, ParitySpec, TaskSpec
    from accuracy.evaluation import EngineRun, TaskRun
    from accuracy.parity import Reference, compare

    spec = TaskSpec("offline_bigbench_x", 0, 4, (MetricSpec("acc,none", 0.5, 0.1),))
    cfg = AccuracyConfig(
        path=CONFIG_DIR / "x.yaml", name="x", tier="cpu", model="m", dtype="float32",
        quantization=None, tasks=(spec,), reference="r",
        parity=ParitySpec(loglik_atol=1.0, loglik_rtol=0.0, accuracy_points=1.0,
                          generation_prefix_agreement=0.9),
    )  # fmt: skip
    hf = [_mc_sample(i, [-1.0, -2.0], 1.0) for i in range(4)]
    moved = hf[:3] + [_mc_sample(3, [-1.5, -1.4], 0.0)]  # within atol, but the answer flips
    ref = Reference({spec.name: TaskRun({}, hf, 4)}, 0.0, cached=True)
    rows = compare(cfg, EngineRun("vllm", 16, {spec.name: TaskRun({}, moved, 4)}), ref)
    by_metric = {r.metric: r for r in rows}
    assert by_metric["per-choice loglik vs hf"].passed
    assert not by_metric["acc vs hf"].passed
    rows = compare(cfg, EngineRun("vllm", 16, {spec.name: TaskRun({}, hf, 4)}), ref)
    assert all(r.passed for r in rows)


def test_hf_reference_key_reads_only_the_configs_task_yamls(tmp_path):
    from accuracy.parity import task_yaml_texts

    (tmp_path / "mc").mkdir()
    (tmp_path / "mc" / "_template_yaml").write_text("output_type: multiple_choice\n")
    (tmp_path / "mc" / "t1.yaml").write_text("include: _template_yaml\ntask: t1\n")
    (tmp_path / "other.yaml").write_text("task: other\n")  # another tier's task
    assert task_yaml_texts(["t1"], tmp_path) == {
        "mc/t1.yaml": "include: _template_yaml\ntask: t1\n",
        "mc/_template_yaml": "output_type: multiple_choice\n",
    }
    with pytest.raises(ConfigError, match="missing"):
        task_yaml_texts(["missing"], tmp_path)


# --------------------------------------------------------------------------- end to end


def _assert_report_passes(rows, notes, title):
    from accuracy.run import markdown_report

    report = markdown_report(rows, title, notes)
    print(report)
    assert rows, "nothing was checked"
    assert all(r.passed for r in rows), report


@pytest.mark.parametrize(
    "name, block_size",
    SMOKE_RUNS + [pytest.param(*r, marks=pytest.mark.slow) for r in SLOW_SMOKE_RUNS],
)
def test_short_subset_matches_hf_backend(name, block_size):
    """Smoke limits (a few documents per task) at one block size: every choice's
    log-likelihood and the greedy GSM8K generations agree with lm-eval's hf backend."""
    from accuracy.run import run_config

    rows, notes = run_config(load_config(name), smoke=True, block_sizes=(block_size,))
    _assert_report_passes(rows, notes, f"{name} short subset, block size {block_size}")
    # A log-likelihood task and a generation task were compared, whatever data was had.
    checked = {r.task.split(" (n=")[0] for r in rows}
    assert {"offline_gsm8k_mc", "offline_gsm8k"} <= checked, checked


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, block_size",
    [(load_config(p).name, b) for p in CPU_CONFIGS for b in load_config(p).variants()],
)
def test_cpu_tier(name, block_size):
    from accuracy.run import run_config

    rows, notes = run_config(load_config(name), block_sizes=(block_size,))
    _assert_report_passes(rows, notes, f"{name}, block size {block_size}")


@pytest.mark.xpu
@pytest.mark.parametrize("path", XPU_CONFIGS, ids=[p.stem for p in XPU_CONFIGS])
def test_xpu_tier(path):
    from vllm_xpu_plugin import device

    if not device.xpu_usable():
        pytest.skip("no Intel GPU: the XPU accuracy tier needs one")
    from accuracy.run import run_config

    rows, notes = run_config(load_config(path))
    _assert_report_passes(rows, notes, f"{path.stem} (XPU tier)")
