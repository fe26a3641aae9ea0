#!/usr/bin/env bash
# Container entry point for a completion (base) model, for generation_mode "completion". A chat
# request to it gets a clear error, unless its tokenizer has a chat template (or --conv-template is
# given). Arguments are those of start_chat.sh; --model-path is required.
set -euo pipefail
exec llm-ops worker --kind=completion --host="${LLM_OPS_WORKER_HOST:-0.0.0.0}" "$@"
