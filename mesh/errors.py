"""Domain errors: what went wrong, in words for the person who sent the request.

Domain code (HLS streams, pull sources, the registry's callers) raises these; the room that faces
the network translates them (HTTP status, RTMP status code). ``reason`` is a short fixed word for
the bad-input counter, never peer-supplied text.
"""
from __future__ import annotations


class MeshError(Exception):
    reason = "request"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class NotFound(MeshError):
    """No such thing (stream, segment, path)."""

    reason = "notfound"


class Unavailable(MeshError):
    """It exists but cannot be served now (not started, finished, its origin lost)."""

    reason = "unavailable"


class Invalid(MeshError):
    """The request itself is wrong (a bad name, URL or body)."""

    reason = "body"


class Conflict(MeshError):
    """The request clashes with the cluster's state (a stream live elsewhere, a node's role)."""

    reason = "busy"
