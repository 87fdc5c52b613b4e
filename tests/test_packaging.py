"""The release artefacts: an sdist and a wheel built from a clean checkout install into a new
venv with both vLLM entry points and the console script, and serve in CPU mode (issue 20).

Slow (a build and a server start): ``make test-slow`` or
``pytest -m slow tests/test_packaging.py``. The new venv gets the wheel with ``--no-deps``
and reaches the pinned stack through a ``.pth`` line naming this environment's
site-packages (installing torch/vLLM/IPEX again would download ~3 GB); the plugin itself,
its metadata and its entry points come only from the wheel (asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(*cmd, cwd=None, timeout=900) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("release")
    checkout = work / "checkout"
    _run("git", "clone", "--quiet", "--no-local", ROOT, checkout)  # committed files only
    # As a release is built: in build's isolated environment (setuptools from the index).
    _run(sys.executable, "-m", "build", "--sdist", "--wheel",
         "--outdir", work / "dist", checkout)
    (sdist,) = (work / "dist").glob("*.tar.gz")
    (wheel,) = (work / "dist").glob("*.whl")
    return sdist, wheel


def test_artefacts_carry_the_version_license_and_entry_points(artefacts):
    from vllm_xpu_plugin import __version__

    sdist, wheel = artefacts
    assert wheel.name.startswith(f"vllm_xpu_plugin-{__version__}-py3-none-any")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("/LICENSE") for n in names)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (eps,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = zf.read(eps).decode()
    assert "vllm_xpu_plugin/kernels/attention.py" in names
    # The native decode kernel is compiled from this source on the user's machine.
    assert "vllm_xpu_plugin/kernels/cpu_decode_attention.cpp" in names
    assert not any(n.startswith("tests/") for n in names)
    assert "[vllm.platform_plugins]\nxpu = vllm_xpu_plugin:register" in entry_points
    assert "[vllm.general_plugins]\nxpu_ops = vllm_xpu_plugin:register_ops" in entry_points
    assert "vllm-xpu-doctor = vllm_xpu_plugin.doctor:main" in entry_points


def test_wheel_installs_into_a_new_venv_and_serves(artefacts, tmp_path, tiny_llama_dir,
                                                   monkeypatch):
    _, wheel = artefacts
    # Away from the checkout: `python -c` / `-m` put the working directory first on sys.path.
    monkeypatch.chdir(tmp_path)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .strip())
    (site / "stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)

    probe = _run(python, "-c", (
        "import json, importlib.metadata as m, vllm_xpu_plugin as p;"
        "eps = {g + ':' + e.name: e.value for g in ('vllm.platform_plugins',"
        " 'vllm.general_plugins') for e in m.entry_points(group=g)"
        " if e.value.startswith('vllm_xpu_plugin')};"
        "print(json.dumps({'file': p.__file__, 'version': m.version('vllm-xpu-plugin'),"
        " 'eps': eps}))"))
    got = json.loads(probe.strip().splitlines()[-1])
    assert got["file"].startswith(str(site)), got  # the wheel's copy, not the checkout
    assert got["eps"] == {"vllm.platform_plugins:xpu": "vllm_xpu_plugin:register",
                          "vllm.general_plugins:xpu_ops": "vllm_xpu_plugin:register_ops"}
    assert "--json" in _run(venv / "bin" / "vllm-xpu-doctor", "--help")

    from benchmarks.server_process import ServerProcess

    server = ServerProcess(tiny_llama_dir, ["--max-model-len", "256"], device="cpu")
    server.cmd = [str(python), "-m", "vllm.entrypoints.cli.main", *server.cmd[1:]]
    with server:
        body = json.dumps({"model": server.served_model_name, "prompt": [5, 6, 7],
                           "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(f"{server.url}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            reply = json.loads(resp.read())
    log = server.log_path.read_text()
    assert reply["usage"]["completion_tokens"] == 4
    # The plugin's own INFO line from the engine process: its runner served the request.
    assert "linear layers use IPEX's prepacked GEMM" in log, log[-3000:]
