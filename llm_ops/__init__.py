"""LLM Ops: LLMs behind one HTTPS front door (Traefik -> FastChat-protocol worker -> vLLM)."""

__version__ = "0.1.0"
