"""Engine-step profile: host overhead per step, and the decode step vs its floor.

    make bench-step      # or: python -m benchmarks.step_profile [--batches 1 16]

Runs ``vllm.LLM`` with the plugin and a benchmark-only worker
(benchmarks/timed_worker.py) that timestamps every ``execute_model`` and times the model
forward (+ logits) and the sampler inside it. For the steady decode steps of each batch
size it prints the median engine step (start of one step to the start of the next), the
forward, and the host overhead = step - forward, split into:

- in the runner: input preparation, sampling, bookkeeping (``execute_model`` - forward);
- outside the runner: scheduling, output processing, engine messaging (step -
  ``execute_model``).

Floor of a decode step at batch B (issue 7), with ceilings measured in this run: the larger
of (weight bytes read per step / STREAM-copy bandwidth) and (model FLOPs / the FLOP/s
the faster of ``F.linear`` and the prepacked TPP GEMM reaches on each of the model's own
weight shapes at 1024 tokens). A decode step also
reads every sequence's KV cache, which the issue's floor leaves out; "floor+KV" adds those
bytes (B x mean context x layers x 2 x KV heads x head size x element size). Also printed:
the time the same GEMMs take alone at B rows, no model around them: torch's F.linear
("GEMMs") and the product's prepacked path ("packed"); packed / bandwidth-floor says how
much of the floor the GEMMs alone already use.

``--op-profile N`` (default 8): afterwards, torch.profiler (CPU, record_shapes) over N steady
decode steps at the largest batch (``--op-profile-batch B``: at B); prints the top ops by
self CPU time per step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common, peer_setup  # noqa: E402

TARGET_STEP_OVER_FLOOR = 1.5  # issue 7: decode step at batch 16 within 1.5x of its floor
TARGET_HOST_OVERHEAD_VS_PEER = 1.0  # issue 15: host overhead <= vLLM CPU backend's, same batch
PEER = "vLLM CPU"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: SmolLM2 fixture)")
    _common.add_thread_args(ap)
    peer_setup.add_peer_args(ap)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--stream-mib", type=int, default=512)
    ap.add_argument("--ab-prepack", action="store_true",
                    help="also run with the CPU-mode prepacked GEMMs switched off, "
                         "interleaved with the default, on the same engine")
    ap.add_argument("--rounds", type=int, default=None,
                    help="runs per (variant, batch), interleaved (default 1; 2 with --ab-prepack)")
    ap.add_argument("--op-profile", type=int, default=8, metavar="N",
                    help="profile N decode steps at the largest batch op by op (0: off)")
    ap.add_argument("--op-profile-batch", type=int, default=None, metavar="B",
                    help="profile at this batch instead of the largest")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="short run (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.input_len, args.output_len, args.stream_mib = 16, 12, 32
    return args


def _median(values):
    return statistics.median(values) if values else float("nan")


def summarize(records: list[dict], batch: int) -> dict:
    """Medians over the steady decode steps (every request decoding one token).

    Every derived interval (host overhead, the runner's untimed rest, ...) is computed per
    step first and its median taken after: a difference of two medians mixes different
    steps, and next to a forward that varies by milliseconds it is off by as much (it went
    negative for the peer's untimed rest in session 6).
    """
    steps = []
    for cur, nxt in zip(records, records[1:], strict=False):
        if cur["num_reqs"] == batch and cur["num_tokens"] == batch:
            s = dict(step=nxt["start"] - cur["start"], execute=cur["end"] - cur["start"],
                     forward=cur["forward"], sample=cur["sample"],
                     prep=cur.get("prep", 0.0), bookkeep=cur.get("bookkeep", 0.0),
                     schedule=cur.get("schedule", math.nan),
                     update=cur.get("update", math.nan))
            s["runner_other"] = (s["execute"] - s["forward"] - s["sample"] - s["prep"]
                                 - s["bookkeep"])
            s["outside_runner"] = s["step"] - s["execute"]
            # Outside the runner and the scheduler: engine-core loop, output queue, messaging.
            s["outside_other"] = s["outside_runner"] - s["schedule"] - s["update"]
            s["host_overhead"] = s["step"] - s["forward"]
            steps.append(s)
    if not steps:
        raise RuntimeError(f"no steady decode steps at batch {batch} were recorded")
    out = {k: _median([s[k] for s in steps]) for k in steps[0]}
    out["decode_steps"] = len(steps)
    out["all_steps"] = len(records)
    return out


def kv_bytes(config: dict, batch: int, context: float, element_size: int) -> float:
    """KV-cache bytes one decode step reads: every sequence's K and V in every layer."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return batch * context * config["num_hidden_layers"] * 2 * kv_heads * head_dim * element_size


def op_table(profile: dict, top: int = 15) -> tuple[str, list[dict]]:
    """Top ops of an op profile by self CPU time per step, summed over input shapes."""
    by_name: dict[str, dict] = {}
    for op in profile["ops"]:
        agg = by_name.setdefault(op["name"], dict(name=op["name"], calls_per_step=0.0,
                                                  self_ms_per_step=0.0))
        agg["calls_per_step"] += op["calls_per_step"]
        agg["self_ms_per_step"] += op["self_ms_per_step"]
    ops = sorted(by_name.values(), key=lambda o: -o["self_ms_per_step"])
    total = profile["ops_self_ms_per_step"]
    rows = [[o["name"], o["calls_per_step"], o["self_ms_per_step"],
             100 * o["self_ms_per_step"] / total] for o in ops[:top]]
    rest = sum(o["self_ms_per_step"] for o in ops[top:])
    rows.append([f"({len(ops) - top} other ops)", float("nan"), rest, 100 * rest / total])
    return _common.format_table(["op", "calls/step", "self ms/step", "% of op time"], rows), ops


def model_costs(weights: list[dict], config: dict, batch: int, context: float):
    """(bytes read, linear FLOPs, attention FLOPs, weight shapes) of one decode step."""
    names = {w["name"] for w in weights}
    tied = not any(n.endswith("lm_head.weight") for n in names)
    total_bytes, gemm_shapes = 0, []
    for w in weights:
        is_embed = "embed_tokens" in w["name"]
        if is_embed and not tied:
            continue  # only B rows of an untied embedding are read
        total_bytes += w["bytes"]
        if len(w["shape"]) == 2 and (w["name"].endswith(".weight")) and (
                is_embed or "norm" not in w["name"]):
            n, k = w["shape"]
            gemm_shapes.append((k, n))
    linear_flops = sum(2 * batch * k * n for k, n in gemm_shapes)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    attn_flops = int(4 * batch * context * heads * head_dim * config["num_hidden_layers"])
    return total_bytes, linear_flops, attn_flops, gemm_shapes


def gemm_rates_by_path(shapes, dtype, tokens: int, rounds: int) -> dict:
    """{(in, out): (torch F.linear FLOP/s, prepacked TPP FLOP/s or 0 if it does not take
    the shape)} at ``tokens`` rows. The compute floor takes the faster: torch's alone is no
    ceiling where it has no vector path for the dtype (bf16 on AVX2-only CPUs, 0.01 TFLOP/s,
    2026-12-02), which made the floor meaningless there."""
    import torch

    from benchmarks import roofline
    from vllm_xpu_plugin.kernels import gemm

    out = {}
    gen = torch.Generator().manual_seed(0)
    for k, n in sorted(set(shapes)):
        torch_rate = roofline.matmul_flops([(k, n)], dtype, tokens=tokens, rounds=rounds)
        packed = gemm.cpu_pack_linear_weight(
            (torch.randn(n, k, generator=gen) * 0.02).to(dtype))
        packed_rate = 0.0
        if packed is not None:
            x = torch.randn(tokens, k, generator=gen).to(dtype)
            seconds = _common.compare(
                {"tpp": lambda x=x, p=packed, n=n: torch.ops.torch_ipex.tpp_linear(x, p, n)},
                rounds=rounds, min_round_s=0.0, warmup=1)["tpp"]
            packed_rate = 2 * tokens * k * n / seconds
        out[(k, n)] = (torch_rate, packed_rate)
    return out


def gemms_alone(shapes, dtype, batch: int, rounds: int) -> tuple[float, float]:
    """Seconds for one pass over every weight shape at ``batch`` rows: (torch's F.linear,
    the product's CPU-mode GEMM path on prepacked weights), interleaved."""
    import torch

    from vllm_xpu_plugin.kernels import gemm

    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen).to(dtype) for k, n in shapes]
    packed = [gemm.cpu_pack_linear_weight(w) for w in weights]
    inputs = {k: torch.randn(batch, k, generator=gen).to(dtype) for k, _ in shapes}

    def plain():
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    def prepacked():
        for w, p in zip(weights, packed, strict=True):
            if p is None:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            else:
                gemm.cpu_linear(inputs[w.shape[1]], w, None, p)

    t = _common.compare({"plain": plain, "prepacked": prepacked}, rounds=rounds,
                        min_round_s=0.0, warmup=1)
    return t["plain"], t["prepacked"]


