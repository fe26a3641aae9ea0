"""`llm-ops up` runs services of docker-compose.yml natively: each model replica, the controller, the API."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from llm_ops.frontdoor.compose import ComposeError, ModelService, load_compose
from llm_ops.settings import (
    DEFAULT_EMBEDDING_MODEL_NAME,
    DEFAULT_EMBEDDING_SERVICE,
    DEFAULT_MODEL_NAME,
    DEFAULT_SERVICE,
    StackSettings,
)
from llm_ops.stack import (
    StackProcess,
    controller_command,
    engine_core_sets,
    router_command,
    shell_command,
    stack_workers,
    usage_banner,
    worker_commands,
    worker_environments,
)
from llm_ops.worker.launch import parse_worker_args, served_names, worker_options

ROOT = Path(__file__).parents[2]
COMPOSE = load_compose(ROOT / "docker-compose.yml")
RESTARTING = [sys.executable, "-m", "llm_ops.restart", "--stop-timeout", "37"]  # drain 5 s + grace 30 s + 2


def test_by_default_it_runs_one_replica_of_the_packaged_model_service_restarted_on_crashes() -> None:
    commands, names = worker_commands(StackSettings(port=1234), COMPOSE.model(DEFAULT_SERVICE))
    assert names == [DEFAULT_MODEL_NAME]
    (command,) = commands
    assert command[:7] == [*RESTARTING, "bash", str(ROOT / "start_chat.sh")]
    worker = parse_worker_args(command[7:])  # as the start script's `llm-ops worker` reads them
    assert (worker.host, worker.port, served_names(worker)) == ("127.0.0.1", 1234, [DEFAULT_MODEL_NAME])
    options = worker_options(worker)
    assert (options.controller_address, options.worker_address) == (
        "http://127.0.0.1:21001",
        "http://127.0.0.1:1234/api",
    )


def test_replicas_listen_on_consecutive_ports_and_register_under_their_own_address() -> None:
    settings = StackSettings(port=1000, replicas=3, controller_port=2000, heart_beat_interval=2)
    commands, _ = worker_commands(settings, COMPOSE.model(DEFAULT_SERVICE))
    workers = [worker_options(parse_worker_args(command[7:])) for command in commands]
    assert [w.worker_address for w in workers] == [f"http://127.0.0.1:{port}/api" for port in (1000, 1001, 1002)]
    assert {(w.controller_address, w.heart_beat_interval) for w in workers} == {("http://127.0.0.1:2000", 2.0)}


def test_by_default_the_packaged_embedding_model_runs_beside_the_chat_models_replicas_on_the_next_port() -> None:
    workers, names = stack_workers(StackSettings(port=1000, replicas=2), COMPOSE)
    assert list(workers) == ["worker-1", "worker-2", DEFAULT_EMBEDDING_SERVICE]
    assert names == [DEFAULT_MODEL_NAME, DEFAULT_EMBEDDING_MODEL_NAME]
    embedding = workers[DEFAULT_EMBEDDING_SERVICE]
    assert embedding[len(RESTARTING) + 1] == str(ROOT / "start_embedding.sh")
    assert parse_worker_args(embedding[len(RESTARTING) + 2 :]).port == 1002
    alone, _ = stack_workers(StackSettings(also_serve=[]), COMPOSE)
    assert list(alone) == ["worker"]


def test_vllm_flags_given_to_up_win_over_the_services_own() -> None:
    settings = StackSettings(worker_args=["--max-model-len", "2048", "--enforce-eager"], limit_worker_concurrency=3)
    (command,), _ = worker_commands(settings, COMPOSE.model("llama-2-7b-chat"))
    worker = parse_worker_args(command[7:])
    assert (worker.max_model_len, worker.enforce_eager) == (2048, True)  # the service says 4096
    assert (worker_options(worker).conv_template, worker.served_model_name) == ("llama-2", ["Llama-2-7b-chat"])
    assert worker_options(worker).limit_worker_concurrency == 3
    assert (worker.host, worker.port) == ("127.0.0.1", 21002)


@pytest.mark.parametrize(
    ("replicas", "cpus", "core_sets"),
    [
        (2, [0, 1], ["0", "1"]),
        (2, [0, 1, 2, 3], ["0-1", "2-3"]),
        (2, [0, 2, 4, 6], ["0,2", "4,6"]),
        (3, [0, 1], ["0", "1", "0"]),  # more replicas than cores: they share, round the cores again
    ],
)
def test_each_replicas_engine_gets_cores_of_its_own(replicas: int, cpus: list[int], core_sets: list[str]) -> None:
    assert engine_core_sets(replicas, cpus) == core_sets


def test_one_replica_keeps_vllms_own_core_binding_and_a_users_choice_always_wins() -> None:
    assert engine_core_sets(1, [0, 1]) == [None]
    assert worker_environments(1, {"A": "1"}) == [{"A": "1"}]
    chosen = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert worker_environments(2, chosen) == [chosen, chosen]
    two = worker_environments(2, {})
    cores = {environment["VLLM_CPU_OMP_THREADS_BIND"] for environment in two}
    assert len(cores) == min(2, len(os.sched_getaffinity(0)))


def test_the_controller_and_the_api_run_their_compose_commands_on_loopback() -> None:
    settings = StackSettings(controller_port=2000, router_port=3000, heart_beat_expiration=6)
    assert controller_command(settings, COMPOSE) == [
        "llm-ops", "controller", "--host=0.0.0.0", "--heart-beat-expiration=30",
        "--host", "127.0.0.1", "--port", "2000", "--heart-beat-expiration", "6.0",
    ]  # fmt: skip
    assert router_command(settings, COMPOSE) == [
        "llm-ops", "router", "--host=0.0.0.0", "--controller-address=http://controller:21001",
        "--host", "127.0.0.1", "--port", "3000", "--controller-address", "http://127.0.0.1:2000",
    ]  # fmt: skip
    chosen = StackSettings(controller_port=2000, router_port=3000, routing_policy="prefix")
    assert router_command(chosen, COMPOSE)[-2:] == ["--routing-policy", "prefix"]


def test_which_model_to_serve_is_the_compose_files_decision_not_a_flag_of_up() -> None:
    assert not {"model", "served_model_name", "conv_template", "kind"} & set(StackSettings.model_fields)


def test_a_model_service_that_traefik_would_route_to_past_the_router_is_refused_before_anything_starts() -> None:
    service = COMPOSE.model(DEFAULT_SERVICE)
    routed = ModelService(service.name, service.start_script, service.command, {"traefik.enable": "true"})
    with pytest.raises(ComposeError, match="model services are reached through the router"):
        worker_commands(StackSettings(), routed)


def test_a_service_with_bad_worker_flags_is_refused_with_its_name() -> None:
    service = COMPOSE.model(DEFAULT_SERVICE)
    broken = ModelService(service.name, service.start_script, ["--limit-worker-concurrency=lots"], service.labels)
    with pytest.raises(ComposeError, match=f"service {DEFAULT_SERVICE}: bad worker flags in its command"):
        worker_commands(StackSettings(), broken)


def test_an_unknown_service_is_refused_with_the_ones_there_are() -> None:
    with pytest.raises(ComposeError, match="no model service 'gpt-4'; it has: llama-2-7b-chat"):
        COMPOSE.model("gpt-4")


def test_without_api_keys_the_stack_says_loudly_that_it_is_open() -> None:
    banner = usage_banner(StackSettings(), [DEFAULT_MODEL_NAME], Path("ca.pem"), frozenset())
    assert "WARNING: NO API KEYS ARE CONFIGURED" in banner and "Authorization" not in banner


def test_with_api_keys_the_banner_shows_where_a_key_goes_but_never_a_key() -> None:
    banner = usage_banner(StackSettings(), [DEFAULT_MODEL_NAME], Path("ca.pem"), frozenset({"sk-secret-1", "sk-2"}))
    assert "2 configured" in banner and banner.count("Authorization: Bearer YOUR_KEY") == 2
    assert "sk-" not in banner and "WARNING" not in banner


def test_up_passes_admission_and_drain_settings_to_every_replica() -> None:
    settings = StackSettings(replicas=2, limit_worker_concurrency=4, max_queued_requests=2, drain_seconds=1)
    commands, _ = worker_commands(settings, COMPOSE.model(DEFAULT_SERVICE))
    workers = [worker_options(parse_worker_args(command[7:])) for command in commands]
    assert {(w.limit_worker_concurrency, w.max_queued_requests, w.drain_seconds) for w in workers} == {(4, 2, 1.0)}


def test_each_process_runs_in_a_process_group_of_its_own_in_the_stacks_session_reading_nothing(
    tmp_path: Path,
) -> None:
    """honcho signals each process's group; one session keeps the kernel from starving a killed worker
    of the CPU it needs to close its sockets (see `StackProcess`)."""
    ids = tmp_path / "ids"
    record = (
        f"import os; open({str(ids)!r}, 'w').write("
        f"f'{{os.getpid()}} {{os.getpgid(0)}} {{os.getsid(0)}} {{os.readlink(\"/proc/self/fd/0\")}}')"
    )
    StackProcess(shell_command([sys.executable, "-c", record]), name="probe").run()
    pid, group, session, stdin = ids.read_text().split()
    assert group == pid
    assert int(session) == os.getsid(0)
    assert stdin == os.devnull


def test_the_banner_gives_the_playgrounds_address() -> None:
    banner = usage_banner(StackSettings(), [DEFAULT_MODEL_NAME], Path("ca.pem"), frozenset())
    assert "the playground: https://localhost:8443/\n" in banner


def test_with_kv_events_each_replica_of_the_service_publishes_two_ports_apart_and_the_embedding_worker_none() -> None:
    def events_ports(settings: StackSettings) -> list[str | None]:
        workers, _ = stack_workers(settings, COMPOSE)
        return [
            next((c[i + 1] for i, arg in enumerate(c) if arg == "--kv-events-port"), None) for c in workers.values()
        ]

    assert events_ports(StackSettings(replicas=2)) == [None, None, None]
    assert events_ports(StackSettings(replicas=2, routing_policy="kv-events")) == ["5557", "5559", None]
    assert events_ports(StackSettings(replicas=2, kv_events_port=7000)) == ["7000", "7002", None]
