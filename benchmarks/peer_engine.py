"""One ``vllm.LLM`` engine driven over a pipe, so that the plugin and vLLM's own CPU backend
(each in its own venv) run the *same* offline workload code, interleaved by one caller.

    PYTHON -m benchmarks.peer_engine --model DIR --engine-args JSON --result-fd N

Commands arrive as JSON lines on stdin, one result JSON line per command on fd N (vLLM's
logs go to stdout/stderr, which the caller sends to a log file):

- ``{"cmd": "info"}``: the platform vLLM picked, whether the plugin is importable or loaded,
  vLLM's version, threads, the compilation level and the CPU env knobs the engine saw;
- ``{"cmd": "offline", "num_prompts": 16, "input_len": 64, "output_len": 128}``: greedy
  ``LLM.generate`` of exactly ``output_len`` tokens per prompt (EOS ignored), timed;
- ``{"cmd": "steps", "batch": B, "input_len": I, "output_len": O, "seed": S}``: the same
  with random token prompts, returning the timed worker's step records (needs
  ``worker_cls`` = a StepTimingWorkerMixin worker in the engine args);
- ``{"cmd": "profile", "batch": B, "steps": N, "input_len": I}``: torch.profiler over N
  steady decode steps at batch B (timed worker);
- ``{"cmd": "quit"}``.

Imports vLLM only (never the plugin, never benchmarks._common), so the caller can copy it
with the peer_* modules to a directory outside the checkout and run it with the peer's
python (benchmarks/peer_setup.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

CPU_KNOBS = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
             "VLLM_CPU_NUM_OF_RESERVED_CPU", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
             "GOMP_SPINCOUNT", "LD_PRELOAD", "VLLM_XPU_PLUGIN_DEVICE")


def offline_prompts(num_prompts: int, input_len: int) -> list[list[int]]:
    """Distinct token-id prompts (BOS + ``input_len`` ids), the same on every side: the
    workload of benchmarks/wait_policy.py when ``input_len`` is 64."""
    return [[1] + [100 + 7 * i + j for j in range(input_len)] for i in range(num_prompts)]


def random_prompts(num_prompts: int, input_len: int, vocab: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(input_len)] for _ in range(num_prompts)]


class Engine:
    def __init__(self, model: str, engine_args: dict) -> None:
        from vllm import LLM

        self.llm = LLM(model=model, **engine_args)
        self.vocab = self.llm.llm_engine.model_config.get_vocab_size()

    def _generate(self, prompts: list[list[int]], output_len: int) -> tuple[float, int]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 use_tqdm=False)
        seconds = time.perf_counter() - t0
        return seconds, sum(len(o.outputs[0].token_ids) for o in outs)

    def info(self) -> dict:
        import torch
        import vllm
        from vllm.platforms import current_platform

        config = self.llm.llm_engine.vllm_config
        return dict(
            platform=type(current_platform).__name__,
            platform_module=type(current_platform).__module__,
            device_type=current_platform.device_type,
            plugin_importable=importlib.util.find_spec("vllm_xpu_plugin") is not None,
            plugin_loaded="vllm_xpu_plugin" in sys.modules,
            vllm=vllm.__version__, torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            compilation_level=int(config.compilation_config.level),
            compilation_backend=config.compilation_config.backend or "",
            enforce_eager=bool(config.model_config.enforce_eager),
            cwd=os.getcwd(), executable=sys.executable,
            env={k: os.environ.get(k) for k in CPU_KNOBS})

    def offline(self, num_prompts: int, input_len: int, output_len: int) -> dict:
        seconds, tokens = self._generate(offline_prompts(num_prompts, input_len), output_len)
        return dict(seconds=seconds, output_tokens=tokens, tok_s=tokens / seconds)

    def steps(self, batch: int, input_len: int, output_len: int, seed: int) -> dict:
        self.llm.collective_rpc("reset_step_records")
        seconds, tokens = self._generate(random_prompts(batch, input_len, self.vocab, seed),
                                         output_len)
        records = self.llm.collective_rpc("get_step_records")[0]
        return dict(seconds=seconds, output_tokens=tokens, records=records)

    def profile(self, batch: int, steps: int, input_len: int, seed: int) -> dict | None:
        self.llm.collective_rpc("profile_decode_steps", args=(batch, steps))
        self._generate(random_prompts(batch, input_len, self.vocab, seed), steps + 4)
        return self.llm.collective_rpc("get_profile")[0]


def serve_commands(engine: Engine, commands, results) -> None:
    handlers = {"info": lambda c: engine.info(),
                "offline": lambda c: engine.offline(c["num_prompts"], c["input_len"],
                                                    c["output_len"]),
                "steps": lambda c: engine.steps(c["batch"], c["input_len"], c["output_len"],
                                                c.get("seed", 0)),
                "profile": lambda c: engine.profile(c["batch"], c["steps"], c["input_len"],
                                                    c.get("seed", 0))}
    for line in commands:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            reply = {"ok": True, "result": handlers[cmd["cmd"]](cmd)}
        except Exception as e:  # noqa: BLE001 - reported to the caller, which raises
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        results.write(json.dumps(reply) + "\n")
        results.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine-args", default="{}", help="JSON: keyword arguments of vllm.LLM")
    ap.add_argument("--result-fd", type=int, required=True)
    args = ap.parse_args(argv)
    results = os.fdopen(args.result_fd, "w")
    try:
        engine = Engine(args.model, json.loads(args.engine_args))
    except Exception as e:  # noqa: BLE001 - the caller reports it with the log's tail
        results.write(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        results.flush()
        raise
    results.write(json.dumps({"ok": True, "result": "ready"}) + "\n")
    results.flush()
    serve_commands(engine, sys.stdin, results)
    del engine
    return 0


if __name__ == "__main__":
    sys.exit(main())
