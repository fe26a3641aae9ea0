"""The FastChat-protocol worker: one model, one vLLM engine, HTTP under /api."""
