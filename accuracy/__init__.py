"""lm-eval accuracy suites that guard the plugin (see docs/accuracy.md).

- :mod:`accuracy.prepare_data`: builds the offline task data from PyPI packages into a cache.
- :mod:`accuracy.run`: the generic runner over ``lm_eval.simple_evaluate(model="vllm")``.
- :mod:`accuracy.parity`: the same tasks through lm-eval's ``hf`` backend, sample by sample.
"""
