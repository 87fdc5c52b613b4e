"""scripts/first_day_on_hardware.py --dry-run: the report a first hardware user attaches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_json_and_markdown(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/first_day_on_hardware.py", "--dry-run",
                           "--out", str(tmp_path), "--model", "some/model"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "first_day.json").read_text())
    names = [s["name"] for s in report["steps"]]
    assert names[0] == "doctor" and "xpu-marked tests" in names
    assert names[-1] == "seed serving workload"
    assert all(s["status"] == "dry-run" for s in report["steps"]) and report["passed"]
    xpu_steps = [s for s in report["steps"] if "pytest" in s["cmd"]]
    # The tests on the GPU run with the XPU test switch, never in CPU mode.
    assert xpu_steps and all(s["env"] == {"VLLM_XPU_PLUGIN_TEST_DEVICE": "xpu"}
                             for s in xpu_steps)
    assert "some/model" in report["steps"][-1]["cmd"]
    md = (tmp_path / "first_day.md").read_text()
    assert md.count("| dry-run |") == len(names)
