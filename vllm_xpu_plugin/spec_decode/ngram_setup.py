"""Get vLLM 0.11's ngram proposer ready to share the host with torch.

Two problems, both measured in CPU mode (2 cores, tiny Llama, greedy, 3 x 48 tokens:
0.2 s without ngram, 9-10 s with it before this module, every run):

1. Threads. ``NgramProposer.batch_propose`` brackets its ``@njit(parallel=True)`` kernel
   with numba ``set_num_threads(1)`` / ``set_num_threads(original)``. numba's default
   threading layer here is OpenMP -- the same libgomp torch uses -- so the "restore"
   calls ``omp_set_num_threads(NUMBA_NUM_THREADS)``, i.e. every core, and torch's
   intra-op pool silently grows to that size (``OMP_NUM_THREADS=1`` ends up as 2 threads
   of spinning OpenMP workers). numba's ``workqueue`` layer has its own thread pool and
   leaves torch alone; it is selected here unless the user chose a layer
   (``NUMBA_THREADING_LAYER``). It must happen before numba launches its first parallel
   region, which is why this runs while the runner is constructed.
2. Compilation. ``NgramProposer.__init__`` warms up with empty sampled-token lists, for
   which ``propose`` never calls the numba kernel; its compilation (~5-25 s) then lands
   on the first decode step of the first request. One call with one valid request
   compiles it at startup: numba specialises on argument types, not shapes.
"""

from __future__ import annotations

import time

import numpy as np
from vllm.v1.spec_decode.ngram_proposer import NgramProposer

from vllm_xpu_plugin.log import init_logger

logger = init_logger(__name__)


def prepare_ngram_proposer(drafter: object) -> None:
    if not isinstance(drafter, NgramProposer):
        return
    _select_numba_threading_layer()
    start = time.perf_counter()
    drafter.propose(
        sampled_token_ids=[[0]],
        req_ids=["warmup"],
        num_tokens_no_spec=np.ones(1, dtype=np.int32),
        token_ids_cpu=np.zeros((1, drafter.max_model_len), dtype=np.int32),
        spec_decode_unsupported_reqs=set(),
    )
    logger.info("ngram proposer compiled in %.1f s (numba threading layer: %s)",
                time.perf_counter() - start, _active_threading_layer())


def _select_numba_threading_layer() -> None:
    import numba
    from numba.np.ufunc import parallel

    if numba.config.THREADING_LAYER != "default":
        return  # the user picked one
    if parallel._is_initialized:
        logger.warning("numba's threading layer (%s) is already running; the ngram proposer "
                       "may resize torch's OpenMP pool", _active_threading_layer())
        return
    numba.config.THREADING_LAYER = "workqueue"


def _active_threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region launched yet
        return "not started"
