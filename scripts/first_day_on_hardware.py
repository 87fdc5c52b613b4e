"""First day on an Intel GPU: one command, one report to attach to an issue.

    python scripts/first_day_on_hardware.py [--model MODEL] [--out DIR] [--dry-run]

Steps (each one's command, exit code, duration and output tail go into the report):
1. ``vllm-xpu-doctor --json`` (versions, the GPU, vLLM picks the plugin)
2. the xpu-marked tests: ``pytest -m xpu tests`` with VLLM_XPU_PLUGIN_TEST_DEVICE=xpu
3. the call-surface and attention tests on the GPU (short accuracy check of the kernels
   against plain torch): ``pytest tests/test_attention.py tests/test_xpu_call_surface.py``
4. the seed's serving workload: ``benchmarks/xpu_seed_workload.sh MODEL``
Writes ``DIR/first_day.json`` and ``DIR/first_day.md``. ``--dry-run`` runs nothing: it
writes the same report with every step marked "dry-run" (works without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


def steps(model: str) -> list[dict]:
    py = sys.executable
    xpu_env = {"VLLM_XPU_PLUGIN_TEST_DEVICE": "xpu"}
    return [
        {"name": "doctor", "cmd": [py, "-m", "vllm_xpu_plugin.doctor", "--json"], "env": {}},
        {"name": "xpu-marked tests", "cmd": [py, "-m", "pytest", "-q", "-m", "xpu", "tests"],
         "env": xpu_env},
        {"name": "kernel accuracy (attention, call surface) on the GPU",
         "cmd": [py, "-m", "pytest", "-q", "tests/test_attention.py",
                 "tests/test_xpu_call_surface.py", "tests/test_ops.py"], "env": xpu_env},
        {"name": "seed serving workload",
         "cmd": ["bash", "benchmarks/xpu_seed_workload.sh", model], "env": {}},
    ]


def run_step(step: dict, dry_run: bool, timeout: float) -> dict:
    result = {"name": step["name"], "cmd": " ".join(step["cmd"]), "env": step["env"]}
    if dry_run:
        return {**result, "status": "dry-run", "returncode": None, "seconds": 0.0, "tail": ""}
    start = time.monotonic()
    try:
        proc = subprocess.run(step["cmd"], cwd=REPO_ROOT, env={**os.environ, **step["env"]},
                              capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        rc, tail = -1, f"{type(exc).__name__}: {exc}"
    return {**result, "status": "passed" if rc == 0 else "failed", "returncode": rc,
            "seconds": round(time.monotonic() - start, 1), "tail": tail}


def markdown(report: dict) -> str:
    lines = ["# vllm-xpu-plugin: first day on hardware", "",
             f"- machine: {report['machine']}", f"- python: {report['python']}",
             f"- model: {report['model']}", f"- dry run: {report['dry_run']}", "",
             "| step | status | exit code | seconds |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['returncode']} | {s['seconds']} |"
              for s in report["steps"]]
    for s in report["steps"]:
        lines += ["", f"## {s['name']}", "", f"`{s['cmd']}`", "", "```", s["tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "first_day_report")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per step")
    args = parser.parse_args(argv)
    results = [run_step(s, args.dry_run, args.timeout) for s in steps(args.model)]
    report = {"machine": f"{platform.node()} {platform.machine()} {platform.platform()}",
              "python": sys.version.split()[0], "model": args.model, "dry_run": args.dry_run,
              "steps": results,
              "passed": all(r["status"] in ("passed", "dry-run") for r in results)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "first_day.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "first_day.md").write_text(markdown(report))
    print(f"report: {args.out / 'first_day.md'} and first_day.json")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
