"""The test session's device mode is decided in tests/conftest.py only (issue 21): with the
XPU test switch (VLLM_XPU_PLUGIN_TEST_DEVICE=xpu) no collected module may switch CPU mode
on, or the XPU tier's "default suite on the Intel GPU" would pass without touching an XPU
kernel."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = REPO_ROOT / "tests"


def _module_level_writes(path: Path) -> list[int]:
    """Lines of statements outside any function that mention VLLM_XPU_PLUGIN_DEVICE and
    write the environment (os.environ[...] = / setdefault / pop / update / putenv)."""
    tree = ast.parse(path.read_text())
    hits = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        text = ast.unparse(stmt)
        if "VLLM_XPU_PLUGIN_DEVICE\"" in text.replace("'", '"') and any(
                w in text for w in ("environ[", "setdefault", ".pop(", ".update(", "putenv")):
            hits.append(stmt.lineno)
    return hits


def test_no_test_module_sets_the_device_mode_at_import():
    offenders = {str(p.relative_to(REPO_ROOT)): _module_level_writes(p)
                 for p in sorted(TESTS.rglob("*.py")) if p.name != "conftest.py"}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"the device mode is decided in tests/conftest.py only: {offenders}"


def test_the_scan_sees_a_module_level_write(tmp_path):
    planted = tmp_path / "test_planted.py"
    planted.write_text('import os\nos.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")\n')
    assert _module_level_writes(planted) == [2]


def _collect(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_planted.py").write_text(body + "\n\ndef test_x():\n    pass\n")
    env = {**os.environ, "VLLM_XPU_PLUGIN_TEST_DEVICE": "xpu"}
    env.pop("VLLM_XPU_PLUGIN_DEVICE", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "tests.conftest",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_xpu_switch_fails_a_session_whose_module_turns_cpu_mode_on(tmp_path):
    proc = _collect(tmp_path, 'import os\nos.environ.setdefault("VLLM_XPU_PLUGIN_DEVICE", "cpu")')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "changed VLLM_XPU_PLUGIN_DEVICE at import" in out and "test_planted.py" in out, out


def test_xpu_switch_leaves_a_clean_session_alone(tmp_path):
    proc = _collect(tmp_path, "import os")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "changed VLLM_XPU_PLUGIN_DEVICE" not in out and "1 test collected" in out, out
