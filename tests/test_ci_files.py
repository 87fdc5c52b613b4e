"""The CI definitions refer only to things that exist.

Workflows (.github/workflows/*.yml) must parse; every ``make`` target, repository script,
``python -m`` module, console script and Dockerfile they (or the ci/ scripts) use must
exist; the tiers run where the design says (ordinary runners, self-hosted ``intel-gpu``
runners, a schedule); and the documentation's relative links resolve.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CI_SCRIPTS = sorted((ROOT / "ci").glob("*.sh"))
DOCKERFILE = ROOT / "ci" / "Dockerfile.xpu"
# Path-like tokens inside commands that must name files of this repository.
REPO_PATH = re.compile(r"(?<![\w./-])((?:ci|scripts|benchmarks|accuracy|tests|docs)/[\w./-]+)")


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def _steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def _run_commands(workflow: dict) -> list[str]:
    return [step["run"] for _, step in _steps(workflow) if "run" in step]


def _script_texts() -> list[str]:
    return [p.read_text() for p in CI_SCRIPTS]


def _all_commands() -> list[str]:
    commands = []
    for path in WORKFLOWS:
        commands += _run_commands(_load(path))
    return commands + _script_texts()


def _make_targets() -> set[str]:
    """Targets ``make`` knows, from make's own database (no recipe is run)."""
    proc = subprocess.run(["make", "-qp", "-f", str(ROOT / "Makefile")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    targets = set()
    for line in proc.stdout.splitlines():
        match = re.match(r"^([A-Za-z0-9][\w.-]*):(?!=)", line)
        if match:
            targets.add(match.group(1))
    return targets


def _make_calls(text: str) -> set[str]:
    calls = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for match in re.finditer(r"(?:^|[\s;&|(])make\s+([^;&|)]*)", line):
            for word in match.group(1).split():
                if re.fullmatch(r"[\w.-]+", word) and not word.startswith("-"):
                    calls.add(word)  # VAR=value and -flags are not targets
    return calls


def test_there_are_cpu_xpu_and_nightly_workflows():
    names = {p.stem for p in WORKFLOWS}
    assert {"cpu", "xpu", "nightly"} <= names, names


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_parses_and_every_job_has_runner_and_steps(path):
    workflow = _load(path)
    assert workflow.get("name") and workflow.get("on") and workflow.get("jobs"), path
    for name, job in workflow["jobs"].items():
        if "uses" in job:  # a reusable workflow call
            continue
        assert job.get("runs-on"), f"{path.name}:{name} has no runs-on"
        assert job.get("steps"), f"{path.name}:{name} has no steps"
        assert job.get("timeout-minutes"), f"{path.name}:{name} has no timeout"
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), f"{path.name}:{name}: {step}"


def test_every_make_target_called_exists():
    targets = _make_targets()
    called = _called_targets()
    assert called, "the workflows call no make target at all"
    missing = sorted(called - targets)
    assert not missing, f"make targets called by CI but missing from the Makefile: {missing}"


def _called_targets() -> set[str]:
    called = set()
    for text in _all_commands():
        called |= _make_calls(text)
    return called


def test_modules_the_called_make_targets_run_exist():
    """`make -n` prints each called target's recipe; its `python -m` modules and repository
    scripts must exist."""
    missing = []
    for target in sorted(_called_targets() & _make_targets()):
        proc = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, f"make -n {target}: {proc.stderr}"
        for module in re.findall(r"python3? -m ([\w.]+)", proc.stdout):
            if module.split(".")[0] in ("pip", "pytest", "ruff", "venv"):
                continue
            rel = ROOT / Path(*module.split("."))
            if not (rel.with_suffix(".py").exists() or (rel / "__main__.py").exists()):
                missing.append(f"make {target} -> python -m {module}")
        for path in REPO_PATH.findall(proc.stdout):
            if not (ROOT / path.rstrip(".")).exists():
                missing.append(f"make {target} -> {path}")
    assert not missing, f"make targets called by CI run modules that do not exist: {missing}"


def test_make_test_runs_lint_first():
    proc = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    ruff = [i for i, ln in enumerate(lines) if "ruff check" in ln]
    pytest_ = [i for i, ln in enumerate(lines) if "pytest" in ln]
    assert ruff and pytest_ and ruff[0] < pytest_[0], proc.stdout


def test_every_repository_path_and_script_called_exists():
    missing = [path for text in _all_commands() for path in REPO_PATH.findall(text)
               if not (ROOT / path.rstrip(".")).exists()]
    assert not missing, f"CI refers to files that do not exist: {sorted(set(missing))}"


def test_scripts_run_by_path_are_executable_and_parse():
    for script in CI_SCRIPTS:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


def _console_scripts() -> set[str]:
    """Names under [project.scripts] in pyproject.toml (tomllib is 3.11+; we support 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    return set(re.findall(r"^([\w.-]+)\s*=", block.group(1), flags=re.M)) if block else set()


def test_python_modules_and_console_scripts_called_exist():
    console_scripts = _console_scripts()
    for text in _all_commands():
        for module in re.findall(r"python3? -m ([\w.]+)", text):
            if module in ("pip", "pytest", "ruff", "venv", "build"):  # third-party tools
                continue
            rel = Path(*module.split("."))
            assert ((ROOT / rel).with_suffix(".py").exists()
                    or (ROOT / rel / "__main__.py").exists()), f"python -m {module}"
        # Commands named vllm-xpu-*, not image tags (vllm-xpu-plugin:ci) or paths.
        for word in re.findall(r"(?<![\w/:.-])(vllm-xpu-[\w-]+)(?![\w/:.-])", text):
            assert word in console_scripts, f"{word} is not a console script"


def test_local_reusable_workflows_exist():
    for path in WORKFLOWS:
        for name, job in _load(path)["jobs"].items():
            uses = job.get("uses", "")
            if uses.startswith("./"):
                target = ROOT / uses[2:]
                assert target.exists(), f"{path.name}:{name} uses missing {uses}"
                assert "workflow_call" in _load(target)["on"], f"{uses} is not reusable"


def test_tiers_run_where_they_should():
    cpu, xpu, nightly = (_load(ROOT / ".github" / "workflows" / f"{n}.yml")
                         for n in ("cpu", "xpu", "nightly"))
    assert "pull_request" in cpu["on"]
    cpu_runs = "\n".join(_run_commands(cpu))
    assert {"install", "test"} <= _make_calls(cpu_runs)
    assert "ruff check" in cpu_runs
    assert cpu["env"]["VLLM_XPU_PLUGIN_DEVICE"] == "cpu"

    runners = [job["runs-on"] for job in xpu["jobs"].values()]
    assert all("self-hosted" in r and "intel-gpu" in r for r in runners), runners
    assert "pull_request" not in xpu["on"], "self-hosted runners must not run fork PRs"
    xpu_runs = "\n".join(_run_commands(xpu))
    assert "docker build -f ci/Dockerfile.xpu" in xpu_runs
    assert "vllm-xpu-doctor" in xpu_runs and "accuracy-xpu" in xpu_runs

    assert nightly["on"]["schedule"][0]["cron"]
    assert any(job.get("uses") == "./.github/workflows/xpu.yml"
               for job in nightly["jobs"].values())


def test_dockerfile_installs_the_supported_xpu_stack():
    text = DOCKERFILE.read_text()
    assert re.search(r"torch==2\.8\.0 .*--index-url https://download\.pytorch\.org/whl/xpu",
                     text.replace("\\\n", " "))
    assert "intel-extension-for-pytorch==2.8.10+xpu" in text
    assert "pytorch-extension.intel.com/release-whl/stable/xpu/us/" in text
    # torch +xpu must be installed before the plugin (which pulls vllm -> torch==2.8.0).
    assert text.index("whl/xpu") < text.index('pip install -e ".[test]"')
    for source in re.findall(r"^COPY\s+(?!--)(.+?)\s+\S+$", text, flags=re.M):
        for item in source.split():
            assert item == "." or (ROOT / item).exists(), f"COPY source {item} missing"


def test_run_line_has_the_seeds_flags():
    text = (ROOT / "ci" / "run_xpu_container.sh").read_text()
    for flag in ("--device /dev/dri", "--ipc=host", "--shm-size"):
        assert flag in text, flag


DOC_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def test_docs_relative_links_resolve():
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages
    missing = []
    for page in pages:
        for link in DOC_LINK.findall(page.read_text()):
            if "://" in link:
                continue
            if not (page.parent / link).exists():
                missing.append(f"{page.name} -> {link}")
    assert not missing, f"broken links in docs/: {missing}"


def test_docs_index_links_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    linked = set(DOC_LINK.findall(index))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert not pages - linked, f"docs/README.md does not link: {sorted(pages - linked)}"
