"""`llm-ops worker`'s command line: vLLM's flags and LLM Ops' own, the names it serves, and the flags
vLLM's own server gets for the benchmark's reference (no model is converted here)."""

from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path

import pytest

from llm_ops.settings import ConfigurationError, WorkerOptions
from llm_ops.worker import vllm_api
from llm_ops.worker.cores import claimed_cores
from llm_ops.worker.launch import (
    check_before_start,
    parse_worker_args,
    resolve_defaults,
    run_worker,
    served_names,
    server_environment,
    tokenizer_adds_bos,
    vllm_argv,
    worker_options,
)


@pytest.fixture(autouse=True)
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model is converted or read: the default model is a path, and only a "llama" tokenizer adds a BOS."""
    monkeypatch.setattr("llm_ops.models.default.ensure_default_model", lambda: Path("/cache/SmolLM2-135M-Instruct"))
    monkeypatch.setattr("llm_ops.models.embedding.ensure_embedding_model", lambda: Path("/cache/all-MiniLM-L6-v2"))
    monkeypatch.setattr("llm_ops.worker.launch.tokenizer_adds_bos", lambda source, args: source.endswith("llama"))


def tiny_tokenizer(folder: Path, adds_bos: bool) -> Path:
    """A real tokenizer of three words, saved as a model folder's tokenizer is."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({"<s>": 0, "x": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", unk_token="[UNK]").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("adds_bos", [True, False])
def test_whether_a_tokenizer_starts_a_prompt_with_its_bos_token_is_read_from_the_tokenizer(
    tmp_path: Path, adds_bos: bool
) -> None:
    folder = tiny_tokenizer(tmp_path, adds_bos)
    assert tokenizer_adds_bos(str(folder), parse_worker_args([])) is adds_bos  # the real one, imported above


def test_the_worker_takes_vllms_flags_and_llm_ops_flags_together() -> None:
    args = parse_worker_args(
        ["--model", "/models/x", "--max-model-len", "2048", "--enforce-eager", "--limit-worker-concurrency", "3"]
        + ["--conv-template", "chatml", "--controller-address", "http://c:21001", "--max-queue-wait=2.5"]
    )
    assert (args.model, args.max_model_len, args.enforce_eager) == ("/models/x", 2048, True)
    options = worker_options(args)
    assert (options.limit_worker_concurrency, options.conv_template, options.max_queue_wait) == (3, "chatml", 2.5)
    assert options.controller_address == "http://c:21001"


def test_llm_ops_flags_default_to_worker_options_defaults() -> None:
    assert worker_options(parse_worker_args([])) == WorkerOptions()


def test_the_model_can_be_given_as_vllm_serves_positional_tag() -> None:
    assert parse_worker_args(["org/model"]).model == "org/model"
    assert parse_worker_args([]).model is None  # not vLLM's own default: LLM Ops' default model


def test_an_llm_ops_flag_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="limit_worker_concurrency"):
        worker_options(parse_worker_args(["--limit-worker-concurrency", "0"]))


def test_served_names_are_the_configured_ones_or_the_model_folders_name() -> None:
    assert served_names(parse_worker_args(["--served-model-name", "a", "b.v1"])) == ["a", "b.v1"]
    assert served_names(parse_worker_args(["--model", "/models/Qwen2-0.5B/"])) == ["Qwen2-0.5B"]
    assert served_names(parse_worker_args([])) == ["SmolLM2-135M-Instruct"]


@pytest.mark.parametrize("bad", ["has space", "back`tick", "..", "-dash-first", "a/b"])
def test_served_names_refuse_names_that_would_break_urls_or_routing_rules(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="served model name"):
        served_names(parse_worker_args([f"--served-model-name={bad}"]))


def test_a_model_path_with_an_unsafe_folder_name_needs_a_served_name() -> None:
    with pytest.raises(ConfigurationError, match="--served-model-name"):
        served_names(parse_worker_args(["--model", "/models/my model"]))


