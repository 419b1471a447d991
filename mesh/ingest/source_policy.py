"""Which pull sources an origin may open: the guard against server-side request forgery.

A REST client names a URL and the origin connects to it, so a stranger's URL must not reach what
only the origin can reach: loopback, link-local (cloud metadata at 169.254.169.254), private and
other non-global ranges are refused unless the operator lists them in ``pull_allowed_hosts``.
The host is resolved when the request arrives and every address it resolves to must pass.

``pull_allowed_hosts`` entries: a host name (``cam.example.com``), a suffix pattern
(``*.cams.example.com``), an address or a network (``10.1.2.3``, ``10.1.0.0/16``), or ``*``
(any host with global addresses). Empty (the default): any host whose addresses are all global.
When entries are given, only matching hosts are allowed; a listed name or network may then
resolve to private addresses.

Limits: FFmpeg resolves the name again when it connects, so a name whose DNS answer changes
between the check and the connection (rebinding) is not caught; list addresses rather than names
where that matters.
"""
from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from ..errors import Invalid

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str], Awaitable[Sequence[str]]]  # host -> its addresses


def is_global(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class SourcePolicy:
    def __init__(self, allowed_hosts: Sequence[str] = (), schemes: Sequence[str] = NETWORK_SCHEMES):
        self.schemes = tuple(s.lower() for s in schemes)
        self.any_global = not allowed_hosts or "*" in allowed_hosts
        self.listed_only = bool(allowed_hosts) and "*" not in allowed_hosts
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed_hosts:
            entry = entry.strip().lower().rstrip(".")
            if not entry or entry == "*":
                continue
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry)

    def _listed_name(self, host: str) -> bool:
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def _listed_address(self, address: Address) -> bool:
        return any(address in net for net in self.networks)

    async def check(self, url: str, resolve: Resolve) -> None:
        """Raise :class:`Invalid` (nothing was opened) unless ``url`` may be pulled."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            raise Invalid(f"streamUrl scheme {scheme!r} is not allowed here; use "
                          f"{', '.join(self.schemes)}")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise Invalid("streamUrl has no host")
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await resolve(host)]
            except OSError:
                raise Invalid(f"streamUrl host {host!r} does not resolve") from None
        if not addresses:
            raise Invalid(f"streamUrl host {host!r} does not resolve")
        name_listed = self._listed_name(host)
        for address in addresses:
            listed = name_listed or self._listed_address(address)
            if listed:
                continue
            if self.listed_only:
                raise Invalid(f"streamUrl host {host!r} is not in pull_allowed_hosts on this origin")
            if not is_global(address):
                raise Invalid(f"streamUrl host {host!r} is a loopback, link-local or private address "
                              f"({address}); an operator must list it in pull_allowed_hosts")
