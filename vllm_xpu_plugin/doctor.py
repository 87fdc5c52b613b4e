"""``vllm-xpu-doctor`` / ``python -m vllm_xpu_plugin.doctor``: can this machine serve?

Checks the software stack (torch / IPEX / vLLM / transformers against the one supported
set), the Intel GPU runtime (torch.xpu, each device, Level Zero, the SYCL runtime, xccl)
or CPU mode, and that vLLM will pick this plugin. Every problem comes with a one-line fix.
Exit code: 0 when serving can work (warnings allowed), 1 when it cannot.

Everything the doctor learns about the machine comes from one probe object
(:class:`SystemProbe`); tests pass a stand-in with the same methods to simulate broken
machines, so the checks themselves are the code under test.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Optional, Protocol, TextIO

# ----------------------------------------------------------------------- supported set
# The plugin is pinned on purpose (IPEX ends at 2.8; vLLM 0.11.0 is the last on torch 2.8).
TORCH_VERSION = "2.8.0"
IPEX_CPU_VERSION = "2.8.0"  # PyPI's CPU build ("2.8.0+cpu" at run time)
IPEX_XPU_VERSION = "2.8.10"  # Intel's XPU build, "2.8.10+xpu"
VLLM_VERSION = "0.11.0"
TRANSFORMERS_MAJOR_LIMIT = 5  # IPEX 2.8 does not import with transformers 5.x
PYTHON_RANGE = ((3, 10), (3, 12))

XPU_WHEEL_INDEX = "https://download.pytorch.org/whl/xpu"
IPEX_XPU_INDEX = "https://pytorch-extension.intel.com/release-whl/stable/xpu/us/"
DRIVER_DOCS = "https://dgpu-docs.intel.com/driver/client/overview.html"

FIX_TORCH_XPU = (f"pip install torch==2.8.0 torchvision==0.23.0 torchaudio==2.8.0 "
                 f"--index-url {XPU_WHEEL_INDEX}")
FIX_TORCH_CPU = "pip install torch==2.8.0 torchvision==0.23.0 torchaudio==2.8.0"
FIX_IPEX_XPU = (f"pip install intel-extension-for-pytorch==2.8.10+xpu "
                f"--extra-index-url {IPEX_XPU_INDEX}")
FIX_IPEX_CPU = "pip install intel-extension-for-pytorch==2.8.0"
FIX_VLLM = "pip install vllm==0.11.0  (after torch, so pip keeps your torch build)"
FIX_TRANSFORMERS = 'pip install "transformers>=4.55.2,<5"'
FIX_DRIVER = f"install the Intel GPU driver ({DRIVER_DOCS}); see docs/install_xpu.md"
FIX_LEVEL_ZERO = ("install the Level Zero loader and GPU runtime: sudo apt-get install "
                  "libze1 libze-intel-gpu1 (Intel graphics repository; docs/install_xpu.md)")
FIX_RENDER_GROUP = ("sudo usermod -aG render,video $USER and log in again "
                    "(Docker: --device /dev/dri)")
HINT_CPU_MODE = "or run without a GPU in CPU mode: export VLLM_XPU_PLUGIN_DEVICE=cpu"

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"


@dataclass
class Check:
    name: str
    status: str  # ok | info | warn | FAIL
    detail: str
    fix: str = ""


@dataclass
class TorchStatus:
    version: Optional[str]  # torch.__version__, None when torch does not import
    xpu_build: bool  # torch.version.xpu is set (an XPU wheel)
    xpu_available: bool  # torch.xpu.is_available()
    error: Optional[str] = None


@dataclass
class DeviceInfo:
    index: int
    name: str
    total_memory: int  # bytes
    driver_version: str


@dataclass
class RenderNode:
    path: str
    accessible: bool


@dataclass
class PluginEnv:
    mode: str  # raw VLLM_XPU_PLUGIN_DEVICE ("" = Intel GPU)
    cpu_kvcache_gb: Optional[float]
    cpu_kvcache_error: Optional[str] = None


@dataclass
class ImportResult:
    version: Optional[str]
    error: Optional[str] = None


class Probe(Protocol):
    """What the doctor asks the machine. :class:`SystemProbe` answers for real."""

    def python_version(self) -> tuple[int, int, int]: ...
    def package_version(self, distribution: str) -> Optional[str]: ...
    def torch_status(self) -> TorchStatus: ...
    def import_ipex(self) -> ImportResult: ...
    def xpu_devices(self) -> list[DeviceInfo]: ...
    def render_nodes(self) -> list[RenderNode]: ...
    def shared_library(self, soname: str) -> Optional[str]: ...
    def loaded_library(self, name_fragment: str) -> Optional[str]: ...
    def xccl_available(self) -> bool: ...
    def cpu_flags(self) -> set[str]: ...
    def native_decode_kernel_problem(self) -> str: ...
    def plugin_env(self) -> PluginEnv: ...
    def vllm_plugins_allowlist(self) -> Optional[list[str]]: ...
    def platform_plugins(self) -> dict[str, str]: ...
    def activate_platform_plugin(self, name: str) -> Optional[str]: ...


# ----------------------------------------------------------------------- real probe


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".strip()


class SystemProbe:
    """Reads this machine. Imports are done lazily and their failures are reported."""

    def python_version(self) -> tuple[int, int, int]:
        return tuple(sys.version_info[:3])  # type: ignore[return-value]

    def package_version(self, distribution: str) -> Optional[str]:
        from importlib import metadata

        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    def torch_status(self) -> TorchStatus:
        try:
            import torch
        except BaseException as exc:  # noqa: BLE001 - a broken torch is a finding
            return TorchStatus(None, False, False, _last_line(exc))
        xpu_build = bool(getattr(torch.version, "xpu", None))
        try:
            available = bool(hasattr(torch, "xpu") and torch.xpu.is_available())
        except Exception as exc:
            return TorchStatus(torch.__version__, xpu_build, False, _last_line(exc))
        return TorchStatus(torch.__version__, xpu_build, available)

    def import_ipex(self) -> ImportResult:
        try:
            import intel_extension_for_pytorch as ipex
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # IPEX calls exit() on some mismatches
            return ImportResult(None, _last_line(exc))
        return ImportResult(getattr(ipex, "__version__", None))

    def xpu_devices(self) -> list[DeviceInfo]:
        import torch

        devices = []
        for index in range(torch.xpu.device_count()):  # XPU-only
            props = torch.xpu.get_device_properties(index)  # XPU-only
            devices.append(DeviceInfo(index, props.name, int(props.total_memory),
                                      str(getattr(props, "driver_version", "unknown"))))
        return devices

    def render_nodes(self) -> list[RenderNode]:
        import glob
        import os

        return [RenderNode(p, os.access(p, os.R_OK | os.W_OK))
                for p in sorted(glob.glob("/dev/dri/renderD*"))]

    def shared_library(self, soname: str) -> Optional[str]:
        """Path of ``soname`` when the dynamic loader can load it, else None."""
        import ctypes

        try:
            ctypes.CDLL(soname)
        except OSError:
            return None
        return self.loaded_library(soname) or soname

    def loaded_library(self, name_fragment: str) -> Optional[str]:
        """Path of a library already mapped into this process (e.g. by torch)."""
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    path = line.rsplit(" ", 1)[-1].strip()
                    if name_fragment in path.rsplit("/", 1)[-1]:
                        return path
        except OSError:
            pass
        return None

    def xccl_available(self) -> bool:
        try:
            import torch.distributed as dist

            return bool(dist.is_available() and dist.is_xccl_available())
        except Exception:
            return False

    def cpu_flags(self) -> set[str]:
        from vllm_xpu_plugin import host_cpu

        return set(host_cpu.cpu_flags())

    def native_decode_kernel_problem(self) -> str:
        # Builds the kernel (seconds, once per machine: the engine then finds it cached).
        try:
            from vllm_xpu_plugin.kernels import native_decode

            return native_decode.unavailable_reason()
        except Exception as exc:
            return _last_line(exc)

    def plugin_env(self) -> PluginEnv:
        from vllm_xpu_plugin import envs

        try:
            gb, error = envs.VLLM_XPU_PLUGIN_CPU_KVCACHE_GB, None
        except ValueError as exc:
            gb, error = None, str(exc)
        return PluginEnv(envs.VLLM_XPU_PLUGIN_DEVICE, gb, error)

    def vllm_plugins_allowlist(self) -> Optional[list[str]]:
        import vllm.envs

        return vllm.envs.VLLM_PLUGINS

    def platform_plugins(self) -> dict[str, str]:
        from importlib.metadata import entry_points

        return {ep.name: ep.value for ep in entry_points(group="vllm.platform_plugins")}

    def activate_platform_plugin(self, name: str) -> Optional[str]:
        """Call the plugin's register function as vLLM does: its Platform qualname or None."""
        from importlib.metadata import entry_points

        (entry_point,) = [ep for ep in entry_points(group="vllm.platform_plugins")
                          if ep.name == name]
        return entry_point.load()()


