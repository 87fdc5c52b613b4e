"""Decode roofline of an Intel GPU for a served model, and the fraction a run achieved.

Used by benchmarks/xpu_seed_workload.sh after ``vllm bench serve``; also runs anywhere
(no GPU needed) given the GPU name and the result JSON:

    python -m benchmarks.xpu_roofline --model DIR --gpu "Intel(R) Arc(TM) B580 Graphics" \
        --result result.json [--concurrency 16 --input-len 1024 --output-len 1024]

A decode step must read every weight once plus each running sequence's KV cache, so at
concurrency c with mean context L its time is at least
    (weight bytes + c * L * KV bytes per token) / memory bandwidth,
and the ceiling of output tokens/s is c / that. Achieved fraction = that floor / the
measured mean TPOT (the decode time per output token of one request).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# Peak memory bandwidth (vendor specifications), GB/s. Key: a regex on the device name.
GPU_BANDWIDTH_GBS = {
    r"max\s*1550": ("Intel Data Center GPU Max 1550", 3280.0),
    r"pro\s*b60": ("Intel Arc Pro B60", 456.0),
    r"b580": ("Intel Arc B580", 456.0),
    r"a770": ("Intel Arc A770", 560.0),
}

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "half": 2, "float": 4}


def lookup_bandwidth(gpu_name: str) -> tuple[str, float] | None:
    """(marketing name, GB/s) for a torch.xpu device name, or None when not in the table."""
    for pattern, entry in GPU_BANDWIDTH_GBS.items():
        if re.search(pattern, gpu_name, re.IGNORECASE):
            return entry
    return None


def weight_bytes(model_dir: Path) -> int:
    """Bytes of the checkpoint's tensors (safetensors headers; no tensor is loaded)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{model_dir}: no *.safetensors files to size the weights from")
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        for name, meta in header.items():
            if name != "__metadata__":
                start, end = meta["data_offsets"]
                total += end - start
    return total


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    text = config.get("text_config", config)
    heads = text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    return 2 * text["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def roofline(model_dir: Path, bandwidth_gbs: float, concurrency: int, input_len: int,
             output_len: int, kv_dtype_bytes: int = 2) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    w = weight_bytes(model_dir)
    kv = kv_bytes_per_token(config, kv_dtype_bytes)
    context = input_len + output_len / 2  # mean context over the decode phase
    step_bytes = w + concurrency * context * kv
    floor_s = step_bytes / (bandwidth_gbs * 1e9)
    return dict(weight_bytes=w, kv_bytes_per_token=kv, mean_context=context,
                step_bytes=step_bytes, floor_step_ms=floor_s * 1e3,
                ceiling_output_tok_s=concurrency / floor_s)


def resolve_model_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path
    try:  # a hub id already in the local cache (no download)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - one clear line instead
        raise SystemExit(f"--model {model}: not a local model directory nor in the HF cache "
                         f"({exc.__class__.__name__})") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model dir or HF id in the local cache")
    ap.add_argument("--gpu", default=None, help="device name (default: torch.xpu's)")
    ap.add_argument("--bandwidth-gbs", type=float, default=None,
                    help="override / supply the memory bandwidth in GB/s")
    ap.add_argument("--result", type=Path, default=None, help="vllm bench serve result JSON")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=1024)
    ap.add_argument("--kv-dtype-bytes", type=int, default=2)
    args = ap.parse_args(argv)

    gpu = args.gpu
    if gpu is None:
        import torch

        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise SystemExit("no Intel GPU visible to torch.xpu: pass --gpu NAME")
        gpu = torch.xpu.get_device_name(0)
    entry = lookup_bandwidth(gpu)
    if args.bandwidth_gbs:
        name, bw = gpu, args.bandwidth_gbs
    elif entry:
        name, bw = entry
    else:
        known = ", ".join(v[0] for v in GPU_BANDWIDTH_GBS.values())
        raise SystemExit(f"{gpu!r} is not in the bandwidth table ({known}): pass "
                         "--bandwidth-gbs")
    model_dir = resolve_model_dir(args.model)
    r = roofline(model_dir, bw, args.concurrency, args.input_len, args.output_len,
                 args.kv_dtype_bytes)
    print(f"GPU: {gpu} -> {name}, {bw:.0f} GB/s")
    print(f"model: {model_dir.name}: weights {r['weight_bytes'] / 1e9:.2f} GB, KV "
          f"{r['kv_bytes_per_token'] / 1024:.0f} KiB/token; decode step at c={args.concurrency},"
          f" mean context {r['mean_context']:.0f}: {r['step_bytes'] / 1e9:.2f} GB read")
    print(f"decode roofline: step >= {r['floor_step_ms']:.2f} ms -> <= "
          f"{r['ceiling_output_tok_s']:.0f} output tok/s")
    if args.result:
        res = json.loads(args.result.read_text())
        tpot, tput = res["mean_tpot_ms"], res["output_throughput"]
        r.update(measured_mean_tpot_ms=tpot, measured_output_tok_s=tput,
                 achieved_fraction=r["floor_step_ms"] / tpot)
        print(f"measured: mean TPOT {tpot:.2f} ms, output {tput:.0f} tok/s (incl. prefill) -> "
              f"decode at {100 * r['achieved_fraction']:.0f}% of the bandwidth roofline")
    print(json.dumps({"gpu": gpu, "bandwidth_gbs": bw, **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