def start_peer(args, model, engine_args) -> peer_setup.EngineProcess | None:
    """vLLM's CPU backend with its timed worker, in its own venv (not waited for yet)."""
    venv = peer_setup.ensure_peer(args)
    if venv is None:
        return None
    side = peer_setup.peer_side(venv, peer_setup.stage_peer_modules())
    log = _common.RESULTS_DIR / "step_profile-raw" / "peer-engine.log"
    print(f"# peer: vLLM's CPU backend from {venv}, log {log}", flush=True)
    return peer_setup.EngineProcess(
        side, model, dict(engine_args, worker_cls="benchmarks.peer_timed_worker.PeerTimedWorker"),
        log)


HOST_COLUMNS = [("step", "step ms"), ("forward", "forward"), ("host_overhead", "host ovh"),
                ("prep", "input prep"), ("sample", "sample"), ("bookkeep", "bookkeep"),
                ("runner_other", "runner other"), ("schedule", "schedule"),
                ("update", "update"), ("outside_other", "engine other")]


def host_overhead_table(plugin: dict[int, dict], peer: dict[int, dict]):
    """Side-by-side rows per batch (ms) and plugin/peer host-overhead ratios."""
    rows, ratios = [], {}
    for batch in sorted(set(plugin) & set(peer)):
        for name, s in (("plugin", plugin[batch]), (PEER, peer[batch])):
            rows.append([name, batch, *(1e3 * s[k] for k, _ in HOST_COLUMNS),
                         100 * s["host_overhead"] / s["step"], batch / s["step"]])
        ratios[batch] = plugin[batch]["host_overhead"] / peer[batch]["host_overhead"]
        rows.append(["  plugin/peer", batch, *(plugin[batch][k] / peer[batch][k]
                                               if peer[batch][k] else float("nan")
                                               for k, _ in HOST_COLUMNS),
                     float("nan"), peer[batch]["step"] / plugin[batch]["step"]])
    headers = ["side", "batch", *(h for _, h in HOST_COLUMNS), "ovh %", "tok/s"]
    return _common.format_table(headers, rows), ratios


