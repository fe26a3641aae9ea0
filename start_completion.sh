#!/usr/bin/env bash
# Container entry point for a completion (base) model, for generation_mode "completion". A chat
# request to it gets a clear error, unless its tokenizer has a chat template (or --conv-template is
# given). Arguments are those of start_chat.sh; --model is required.
set -euo pipefail
# The worker registers with the controller under its container's address (`hostname` is a network
# alias of the container: replicas of one service each register their own).
exec llm-ops worker --kind=completion --port=21002 --host="${LLM_OPS_WORKER_HOST:-0.0.0.0}" \
    --controller-address="${LLM_OPS_CONTROLLER_ADDRESS:-http://controller:21001}" \
    --worker-address="http://$(hostname):21002/api" "$@"
