"""Every private vLLM / IPEX surface in the coupling catalogue still exists as the plugin uses
it (vllm_xpu_plugin/coupling.py), and docs/dev/vllm_coupling.md is generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_xpu_plugin import coupling

DOC = Path(__file__).resolve().parents[1] / "docs" / "dev" / "vllm_coupling.md"


@pytest.mark.parametrize("entry", coupling.CATALOGUE,
                         ids=[f"{e.surface}[{e.kind}]" for e in coupling.CATALOGUE])
def test_surface_still_exists_as_used(entry):
    assert coupling.problem(entry) is None


@pytest.mark.parametrize("broken", [
    coupling.Coupling("vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample", "callable",
                      ("self", "logits")),
    coupling.Coupling("vllm.v1.worker.gpu_model_runner:GPUModelRunner._no_such", "callable"),
    coupling.Coupling("vllm.v1.core.sched.output:SchedulerOutput", "fields", ("no_field",)),
    coupling.Coupling("vllm.v1.worker.gpu_model_runner:GPUModelRunner.__init__",
                      "init-assigns", ("no_such_attribute",)),
    coupling.Coupling("vllm.v1.worker.gpu_model_runner:GPUModelRunner.__init__",
                      "cuda-calls", ("Event",)),
    coupling.Coupling("torch.ops.torch_ipex.rmsnorm", "op", (4,)),
])
def test_the_check_reports_a_moved_surface(broken):
    assert coupling.problem(broken) is not None


def test_doc_is_generated_from_the_catalogue():
    assert DOC.read_text() == coupling.markdown(), (
        "regenerate: python -m vllm_xpu_plugin.coupling > docs/dev/vllm_coupling.md")
