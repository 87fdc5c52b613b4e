"""torch.compile mode (docs/compile.md, vllm_xpu_plugin/compilation/).

- Which compilation each config gets (EngineArgs -> VllmConfig, through the platform hook):
  eager by default (level 3 = nothing asked, for vLLM), compiled with VLLM_XPU_PLUGIN_COMPILE=1,
  -O1/-O2, -O3 on the command line, or level 3 with a backend offline; eager with -O0 / --enforce-eager / VLLM_XPU_PLUGIN_COMPILE=0, eager with one log
  line for the configs compile mode does not cover.
- Tiny random Llama and Qwen2 in float32, compiled: greedy tokens and top-5 logprobs equal to
  an eager engine's and to HF transformers', over a batch that mixes chunked prefills with
  decodes (max_num_batched_tokens below the longest prompt).
"""

from __future__ import annotations

import logging

import pytest

from tests.fixtures.hf_reference import assert_greedy_close, hf_greedy
from tests.fixtures.in_process import in_process_engine_core, shutdown_llm
from tests.fixtures.tiny_models import build_tiny_model

MAX_TOKENS = 12
NUM_LOGPROBS = 5
# Lengths 3..90: with 32 batched tokens per step the long prompts are prefilled in chunks
# while the short ones already decode, so most steps are mixed prefill + decode batches.
PROMPT_LENGTHS = (3, 7, 90, 12, 41, 5)
MAX_BATCHED_TOKENS = 32
LOGPROB_TOL = 2e-3  # nats; float32 inductor fusions reorder a few sums


def _prompts() -> list[list[int]]:
    return [[1 + (13 * i + 7 * j) % 700 for j in range(n)] for i, n in enumerate(PROMPT_LENGTHS)]


def _engine_config(model_dir, **kwargs):
    from vllm import EngineArgs

    args = EngineArgs(model=str(model_dir), dtype="float32", max_model_len=256, **kwargs)
    return args.create_engine_config()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(autouse=True)
def _compile_switch_on(monkeypatch):
    # VLLM_XPU_PLUGIN_COMPILE=1: level 3 compiles (the tests that need it unset or "0" set it).
    monkeypatch.setenv("VLLM_XPU_PLUGIN_COMPILE", "1")


@pytest.fixture
def policy_lines():
    logger = logging.getLogger("vllm.vllm_xpu_plugin.compilation.policy")
    handler, old_level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# ---------------------------------------------------------------------- policy


@pytest.mark.parametrize("kwargs", [{"compilation_config": {"level": 3}},
                                    {"compilation_config": {"level": 2}}])
def test_compile_switch_gives_piecewise_split_at_attention_and_moe(tiny_llama_dir, kwargs):
    from vllm.config import CompilationLevel

    cfg = _engine_config(tiny_llama_dir, **kwargs)
    cc = cfg.compilation_config
    assert cc.level == CompilationLevel.PIECEWISE, kwargs
    assert cc.backend == "inductor" and cc.use_inductor
    assert {"vllm.unified_attention_with_output", "vllm.moe_forward"} <= set(cc.splitting_ops)
    assert cc.custom_ops[0] == "all"  # the IPEX ops stay on
    assert cc.inductor_compile_config["cpp.threads"] == 1
    assert cfg.model_config.enforce_eager is False


def test_default_is_eager_with_one_line(tiny_llama_dir, monkeypatch, policy_lines):
    from vllm.config import CompilationLevel

    monkeypatch.delenv("VLLM_XPU_PLUGIN_COMPILE")
    for kwargs in ({}, {"compilation_config": {"level": 3}}):  # the same config for vLLM
        cfg = _engine_config(tiny_llama_dir, **kwargs)
        assert cfg.compilation_config.level == CompilationLevel.NO_COMPILATION
        assert cfg.model_config.enforce_eager is True
    lines = [ln for ln in policy_lines if "off by default" in ln]
    assert len(lines) == 2 and "VLLM_XPU_PLUGIN_COMPILE=1" in lines[0], policy_lines
    # Level 2 is never vLLM's own proposal: it compiles without the switch.
    cfg = _engine_config(tiny_llama_dir, compilation_config={"level": 2})
    assert cfg.compilation_config.level == CompilationLevel.PIECEWISE


