"""Typed settings of every LLM Ops process. The CLI (`llm_ops.cli`) fills them from flags.

One definition serves both: each field is a `--kebab-case` flag of the command that uses it, and
its description is the flag's `--help` text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

# Model names go into URLs (/api/<name>/...) and Traefik rules: keep them to safe characters.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN, max_length=128)]


class ConfigurationError(ValueError):
    """Settings that cannot work (a model path that does not exist, ...): reported before anything starts."""


# Every command's settings can come from the environment too: LLM_OPS_ and the setting's name in capitals.
ENVIRONMENT_PREFIX = "LLM_OPS_"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"  # the packaged embedding model, served with --kind embedding
DEFAULT_SERVICE = "smollm2-135m-instruct"  # the docker-compose.yml service that serves it
DEFAULT_EMBEDDING_SERVICE = "all-minilm-l6-v2"  # the one that serves the packaged embedding model
DEFAULT_KV_EVENTS_PORT = 5557  # vLLM's own default for its KV-cache events publisher
MAX_BODY_BYTES = 1_048_576  # a long conversation is some 100 kB of JSON
RoutingPolicy = Literal["least-loaded", "round-robin", "prefix", "kv-events"]  # llm_ops.router.app.POLICIES


class LifecycleSettings(BaseModel):
    """How an HTTP server of LLM Ops stops on SIGTERM (see `llm_ops.serving.serve`)."""

    drain_seconds: float = Field(
        5.0,
        ge=0,
        description="after SIGTERM: seconds the server reports unhealthy but still serves, so that the front "
        "door's health check (every 2 s) routes new requests elsewhere before the server stops listening",
    )
    graceful_timeout: float = Field(
        30.0, ge=0, description="then: seconds requests in flight get to finish before they are cancelled"
    )


class LimitSettings(BaseModel):
    """What a public server (worker, OpenAI API) takes from a client."""

    max_body_bytes: int = Field(
        MAX_BODY_BYTES, ge=1024, description="largest request body; larger ones get 413 without being read"
    )


class AdmissionSettings(BaseModel):
    """How many requests a worker takes at once (see `llm_ops.worker.admission`)."""

    limit_worker_concurrency: int | None = Field(
        None,
        ge=1,
        description="requests generating at once (FastChat's flag of the same name); unset: vLLM's --max-num-seqs, "
        "what its engine runs at once",
    )
    max_queued_requests: int = Field(
        128, ge=0, description="requests waiting for a running slot; beyond them: 429 at once"
    )
    max_queue_wait: float = Field(
        30.0, gt=0, description="seconds a request may wait for a running slot before it gets 429"
    )


class RegistrationSettings(BaseModel):
    """How a worker makes itself known to a controller."""

    controller_address: str | None = Field(None, description="controller to register with; unset: none")
    worker_address: str | None = Field(
        None, description="the worker's URL for the controller's clients; unset: http://HOST:PORT/api"
    )
    heart_beat_interval: float = Field(
        10.0, gt=0, description="seconds between heartbeats; keep it well under the controller's expiration"
    )


class WorkerOptions(LimitSettings, AdmissionSettings, RegistrationSettings):
    """What LLM Ops adds to vLLM's server flags: `llm-ops worker` takes both (`llm_ops.worker.launch`).

    Everything else (model, served names, dtype, context length, parallelism, parsers, ...) is a
    flag of vLLM's own server, spelled as `vllm serve` spells it."""

    conv_template: str | None = Field(
        None,
        description="registered FastChat conversation template: renders FastChat chats and, as a Jinja chat "
        "template, /v1 chats; unset: the tokenizer's chat template",
    )
    kind: Literal["chat", "completion", "embedding"] = Field(
        "chat",
        description="chat: refuse to start without a conversation or chat template; "
        "completion: a base model, for generation_mode completion; embedding: vLLM's pooling runner, for "
        "/v1/embeddings and FastChat's worker_get_embeddings (without --model: the packaged all-MiniLM-L6-v2)",
    )
    drain_seconds: float = Field(
        5.0,
        ge=0,
        description="after SIGTERM: seconds /health answers 503 while requests are still served, so that the "
        "front door routes new ones elsewhere; then vLLM drains (--shutdown-timeout) and stops",
    )
    kv_cache_space_gib: int = Field(1, ge=1, description="CPU only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)")
    claim_engine_cores: Path | None = Field(
        None,
        description="CPU only: a directory the host's workers share (in Docker, a volume); the worker claims "
        "--cores-per-engine cores there that no other worker's engine has (VLLM_CPU_OMP_THREADS_BIND), or runs its "
        "engine unpinned when none are free; unset, or VLLM_CPU_OMP_THREADS_BIND set: vLLM's own binding",
    )
    cores_per_engine: int = Field(1, ge=1, description="CPU only: the cores --claim-engine-cores claims")
    kv_events_port: int | None = Field(
        None,
        ge=1,
        le=65534,
        description="publish vLLM's KV-cache events (ZeroMQ, on every interface) on this port, and replay missed "
        "ones on the next, for routers with --routing-policy kv-events; unset: none (GET /kv_events says 404)",
    )


