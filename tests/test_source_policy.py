"""Pull sources and server-side request forgery: which URLs an origin may open (pure, no sockets)."""
from __future__ import annotations

import asyncio

import pytest

from mesh.errors import Invalid
from mesh.ingest.source_policy import SourcePolicy

DNS = {
    "cam.example.com": ["93.184.216.34"],
    "metadata.internal": ["169.254.169.254"],
    "sneaky.example.com": ["93.184.216.34", "127.0.0.1"],  # one bad address is enough to refuse
    "lan-cam.example.com": ["10.1.2.3"],
    "v6.example.com": ["2606:2800:220:1:248:1893:25c8:1946"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
}


async def resolve(host: str) -> list[str]:
    if host not in DNS:
        raise OSError("no such host")
    return DNS[host]


def check(policy: SourcePolicy, url: str) -> None:
    asyncio.run(policy.check(url, resolve))


@pytest.mark.parametrize("url", [
    "rtsp://cam.example.com/live", "rtmp://93.184.216.34/app/s", "https://v6.example.com/x.m3u8",
    "http://[2606:2800:220:1:248:1893:25c8:1946]:8080/a.mp4",
])
def test_global_hosts_are_allowed_by_default(url: str) -> None:
    check(SourcePolicy(), url)


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:5080/internal-admin?secret=1", "loopback"),
    ("http://localhost/x", "does not resolve"),  # not in this test's DNS; a real one says loopback
    ("http://[::1]/x", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://metadata.internal/", "link-local"),
    ("rtsp://10.0.0.7/cam", "private"),
    ("rtsp://192.168.1.2/cam", "private"),
    ("rtsp://sneaky.example.com/cam", "private"),
    ("http://mapped.example.com/", "private"),
    ("http://0.0.0.0:22/", "private"),
    ("http://224.0.0.1/", "private"),
    ("gopher://cam.example.com/", "scheme"),
    ("http:///nohost", "no host"),
])
def test_strangers_cannot_reach_what_only_the_origin_reaches(url: str, why: str) -> None:
    with pytest.raises(Invalid, match=why):
        check(SourcePolicy(), url)


def test_an_operator_lists_private_sources_by_name_suffix_address_or_network() -> None:
    policy = SourcePolicy(["lan-cam.example.com", "*.cams.internal", "10.9.0.0/16", "127.0.0.1"])
    check(policy, "rtsp://lan-cam.example.com/s")
    check(policy, "rtsp://10.9.3.4/s")
    check(policy, "http://127.0.0.1:8080/a.mp4")
    DNS["door.cams.internal"] = ["192.168.7.7"]
    check(policy, "rtsp://door.cams.internal/s")
    with pytest.raises(Invalid, match="not in pull_allowed_hosts"):
        check(policy, "rtsp://cam.example.com/live")  # a list means: only these
    with pytest.raises(Invalid, match="not in pull_allowed_hosts"):
        check(policy, "rtsp://10.8.0.1/s")


def test_a_star_keeps_global_hosts_and_adds_the_listed_ones() -> None:
    policy = SourcePolicy(["*", "10.1.2.3"])
    check(policy, "rtsp://cam.example.com/live")
    check(policy, "rtsp://lan-cam.example.com/s")
    with pytest.raises(Invalid, match="private"):
        check(policy, "rtsp://10.0.0.8/s")


def test_allowed_schemes_are_the_operators_choice() -> None:
    with pytest.raises(Invalid, match="scheme 'http'"):
        check(SourcePolicy(schemes=["rtsp"]), "http://cam.example.com/x")
