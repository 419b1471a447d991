"""RTMP 1.0, server side, sans-IO: handshake, chunk stream, AMF0 and the publish session.

The asyncio driver lives in :mod:`mesh.ingest.rtmp_server`; nothing here does I/O.
"""
from .amf0 import UNDEFINED, AmfDate, EcmaArray
from .chunk import ChunkReader, ChunkWriter, Message
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .session import (NEED_DATA, PAUSED, TRANSITIONS, AudioMessage, Connected, Event, Metadata, PeerClosed,
                      PublishRequested, ServerSession, State, Trigger, Unpublished, VideoMessage)

__all__ = [
    "UNDEFINED", "AmfDate", "EcmaArray",
    "ChunkReader", "ChunkWriter", "Message",
    "LocalProtocolError", "ProtocolError", "RemoteProtocolError",
    "NEED_DATA", "PAUSED", "TRANSITIONS", "AudioMessage", "Connected", "Event", "Metadata", "PeerClosed",
    "PublishRequested", "ServerSession", "State", "Trigger", "Unpublished", "VideoMessage",
]
