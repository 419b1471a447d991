"""Who may change state over REST, and who sees a node's internal endpoints.

A state-changing call passes when it comes from an allowed network (``rest_allowed_cidrs``,
loopback by default) or carries ``Authorization: Bearer <token>``, a REST token signed with the
cluster secret (``mesh token --rest``). Otherwise: 401 with ``WWW-Authenticate: Bearer`` when the
node can check tokens (it has a ``cluster_secret``), 403 when it cannot (nothing but an allowed
network would do). A refused request changes nothing: the check runs before the handler.

The client's address is the TCP peer's, unless the peer is a trusted proxy (``trusted_proxies``:
the load balancer, loopback by default), whose ``X-Forwarded-For`` then names the client: the
configs `mesh lb` renders set that header to the address the balancer saw, so a viewer behind the
balancer never counts as loopback.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Callable, Sequence

from aiohttp import web

from .. import tokens
from .app import HttpError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(entries: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class RestAuth:
    def __init__(self, secrets: Sequence[str], allowed_cidrs: Sequence[str] = ("127.0.0.0/8", "::1/128"),
                 trusted_proxies: Sequence[str] = ("127.0.0.0/8", "::1/128"),
                 now: Callable[[], float] = time.time):
        self.secrets = [s for s in secrets if s]
        self.allowed = _networks(allowed_cidrs)
        self.proxies = _networks(trusted_proxies)
        self._now = now

    def client(self, request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        peer = _address(request.remote or "")
        if peer is not None and any(peer in net for net in self.proxies):
            forwarded = request.headers.getall("X-Forwarded-For", [])
            if forwarded:
                # The last hop is the one our proxy appended (or set): the address it saw.
                return _address(forwarded[-1].split(",")[-1])
        return peer

    def _from_allowed_network(self, request: web.Request) -> bool:
        client = self.client(request)
        return client is not None and any(client in net for net in self.allowed)

    def authenticated(self, request: web.Request) -> bool:
        """True for an allowed network or a valid REST token (never raises)."""
        if self._from_allowed_network(request):
            return True
        header = request.headers.get("Authorization")
        if not header or not self.secrets:
            return False
        try:
            tokens.verify_rest_token(tokens.bearer_token(header), self.secrets, now=self._now())
        except tokens.TokenError:
            return False
        return True

    def require(self, request: web.Request) -> None:
        """Let a state-changing call through, or raise the 401/403 that explains why not."""
        if self._from_allowed_network(request):
            return
        header = request.headers.get("Authorization")
        if not self.secrets:
            raise HttpError(403, "changes over REST are accepted only from this node's rest_allowed_cidrs; "
                                 "set cluster_secret to use REST tokens from elsewhere", "auth")
        try:
            tokens.verify_rest_token(tokens.bearer_token(header), self.secrets, now=self._now())
        except tokens.TokenError as exc:
            raise HttpError(401, f"{exc} (REST changes need Authorization: Bearer <token>; "
                                 "`mesh token --rest` prints one)", "auth",
                            {"WWW-Authenticate": 'Bearer realm="mesh"'}) from None
