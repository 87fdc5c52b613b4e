"""Serving throughput and latency: the plugin's server vs HF ``generate``, side by side.

    make bench                                        # SmolLM2-135M-Instruct, CPU mode
    python -m benchmarks.serving --model DIR --concurrency 1 4 16 --input-len 256 \
        --output-len 128 --threads 2

1. Starts ``vllm serve`` with the plugin (CPU mode: ``VLLM_XPU_PLUGIN_DEVICE=cpu
   --device cpu``) on 127.0.0.1 at a free port; it is always stopped by its PID.
2. For each concurrency c: drives it with ``vllm bench serve`` (random dataset, --ignore-eos,
   --max-concurrency c), then runs the *same* prompts (regenerated from the same seed by
   vLLM's RandomDataset) through HF transformers ``generate`` in batches of c. Plugin and
   HF alternate per concurrency, so both see the same machine load.
3. Sweeps HF's batch size on the largest concurrency's prompts and takes its best as the
   baseline a user would otherwise pick.
4. Prints one table (output tok/s, TTFT, TPOT, ITL mean/p99) with the plugin/HF ratio and
   saves JSON and a PNG plot to benchmarks/results/.

vLLM's own CPU backend is not in the comparison: its ``vllm._C`` CPU kernels are absent
from the CUDA wheel of vLLM 0.11 installed here (the plugin never uses them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402

METRICS = ["output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms",
           "mean_itl_ms", "p99_itl_ms"]
HEADERS = ["tok/s", "TTFT ms", "TTFT p99", "TPOT ms", "TPOT p99", "ITL ms", "ITL p99"]
TARGET_RATIO = 2.0  # issue 7: >= 2x HF generate output tok/s at concurrency 16


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: SmolLM2 fixture)")
    _common.add_thread_args(ap)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--num-prompts", type=int, default=None,
                    help="prompts per concurrency level (default: max(c, 4))")
    ap.add_argument("--hf-batch-sizes", type=int, nargs="*", default=None,
                    help="HF batch sizes swept for its best (default: 4 8 16, <= max c)")
    ap.add_argument("--server-timeout", type=float, default=900.0,
                    help="seconds to wait for the server to become healthy")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for vllm serve (repeatable), e.g. --server-arg=--block-size=32")
    ap.add_argument("--out-dir", type=Path, default=_common.RESULTS_DIR)
    ap.add_argument("--tag", default="serving", help="file name stem of the JSON/PNG")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.hf_batch_sizes is None:
        top = max(args.concurrency)
        args.hf_batch_sizes = sorted({b for b in (4, 8, top) if b <= top})
    return args


# --------------------------------------------------------------------------- server


class PluginServer:
    """``vllm serve`` in its own process group; stopped by PID in :meth:`stop`."""

    def __init__(self, args, model: Path, log_path: Path) -> None:
        self.port = _common.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        max_len = args.input_len + args.output_len + 64
        cmd = [str(Path(sys.executable).parent / "vllm"), "serve", str(model),
               "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
               "--dtype", args.dtype, "--max-model-len", str(max_len),
               "--max-num-seqs", str(max(max(args.concurrency), 1)), "--seed", str(args.seed),
               *args.server_arg]
        env = dict(os.environ)
        env.setdefault("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", "1")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        print(f"starting: {' '.join(cmd)}  (log: {log_path})", flush=True)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text().splitlines()[-15:]
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n"
                                   + "\n".join(tail))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"vllm serve not healthy after {timeout:.0f}s (log {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # The group is the one this object created (start_new_session): the
                # server and the engine process it spawned.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()


def bench_serve(args, server: PluginServer, model: Path, concurrency: int, num_prompts: int,
                output_len: int, result_file: Path) -> dict:
    cmd = [str(Path(sys.executable).parent / "vllm"), "bench", "serve",
           "--backend", "vllm", "--base-url", server.url, "--model", str(model),
           "--tokenizer", str(model), "--dataset-name", "random",
           "--random-input-len", str(args.input_len), "--random-output-len", str(output_len),
           "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
           "--ignore-eos", "--seed", str(args.seed),
           "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", str(result_file.parent),
           "--result-filename", result_file.name]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}):\n"
                           + "\n".join((proc.stdout + proc.stderr).splitlines()[-25:]))
    result = json.loads(result_file.read_text())
    if result.get("completed") != num_prompts:
        raise RuntimeError(f"vllm bench serve completed {result.get('completed')} of "
                           f"{num_prompts} requests (see {server.log_path})")
    return result


def same_prompts(model: Path, num_prompts: int, input_len: int, output_len: int,
                 seed: int) -> list[str]:
    """The prompts ``vllm bench serve --dataset-name random --seed seed`` sends."""
    from vllm.benchmarks.datasets import RandomDataset
    from vllm.transformers_utils.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(str(model))
    requests = RandomDataset(random_seed=seed).sample(
        tokenizer=tokenizer, num_requests=num_prompts, input_len=input_len,
        output_len=output_len)
    return [r.prompt for r in requests]


# --------------------------------------------------------------------------- report


def print_table(rows: list[dict]) -> None:
    table = []
    for row in rows:
        c = row["concurrency"]
        table.append([f"plugin  c={c}", *(row["plugin"][m] for m in METRICS)])
        table.append([f"HF      bs={row['hf']['batch_size']}", *(row["hf"][m] for m in METRICS)])
        table.append(["  plugin/HF", *(row["ratio"][m] for m in METRICS)])
    print(_common.format_table(["run", *HEADERS], table))
    print("(ratio > 1 is better for tok/s, < 1 is better for the latencies)")


def plot(rows: list[dict], hf_best: dict, path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("PNG skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    conc = [r["concurrency"] for r in rows]
    x = range(len(conc))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    ax1.bar([i - width / 2 for i in x], [r["plugin"]["output_throughput"] for r in rows],
            width, label="vllm-xpu-plugin (vllm serve)")
    ax1.bar([i + width / 2 for i in x], [r["hf"]["output_throughput"] for r in rows],
            width, label="HF generate (batch = c)")
    ax1.axhline(hf_best["output_throughput"], color="gray", ls="--",
                label=f"HF best (bs={hf_best['batch_size']})")
    ax1.set_xticks(list(x), [str(c) for c in conc])
    ax1.set_xlabel("concurrency")
    ax1.set_ylabel("output tokens/s")
    ax1.legend(fontsize=8)
    for key, label, color in (("plugin", "plugin", "C0"), ("hf", "HF", "C1")):
        ax2.plot(conc, [r[key]["mean_tpot_ms"] for r in rows], marker="o", color=color,
                 label=f"{label} TPOT")
        ax2.plot(conc, [r[key]["mean_ttft_ms"] for r in rows], marker="s", ls=":",
                 color=color, label=f"{label} TTFT")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrency")
    ax2.set_ylabel("ms (mean)")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    model, info = _common.start_model_run(args)
    import torch

    from benchmarks.hf_baseline import HFBaseline

    print(f"# serving: {model.name}, {args.dtype}, {args.input_len} in / {args.output_len} out,"
          f" concurrency {args.concurrency}\n# {_common.describe_machine(info)}", flush=True)
    print("# vLLM's own CPU backend cannot run here (its vllm._C CPU ops are absent from the "
          "CUDA wheel of vLLM 0.11): the comparison is plugin vs HF transformers.", flush=True)

    hf = HFBaseline(model, getattr(torch, args.dtype))
    work = args.out_dir / f"{args.tag}-raw"
    server = PluginServer(args, model, work / "server.log")
    rows = []
    try:
        t0 = time.monotonic()
        server.wait_healthy(args.server_timeout)
        print(f"server healthy after {time.monotonic() - t0:.0f}s", flush=True)
        top = max(args.concurrency)
        # Warm-up (not recorded): first-call kernel set-up for every batch shape.
        bench_serve(args, server, model, top, top, min(16, args.output_len),
                    work / "warmup.json")
        hf.generate(same_prompts(model, 1, args.input_len, 4, args.seed), 4, 1)
        for c in args.concurrency:
            n = args.num_prompts or max(c, 4)
            plugin = bench_serve(args, server, model, c, n, args.output_len,
                                 work / f"plugin-c{c}.json")
            prompts = same_prompts(model, n, args.input_len, args.output_len, args.seed)
            base = hf.generate(prompts, args.output_len, batch_size=c).metrics()
            row = {"concurrency": c, "num_prompts": n,
                   "plugin": {m: plugin[m] for m in METRICS}, "hf": base}
            row["ratio"] = {m: row["plugin"][m] / base[m] if base[m] else float("nan")
                            for m in METRICS}
            rows.append(row)
            print(f"c={c}: plugin {plugin['output_throughput']:.1f} tok/s, HF "
                  f"{base['output_throughput']:.1f} tok/s", flush=True)
    finally:
        server.stop()

    # HF's best batch size on the largest concurrency's prompts.
    top_row = rows[-1] if rows[-1]["concurrency"] == max(args.concurrency) else max(
        rows, key=lambda r: r["concurrency"])
    prompts = same_prompts(model, top_row["num_prompts"], args.input_len, args.output_len,
                           args.seed)
    sweep = {top_row["hf"]["batch_size"]: top_row["hf"]}
    for bs in args.hf_batch_sizes:
        if bs not in sweep and bs <= len(prompts):
            sweep[bs] = hf.generate(prompts, args.output_len, batch_size=bs).metrics()
    hf_best = max(sweep.values(), key=lambda m: m["output_throughput"])

    print()
    print_table(rows)
    print("\nHF generate batch-size sweep on the c={} prompts: {}".format(
        top_row["concurrency"], ", ".join(f"bs={bs}: {m['output_throughput']:.1f} tok/s"
                                          for bs, m in sorted(sweep.items()))))
    ratio = top_row["plugin"]["output_throughput"] / hf_best["output_throughput"]
    print(f"target: plugin at c={top_row['concurrency']} >= {TARGET_RATIO:.0f}x HF generate "
          f"(best bs={hf_best['batch_size']}): {ratio:.2f}x -> "
          f"{_common.verdict(ratio >= TARGET_RATIO)}")

    info_after = _common.machine_info(args.threads)
    data = dict(machine=info, load_after=info_after["load_average_1_5_15min"], args=vars(args),
                model=str(model), rows=rows, hf_sweep=sweep, hf_best=hf_best,
                ratio_vs_hf_best=ratio)
    json_path = _common.save_json(data, args.out_dir / f"{args.tag}.json")
    png = plot(rows, hf_best, args.out_dir / f"{args.tag}.png",
               f"{model.name} {args.dtype}, {args.input_len} in/{args.output_len} out, "
               f"{args.threads} threads, {info['date']}")
    print(f"saved {json_path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
