#!/usr/bin/env bash
# End-to-end check of the README's quick start: `make serve` in the background, wait for
# /health, ask "What is the capital of France?" through /v1/chat/completions, require
# "Paris", stop the server by its PID.
#   scripts/smoke_serve.sh            # PORT (default 8000), HOST, other make variables
#   make smoke-serve PORT=8011
set -euo pipefail
cd "$(dirname "$0")/.."
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
TIMEOUT="${SMOKE_TIMEOUT:-900}"  # seconds for install + model build + server start
LOG="${SMOKE_LOG:-$(mktemp -t vllm-xpu-smoke.XXXXXX.log)}"

# Build first (in the foreground) so the server's start-up timeout covers only the server.
make install models

# setsid: the server and its engine process get their own process group, stopped together.
setsid make serve HOST="$HOST" PORT="$PORT" >"$LOG" 2>&1 &
pgid=$!
stop() {
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 -- "-$pgid" 2>/dev/null || return 0
        sleep 1
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
}
trap stop EXIT

deadline=$((SECONDS + TIMEOUT))
until curl -sf "http://$HOST:$PORT/health" >/dev/null; do
    if ! kill -0 "$pgid" 2>/dev/null; then
        echo "server exited; log: $LOG" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "server not healthy after ${TIMEOUT}s; log: $LOG" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
    sleep 2
done

reply=$(curl -sf "http://$HOST:$PORT/v1/chat/completions" \
    -H 'Content-Type: application/json' -d '{
    "model": "'"${SERVED_MODEL_NAME:-SmolLM2-135M-Instruct}"'",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0, "max_tokens": 32}')
answer=$(printf '%s' "$reply" | "${VENV:-.venv}/bin/python" -c \
    'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')
echo "What is the capital of France? -> $answer"
case "$answer" in
    *Paris*) echo "smoke-serve: OK" ;;
    *) echo "smoke-serve: the answer does not mention Paris; log: $LOG" >&2; exit 1 ;;
esac