def test_check_before_start_refuses_an_unknown_conv_template_and_a_folder_that_is_no_model(tmp_path: Path) -> None:
    args = parse_worker_args(["--conv-template", "no-such-template"])
    with pytest.raises(ConfigurationError, match="not registered"):
        check_before_start(args, worker_options(args))
    args = parse_worker_args(["--model", str(tmp_path)])
    with pytest.raises(ConfigurationError, match="no config.json"):
        check_before_start(args, worker_options(args))
    args = parse_worker_args(["--kind", "completion"])
    with pytest.raises(ConfigurationError, match="needs --model"):
        check_before_start(args, worker_options(args))


def test_resolve_defaults_fills_in_the_default_model_in_float32_and_its_name() -> None:
    args = parse_worker_args([])
    resolve_defaults(args, worker_options(args))
    assert (args.model, args.dtype, args.served_model_name) == (
        "/cache/SmolLM2-135M-Instruct",
        "float32",
        ["SmolLM2-135M-Instruct"],
    )
    assert args.shutdown_timeout > 0  # answers in flight get time to finish


def test_vllm_logs_no_access_line_for_polled_routes_unless_told_otherwise() -> None:
    args = parse_worker_args([])
    resolve_defaults(args, worker_options(args))
    assert set(args.disable_access_log_for_endpoints.split(",")) == {
        "/health",
        "/metrics",
        "/receive_heart_beat",
        "/list_workers",
    }
    chosen = parse_worker_args(["--disable-access-log-for-endpoints", "/metrics"])
    assert resolve_defaults(chosen, worker_options(chosen)).disable_access_log_for_endpoints == "/metrics"


def test_a_conv_template_becomes_vllms_chat_template_and_excludes_one_given_too() -> None:
    args = parse_worker_args(["--conv-template", "chatml"])
    resolve_defaults(args, worker_options(args))
    assert "<|im_start|>" in args.chat_template
    both = parse_worker_args(["--conv-template", "chatml", "--chat-template", "{{ x }}"])
    with pytest.raises(ConfigurationError, match="not both"):
        resolve_defaults(both, worker_options(both))


def test_the_server_environment_enables_the_plugin_once_and_keeps_other_plugins() -> None:
    options = WorkerOptions(kv_cache_space_gib=3)
    environment = server_environment(options, {"VLLM_PLUGINS": "other,llm_ops", "PATH": "/bin"})
    assert environment["VLLM_PLUGINS"] == "other,llm_ops"
    assert environment["VLLM_CPU_KVCACHE_SPACE"] == "3" and environment["PATH"] == "/bin"
    assert server_environment(options, {})["VLLM_PLUGINS"] == "llm_ops"


def test_the_server_environment_stores_responses_unless_the_environment_says_otherwise() -> None:
    options = WorkerOptions()
    assert server_environment(options, {})["VLLM_ENABLE_RESPONSES_API_STORE"] == "1"
    kept = server_environment(options, {"VLLM_ENABLE_RESPONSES_API_STORE": "0"})
    assert kept["VLLM_ENABLE_RESPONSES_API_STORE"] == "0"


def test_vllm_argv_drops_llm_ops_flags_and_writes_out_model_dtype_and_names() -> None:
    argv = ["--max-model-len", "512", "--limit-worker-concurrency", "3", "--max-queue-wait=2", "--enforce-eager"]
    argv += ["--controller-address", "http://c:21001", "--kind", "chat"]
    flags = vllm_argv(argv)
    assert flags[:3] == ["--max-model-len", "512", "--enforce-eager"]
    assert flags[3:] == [
        "--model",
        "/cache/SmolLM2-135M-Instruct",
        "--dtype",
        "float32",
        "--runner",
        "auto",
        "--served-model-name",
        "SmolLM2-135M-Instruct",
        "--shutdown-timeout",
        "30",
    ]


def test_an_embedding_worker_runs_vllms_pooling_runner_on_the_packaged_embedding_model_in_float32() -> None:
    args = parse_worker_args(["--kind", "embedding"])
    resolve_defaults(args, worker_options(args))
    assert args.runner == "pooling" and args.dtype == "float32"
    assert args.model == "/cache/all-MiniLM-L6-v2" and args.served_model_name == ["all-MiniLM-L6-v2"]
    flags = vllm_argv(["--kind", "embedding"])
    assert flags[flags.index("--runner") + 1] == "pooling"


