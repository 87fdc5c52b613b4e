"""Kernel roofline: the plugin's attention backend and ops vs plain torch, vs bandwidth.

    make bench-kernels                      # CPU mode, 2 threads
    OMP_NUM_THREADS=2 VLLM_XPU_PLUGIN_DEVICE=cpu python -m benchmarks.kernels [--quick]

For each kernel it prints the plugin's time next to a plain-torch reference measured in the
same run (interleaved, median), the bytes the kernel must move, the achieved GB/s and that
as a % of the memory bandwidth measured at the start of the run (a STREAM-like copy over
arrays larger than the last-level cache). Decode attention and the element-wise ops are
bandwidth-bound, so % of bandwidth is their roofline; the chunked-prefill batch is
compute-bound as well, so its TFLOP/s is printed next to the bf16 GEMM rate of this run.
Outputs are checked against the reference (max abs error) before anything is timed.

What runs:
- attention: ``IPEXAttentionImpl.forward`` (KV write + paged attention) through the
  backend's own metadata, on a decode batch (32 sequences x 1024 context by default) and
  on a chunked-prefill batch (one 512-token chunk over 1024 cached tokens + 31 decodes);
  reference: gather the pages with torch indexing, then ``scaled_dot_product_attention``.
- RMSNorm (plain and fused-add), rotary embedding (NeoX), SiluAndMul: the vLLM layer
  classes, which dispatch to the plugin's ``forward_oot``; reference: the formula in torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_thread_args(ap)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batch", type=int, default=32, help="decode sequences")
    ap.add_argument("--context", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--chunk", type=int, default=512, help="prefill chunk (chunked batch)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-size", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=4096, help="RMSNorm hidden size")
    ap.add_argument("--intermediate", type=int, default=14336, help="SiluAndMul width")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens for element-wise ops")
    ap.add_argument("--stream-mib", type=int, default=512,
                    help="size of each STREAM copy array (keep it above the LLC size)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes, few rounds: checks the script runs (smoke test)")
    ap.add_argument("--json", type=Path, default=None,
                    help="where to save results (default benchmarks/results/kernels.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.context, args.chunk = 4, 128, 32
        args.heads, args.kv_heads, args.head_size = 4, 2, 64
        args.hidden, args.intermediate, args.tokens, args.stream_mib = 256, 512, 64, 32
    if args.context % args.block_size or args.chunk > args.context:
        ap.error("--context must be a multiple of --block-size and >= --chunk")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.pin_threads(args.threads, args.omp_wait_policy)
    _common.ensure_cpu_mode()
    import torch

    from benchmarks import kernel_cases

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rounds = 3 if args.quick else 7
    info = _common.machine_info(args.threads)
    print(f"# kernels: {_common.describe_machine(info)}")

    from benchmarks import roofline

    bandwidth = roofline.copy_bandwidth(args.stream_mib, rounds=3 if args.quick else 5)
    k, n = args.hidden, args.hidden
    gemm = roofline.matmul_flops([(k, n)], dtype, tokens=256 if args.quick else 2048,
                                 rounds=2 if args.quick else 3)
    print(f"memory bandwidth (STREAM copy, 2 x {args.stream_mib} MiB): {bandwidth / 1e9:.1f} GB/s;"
          f" {args.dtype} GEMM {args.hidden}x{args.hidden}: {gemm / 1e12:.2f} TFLOP/s\n")

    cases = kernel_cases.build_cases(args, dtype)
    rows, results = [], []
    for case in cases:
        err = case.check()
        times = _common.compare({"plugin": case.plugin, "torch": case.reference},
                                rounds=rounds, min_round_s=0.02 if args.quick else 0.1)
        t_plugin, t_ref = times["plugin"], times["torch"]
        gbs = case.bytes / t_plugin / 1e9
        tflops = case.flops / t_plugin / 1e12 if case.flops else float("nan")
        result = dict(name=case.name, shape=case.shape, plugin_us=t_plugin * 1e6,
                      torch_us=t_ref * 1e6, speedup=t_ref / t_plugin, bytes=case.bytes,
                      plugin_gbs=gbs, pct_bandwidth=100 * gbs * 1e9 / bandwidth,
                      flops=case.flops, plugin_tflops=tflops, max_abs_err=err)
        results.append(result)
        rows.append([case.name, case.shape, result["plugin_us"], result["torch_us"],
                     result["speedup"], gbs, result["pct_bandwidth"], tflops, err])
    print(_common.format_table(
        ["kernel", "shape", "plugin us", "torch us", "x torch", "plugin GB/s", "% BW",
         "TFLOP/s", "max err"], rows))

    decode = next(r for r in results if r["name"] == "attn decode")
    print(f"\ntarget: decode attention >= 50% of measured bandwidth: "
          f"{decode['pct_bandwidth']:.0f}% -> {_common.verdict(decode['pct_bandwidth'] >= 50)}")
    out = args.json or _common.RESULTS_DIR / ("kernels-quick.json" if args.quick else "kernels.json")
    _common.save_json(dict(machine=info, args=vars(args), bandwidth_bytes_per_s=bandwidth,
                           gemm_flops_per_s=gemm, kernels=results), out)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
