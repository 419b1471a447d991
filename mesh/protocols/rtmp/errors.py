"""The two kinds of RTMP failure (after h11's ``_util.py``).

* :class:`RemoteProtocolError` -- the peer sent something we will not accept. This is
  expected at a network boundary: the driver counts it under ``reason`` (a short fixed
  word, never peer-supplied text, so it is safe as a Prometheus label), logs the
  message and closes that one connection.
* :class:`LocalProtocolError` -- our own code misused the session (for example
  ``accept_publish()`` with no publish pending). That is a bug and should surface.
"""
from __future__ import annotations

#: The fixed vocabulary of ``RemoteProtocolError.reason`` (and of the bad-input counter).
REASONS = frozenset(
    {"handshake", "chunk", "amf", "oversize", "badname", "order", "command", "timeout", "limit", "ip_limit", "slow"}
)


class ProtocolError(Exception):
    """Base class of both RTMP protocol errors."""


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol; ``reason`` is a short fixed word for metrics."""

    def __init__(self, message: str, reason: str = "chunk") -> None:
        if reason not in REASONS:  # a typo here would silently create a new metric label
            raise ValueError(f"unknown RemoteProtocolError reason {reason!r}")
        super().__init__(message)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """Our own code called the session in a way the current state does not allow."""