class ControllerSettings(LifecycleSettings):
    """The controller: FastChat's controller protocol. Defaults are shorter than FastChat's (45 s / 90 s)
    so that a dead worker leaves the rotation within half a minute."""

    host: str = Field("127.0.0.1", description="address the controller listens on")
    port: int = Field(21001, ge=0, le=65535, description="port the controller listens on")
    dispatch_method: Literal["shortest_queue", "lottery"] = Field(
        "shortest_queue", description="how a worker is chosen among those serving the model"
    )
    heart_beat_expiration: float = Field(
        30.0, gt=0, description="seconds without a heartbeat after which a worker is dropped"
    )
    log_level: str = Field("info", description="uvicorn log level")


class RouterSettings(LifecycleSettings, LimitSettings):
    """The router: every request to a model, to a replica it picks (`llm_ops.router`)."""

    host: str = Field("127.0.0.1", description="address the router listens on")
    port: int = Field(8000, ge=0, le=65535, description="port the router listens on")
    controller_address: str = Field("http://127.0.0.1:21001", description="the controller that knows the workers")
    routing_policy: RoutingPolicy = Field(
        "prefix",
        description="which replica gets a request: prefix (the one that was sent the longest prefix of the prompt, "
        "so likely holds it in its KV cache, unless loads are out of balance; the fastest in docs/benchmarks.md), "
        "least-loaded (the smallest share of its running slots in use), round-robin, or kv-events (the one whose KV "
        "cache holds the longest run of the prompt's leading blocks, as the workers' KV-cache events say: workers "
        "with --kv-events-port; unless loads are out of balance)",
    )
    probe_interval: float = Field(
        0.5, gt=0, description="seconds between reads of the controller's workers and each replica's health and load"
    )
    log_level: str = Field("info", description="uvicorn log level")


class StackSettings(AdmissionSettings):
    """The native stack: model services of docker-compose.yml, run outside Docker with Traefik in front.

    The service decides the model (its command: vLLM's flags and LLM Ops' own); `--worker-args` and
    the admission flags given here are added after the service's own (the last value of a flag wins).
    """

    host: str = Field("127.0.0.1", description="address the workers listen on")
    port: int = Field(21002, ge=0, le=65535, description="the first worker's port")
    worker_args: list[str] = Field(
        default_factory=list,
        description='more flags for every worker, after the service\'s own: \'["--max-model-len", "2048"]\'',
    )
    drain_seconds: float | None = Field(None, ge=0, description="workers' drain after SIGTERM; unset: theirs")
    compose_file: Path = Field(Path("docker-compose.yml"), description="the deployment whose service to run")
    service: str = Field(DEFAULT_SERVICE, description="the model service of the compose file to run")
    replicas: int = Field(1, ge=1, le=16, description="workers of the model, on --port, --port + 1, ...")
    also_serve: list[str] = Field(
        default_factory=lambda: [DEFAULT_EMBEDDING_SERVICE],
        description="more model services of the compose file to run beside --service, one worker each, on the "
        "ports after its replicas'; [] for none",
    )
    controller_port: int = Field(21001, ge=0, le=65535, description="the controller, on loopback")
    router_port: int = Field(8000, ge=0, le=65535, description="the router, on loopback")
    routing_policy: RoutingPolicy | None = Field(
        None, description="the router's (`llm-ops router --help`); unset: the compose file's router's, or its default"
    )
    heart_beat_interval: float | None = Field(None, gt=0, description="workers' heartbeat interval; unset: theirs")
    kv_events_port: int | None = Field(
        None,
        ge=1,
        le=65000,
        description="the --service's replicas publish vLLM's KV-cache events (`llm-ops worker --kv-events-port`): "
        "the first on this port, each next one two ports up (replay on the port after each); unset: none, or "
        f"{DEFAULT_KV_EVENTS_PORT} with --routing-policy kv-events",
    )
    heart_beat_expiration: float | None = Field(
        None, gt=0, description="seconds the controller waits for a heartbeat; unset: the compose file's"
    )

    public_host: str = Field("127.0.0.1", description="address Traefik's HTTPS and HTTP entrypoints listen on")
    https_port: int = Field(8443, ge=0, le=65535, description="HTTPS entrypoint")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP entrypoint; redirects to HTTPS")
    admin_port: int = Field(8090, ge=0, le=65535, description="Traefik API and ping, on loopback only")
    state_dir: Path = Field(Path(".llm-ops"), description="generated TLS files and Traefik configuration")
    tls_hostnames: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"], description="names the certificate is valid for"
    )
    traefik_log_level: str = Field("INFO", description="Traefik's log level: DEBUG, INFO, WARN, ERROR")
    ready_timeout: float = Field(900, gt=0, description="seconds to wait for the stack to serve requests")


def to_cli_args(settings: BaseModel, fields: set[str] | None = None) -> list[str]:
    """Flags that set, in another process, the explicitly set `fields` (default: all) of `settings`."""
    args: list[str] = []
    for name, value in settings.model_dump(mode="json", include=fields, exclude_unset=True).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, value if isinstance(value, str) else json.dumps(value)]
    return args
