"""Which parts run in which role, built from what the node shares."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .part import CreatePull, Part, Shared


@dataclass
class RoleParts:
    parts: list[Part]
    create_pull: CreatePull | None  # the origin's pull-source creation, when there is an origin
    # the origin's REST ``stop`` of a stream live here, and its check of a pull source's URL
    stop_stream: Callable[[str], Awaitable[str]] | None = None
    check_url: Callable[[Any], Awaitable[str]] | None = None


def build_parts(role: str, shared: Shared) -> RoleParts:
    # Imported here: role parts import heavier modules (PyAV, Numba) that a node of the other
    # role never needs.
    from .edge import EdgePart
    from .origin import OriginPart

    parts: list[Part] = []
    create_pull: CreatePull | None = None
    stop_stream: Callable[[str], Awaitable[str]] | None = None
    check_url: Callable[[Any], Awaitable[str]] | None = None
    if role in ("origin", "standalone"):
        origin = OriginPart(shared.cfg, shared.registry, shared.zmq, shared.info)
        parts.append(origin)
        create_pull = origin.pulls.create
        stop_stream = origin.stop_stream
        check_url = origin.pulls.check_url
    if role in ("edge", "standalone"):
        # standalone: the edge reads the origin over the same bus path a remote edge would, so
        # one code path serves both.
        parts.append(EdgePart(shared.cfg, shared.registry, shared.zmq, shared.app, shared.http, shared.info))
    return RoleParts(parts, create_pull, stop_stream, check_url)
