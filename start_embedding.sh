#!/usr/bin/env bash
# Container entry point for an embedding model: vLLM's pooling runner, for /v1/embeddings and FastChat's
# worker_get_embeddings. A chat or completion request to it gets a clear error. Arguments are those of
# start_chat.sh; without --model it serves the packaged all-MiniLM-L6-v2.
set -euo pipefail
# The worker registers with the controller under its container's address (`hostname` is a network
# alias of the container: replicas of one service each register their own).
exec llm-ops worker --kind=embedding --port=21002 --host="${LLM_OPS_WORKER_HOST:-0.0.0.0}" \
    --controller-address="${LLM_OPS_CONTROLLER_ADDRESS:-http://controller:21001}" \
    --worker-address="http://$(hostname):21002/api" "$@"
