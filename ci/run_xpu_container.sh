#!/usr/bin/env bash
# Run a command in the XPU image with the flags an Intel GPU container needs.
#   ci/run_xpu_container.sh IMAGE COMMAND...
#   e.g. ci/run_xpu_container.sh vllm-xpu-plugin:xpu vllm-xpu-doctor
# --device /dev/dri (+ by-path for multi-GPU ordering): the GPU render nodes.
# --ipc=host and --shm-size: vLLM's spawned workers share tensors through /dev/shm.
# MODEL_CACHE (default ~/.cache/huggingface) is mounted as the Hugging Face cache;
# HF_TOKEN is passed through for gated models. Extra docker flags: DOCKER_FLAGS.
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 IMAGE COMMAND..." >&2
    exit 2
fi
image="$1"
shift
model_cache="${MODEL_CACHE:-$HOME/.cache/huggingface}"
mkdir -p "$model_cache"
by_path=()
if [ -d /dev/dri/by-path ]; then
    by_path=(-v /dev/dri/by-path:/dev/dri/by-path)
fi
# shellcheck disable=SC2086  # DOCKER_FLAGS is a list of flags on purpose
exec docker run --rm \
    --device /dev/dri "${by_path[@]}" \
    --ipc=host --shm-size "${SHM_SIZE:-16g}" \
    -v "$model_cache:/root/.cache/huggingface" \
    -e HF_TOKEN -e HF_HUB_OFFLINE \
    ${DOCKER_FLAGS:-} \
    "$image" "$@"
