#!/usr/bin/env bash
# Container entry point for a chat model: its worker, listening on all interfaces of the container's
# network (Traefik reaches it there; no port is published). Every argument goes to `llm-ops worker`,
# which is vLLM's OpenAI server with LLM Ops inside: any `vllm serve` flag, and LLM Ops' own:
#   --model=meta-llama/Llama-2-7b-chat-hf --served-model-name=Llama-2-7b-chat --conv-template=llama-2
#   --tensor-parallel-size=2 --quantization=awq --gpu-memory-utilization=0.9 --max-model-len=4096
#   --enable-prefix-caching --enable-auto-tool-choice --tool-call-parser=hermes
# Without --conv-template the tokenizer's chat template renders chats; a model with neither is refused.
set -euo pipefail
# The worker registers with the controller under its container's address (`hostname` is a network
# alias of the container: replicas of one service each register their own).
exec llm-ops worker --kind=chat --port=21002 --host="${LLM_OPS_WORKER_HOST:-0.0.0.0}" \
    --controller-address="${LLM_OPS_CONTROLLER_ADDRESS:-http://controller:21001}" \
    --worker-address="http://$(hostname):21002/api" "$@"
