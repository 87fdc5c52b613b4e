"""HF transformers ``generate`` as the serving baseline: the same prompts, left-padded batches.

Metrics follow ``vllm bench serve``'s definitions so the two sides compare column by
column: output tok/s = generated tokens / wall time; TTFT = from the start of a request's
batch to its first token; TPOT = (end - first token) / (tokens - 1) per request; ITL =
every gap between consecutive tokens. Timestamps come from a StoppingCriteria that runs
once per generated token (after the token is chosen) and never stops generation.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from benchmarks._common import percentile


@dataclass
class HFRun:
    batch_size: int
    num_prompts: int
    output_tokens: int = 0
    seconds: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    tpots: list[float] = field(default_factory=list)
    itls: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Keys and units as in ``vllm bench serve``'s result JSON."""
        ms = 1000.0
        return {
            "output_throughput": self.output_tokens / self.seconds if self.seconds else 0.0,
            "mean_ttft_ms": statistics.fmean(self.ttfts) * ms,
            "p99_ttft_ms": percentile(self.ttfts, 99) * ms,
            "mean_tpot_ms": statistics.fmean(self.tpots) * ms if self.tpots else float("nan"),
            "p99_tpot_ms": percentile(self.tpots, 99) * ms,
            "mean_itl_ms": statistics.fmean(self.itls) * ms if self.itls else float("nan"),
            "p99_itl_ms": percentile(self.itls, 99) * ms,
            "completed": self.num_prompts,
            "output_tokens": self.output_tokens,
            "duration": self.seconds,
            "batch_size": self.batch_size,
        }


class _TokenClock:
    """A StoppingCriteria that only records when each generation step finishes."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


class HFBaseline:
    def __init__(self, model_dir, dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()

    def generate(self, prompts: list[str] | list[list[int]], output_len: int,
                 batch_size: int) -> HFRun:
        """Greedy, exactly ``output_len`` new tokens per prompt (EOS ignored, as
        ``vllm bench serve --ignore-eos``), ``batch_size`` prompts at a time. Prompts are
        text (tokenized as the server does) or token ids (used as they are)."""
        from transformers import StoppingCriteriaList

        run = HFRun(batch_size=batch_size, num_prompts=len(prompts))
        start = time.perf_counter()
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            if isinstance(chunk[0], str):
                # vllm bench serve sends text; the server tokenizes it the same way.
                enc = self.tokenizer(chunk, return_tensors="pt", padding=True,
                                     add_special_tokens=False)
            else:
                enc = self.tokenizer.pad({"input_ids": chunk}, return_tensors="pt",
                                         padding=True)
            clock = _TokenClock()
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    max_new_tokens=output_len, min_new_tokens=output_len,
                    do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                    stopping_criteria=StoppingCriteriaList([clock]))
            new_tokens = out.shape[1] - enc["input_ids"].shape[1]
            run.output_tokens += new_tokens * len(chunk)
            stamps = clock.stamps
            ttft = stamps[0] - t0
            gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
            for _ in chunk:
                run.ttfts.append(ttft)
                if new_tokens > 1:
                    run.tpots.append((stamps[-1] - stamps[0]) / (new_tokens - 1))
                run.itls.extend(gaps)
        run.seconds = time.perf_counter() - start
        return run
