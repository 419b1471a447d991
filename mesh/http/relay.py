"""Hand a REST call to the node that can do it (the origin that owns a stream, any origin).

A REST request may land on any node (the balancer sends most to edges), but only the origin a
stream is live on can stop it, and only an origin can start a pull. The node that got the request
authenticates the caller first, then repeats the call to the other node's ``http_url`` (from the
registry) with a short-lived REST token signed with the cluster secret; without a secret the other
node must count this one's address among its ``rest_allowed_cidrs``. ``X-Mesh-Relayed`` marks a
relayed call, so it is never relayed a second time (no loops when the registry is stale).
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

import aiohttp

from .. import tokens
from ..errors import Unavailable

RELAYED = "X-Mesh-Relayed"
RELAY_TIMEOUT_S = 10.0
RELAY_TOKEN_TTL_S = 60.0
MAX_REPLY_BYTES = 1 << 20


async def relay(url: str, method: str, *, secrets: Sequence[str], node_id: str,
                body: Any = None) -> tuple[int, Any]:
    """Make the call at ``url`` on another node; its HTTP status and JSON answer. Raises
    Unavailable when the node cannot be reached or does not answer JSON."""
    headers = {RELAYED: node_id}
    if secrets:
        token = tokens.issue_rest_token(secrets[0], ttl_s=RELAY_TOKEN_TTL_S, now=time.time(),
                                        subject=node_id)
        headers["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=RELAY_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.request(method, url, headers=headers,
                                       json=body if body is not None else None) as resp:
                raw = await resp.content.read(MAX_REPLY_BYTES)
                return resp.status, json.loads(raw or b"null")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Unavailable(f"could not reach {url.split('/rest/', 1)[0]} ({type(exc).__name__}); "
                          f"try again, or send the call to that node directly", "relay") from None