def test_a_conv_templates_chat_template_starts_with_bos_when_the_models_tokenizer_adds_one() -> None:
    llama = parse_worker_args(["--model", "/models/llama", "--conv-template", "llama-2"])
    chatml = parse_worker_args(["--model", "/models/qwen", "--conv-template", "chatml"])
    for args in (llama, chatml):
        resolve_defaults(args, worker_options(args))
    assert llama.chat_template.startswith("{{- bos_token -}}")
    assert "bos_token }}" not in chatml.chat_template


def test_vllm_argv_writes_a_conv_template_out_as_a_chat_template() -> None:
    flags = vllm_argv(["--model", "/models/llama", "--conv-template", "llama-2", "--dtype", "bfloat16"])
    assert "--conv-template" not in flags and "llama-2" not in flags
    assert flags[flags.index("--dtype", 2) + 1] == "bfloat16"
    assert "[INST]" in flags[flags.index("--chat-template") + 1]
    assert flags[flags.index("--served-model-name") + 1] == "llama"
    assert parse_worker_args(flags).chat_template is not None  # vLLM's parser takes the flags back


def test_under_vllms_own_command_line_the_plugin_takes_llm_ops_defaults() -> None:
    """`vllm serve ...` with VLLM_PLUGINS=llm_ops: vLLM's parser knows none of LLM Ops' flags."""
    assert worker_options(Namespace(model="m", port=8000)) == WorkerOptions()


def test_a_worker_on_a_vllm_that_lacks_a_name_stops_before_it_reads_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    def lacking() -> None:
        raise vllm_api.UnsupportedVllmError("that vLLM lacks: vllm.exceptions.VLLMError")

    monkeypatch.setattr(vllm_api, "check_vllm_surface", lacking)
    monkeypatch.setattr(vllm_api, "prepare_process", lambda: pytest.fail("the worker went on"))
    with pytest.raises(ConfigurationError, match="VLLMError"):  # `llm-ops worker` prints it and exits 1
        run_worker(["--model", "/no/such/model"])


def test_llm_ops_flags_can_be_given_in_the_environment_and_the_command_line_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_OPS_CLAIM_ENGINE_CORES", "/engine-cores")
    monkeypatch.setenv("LLM_OPS_CORES_PER_ENGINE", "2")
    options = worker_options(parse_worker_args([]))
    assert (options.claim_engine_cores, options.cores_per_engine) == (Path("/engine-cores"), 2)
    assert worker_options(parse_worker_args(["--cores-per-engine", "3"])).cores_per_engine == 3


def test_the_worker_claims_its_engines_cores_before_vllms_server_starts_and_holds_them_while_it_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for step in ("check_vllm_surface", "prepare_process", "configure_logging", "validate_serve_args"):
        monkeypatch.setattr(vllm_api, step, lambda *args: None)
    monkeypatch.setattr(os, "environ", {"PATH": "/bin"})  # run_worker's changes stay in this test
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    seen: dict[str, object] = {}

    async def server(args: Namespace) -> None:
        seen["cores"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
        with claimed_cores(tmp_path, 1, [0, 1]) as other:
            seen["another worker's"] = other

    monkeypatch.setattr("llm_ops.worker.launch.serve", server)
    run_worker(["--claim-engine-cores", str(tmp_path)])
    assert seen == {"cores": "0", "another worker's": [1]}
    with claimed_cores(tmp_path, 1, [0, 1]) as after:
        assert after == [0]  # the worker's claim went with it


def test_a_kv_events_port_makes_vllm_publish_there_bound_on_every_interface_and_excludes_a_config_given_too() -> None:
    args = parse_worker_args(["--kv-events-port", "5557"])
    config = resolve_defaults(args, worker_options(args)).kv_events_config
    assert (config.enable_kv_cache_events, config.publisher, config.topic) == (True, "zmq", "kv")
    assert (config.endpoint, config.replay_endpoint) == ("tcp://*:5557", "tcp://*:5558")  # `*`: vLLM binds
    assert resolve_defaults(parse_worker_args([]), worker_options(parse_worker_args([]))).kv_events_config is None
    both = parse_worker_args(["--kv-events-port", "5557", "--kv-events-config", '{"enable_kv_cache_events": true}'])
    with pytest.raises(ConfigurationError, match="not both"):
        resolve_defaults(both, worker_options(both))
