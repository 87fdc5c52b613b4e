"""torch.compile mode: which compilation the plugin runs for the user's config (policy.py)
and the plugin-owned custom ops that keep IPEX kernels opaque to dynamo (traceable_ops.py).
See docs/compile.md."""

from vllm_xpu_plugin.compilation.policy import (  # noqa: F401
    apply_compilation_policy,
    attention_op_is_opaque,
    mark_command_line_levels,
)
