#!/usr/bin/env bash
# Install the plugin for CPU mode into the active Python environment (what the CPU tier
# and docs/cpu_mode.md do): vLLM 0.11.0, torch 2.8.0 and IPEX 2.8.0's CPU build from
# PyPI, plus the test tools.
#   python3.11 -m venv .venv && . .venv/bin/activate && ci/install_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --upgrade pip
python -m pip install -e ".[cpu,test]"
