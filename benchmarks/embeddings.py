"""Embeddings per second of a small BERT: the plugin (vLLM, runner="pooling") vs HF
transformers' forward, in one run, interleaved round by round.

    python benchmarks/embeddings.py                    # 64 x 128 tokens, float32 and bfloat16
    python benchmarks/embeddings.py --dtypes float32 --rounds 9

The model is a random-weight BertModel of all-MiniLM-L6-v2's shape (6 layers, hidden 384,
12 heads, FFN 1536; the tiny fixture tokenizer's 768-token vocabulary), built offline by
tests/fixtures/tiny_models.py, or ``--model DIR`` (any BertModel checkpoint). Both sides
get the same batch of token ids (no padding: every prompt is ``--seq-len`` tokens), CLS
pooling and normalisation, the same threads, in the same process (vLLM's engine core
in-process), so neither competes with the other for the cores.

- plugin: ``LLM.embed`` on the whole batch (one engine step: max_num_seqs = batch).
- HF: ``BertModel(input_ids, attention_mask)`` under ``torch.inference_mode``, default
  attention implementation (SDPA), then the same pooling; the model cast to the dtype.

Prints a table (ms per batch, embeddings/s, ratio to HF) and the machine line; writes JSON
to benchmarks/results/embeddings.json (``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    RESULTS_DIR,
    add_thread_args,
    describe_machine,
    ensure_cpu_mode,
    ensure_repo_on_path,
    format_table,
    machine_info,
    pin_threads,
    save_json,
    verdict,
)

TARGET_RATIO = 2.0
# all-MiniLM-L6-v2's shape (sentence-transformers' most used small embedder).
MINILM_L6 = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a BertModel dir (default: MiniLM-L6 shape)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--no-mixed", dest="mixed", action="store_false",
                    help="skip the mixed-length batch (lengths 16..seq-len)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "embeddings.json")
    add_thread_args(ap)
    return ap.parse_args(argv)


def build_model(model: str | None) -> Path:
    if model:
        return Path(model).expanduser()
    from tests.fixtures.tiny_models import build_tiny_model

    return build_tiny_model("bert", **MINILM_L6)


def batch_ids(batch: int, seq_len: int, vocab: int, seed: int = 0,
              min_len: int | None = None) -> list[list[int]]:
    """``batch`` prompts of ``seq_len`` tokens, or of lengths uniform in [min_len, seq_len]."""
    import random

    rng = random.Random(seed)
    lengths = [seq_len if min_len is None else rng.randint(min_len, seq_len)
               for _ in range(batch)]
    return [[1] + [rng.randrange(5, vocab) for _ in range(n - 1)] for n in lengths]


def make_plugin(model_dir: Path, dtype: str, batch: int, seq_len: int):
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
    llm = LLM(model=str(model_dir), runner="pooling", dtype=dtype, max_model_len=512,
              max_num_seqs=batch, max_num_batched_tokens=max(batch * seq_len, 512), seed=0,
              kv_cache_memory_bytes=64 << 20)

    def run(ids):
        outs = llm.embed([TokensPrompt(prompt_token_ids=p) for p in ids], use_tqdm=False)
        return [o.outputs.embedding for o in outs]

    return llm, run


def make_hf(model_dir: Path, dtype: str):
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).eval()

    def run(ids):
        # Right-padded to the longest prompt, as tokenizer(..., padding=True) gives it.
        longest = max(len(p) for p in ids)
        input_ids = torch.zeros(len(ids), longest, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, p in enumerate(ids):
            input_ids[i, :len(p)] = torch.tensor(p)
            mask[i, :len(p)] = 1
        with torch.inference_mode():
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            return torch.nn.functional.normalize(hidden[:, 0].float(), dim=-1)

    return model, run


def time_interleaved(runs: dict, ids, rounds: int, warmup: int) -> dict[str, list[float]]:
    for run in runs.values():
        for _ in range(warmup):
            run(ids)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(ids)
            samples[name].append(time.perf_counter() - start)
    return samples


def main(argv=None) -> int:
    args = parse_args(argv)
    pin_threads(args.threads, args.omp_wait_policy)
    ensure_cpu_mode()
    ensure_repo_on_path()
    import gc

    import torch

    model_dir = build_model(args.model)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    batches = {f"{args.batch}x{args.seq_len}": batch_ids(args.batch, args.seq_len, vocab)}
    if args.mixed:
        mixed = batch_ids(args.batch, args.seq_len, vocab, seed=1, min_len=16)
        batches[f"{args.batch}x16..{args.seq_len} (mean {statistics.fmean(map(len, mixed)):.0f})"] \
            = mixed
    info_start = machine_info(args.threads)
    rows, results = [], []
    for dtype in args.dtypes:
        llm, plugin = make_plugin(model_dir, dtype, args.batch, args.seq_len)
        hf_model, hf = make_hf(model_dir, dtype)
        for shape, ids in batches.items():
            # Same vectors (sanity: a benchmark of wrong outputs is no benchmark).
            few = ids[:3] + ids[-3:]
            got, want = torch.tensor(plugin(few)), hf(few)
            cosine = float(torch.nn.functional.cosine_similarity(got, want, dim=-1).min())
            samples = time_interleaved({"plugin": plugin, "hf": hf}, ids, args.rounds,
                                       args.warmup)
            med = {k: statistics.median(v) for k, v in samples.items()}
            ratio = med["hf"] / med["plugin"]
            for name, label in (("plugin", "plugin (vLLM + IPEX, CPU mode)"),
                                ("hf", "HF transformers forward")):
                rows.append([label, dtype, shape, med[name] * 1e3, len(ids) / med[name],
                             ratio if name == "plugin" else 1.0,
                             cosine if name == "plugin" else None])
            results.append({"dtype": dtype, "batch": shape, "median_s": med,
                            "samples_s": samples, "ratio_plugin_over_hf": ratio,
                            "min_cosine_vs_hf": cosine})
        llm.llm_engine.engine_core.shutdown()
        del llm, plugin, hf_model, hf
        gc.collect()
    info_end = machine_info(args.threads)
    print(format_table(["engine", "dtype", "batch", "ms/batch", "embeddings/s", "x HF",
                        "min cos vs HF"], rows))
    print(f"model: {model_dir} ({'MiniLM-L6 shape, random weights' if not args.model else ''})")
    print(f"machine (start): {describe_machine(info_start)}")
    print(f"machine (end):   {describe_machine(info_end)}")
    for r in results:
        print(f"{r['dtype']} {r['batch']}: plugin {r['ratio_plugin_over_hf']:.2f}x HF "
              f"(target >= {TARGET_RATIO}x: {verdict(r['ratio_plugin_over_hf'] >= TARGET_RATIO)})")
    save_json({"args": {k: str(v) for k, v in vars(args).items()}, "model": str(model_dir),
               "machine_start": info_start, "machine_end": info_end, "results": results},
              args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