def _command_line_config(model_dir, *flags):
    """The config ``vllm serve`` builds for these flags: vLLM's own argument parser (the
    platform's pre_register_and_update hook runs in it) -> EngineArgs -> VllmConfig."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    args = parser.parse_args(["--model", str(model_dir), "--dtype", "float32",
                              "--max-model-len", "256", *flags])
    return EngineArgs.from_cli_args(args).create_engine_config()


@pytest.mark.parametrize("flags,compiled", [
    ((), False),                                    # vLLM's "nothing asked" level 3
    (("-O3",), True),
    (("-O", "3"), True),
    (("--compilation-config", '{"level": 3}'), True),
    (("-O.level=3",), True),
    (("-O", '{"compile_sizes": []}'), False),       # a config without a level asks none
    (("-O0",), False),
    (("-O3", "--enforce-eager"), False),
])
def test_command_line_O3_compiles_and_no_O_keeps_the_default(tiny_llama_dir, monkeypatch,
                                                             flags, compiled):
    from vllm.config import CompilationLevel

    monkeypatch.delenv("VLLM_XPU_PLUGIN_COMPILE")
    cfg = _command_line_config(tiny_llama_dir, *flags)
    expected = CompilationLevel.PIECEWISE if compiled else CompilationLevel.NO_COMPILATION
    assert cfg.compilation_config.level == expected, flags
    assert cfg.model_config.enforce_eager is (not compiled), flags


def test_offline_level_3_with_a_backend_compiles(tiny_llama_dir, monkeypatch):
    # LLM(compilation_config=3) is vLLM's default config, byte for byte; naming the backend
    # next to the level is the offline way to ask (docs/compile.md).
    from vllm.config import CompilationLevel

    monkeypatch.delenv("VLLM_XPU_PLUGIN_COMPILE")
    cfg = _engine_config(tiny_llama_dir,
                         compilation_config={"level": 3, "backend": "inductor"})
    assert cfg.compilation_config.level == CompilationLevel.PIECEWISE
    assert "vllm.unified_attention_with_output" in cfg.compilation_config.splitting_ops


@pytest.mark.parametrize("kwargs", [{"compilation_config": {"level": 0}},
                                    {"enforce_eager": True},
                                    {"enforce_eager": True, "compilation_config": {"level": 3}}])
def test_O0_and_enforce_eager_run_eagerly(tiny_llama_dir, kwargs):
    from vllm.config import CompilationLevel

    cfg = _engine_config(tiny_llama_dir, **kwargs)
    assert cfg.compilation_config.level == CompilationLevel.NO_COMPILATION
    assert cfg.model_config.enforce_eager is True
    assert cfg.compilation_config.custom_ops[0] == "all"


def test_env_0_turns_compilation_off_whatever_the_flags_say(tiny_llama_dir, monkeypatch):
    from vllm.config import CompilationLevel

    monkeypatch.setenv("VLLM_XPU_PLUGIN_COMPILE", "0")
    cfg = _engine_config(tiny_llama_dir, compilation_config={"level": 3})
    assert cfg.compilation_config.level == CompilationLevel.NO_COMPILATION
    assert cfg.model_config.enforce_eager is True


def test_lora_falls_back_to_eager_with_one_line(tiny_llama_dir, policy_lines):
    from vllm.config import CompilationLevel

    cfg = _engine_config(tiny_llama_dir, enable_lora=True, max_lora_rank=8)
    assert cfg.compilation_config.level == CompilationLevel.NO_COMPILATION
    fallbacks = [ln for ln in policy_lines if "torch.compile is off" in ln]
    assert len(fallbacks) == 1 and "--enable-lora" in fallbacks[0], policy_lines


def test_eager_only_reasons_cover_tp_pooling_and_int4(tiny_llama_dir):
    from vllm_xpu_plugin.compilation.policy import eager_only_reason

    cfg = _engine_config(tiny_llama_dir)
    assert eager_only_reason(cfg) is None
    cfg.parallel_config.world_size = 2
    assert "world size" in eager_only_reason(cfg)
    cfg.parallel_config.world_size = 1
    cfg.model_config.runner_type = "pooling"
    assert "pooling" in eager_only_reason(cfg)
    cfg.model_config.runner_type = "generate"
    cfg.model_config.quantization = "ipex_gptq"
    assert "GPTQ" in eager_only_reason(cfg)


def test_pooling_model_runs_eagerly(policy_lines):
    from vllm.config import CompilationLevel

    cfg = _engine_config(build_tiny_model("bert"), runner="pooling")
    assert cfg.compilation_config.level == CompilationLevel.NO_COMPILATION
    assert any("pooling models run eagerly" in ln for ln in policy_lines), policy_lines


# ---------------------------------------------------------------------- end to end


def _generate(model_dir, compilation_config: dict, prompts, *, logprobs=NUM_LOGPROBS,
              max_tokens=MAX_TOKENS, ignore_eos=True, structured_outputs=None,
              detokenize=False, **llm_kwargs):
    from vllm import LLM, SamplingParams
    from vllm.compilation.counter import compilation_counter
    from vllm.inputs import TokensPrompt

    graphs_before = compilation_counter.num_graphs_seen
    with in_process_engine_core():
        llm = LLM(str(model_dir), dtype="float32", max_model_len=256, max_num_seqs=8,
                  max_num_batched_tokens=MAX_BATCHED_TOKENS, enable_prefix_caching=False,
                  compilation_config=compilation_config, seed=0, **llm_kwargs)
    try:
        level = llm.llm_engine.vllm_config.compilation_config.level
        # Dynamo handed vLLM's backend a graph: the model really ran compiled.
        compiled = compilation_counter.num_graphs_seen > graphs_before
        assert compiled == (level == 3), (level, compiled)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                            SamplingParams(temperature=0, max_tokens=max_tokens,
                                           ignore_eos=ignore_eos, logprobs=logprobs,
                                           structured_outputs=structured_outputs,
                                           detokenize=detokenize),
                            use_tqdm=False)
    finally:
        shutdown_llm(llm)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[{t: lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs]
                for o in outs] if logprobs else None
    return level, tokens, logprobs


def _assert_logprobs_close(expected, actual, what: str) -> None:
    """Per prompt and step, the top-5 logprobs of ``actual`` match ``expected`` (dicts
    token -> logprob; compared on the tokens both report, which must be at least 4 of 5)."""
    for n, (exp_steps, act_steps) in enumerate(zip(expected, actual, strict=True)):
        for i, (exp, act) in enumerate(zip(exp_steps, act_steps, strict=True)):
            common = set(exp) & set(act)
            assert len(common) >= NUM_LOGPROBS - 1, (what, n, i, exp, act)
            worst = max(abs(exp[t] - act[t]) for t in common)
            assert worst <= LOGPROB_TOL, (what, n, i, worst, exp, act)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_compiled_greedy_and_logprobs_equal_eager_and_hf(arch):
    from vllm.config import CompilationLevel

    model_dir = build_tiny_model(arch)
    prompts = _prompts()
    level, compiled_tokens, compiled_lps = _generate(model_dir, {"level": 3}, prompts)
    assert level == CompilationLevel.PIECEWISE
    level, eager_tokens, eager_lps = _generate(model_dir, {"level": 0}, prompts)
    assert level == CompilationLevel.NO_COMPILATION

    ref = hf_greedy(model_dir, prompts, max_new_tokens=MAX_TOKENS, ignore_eos=True,
                    num_logprobs=NUM_LOGPROBS)
    assert_greedy_close(ref, compiled_tokens)
    assert_greedy_close(ref, eager_tokens)
    assert compiled_tokens == eager_tokens
    _assert_logprobs_close(eager_lps, compiled_lps, "compiled vs eager")
    # HF: the steps before any near-tie divergence (same context on both sides).
    hf_lps, ours = [], []
    for r, toks, lps in zip(ref, compiled_tokens, compiled_lps, strict=True):
        same = next((i for i, (a, b) in enumerate(zip(r.output_ids, toks, strict=True)) if a != b),
                    len(toks))
        hf_lps.append(r.top_logprobs[:same])
        ours.append(lps[:same])
    assert sum(len(x) for x in hf_lps) >= len(prompts) * MAX_TOKENS // 2
    _assert_logprobs_close(hf_lps, ours, "compiled vs hf")


# ---------------------------------------------------------------------- features compiled
# Each feature's compiled engine against an eager engine with the same settings.


def _compiled_vs_eager(model_dir, prompts, **llm_kwargs):
    _, compiled_tokens, compiled_lps = _generate(model_dir, {"level": 3}, prompts, **llm_kwargs)
    _, eager_tokens, eager_lps = _generate(model_dir, {"level": 0}, prompts, **llm_kwargs)
    return compiled_tokens, compiled_lps, eager_tokens, eager_lps


@pytest.mark.slow
@pytest.mark.parametrize("arch,llm_kwargs", [
    ("qwen3-moe", {}),  # FusedMoE (vLLM's moe_forward op) inside the compiled pieces
    ("llama", {"kv_cache_dtype": "fp8"}),
])
def test_compiled_moe_and_fp8_kv_equal_eager(arch, llm_kwargs):
    prompts = _prompts()
    c_tokens, c_lps, e_tokens, e_lps = _compiled_vs_eager(build_tiny_model(arch), prompts,
                                                          **llm_kwargs)
    assert c_tokens == e_tokens
    _assert_logprobs_close(e_lps, c_lps, f"{arch} {llm_kwargs} compiled vs eager")


@pytest.mark.slow
def test_compiled_ngram_speculation_and_structured_outputs(tiny_llama_dir):
    from vllm.sampling_params import StructuredOutputsParams

    # Repetitive prompts so that the ngram proposer finds matches.
    prompts = [[5, 6, 7, 8] * 6, [9, 10, 11] * 8, [12, 13] * 10]
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
            "prompt_lookup_min": 2}
    _, spec_tokens, _ = _generate(tiny_llama_dir, {"level": 3}, prompts, logprobs=None,
                                  speculative_config=spec)
    _, plain_tokens, _ = _generate(tiny_llama_dir, {"level": 0}, prompts, logprobs=None)
    assert spec_tokens == plain_tokens  # greedy speculation changes nothing

    choices = ["alpha beta", "gamma", "delta epsilon zeta"]
    _, choice_tokens, _ = _generate(
        tiny_llama_dir, {"level": 3}, prompts, logprobs=None, max_tokens=24, ignore_eos=False,
        structured_outputs=StructuredOutputsParams(choice=choices), detokenize=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    for ids in choice_tokens:
        text = tok.decode([t for t in ids if t != tok.eos_token_id], skip_special_tokens=True)
        assert text in choices, (text, ids)
