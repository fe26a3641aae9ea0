"""Stored responses (vLLM's Responses API): which replica holds one, told by its id alone.

vLLM keeps a stored response in the memory of the API server that made it, so a request that names one
(`previous_response_id` in POST /v1/responses, GET /v1/responses/{id}, POST /v1/responses/{id}/cancel)
must reach that replica. The router remembers nothing of it, so that router instances agree without
sharing state: when it sends POST /v1/responses to a replica, it sets the body's `request_id` (vLLM's
extra field, which becomes the response's id) to `resp_<tag>_<random hex>`, the tag a hash of the
replica's URL, which every router computes alike from the controller's list.

A client that sets its own `request_id` keeps it: the router cannot tell which replica holds that
response, so a follow-up naming it goes to any replica of its model, and GET or cancel by it, which name
no model, are refused (404).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from llm_ops.access import RESPONSES_ROUTE, stored_response_id
from llm_ops.router.policy import RoutedRequest

TAG_LENGTH, RANDOM_BYTES = 8, 12  # hex digits naming the replica; random bytes, as hex, naming the response
RESPONSE_ID = re.compile(rf"resp_(?P<tag>[0-9a-f]{{{TAG_LENGTH}}})_[0-9a-f]{{{2 * RANDOM_BYTES}}}")


def tag_of(replica_url: str) -> str:
    return hashlib.sha256(replica_url.encode()).hexdigest()[:TAG_LENGTH]


def new_response_id(replica_url: str) -> str:
    return f"resp_{tag_of(replica_url)}_{secrets.token_hex(RANDOM_BYTES)}"


def tag_in(response_id: str) -> str | None:
    """The replica's tag in an id the router made; None for any other id (the client's own `request_id`)."""
    matched = RESPONSE_ID.fullmatch(response_id)
    return matched["tag"] if matched else None


def named_response(request: RoutedRequest, method: str) -> str | None:
    """The stored response `request` needs: the id in its path, or the `previous_response_id` of a new one."""
    in_path = stored_response_id(method, request.path)
    if in_path is not None or request.path != RESPONSES_ROUTE:
        return in_path
    previous = request.document.get("previous_response_id")
    return previous if isinstance(previous, str) else None


def body_for(request: RoutedRequest, replica_url: str) -> bytes:
    """The body sent to the replica: for POST /v1/responses, with a `request_id` that names the replica
    unless the client set one; any other body (and one that is not a JSON object, or empty) as it came."""
    document = request.document if request.path == RESPONSES_ROUTE else {}
    if not document or document.get("request_id") is not None:
        return request.body
    ours = document | {"request_id": new_response_id(replica_url)}
    return json.dumps(ours).encode()  # ASCII: a lone surrogate the client escaped stays escaped
