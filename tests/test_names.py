"""One rule for names (mesh/names.py), the same at every boundary that takes one."""
from __future__ import annotations

import asyncio

import pytest

from mesh.broker import wire
from mesh.config import ConfigError, load_config
from mesh.errors import Invalid
from mesh.ingest.pulls import PullManager
from mesh.names import NAME_MAX, NAME_RULE, is_name
from mesh.protocols.rtmp import RemoteProtocolError, ServerSession

from .test_rtmp_session import Publisher, drain, handshaken

LONGEST = "A-z_9" * 25 + "abc"
GOOD = ["a", "cam1", "LiveApp", "x_y-Z", LONGEST]
BAD = ["", "x" * (NAME_MAX + 1), "cam\n", "a/b", "..", "caf\u00e9", "a b", "cam1\x00", 7, None]


def test_the_rule() -> None:
    assert len(LONGEST) == NAME_MAX and NAME_RULE.startswith(f"1-{NAME_MAX} characters")
    assert all(is_name(n) for n in GOOD)
    assert not any(is_name(n) for n in BAD)


@pytest.mark.parametrize("name", GOOD)
def test_config_takes_the_names_the_rule_takes(name: str) -> None:
    assert load_config(env={}, app=name, node_id=name).app == name


@pytest.mark.parametrize("name", [n for n in BAD if isinstance(n, str)])
def test_config_refuses_what_the_rule_refuses(name: str) -> None:
    with pytest.raises(ConfigError, match="'app'"):
        load_config(env={}, app=name)


def _rtmp(app: str, stream: str) -> list:
    pub, s = Publisher(), ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect(app) + pub.setup(stream))
    return drain(s, accept=False)


def test_rtmp_connect_and_publish_take_the_longest_name() -> None:
    events = _rtmp(LONGEST, LONGEST)
    assert events[-1].app == LONGEST and events[-1].stream_name == LONGEST


@pytest.mark.parametrize("name", ["x" * (NAME_MAX + 1), "cam\n", "a b"])
def test_rtmp_refuses_what_the_rule_refuses(name: str) -> None:
    with pytest.raises(RemoteProtocolError, match="application name"):
        _rtmp(name, "cam1")
    with pytest.raises(RemoteProtocolError, match="stream name"):
        _rtmp("LiveApp", name)


def test_bus_topics_follow_the_rule() -> None:
    assert wire.parse_topic(wire.topic_for(LONGEST, LONGEST)) == (LONGEST, LONGEST)
    with pytest.raises(ValueError):
        wire.topic_for("x" * (NAME_MAX + 1))
    with pytest.raises(wire.WireError):
        wire.parse_topic(b"s/cam1/src/\n")


class NoRecords:
    async def create_stream(self, *args):  # pragma: no cover - must not be reached
        raise AssertionError("a refused request must change nothing")

    async def get_stream(self, stream_id):  # pragma: no cover
        raise AssertionError


@pytest.mark.parametrize("stream_id", ["x" * (NAME_MAX + 1), "cam\n", "a/b", 7])
def test_rest_bodies_follow_the_rule(stream_id) -> None:
    pulls = PullManager(NoRecords(), None, None)  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="streamId must be 1-128"):
        asyncio.run(pulls.create("LiveApp", {"streamId": stream_id, "streamUrl": "rtsp://cam/x"}))
