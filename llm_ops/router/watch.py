"""The router's background task: which replicas there are (the controller's list), whether each is
healthy (its /health), and how loaded (its /metrics). Never on a request's path.

Every `interval`: the controller's `GET /list_workers`, then every replica at once: `GET /health`; if
it answers 200, `GET /metrics` (and, for a replica not admitted yet, its `/v1/models`). A replica that
refuses the connection or answers an error is set aside at once; one that does not answer within
`PROBE_TIMEOUT` is set aside after `SLOW_PROBES_TO_SET_ASIDE` such probes in a row (on a saturated CPU a
worker busy with long prefills answers late, and is serving); one that passes both is admitted, unless
a request set it aside while the check ran (its next check decides). A controller that cannot be
reached changes nothing: the replicas known so far keep serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from llm_ops.protocol.controller import WorkerList
from llm_ops.router.replicas import Load, Replica, Replicas

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
SLOW_PROBES_TO_SET_ASIDE = 3  # as vllm-router's --health-failure-threshold
FAILED = (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError)
# The worker's admission (llm_ops.worker.admission) and vLLM's KV cache, as its /metrics names them.
RUNNING, WAITING, CAPACITY = "llm_ops_requests_running", "llm_ops_requests_waiting", "llm_ops_requests_capacity"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
READ = (RUNNING, WAITING, CAPACITY, KV_CACHE_USAGE)


def replica_url(worker_name: str) -> str:
    """Workers register FastChat's address, http://host:port/api; their OpenAI routes are at http://host:port."""
    return worker_name.rstrip("/").removesuffix("/api")


async def watch_replicas(replicas: Replicas, http: aiohttp.ClientSession, controller: str, interval: float) -> None:
    controller_down = False
    while True:
        try:
            replicas.update(await listed_workers(http, controller))
            if controller_down:
                logger.info("the controller at %s answers again", controller)
            controller_down = False
        except FAILED as error:
            if not controller_down:
                logger.warning(
                    "the controller at %s cannot be reached (%r): routing to the replicas known", controller, error
                )
            controller_down = True
        await asyncio.gather(*(probe(http, replica) for replica in replicas))
        await asyncio.sleep(interval)


async def listed_workers(http: aiohttp.ClientSession, controller: str) -> dict[str, list[str]]:
    workers = WorkerList.model_validate_json(await read(http, f"{controller}/list_workers")).workers
    return {replica_url(worker.name): worker.model_names for worker in workers}


async def read(http: aiohttp.ClientSession, url: str) -> str:
    """The body of `GET url`; `aiohttp.ClientResponseError` for a status other than 200."""
    async with http.get(url, timeout=PROBE_TIMEOUT, raise_for_status=True) as response:
        return await response.text()


async def probe(http: aiohttp.ClientSession, replica: Replica) -> None:
    """Health, then load; sets the replica aside, or admits it."""
    in_flight, times_set_aside = replica.in_flight, replica.times_set_aside
    try:
        await read(http, f"{replica.url}/health")
        replica.load = read_load(await read(http, f"{replica.url}/metrics"), in_flight)
        if replica.times_set_aside != times_set_aside:
            return  # a request failed on it while this check ran: what the check saw is out of date
        if not replica.admitted:
            replica.admit(await model_cards(http, replica))
        replica.slow_probes = 0
    except TimeoutError:
        replica.slow_probes += 1
        if replica.slow_probes >= SLOW_PROBES_TO_SET_ASIDE or not replica.admitted:
            replica.set_aside(f"it did not answer {replica.slow_probes} health checks within {PROBE_TIMEOUT.total} s")
    except aiohttp.ClientResponseError as error:
        replica.set_aside(f"its {error.request_info.url.path} answered {error.status}")
    except FAILED as error:
        replica.set_aside(f"its health check failed: {error!r}")


def read_load(metrics: str, in_flight: int) -> Load:
    """The load in a worker's Prometheus text; only the lines read are parsed (vLLM's are many)."""
    lines = "\n".join(line for line in metrics.splitlines() if line.startswith(READ))
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(lines):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value  # summed over vLLM's engines
    capacity = values.get(CAPACITY)
    return Load(
        running=int(values.get(RUNNING, 0)),
        waiting=int(values.get(WAITING, 0)),
        capacity=int(capacity) if capacity else None,
        kv_cache_usage=values.get(KV_CACHE_USAGE, 0.0),
        in_flight_when_read=in_flight,
    )


async def model_cards(http: aiohttp.ClientSession, replica: Replica) -> list[dict[str, Any]]:
    """vLLM's model cards of the replica's models, `root` set to the served name (its model folder means
    nothing on this side of the front door)."""
    cards: list[dict[str, Any]] = json.loads(await read(http, f"{replica.url}/v1/models"))["data"]
    return [card | {"root": card["id"]} for card in cards if card["id"] in replica.models]
