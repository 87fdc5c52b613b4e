#!/usr/bin/env bash
# The seed's serving workload on an Intel GPU, and its decode roofline.
#
#   benchmarks/xpu_seed_workload.sh MODEL [extra vllm serve arguments...]
#   e.g. benchmarks/xpu_seed_workload.sh Qwen/Qwen2.5-1.5B-Instruct
#
# 1. vllm serve MODEL --device xpu on 127.0.0.1 at a free port (stopped by its PID on exit)
# 2. vllm bench serve --dataset-name random --random-input-len 1024 --random-output-len 1024
#    --max-concurrency 16 --ignore-eos (the seed's numbers)
# 3. python -m benchmarks.xpu_roofline: the GPU's memory bandwidth from the table
#    (Arc B580 456 GB/s, Arc Pro B60 456 GB/s, Arc A770 560 GB/s, Max 1550 3.28 TB/s), the
#    decode roofline (weights + KV cache read per step / bandwidth) and the fraction of it
#    the run achieved (roofline step time / measured mean TPOT).
#
# Environment (defaults): DTYPE (float16; bf16 is wrong on Arc A770), INPUT_LEN (1024),
# OUTPUT_LEN (1024), CONCURRENCY (16), NUM_PROMPTS (4 x CONCURRENCY), PORT (a free one),
# RESULT_DIR (benchmarks/results), BANDWIDTH_GBS (for a GPU not in the table),
# SERVER_TIMEOUT (1200 s), DRY_RUN=1 (print the commands only; works without a GPU).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
MODEL=$1
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-python}
VLLM=${VLLM:-vllm}
DTYPE=${DTYPE:-float16}
INPUT_LEN=${INPUT_LEN:-1024}
OUTPUT_LEN=${OUTPUT_LEN:-1024}
CONCURRENCY=${CONCURRENCY:-16}
NUM_PROMPTS=${NUM_PROMPTS:-$((4 * CONCURRENCY))}
RESULT_DIR=${RESULT_DIR:-$ROOT/benchmarks/results}
SERVER_TIMEOUT=${SERVER_TIMEOUT:-1200}
PORT=${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULT_FILE=xpu-seed-c${CONCURRENCY}-${INPUT_LEN}x${OUTPUT_LEN}-${STAMP}.json

SERVE=("$VLLM" serve "$MODEL" --device xpu --dtype "$DTYPE" --host 127.0.0.1 --port "$PORT"
       --max-model-len $((INPUT_LEN + OUTPUT_LEN + 128)) --max-num-seqs "$CONCURRENCY" "$@")
BENCH=("$VLLM" bench serve --backend vllm --base-url "http://127.0.0.1:$PORT" --model "$MODEL"
       --dataset-name random --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN"
       --num-prompts "$NUM_PROMPTS" --max-concurrency "$CONCURRENCY" --ignore-eos
       --percentile-metrics ttft,tpot,itl --metric-percentiles 50,99
       --save-result --result-dir "$RESULT_DIR" --result-filename "$RESULT_FILE")
ROOF=("$PYTHON" -m benchmarks.xpu_roofline --model "$MODEL" --concurrency "$CONCURRENCY"
      --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --result "$RESULT_DIR/$RESULT_FILE")
if [[ -n "${BANDWIDTH_GBS:-}" ]]; then ROOF+=(--bandwidth-gbs "$BANDWIDTH_GBS"); fi

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf 'server:    %s\n' "${SERVE[*]}"
    printf 'benchmark: %s\n' "${BENCH[*]}"
    printf 'roofline:  (cd %s && %s)\n' "$ROOT" "${ROOF[*]}"
    exit 0
fi

mkdir -p "$RESULT_DIR"
LOG="$RESULT_DIR/xpu-seed-server-$STAMP.log"
echo "GPU: $("$PYTHON" -c 'import torch; print(torch.xpu.get_device_name(0))')"
echo "server: ${SERVE[*]}  (log: $LOG)"
"${SERVE[@]}" >"$LOG" 2>&1 &
SERVER_PID=$!
stop_server() {
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
        kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID"
    fi
    wait "$SERVER_PID" 2>/dev/null || true
}
trap stop_server EXIT

deadline=$((SECONDS + SERVER_TIMEOUT))
until "$PYTHON" -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=5).status != 200)" 2>/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "vllm serve exited; last lines of $LOG:" >&2; tail -20 "$LOG" >&2; exit 1
    fi
    if (( SECONDS > deadline )); then echo "server not healthy after ${SERVER_TIMEOUT}s" >&2; exit 1; fi
    sleep 2
done

echo "benchmark: ${BENCH[*]}"
"${BENCH[@]}"
echo
(cd "$ROOT" && "${ROOF[@]}")
