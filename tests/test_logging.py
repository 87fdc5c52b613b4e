"""Plugin log records reach the user through vLLM's handler, in vLLM's format (issue 20).

Run in a fresh interpreter: the handler is what vLLM configures at import, and pytest's own
log capture would otherwise stand in for it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = """
from vllm_xpu_plugin.log import init_logger
init_logger("vllm_xpu_plugin.worker.model_runner").info("plugin-info-marker %d", 7)
init_logger("vllm_xpu_plugin.platform").warning("plugin-warning-marker")
"""

# vLLM's NewLineFormatter: "INFO 12-01 21:00:00 [file.py:3] message"
VLLM_LINE = r"^(?:\(\w+ pid=\d+\) )?{level} \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]+:\d+\] {msg}$"


def _run() -> str:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "INFO", "VLLM_CONFIGURE_LOGGING": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return done.stdout + done.stderr


def test_plugin_info_and_warning_lines_are_printed_in_vllm_format():
    lines = _run().splitlines()
    for level, msg in (("INFO", "plugin-info-marker 7"), ("WARNING", "plugin-warning-marker")):
        pattern = re.compile(VLLM_LINE.format(level=level, msg=re.escape(msg)))
        assert any(pattern.match(line) for line in lines), (level, lines)


def test_no_plugin_module_uses_a_logger_outside_vllms_namespace():
    """Every plugin module logs through vllm_xpu_plugin.log (a plain vllm.logger.init_logger
    with the module's own name would have no handler)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vllm_xpu_plugin"
    offenders = [str(p) for p in root.rglob("*.py")
                 if p.name != "log.py"
                 and re.search(r"from vllm\.logger import .*init_logger|logging\.getLogger\(",
                               p.read_text())]
    assert offenders == []