# ----------------------------------------------------------------------- checks


def _version(text: Optional[str]):
    from packaging.version import InvalidVersion, Version

    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / (1 << 30):.1f} GiB"


class Doctor:
    """Runs the checks against a probe; :meth:`run` returns them in report order."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check

    def run(self) -> list[Check]:
        env = self.probe.plugin_env()
        if env.mode not in ("", "xpu", "cpu"):
            self.add("mode", FAIL, f"VLLM_XPU_PLUGIN_DEVICE={env.mode!r} is not understood",
                     "export VLLM_XPU_PLUGIN_DEVICE=cpu for CPU mode, or unset it for an "
                     "Intel GPU")
            return self.checks
        cpu_mode = env.mode == "cpu"
        self.add("mode", INFO, "CPU mode (VLLM_XPU_PLUGIN_DEVICE=cpu): IPEX CPU kernels"
                 if cpu_mode else "Intel GPU (xpu); set VLLM_XPU_PLUGIN_DEVICE=cpu for CPU mode")
        self._python()
        torch_status = self._torch(cpu_mode)
        ipex_ok = self._ipex(cpu_mode, torch_status)
        self._vllm()
        self._transformers()
        self._supported_set(cpu_mode)
        if cpu_mode:
            self._cpu_mode(env, torch_status)
        else:
            self._xpu(torch_status, ipex_ok)
        self._plugin_selection()
        return self.checks

    # -- stack -----------------------------------------------------------------------

    def _python(self) -> None:
        version = self.probe.python_version()
        low, high = PYTHON_RANGE
        text = ".".join(map(str, version))
        if low <= tuple(version[:2]) <= high:
            self.add("python", OK, text)
        else:
            self.add("python", FAIL, f"{text}: vLLM 0.11.0 and IPEX 2.8 wheels need "
                     "Python 3.10-3.12", "create the venv with python3.12 (or 3.10/3.11)")

    def _torch(self, cpu_mode: bool) -> TorchStatus:
        status = self.probe.torch_status()
        if status.version is None:
            self.add("torch", FAIL, f"does not import ({status.error})",
                     FIX_TORCH_CPU if cpu_mode else FIX_TORCH_XPU)
            return status
        version = _version(status.version)
        build = "XPU build" if status.xpu_build else "no XPU support"
        if version is None or version.public != TORCH_VERSION:
            self.add("torch", FAIL, f"{status.version}: the plugin needs torch {TORCH_VERSION}",
                     FIX_TORCH_CPU if cpu_mode else FIX_TORCH_XPU)
        elif not cpu_mode and not status.xpu_build:
            self.add("torch", FAIL, f"{status.version} ({build}): an Intel GPU needs the "
                     "+xpu wheel", FIX_TORCH_XPU)
        else:
            self.add("torch", OK, f"{status.version} ({build})")
        return status

    def _ipex(self, cpu_mode: bool, torch_status: TorchStatus) -> bool:
        fix = FIX_IPEX_CPU if cpu_mode else FIX_IPEX_XPU
        installed = self.probe.package_version("intel-extension-for-pytorch")
        if installed is None:
            self.add("IPEX", FAIL, "intel-extension-for-pytorch is not installed", fix)
            return False
        version = _version(installed)
        torch_version = _version(torch_status.version)
        if (version is not None and torch_version is not None
                and version.release[:2] != torch_version.release[:2]):
            # IPEX refuses to import (and exits) on a torch major.minor mismatch.
            self.add("IPEX", FAIL, f"{installed} does not match torch {torch_status.version} "
                     "(IPEX x.y needs torch x.y)", fix)
            return False
        is_xpu_build = version is not None and "xpu" in (version.local or "")
        wanted = IPEX_CPU_VERSION if cpu_mode else IPEX_XPU_VERSION
        if version is None or version.public != wanted:
            self.add("IPEX", FAIL, f"{installed}: this mode needs "
                     f"{wanted}{'+cpu' if cpu_mode else '+xpu'}", fix)
            return False
        if not cpu_mode and not is_xpu_build:
            self.add("IPEX", FAIL, f"{installed} is a CPU build; an Intel GPU needs "
                     "2.8.10+xpu", fix)
            return False
        result = self.probe.import_ipex()
        if result.error is not None:
            hint = (FIX_TRANSFORMERS if "transformers" in result.error.lower() else fix)
            self.add("IPEX", FAIL, f"{installed} does not import: {result.error}", hint)
            return False
        self.add("IPEX", OK, f"{result.version or installed} (imports)")
        return True

    def _vllm(self) -> None:
        installed = self.probe.package_version("vllm")
        if installed is None:
            self.add("vLLM", FAIL, "vllm is not installed", FIX_VLLM)
        elif (_version(installed) is None
              or _version(installed).public != VLLM_VERSION):
            self.add("vLLM", FAIL, f"{installed}: the plugin is built against vLLM "
                     f"{VLLM_VERSION} internals", FIX_VLLM)
        else:
            self.add("vLLM", OK, installed)

    def _transformers(self) -> None:
        installed = self.probe.package_version("transformers")
        version = _version(installed)
        if installed is None:
            self.add("transformers", FAIL, "transformers is not installed", FIX_TRANSFORMERS)
        elif version is None or version.major >= TRANSFORMERS_MAJOR_LIMIT:
            self.add("transformers", FAIL, f"{installed}: IPEX 2.8 does not import with "
                     "transformers 5.x", FIX_TRANSFORMERS)
        else:
            self.add("transformers", OK, installed)

    def _supported_set(self, cpu_mode: bool) -> None:
        names = ("torch", "IPEX", "vLLM", "transformers")
        bad = [c.name for c in self.checks if c.name in names and c.status == FAIL]
        ipex = f"{IPEX_CPU_VERSION}+cpu" if cpu_mode else f"{IPEX_XPU_VERSION}+xpu"
        wanted = (f"torch {TORCH_VERSION}{'' if cpu_mode else '+xpu'} / IPEX {ipex} / "
                  f"vLLM {VLLM_VERSION} / transformers <{TRANSFORMERS_MAJOR_LIMIT}")
        if bad:
            self.add("supported set", FAIL, f"not the supported set ({wanted}): fix "
                     f"{', '.join(bad)} above", "see docs/install_xpu.md (Intel GPU) or "
                     "docs/cpu_mode.md for the install order")
        else:
            self.add("supported set", OK, wanted)

    # -- Intel GPU -----------------------------------------------------------------------

    def _xpu(self, torch_status: TorchStatus, ipex_ok: bool) -> None:
        probe = self.probe
        nodes = probe.render_nodes()
        level_zero = probe.shared_library("libze_loader.so.1")
        gpu_runtime = probe.shared_library("libze_intel_gpu.so.1")

        if not nodes:
            self.add("GPU node", FAIL, "no /dev/dri/renderD* device: the kernel sees no "
                     "Intel GPU (or the container was started without it)", FIX_DRIVER)
        elif not any(n.accessible for n in nodes):
            self.add("GPU node", FAIL, f"{', '.join(n.path for n in nodes)} not readable "
                     "and writable by this user", FIX_RENDER_GROUP)
        else:
            self.add("GPU node", OK, ", ".join(n.path for n in nodes if n.accessible))

        if level_zero is None:
            self.add("Level Zero", FAIL, "libze_loader.so.1 (Level Zero loader) not found",
                     FIX_LEVEL_ZERO)
        else:
            self.add("Level Zero", OK, f"loader {level_zero}")
        if gpu_runtime is None:
            self.add("GPU runtime", FAIL, "libze_intel_gpu.so.1 (Intel GPU compute runtime) "
                     "not found", FIX_LEVEL_ZERO)
        else:
            self.add("GPU runtime", OK, gpu_runtime)

        sycl = probe.loaded_library("libsycl.so") or (
            f"pip intel-sycl-rt {probe.package_version('intel-sycl-rt')}"
            if probe.package_version("intel-sycl-rt") else None)
        if sycl is None:
            self.add("oneAPI/SYCL", FAIL, "SYCL runtime (libsycl) not found; it comes with "
                     "the torch +xpu wheel (pip intel-sycl-rt) or oneAPI", FIX_TORCH_XPU)
        else:
            self.add("oneAPI/SYCL", OK, sycl)

        if torch_status.xpu_available:
            devices = probe.xpu_devices()
            self.add("torch.xpu", OK, f"available, {len(devices)} device(s)")
            for dev in devices:
                self._device(dev)
        else:
            cause = ("torch is not the +xpu build" if not torch_status.xpu_build
                     else torch_status.error or "see the GPU node / Level Zero checks above")
            fix = FIX_TORCH_XPU if not torch_status.xpu_build else FIX_DRIVER
            self.add("torch.xpu", FAIL, f"torch.xpu.is_available() is False: {cause}",
                     f"{fix}; {HINT_CPU_MODE}")

        if probe.xccl_available():
            self.add("xccl", OK, "torch.distributed xccl backend available (tensor parallel)")
        elif probe.package_version("oneccl_bind_pt"):
            self.add("xccl", WARN, "no xccl; tensor parallel falls back to oneccl_bind_pt "
                     f"{probe.package_version('oneccl_bind_pt')}", FIX_TORCH_XPU)
        else:
            self.add("xccl", WARN, "torch has no xccl backend: --tensor-parallel-size > 1 "
                     "will not work (one GPU is fine)", FIX_TORCH_XPU)

    def _device(self, dev: DeviceInfo) -> None:
        detail = (f"{dev.name}, {_gib(dev.total_memory)}, driver {dev.driver_version}")
        if "a770" in dev.name.lower():
            self.add(f"xpu:{dev.index}", WARN, f"{detail}; bfloat16 is inaccurate on the "
                     "Arc A770", "serve with --dtype float16")
        else:
            self.add(f"xpu:{dev.index}", OK, detail)

    # -- CPU mode ------------------------------------------------------------------------

    def _cpu_mode(self, env: PluginEnv, torch_status: TorchStatus) -> None:
        flags = self.probe.cpu_flags()
        if flags and "avx2" not in flags:
            self.add("CPU", FAIL, "no AVX2: IPEX's CPU kernels need at least AVX2",
                     "use an x86-64 CPU with AVX2 (AVX-512/AMX recommended)")
        elif flags:
            extra = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
            self.add("CPU", OK, "AVX2" + (f" + {', '.join(extra)}" if extra else ""))
        if env.cpu_kvcache_error:
            self.add("CPU KV cache", FAIL, env.cpu_kvcache_error,
                     "export VLLM_XPU_PLUGIN_CPU_KVCACHE_GB=4")
        else:
            self.add("CPU KV cache", OK, f"{env.cpu_kvcache_gb:g} GiB "
                     "(VLLM_XPU_PLUGIN_CPU_KVCACHE_GB)")
        problem = self.probe.native_decode_kernel_problem()
        if problem:
            self.add("decode kernel", WARN, f"the plugin's native decode-attention kernel "
                     f"cannot be built ({problem}): decodes use IPEX's kernels, up to 2x "
                     "slower", "install a C++ compiler with OpenMP (apt-get install g++) or "
                     "point CXX at one")
        else:
            self.add("decode kernel", OK, "the plugin's native decode-attention kernel "
                     "builds here (a candidate of the load-time measurement)")
        self.add("torch.xpu", INFO, "available but unused in CPU mode"
                 if torch_status.xpu_available else "not available (not needed in CPU mode)")

    # -- vLLM plugin selection -------------------------------------------------------------

    def _plugin_selection(self) -> None:
        plugins = self.probe.platform_plugins()
        if plugins.get("xpu") != "vllm_xpu_plugin:register":
            self.add("vLLM plugin", FAIL, "the vllm.platform_plugins entry point 'xpu' of "
                     "vllm-xpu-plugin is not installed", "pip install vllm-xpu-plugin "
                     "(from a checkout: pip install -e .)")
            return
        allow = self.probe.vllm_plugins_allowlist()
        if allow is not None and "xpu" not in allow:
            self.add("vLLM plugin", FAIL, f"VLLM_PLUGINS={','.join(allow)} does not load the "
                     "plugin", "unset VLLM_PLUGINS or add xpu,xpu_ops to it")
            return
        if allow is not None and "xpu_ops" not in allow:
            self.add("vLLM plugin", FAIL, f"VLLM_PLUGINS={','.join(allow)} skips xpu_ops "
                     "(the plugin's ops)", "unset VLLM_PLUGINS or add xpu_ops to it")
            return
        activated = {}
        for name in sorted(n for n in plugins if allow is None or n in allow):
            try:
                activated[name] = self.probe.activate_platform_plugin(name)
            except Exception as exc:  # vLLM skips a plugin whose register() raises
                activated[name] = None
                if name == "xpu":
                    self.add("vLLM plugin", FAIL, f"register() raised {_last_line(exc)}",
                             "run the doctor again after fixing the problems above")
                    return
        others = sorted(n for n, qualname in activated.items() if qualname and n != "xpu")
        if not activated.get("xpu"):
            self.add("vLLM plugin", FAIL, "installed, but register() does not activate it "
                     "here (no usable Intel GPU and CPU mode is off)",
                     f"fix the GPU checks above, {HINT_CPU_MODE}")
        elif others:
            self.add("vLLM plugin", FAIL, f"other platform plugins activate too: "
                     f"{', '.join(others)}; vLLM refuses to start with two",
                     "pip uninstall the other platform plugin, or set VLLM_PLUGINS=xpu,xpu_ops")
        else:
            self.add("vLLM plugin", OK, f"vLLM will use {activated['xpu']}")


# ----------------------------------------------------------------------- report / CLI


def serving_possible(checks: list[Check]) -> bool:
    return not any(c.status == FAIL for c in checks)


def format_report(checks: list[Check], plugin_version: str) -> str:
    lines = [f"vllm-xpu-plugin doctor (plugin {plugin_version})", ""]
    for c in checks:
        lines.append(f"  [{c.status:^4}] {c.name:<14} {c.detail}")
        if c.fix and c.status in (WARN, FAIL):
            lines.append(f"  {'':6} {'':<14} fix: {c.fix}")
    failed = [c.name for c in checks if c.status == FAIL]
    lines.append("")
    if failed:
        lines.append(f"Serving cannot work here: {len(failed)} problem(s) "
                     f"({', '.join(failed)}). Apply the fixes above and run the doctor again.")
    else:
        lines.append("Serving can work here.")
    return "\n".join(lines)


def _plugin_version(probe: Probe) -> str:
    return probe.package_version("vllm-xpu-plugin") or "not installed"


def main(argv: Optional[list[str]] = None, probe: Optional[Probe] = None,
         out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(
        prog="vllm-xpu-doctor",
        description="Check that this machine can serve with vllm-xpu-plugin (Intel GPU, or "
        "CPU mode with VLLM_XPU_PLUGIN_DEVICE=cpu). Exit code 1 when it cannot.")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = parser.parse_args(argv)
    probe = probe if probe is not None else SystemProbe()
    checks = Doctor(probe).run()
    ok = serving_possible(checks)
    if args.json:
        payload = {"plugin_version": _plugin_version(probe), "serving_possible": ok,
                   "checks": [asdict(c) for c in checks]}
        out.write(json.dumps(payload, indent=2) + "\n")
    else:
        out.write(format_report(checks, _plugin_version(probe)) + "\n")
    return 0 if ok else 1


__all__ = ["Check", "Doctor", "Probe", "SystemProbe", "main", "serving_possible",
           "TorchStatus", "DeviceInfo", "RenderNode", "PluginEnv", "ImportResult"]

if __name__ == "__main__":
    sys.exit(main())
