"""vllm-xpu-doctor: real runs on this machine, and simulated broken machines.

Simulated machines are :class:`FakeProbe` objects passed to the doctor (the probe is its
only view of the machine), so every check runs as written. Expectations are written by
hand per scenario: which check must fail, and which fix the user must be told.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_xpu_plugin import doctor
from vllm_xpu_plugin.doctor import (
    FAIL,
    OK,
    WARN,
    DeviceInfo,
    Doctor,
    ImportResult,
    PluginEnv,
    RenderNode,
    TorchStatus,
)

GIB = 1 << 30


@dataclasses.dataclass
class FakeProbe:
    """A machine with an Arc B580 and the supported XPU stack; tests break one thing."""

    mode: str = ""
    python: tuple = (3, 12, 3)
    packages: dict = dataclasses.field(default_factory=lambda: {
        "torch": "2.8.0+xpu",
        "intel-extension-for-pytorch": "2.8.10+xpu",
        "vllm": "0.11.0",
        "transformers": "4.57.1",
        "intel-sycl-rt": "2025.1.1",
        "vllm-xpu-plugin": "0.1.0",
    })
    torch: TorchStatus = dataclasses.field(
        default_factory=lambda: TorchStatus("2.8.0+xpu", xpu_build=True, xpu_available=True))
    ipex_import: ImportResult = dataclasses.field(
        default_factory=lambda: ImportResult("2.8.10+xpu"))
    devices: list = dataclasses.field(default_factory=lambda: [
        DeviceInfo(0, "Intel(R) Arc(TM) B580 Graphics", 12 * GIB, "1.6.33578+15")])
    nodes: list = dataclasses.field(
        default_factory=lambda: [RenderNode("/dev/dri/renderD128", True)])
    libraries: dict = dataclasses.field(default_factory=lambda: {
        "libze_loader.so.1": "/usr/lib/x86_64-linux-gnu/libze_loader.so.1",
        "libze_intel_gpu.so.1": "/usr/lib/x86_64-linux-gnu/libze_intel_gpu.so.1",
    })
    loaded: dict = dataclasses.field(default_factory=lambda: {
        "libsycl.so": "/venv/lib/libsycl.so.8"})
    xccl: bool = True
    flags: set = dataclasses.field(default_factory=lambda: {"avx2", "avx512f"})
    kv_gb: float = 4.0
    kv_error: str | None = None
    allowlist: list | None = None
    plugins: dict = dataclasses.field(
        default_factory=lambda: {"xpu": "vllm_xpu_plugin:register"})
    # What each platform plugin's register() returns; None for xpu means "as the real
    # register() would": active in CPU mode or with a usable GPU. An exception is raised.
    activations: dict = dataclasses.field(default_factory=dict)
    ipex_imported: bool = False
    # Why CPU mode's native decode kernel cannot be built here; "" = it builds.
    native_kernel_problem: str = ""

    def python_version(self):
        return self.python

    def package_version(self, distribution):
        return self.packages.get(distribution)

    def torch_status(self):
        return self.torch

    def import_ipex(self):
        self.ipex_imported = True
        return self.ipex_import

    def xpu_devices(self):
        return self.devices

    def render_nodes(self):
        return self.nodes

    def shared_library(self, soname):
        return self.libraries.get(soname)

    def loaded_library(self, name_fragment):
        return self.loaded.get(name_fragment)

    def xccl_available(self):
        return self.xccl

    def cpu_flags(self):
        return self.flags

    def native_decode_kernel_problem(self):
        return self.native_kernel_problem

    def plugin_env(self):
        return PluginEnv(self.mode, None if self.kv_error else self.kv_gb, self.kv_error)

    def vllm_plugins_allowlist(self):
        return self.allowlist

    def platform_plugins(self):
        return self.plugins

    def activate_platform_plugin(self, name):
        result = self.activations.get(name)
        if isinstance(result, Exception):
            raise result
        if name == "xpu" and result is None:
            usable = self.mode == "cpu" or self.torch.xpu_available
            return "vllm_xpu_plugin.platform.XPUPluginPlatform" if usable else None
        return result


def cpu_probe(**changes) -> FakeProbe:
    """A CPU-mode machine with the supported CPU stack (PyPI torch and IPEX CPU build)."""
    probe = FakeProbe(mode="cpu", torch=TorchStatus("2.8.0+cu128", False, False),
                      ipex_import=ImportResult("2.8.0+cpu"), devices=[], nodes=[],
                      libraries={}, loaded={}, xccl=False)
    probe.packages.update({"torch": "2.8.0", "intel-extension-for-pytorch": "2.8.0"})
    for key, value in changes.items():
        setattr(probe, key, value)
    return probe


def run(probe) -> tuple[int, dict[str, doctor.Check], str]:
    out = io.StringIO()
    code = doctor.main([], probe=probe, out=out)
    checks = {c.name: c for c in Doctor(probe).run()}
    return code, checks, out.getvalue()


# ----------------------------------------------------------------------- healthy machines


def test_healthy_xpu_machine_passes_and_lists_each_device():
    probe = FakeProbe()
    probe.devices.append(DeviceInfo(1, "Intel(R) Data Center GPU Max 1550", 64 * GIB, "1.3.29735"))
    code, checks, text = run(probe)
    assert code == 0, text
    assert all(c.status in (OK, "info") for c in checks.values()), text
    assert "Intel(R) Arc(TM) B580 Graphics, 12.0 GiB, driver 1.6.33578+15" in checks["xpu:0"].detail
    assert "Max 1550, 64.0 GiB, driver 1.3.29735" in checks["xpu:1"].detail
    assert "torch 2.8.0+xpu / IPEX 2.8.10+xpu / vLLM 0.11.0" in checks["supported set"].detail
    assert probe.ipex_imported
    assert text.rstrip().endswith("Serving can work here.")


def test_healthy_cpu_mode_passes_without_gpu_runtime():
    code, checks, text = run(cpu_probe())
    assert code == 0, text
    assert checks["mode"].detail.startswith("CPU mode")
    assert checks["CPU KV cache"].status == OK and "4 GiB" in checks["CPU KV cache"].detail
    assert "Level Zero" not in checks and "xpu:0" not in checks
    assert "IPEX 2.8.0+cpu" in checks["supported set"].detail
    assert checks["decode kernel"].status == OK
    assert "native" in checks["decode kernel"].detail


def test_cpu_mode_without_a_compiler_warns_and_still_serves():
    code, checks, text = run(cpu_probe(
        native_kernel_problem="no C++ compiler ($CXX, g++ or c++) on PATH"))
    assert code == 0, text
    check = checks["decode kernel"]
    assert check.status == WARN and "no C++ compiler" in check.detail
    assert "IPEX" in check.detail and "g++" in check.fix, text
    assert text.rstrip().endswith("Serving can work here.")


def test_xpu_mode_does_not_build_the_cpu_kernel():
    probe = FakeProbe(native_kernel_problem="must not be asked")
    code, checks, text = run(probe)
    assert code == 0 and "decode kernel" not in checks, text


# ----------------------------------------------------------------------- simulated failures
# (scenario, probe, check that must fail, text its fix must contain)

def _xpu(**changes) -> FakeProbe:
    probe = FakeProbe()
    for key, value in changes.items():
        setattr(probe, key, value)
    return probe


def _packages(probe: FakeProbe, **versions) -> FakeProbe:
    probe.packages.update({k.replace("_", "-"): v for k, v in versions.items()})
    return probe


FAILURES = [
    ("torch 2.9", _xpu(torch=TorchStatus("2.9.0+xpu", True, True)), "torch", "torch==2.8.0"),
    ("torch CPU wheel on a GPU box", _xpu(torch=TorchStatus("2.8.0+cu128", False, False)),
     "torch", "download.pytorch.org/whl/xpu"),
    ("torch does not import", _xpu(torch=TorchStatus(None, False, False, "ImportError: x")),
     "torch", "whl/xpu"),
    ("IPEX missing", _packages(_xpu(), intel_extension_for_pytorch=None), "IPEX",
     "intel-extension-for-pytorch==2.8.10+xpu"),
    ("IPEX CPU build on a GPU box", _packages(_xpu(), intel_extension_for_pytorch="2.8.0+cpu"),
     "IPEX", "2.8.10+xpu"),
    ("IPEX for another torch", _packages(_xpu(), intel_extension_for_pytorch="2.7.10+xpu"),
     "IPEX", "2.8.10+xpu"),
    ("IPEX import broken by transformers 5",
     _xpu(ipex_import=ImportResult(None, "ImportError: cannot import name 'X' from "
                                         "'transformers.models'")),
     "IPEX", "transformers>=4.55.2,<5"),
    ("vLLM 0.10.2", _packages(_xpu(), vllm="0.10.2"), "vLLM", "vllm==0.11.0"),
    ("transformers 5", _packages(_xpu(), transformers="5.0.0"), "transformers",
     "transformers>=4.55.2,<5"),
    ("Python 3.13", _xpu(python=(3, 13, 0)), "python", "python3.12"),
    ("no GPU node", _xpu(nodes=[], torch=TorchStatus("2.8.0+xpu", True, False)),
     "GPU node", "dgpu-docs.intel.com"),
    ("GPU node without permission",
     _xpu(nodes=[RenderNode("/dev/dri/renderD128", False)],
          torch=TorchStatus("2.8.0+xpu", True, False)),
     "GPU node", "usermod -aG render"),
    ("no Level Zero loader", _xpu(libraries={"libze_intel_gpu.so.1": "/x"},
                                  torch=TorchStatus("2.8.0+xpu", True, False)),
     "Level Zero", "libze1"),
    ("no GPU compute runtime", _xpu(libraries={"libze_loader.so.1": "/x"}),
     "GPU runtime", "libze-intel-gpu1"),
    ("no SYCL runtime", _packages(_xpu(loaded={}), intel_sycl_rt=None), "oneAPI/SYCL",
     "whl/xpu"),
    ("torch.xpu unavailable", _xpu(torch=TorchStatus("2.8.0+xpu", True, False)),
     "torch.xpu", "VLLM_XPU_PLUGIN_DEVICE=cpu"),
    ("unknown mode", _xpu(mode="gpu"), "mode", "VLLM_XPU_PLUGIN_DEVICE=cpu"),
    ("bad CPU KV cache size",
     cpu_probe(kv_error="VLLM_XPU_PLUGIN_CPU_KVCACHE_GB='lots' is not a number of GiB"),
     "CPU KV cache", "VLLM_XPU_PLUGIN_CPU_KVCACHE_GB=4"),
    ("CPU without AVX2", cpu_probe(flags={"sse4_2"}), "CPU", "AVX2"),
    ("IPEX XPU build in CPU mode",
     _packages(cpu_probe(), intel_extension_for_pytorch="2.8.10+xpu"), "IPEX",
     "intel-extension-for-pytorch==2.8.0"),
    ("plugin not installed", _xpu(plugins={}), "vLLM plugin", "pip install"),
    ("VLLM_PLUGINS excludes the plugin", _xpu(allowlist=["lora_filesystem_resolver"]),
     "vLLM plugin", "xpu,xpu_ops"),
    ("VLLM_PLUGINS skips the ops", _xpu(allowlist=["xpu"]), "vLLM plugin", "xpu_ops"),
    ("a second platform plugin activates",
     _xpu(plugins={"xpu": "vllm_xpu_plugin:register", "other": "other_pkg:register"},
          activations={"other": "other_pkg.platform.OtherPlatform"}),
     "vLLM plugin", "VLLM_PLUGINS=xpu,xpu_ops"),
    ("register() raises", _xpu(activations={"xpu": RuntimeError("boom")}), "vLLM plugin",
     "fixing the problems above"),
]


@pytest.mark.parametrize("probe,check,fix", [f[1:] for f in FAILURES],
                         ids=[f[0] for f in FAILURES])
def test_simulated_failure_exits_nonzero_with_one_line_fix(probe, check, fix):
    code, checks, text = run(probe)
    assert code == 1, text
    assert checks[check].status == FAIL, text
    assert fix in checks[check].fix, checks[check]
    assert "\n" not in checks[check].fix and "\n" not in checks[check].detail
    assert f"fix: {checks[check].fix}" in text
    assert "Serving cannot work here" in text and check in text.splitlines()[-1]


def test_installed_platform_plugin_that_stays_inactive_is_fine():
    probe = _xpu(plugins={"xpu": "vllm_xpu_plugin:register", "other": "other_pkg:register"})
    code, checks, text = run(probe)
    assert code == 0 and checks["vLLM plugin"].status == OK, text
    assert "XPUPluginPlatform" in checks["vLLM plugin"].detail


def test_no_gpu_means_vllm_will_not_select_the_plugin():
    code, checks, text = run(_xpu(torch=TorchStatus("2.8.0+xpu", True, False)))
    assert code == 1 and checks["vLLM plugin"].status == FAIL, text
    assert "VLLM_XPU_PLUGIN_DEVICE=cpu" in checks["vLLM plugin"].fix


def test_ipex_not_imported_when_its_version_cannot_work():
    # IPEX exit()s on a torch major.minor mismatch: the doctor must not import it then.
    probe = _packages(_xpu(), intel_extension_for_pytorch="2.7.10+xpu")
    run(probe)
    assert not probe.ipex_imported


@pytest.mark.parametrize("probe,check,fix", [
    (_xpu(xccl=False), "xccl", "whl/xpu"),
    (_xpu(devices=[DeviceInfo(0, "Intel(R) Arc(TM) A770 Graphics", 16 * GIB, "1.3")]),
     "xpu:0", "--dtype float16"),
], ids=["no xccl", "Arc A770 bf16"])
def test_warnings_keep_exit_code_zero(probe, check, fix):
    code, checks, text = run(probe)
    assert code == 0, text
    assert checks[check].status == WARN and fix in checks[check].fix, text


def test_json_output_lists_every_check():
    out = io.StringIO()
    code = doctor.main(["--json"], probe=_xpu(xccl=False), out=out)
    payload = json.loads(out.getvalue())
    assert code == 0 and payload["serving_possible"] is True
    by_name = {c["name"]: c for c in payload["checks"]}
    assert by_name["xccl"]["status"] == WARN
    assert by_name["xpu:0"]["detail"].startswith("Intel(R) Arc(TM) B580")


# ----------------------------------------------------------------------- this machine


def test_cpu_mode_on_this_machine(monkeypatch):
    """The real probe in CPU mode (the suite's mode), in-process: IPEX is imported once per
    test session anyway. Versions are compared with what the packages themselves report."""
    from importlib.metadata import version

    import torch
    import vllm

    monkeypatch.setenv("VLLM_XPU_PLUGIN_DEVICE", "cpu")
    out = io.StringIO()
    code = doctor.main(["--json"], out=out)
    payload = json.loads(out.getvalue())
    checks = {c["name"]: c for c in payload["checks"]}
    ipex = version("intel-extension-for-pytorch")
    assert checks["mode"]["detail"].startswith("CPU mode")
    assert checks["torch"]["detail"].startswith(torch.__version__)
    assert checks["vLLM"]["detail"] == vllm.__version__
    assert checks["IPEX"]["detail"].startswith(ipex)
    if "xpu" in ipex:
        # The XPU image (CI's XPU tier): IPEX's GPU build has no CPU kernels, so CPU mode
        # must be reported as unable to serve.
        assert code == 1 and checks["IPEX"]["status"] == FAIL, out.getvalue()
        return
    assert code == 0, out.getvalue()
    assert payload["serving_possible"] is True
    assert checks["IPEX"]["detail"].endswith("(imports)")
    assert checks["vLLM plugin"]["detail"].endswith("platform.XPUPluginPlatform")
    # This machine has a compiler (tests/test_native_decode.py needs it too): the real
    # probe built, or found built, the native decode kernel.
    assert checks["decode kernel"]["status"] == OK, out.getvalue()


def test_console_script_and_module_entry_point():
    script = Path(sys.executable).with_name("vllm-xpu-doctor")
    assert script.exists(), f"{script} missing: pip install -e . installs the console script"
    for command in ([str(script), "--help"],
                    [sys.executable, "-m", "vllm_xpu_plugin.doctor", "--help"]):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage: vllm-xpu-doctor" in proc.stdout, proc


def test_xpu_mode_on_this_machine_agrees_with_torch(monkeypatch):
    """Without CPU mode the doctor must fail exactly when torch sees no Intel GPU."""
    import torch

    monkeypatch.delenv("VLLM_XPU_PLUGIN_DEVICE", raising=False)
    checks = {c.name: c for c in Doctor(doctor.SystemProbe()).run()}
    has_gpu = torch.xpu.is_available()
    assert (checks["torch.xpu"].status == OK) == has_gpu
    if not has_gpu:
        assert not doctor.serving_possible(list(checks.values()))
        assert "VLLM_XPU_PLUGIN_DEVICE=cpu" in checks["torch.xpu"].fix
        assert checks["vLLM plugin"].status == FAIL  # the real register() returns None
