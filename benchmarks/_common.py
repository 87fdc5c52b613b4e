"""Helpers shared by the benchmark scripts: threads, machine facts, timing, tables.

Import this module *before* torch in a script's ``main`` (after parsing arguments):
:func:`pin_threads` sets ``OMP_NUM_THREADS`` for this process and the processes it starts.

Timing on a shared machine: every comparison here is measured in the same run, with the
candidates interleaved round by round (A, B, A, B, ...) and the median taken, so a load
change on the machine hits both sides alike; the ratios are what to read.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

DEFAULT_THREADS = 2


def pin_threads(threads: int, wait_policy: str = "auto") -> int:
    """Set the intra-op thread count for this process and its children (before torch is
    imported, OMP reads the variable once) and return it.

    ``wait_policy``: OMP_WAIT_POLICY for every process of the run. ``auto`` keeps the
    caller's setting and otherwise sets nothing, so that the engine runs its shipped
    default (CPU mode: the spin governor, which a set OMP_WAIT_POLICY turns off). Until
    2026-12-03 ``auto`` set PASSIVE when the 1-min load average reached the CPU count,
    which made "shipped defaults" runs on a loaded machine measure PASSIVE instead.
    """
    if threads <= 0:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    if wait_policy in ("active", "passive"):
        os.environ["OMP_WAIT_POLICY"] = wait_policy.upper()
    elif wait_policy != "auto":
        raise ValueError(f"--omp-wait-policy {wait_policy!r}: use auto, active or passive")
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
    return threads


def add_thread_args(ap) -> None:
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                    help="OMP/torch threads of every process of the run (default 2)")
    ap.add_argument("--omp-wait-policy", default="auto", choices=["auto", "active", "passive"],
                    help="auto (default): keep OMP_WAIT_POLICY if set, else the shipped default")


def ensure_cpu_mode() -> None:
    """Benchmarks on this machine run the plugin in CPU mode unless told otherwise."""
    os.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    # IPEX prints a warning per process when it cannot find a GPU runtime; harmless here.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def ensure_repo_on_path() -> None:
    """Let ``tests.fixtures`` and ``benchmarks`` import when a script is run by path."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    pythonpath = os.environ.get("PYTHONPATH", "")
    if root not in pythonpath.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, pythonpath) if p)


def start_model_run(args) -> tuple[Path, dict[str, Any]]:
    """The common start of a model benchmark: threads and wait policy pinned for this
    process and its children, CPU mode, the model resolved; returns (model, machine info)."""
    pin_threads(args.threads, args.omp_wait_policy)
    ensure_cpu_mode()
    ensure_repo_on_path()
    return resolve_model(args.model), machine_info(args.threads)


def resolve_model(model: str | None) -> Path:
    """``--model`` as given, or the SmolLM2-135M-Instruct test fixture (built on first use
    from the PyPI GGUF; see tests/fixtures/smollm2.py)."""
    if model:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {model}: not a model directory (no config.json)")
        return path
    ensure_repo_on_path()
    from tests.fixtures.smollm2 import build_smollm2

    return build_smollm2()


def machine_info(threads: int) -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, threads, load, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    import torch

    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": load,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "torch": torch.__version__,
        "plugin_device": os.environ.get("VLLM_XPU_PLUGIN_DEVICE", "") or "xpu",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "cpu_flags": cpu_flags(),
    }
    try:
        import intel_extension_for_pytorch as ipex

        info["ipex"] = ipex.__version__
    except Exception:  # noqa: BLE001 - reported, not required
        info["ipex"] = None
    return info


def describe_machine(info: dict[str, Any]) -> str:
    load = "/".join(str(x) for x in info.get("load_average_1_5_15min", []))
    flags = describe_cpu_flags(info["cpu_flags"]) if "cpu_flags" in info else "?"
    return (f"{info['cpu']} ({flags}), {info['logical_cpus']} logical CPUs, "
            f"{info['threads']} threads (OMP_NUM_THREADS {info.get('omp_num_threads', '?')}), "
            f"OMP_WAIT_POLICY {info['omp_wait_policy']}, "
            f"load avg {load or '?'} (1/5/15 min), torch {info['torch']}, "
            f"ipex {info.get('ipex')}, {info['date']}")


def free_port(host: str = "127.0.0.1", ports: Sequence[int] | None = None) -> int:
    """A port nothing listens on: any (the OS picks) or the first free one in ``ports``."""
    for port in ports or (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port on {host} in {ports}")


def port_range(text: str) -> range:
    """``"18200-18299"`` -> range(18200, 18300) (argparse type)."""
    lo, _, hi = text.partition("-")
    first, last = int(lo), int(hi or lo)
    if not 0 < first <= last < 65536:
        raise ValueError(f"bad port range {text!r}")
    return range(first, last + 1)


# Flags that decide which CPU kernels run (bf16 / fp16 GEMMs, AMX tiles).
CPU_FLAGS_OF_INTEREST = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
                         "amx_tile", "amx_fp16")


def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS_OF_INTEREST` the first CPU of /proc/cpuinfo has."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            break
    return {f: f in flags for f in CPU_FLAGS_OF_INTEREST}


def describe_cpu_flags(flags: dict[str, bool]) -> str:
    have = [f for f, ok in flags.items() if ok]
    missing = [f for f, ok in flags.items() if not ok]
    amx = "AMX" if any(ok for f, ok in flags.items() if f.startswith("amx")) else "no AMX"
    return f"{amx}; has {' '.join(have) or '-'}; lacks {' '.join(missing) or '-'}"


def uptime() -> str:
    """The load line of ``uptime`` (1/5/15-min load averages)."""
    try:
        return "load average: " + ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average: ?"


# --------------------------------------------------------------------------- timing


def _time_calls(fn: Callable[[], Any], calls: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


def compare(
    candidates: dict[str, Callable[[], Any]],
    *,
    rounds: int = 7,
    min_round_s: float = 0.05,
    warmup: int = 2,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median seconds per call of each candidate, measured interleaved round by round.

    Each round times every candidate back to back for ~``min_round_s`` (calls per round
    fixed after warm-up), so slow drifts of machine load affect all of them alike.
    """
    calls: dict[str, int] = {}
    for name, fn in candidates.items():
        for _ in range(warmup):
            fn()
        once = max(_time_calls(fn, 1, sync), 1e-7)
        calls[name] = max(1, min(1000, int(min_round_s / once)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(_time_calls(fn, calls[name], sync))
    return {name: statistics.median(s) for name, s in samples.items()}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --------------------------------------------------------------------------- output


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            if abs(v) >= 100:
                return f"{v:.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.2f}"
        return "-" if v is None else str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    return "\n".join([line, sep, *body])


def save_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"