def main(argv=None) -> int:
    args = parse_args(argv)
    model, info = _common.start_model_run(args)
    import torch

    config = json.loads((model / "config.json").read_text())
    dtype = getattr(torch, args.dtype)
    print(f"# step profile: {model.name} {args.dtype}, {args.input_len} in / {args.output_len}"
          f" out\n# {_common.describe_machine(info)}\n# start: {_common.uptime()}", flush=True)

    os.environ.setdefault("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", str(peer_setup.KV_CACHE_GIB))
    engine_args = dict(dtype=args.dtype, seed=0, enable_prefix_caching=False,
                       scheduler_cls="benchmarks.peer_step_timing.TimedScheduler",
                       max_model_len=args.input_len + args.output_len + 16,
                       max_num_seqs=max(args.batches))
    peer = start_peer(args, model, engine_args)  # builds while the plugin's engine does
    try:
        return _main(args, model, info, config, dtype, engine_args, peer)
    finally:
        if peer is not None:
            peer.stop()


def _main(args, model, info, config, dtype, engine_args, peer) -> int:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from benchmarks import roofline

    llm = LLM(model=str(model), worker_cls="benchmarks.timed_worker.TimedWorker", **engine_args)
    cc = llm.llm_engine.vllm_config.compilation_config
    print(f"# plugin: compilation level {int(cc.level)} ({cc.backend or '-'})", flush=True)
    vocab = config["vocab_size"]
    gen = torch.Generator().manual_seed(0)

    def prompts(n):
        return [TokensPrompt(prompt_token_ids=torch.randint(3, vocab, (args.input_len,),
                                                            generator=gen).tolist())
                for _ in range(n)]

    llm.generate(prompts(max(args.batches)), SamplingParams(max_tokens=4, ignore_eos=True),
                 use_tqdm=False)  # warm-up
    peer_info = None
    if peer is not None:
        peer.wait_ready()
        peer_info = peer.call("info")
        peer_setup.check_peer_info(peer_info)
        print(f"# peer: {peer_info['platform']} ({peer_info['platform_module']}), vLLM "
              f"{peer_info['vllm']}, compilation level {peer_info['compilation_level']} "
              f"({peer_info['compilation_backend']}), {peer_info['torch_threads']} threads, "
              f"cwd {peer_info['cwd']}", flush=True)
        peer.call("steps", batch=max(args.batches), input_len=args.input_len,
                  output_len=4)  # warm-up
    peer_rounds: dict[int, list[dict]] = {}
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    packed_layers = llm.collective_rpc("set_prepacked_gemms", args=(True,))[0]
    variants = ["prepacked", "plain"] if args.ab_prepack and packed_layers else ["default"]
    rounds = args.rounds or (2 if len(variants) > 1 else 1)
    per_round: dict[tuple[str, int], list[dict]] = {}
    for _ in range(rounds):
        for variant in variants:
            llm.collective_rpc("set_prepacked_gemms", args=(variant != "plain",))
            for batch in args.batches:
                llm.collective_rpc("reset_step_records")
                t0 = time.perf_counter()
                llm.generate(prompts(batch), params, use_tqdm=False)
                wall = time.perf_counter() - t0
                summary = summarize(llm.collective_rpc("get_step_records")[0], batch)
                summary["wall_tok_s"] = batch * args.output_len / wall
                per_round.setdefault((variant, batch), []).append(summary)
                print(f"{variant} batch {batch}: decode step {summary['step'] * 1e3:.1f} ms, "
                      f"forward {summary['forward'] * 1e3:.1f} ms", flush=True)
        for batch in args.batches if peer is not None else ():
            out = peer.call("steps", batch=batch, input_len=args.input_len,
                            output_len=args.output_len, seed=len(peer_rounds) + batch)
            summary = summarize(out["records"], batch)
            summary["wall_tok_s"] = out["output_tokens"] / out["seconds"]
            peer_rounds.setdefault(batch, []).append(summary)
            print(f"{PEER} batch {batch}: decode step {summary['step'] * 1e3:.1f} ms, "
                  f"forward {summary['forward'] * 1e3:.1f} ms", flush=True)
    llm.collective_rpc("set_prepacked_gemms", args=(True,))
    profile = None
    profile_batch = args.op_profile_batch or max(args.batches)
    if args.op_profile > 0:
        batch = profile_batch
        llm.collective_rpc("profile_decode_steps", args=(batch, args.op_profile))
        llm.generate(prompts(batch), SamplingParams(temperature=0.0, max_tokens=min(
            args.output_len, args.op_profile + 4), ignore_eos=True), use_tqdm=False)
        profile = llm.collective_rpc("get_profile")[0]
    peer_profile = None
    if peer is not None and args.op_profile > 0:
        peer_profile = peer.call("profile", batch=profile_batch, steps=args.op_profile,
                                 input_len=args.input_len)
    runs = {key: {k: _median([r[k] for r in rs]) for k in rs[0]}
            for key, rs in per_round.items()}
    peer_runs = {b: {k: _median([r[k] for r in rs]) for k in rs[0]}
                 for b, rs in peer_rounds.items()}
    weights = llm.collective_rpc("weight_shapes")[0]
    del llm
    print(f"CPU-mode prepacked GEMMs: {packed_layers} layers")

    # Ceilings, measured now (the engine is idle).
    rounds = 2 if args.quick else 3
    bandwidth = roofline.copy_bandwidth(args.stream_mib, rounds=rounds + 2)
    _, _, _, shapes = model_costs(weights, config, 1, 1)
    rates_by_path = gemm_rates_by_path(shapes, dtype, tokens=128 if args.quick else 1024,
                                       rounds=rounds)
    rates = {s: max(r) for s, r in rates_by_path.items()}

    rows, results, alone_cache = [], {}, {}
    context = args.input_len + args.output_len / 2
    for (variant, batch), s in runs.items():
        wbytes, lin_flops, attn_flops, shapes = model_costs(weights, config, batch, context)
        t_bw = wbytes / bandwidth
        t_compute = sum(2 * batch * k * n / rates[(k, n)] for k, n in shapes)
        t_compute += attn_flops / statistics.fmean(rates.values())
        floor = max(t_bw, t_compute)
        t_kv = kv_bytes(config, batch, context, torch.tensor([], dtype=dtype).element_size())
        floor_kv = max((wbytes + t_kv) / bandwidth, t_compute)
        if batch not in alone_cache:
            alone_cache[batch] = gemms_alone(shapes, dtype, batch, rounds)
        alone, alone_packed = alone_cache[batch]
        r = dict(**s, weight_bytes=wbytes, linear_flops=lin_flops, attn_flops=attn_flops,
                 floor_bandwidth=t_bw, floor_compute=t_compute, floor=floor,
                 kv_bytes=t_kv, floor_with_kv=floor_kv, step_over_floor_with_kv=s["step"] / floor_kv,
                 gemms_alone=alone, gemms_alone_prepacked=alone_packed,
                 step_over_floor=s["step"] / floor,
                 forward_over_floor=s["forward"] / floor)
        results[f"{variant}/{batch}" if len(variants) > 1 else str(batch)] = r
        ms = 1e3
        rows.append([variant, batch, s["step"] * ms, s["forward"] * ms, s["host_overhead"] * ms,
                     100 * s["host_overhead"] / s["step"],
                     (s["prep"] + s["bookkeep"] + s["runner_other"]) * ms,
                     s["sample"] * ms, s["outside_runner"] * ms, floor * ms, floor_kv * ms,
                     alone * ms, alone_packed * ms, r["step_over_floor"],
                     r["step_over_floor_with_kv"],
                     batch / s["step"]])
    torch_rates = [r[0] for r in rates_by_path.values()]
    packed_rates = [r[1] for r in rates_by_path.values() if r[1]]
    print(f"\nbandwidth (STREAM copy) {bandwidth / 1e9:.1f} GB/s; {args.dtype} GEMM on the "
          f"model's shapes: {min(rates.values()) / 1e12:.2f}-{max(rates.values()) / 1e12:.2f}"
          f" TFLOP/s, the faster of torch's F.linear ({min(torch_rates) / 1e12:.2f}-"
          f"{max(torch_rates) / 1e12:.2f}) and prepacked TPP ("
          + (f"{min(packed_rates) / 1e12:.2f}-{max(packed_rates) / 1e12:.2f})"
             if packed_rates else "none)"))
    print(_common.format_table(
        ["variant", "batch", "step ms", "forward", "host ovh", "ovh %", "prep+bk", "sample",
         "outside", "floor ms", "floor+KV", "GEMMs", "packed", "step/floor", "step/floor+KV",
         "tok/s"],
        rows))
    if len(variants) > 1:
        for batch in args.batches:
            a, b = runs[("prepacked", batch)], runs[("plain", batch)]
            print(f"batch {batch}: prepacked GEMMs make the decode step {b['step'] / a['step']:.2f}x"
                  f" faster (forward {b['forward'] / a['forward']:.2f}x) than torch's F.linear")
    print("host ovh = step - forward = prep+bk (runner: inputs, bookkeeping) + sample + "
          "outside (scheduler, output processing, messaging). floor = max(weight bytes / "
          "bandwidth, FLOPs / best GEMM FLOP/s); GEMMs / packed = the model's GEMMs alone at that "
          "batch with F.linear / with the product's prepacked path.")
    if profile:
        table, ops_by_name = op_table(profile)
        print(f"\nop profile: {profile['steps']} decode steps at batch {profile['batch']}, "
              f"execute_model {profile['execute_ms_per_step']:.1f} ms/step (profiler on), ops' "
              f"self CPU {profile['ops_self_ms_per_step']:.1f} ms/step; the rest is Python")
        print(table)
        profile["ops_by_name"] = ops_by_name
    target_batch = 16 if 16 in args.batches else max(args.batches)
    product = variants[0]
    if peer_runs:
        print(f"\nhost overhead per decode step, plugin ({product}) vs {PEER} (its defaults),"
              f" same batches, {args.input_len} in / {args.output_len} out:")
        table, ratios = host_overhead_table(
            {b: runs[(product, b)] for b in args.batches}, peer_runs)
        print(table)
        for b, r in ratios.items():
            print(f"target: batch {b} plugin host overhead <= {PEER}'s: {r:.2f}x -> "
                  f"{_common.verdict(r <= TARGET_HOST_OVERHEAD_VS_PEER)}")
    if peer_profile:
        table, peer_ops = op_table(peer_profile)
        print(f"\n{PEER} op profile: {peer_profile['steps']} decode steps at batch "
              f"{peer_profile['batch']}, execute_model {peer_profile['execute_ms_per_step']:.1f}"
              f" ms/step (profiler on), ops' self CPU "
              f"{peer_profile['ops_self_ms_per_step']:.1f} ms/step")
        print(table)
        peer_profile["ops_by_name"] = peer_ops
    ratio = next(r for (v, b), r in zip(runs, results.values(), strict=True)
                 if v == product and b == target_batch)["step_over_floor"]
    print(f"target: decode step at batch {target_batch} <= {TARGET_STEP_OVER_FLOOR}x floor: "
          f"{ratio:.2f}x -> {_common.verdict(ratio <= TARGET_STEP_OVER_FLOOR)}")
    out = args.json or _common.RESULTS_DIR / (
        "step_profile-quick.json" if args.quick else "step_profile.json")
    _common.save_json(dict(machine=info, args=vars(args), model=str(model),
                           bandwidth_bytes_per_s=bandwidth,
                           gemm_flops_per_s={f"{k}x{n}": v for (k, n), v in rates.items()},
                           gemm_flops_per_s_torch_tpp={f"{k}x{n}": v for (k, n), v
                                                       in rates_by_path.items()},
                           batches=results, op_profile=profile,
                           peer=dict(info=peer_info, batches={str(b): r for b, r in
                                                              peer_runs.items()},
                                     op_profile=peer_profile)), out)
    print(f"# end: {_common.uptime()}\nsaved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
