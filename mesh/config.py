"""One typed configuration object for a node, from TOML, ``MESH_*`` environment and flags.

Precedence (lowest to highest): built-in defaults, the TOML file (``--config``), ``MESH_<FIELD>``
environment variables, command-line flags. Validation happens once, at start, and every error
names the field and says what would be accepted. Units are in the field names.

A commented sample lives in ``deploy/mesh.toml``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

ROLES = ("origin", "edge", "standalone")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "mesh"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what to do."""


@dataclass
class NodeConfig:
    role: str = "standalone"
    node_id: str = ""  # default: {role}-{hostname}-{http_port or pid}
    host: str = "127.0.0.1"  # address advertised to other nodes and clients
    bind: str = "127.0.0.1"  # address the node listens on
    http_port: int = 5080
    rtmp_port: int = 1935
    bus_port: int = 5560  # PUB socket; 0 = OS-assigned
    snapshot_port: int = 0  # ROUTER socket; 0 = bus_port + 1 when bus_port is set, else OS-assigned
    app: str = "LiveApp"
    mongo: str = ""  # mongodb:// URI; empty = embedded database (standalone only)
    db_name: str = "mesh"
    data_dir: str = str(DEFAULT_DATA_DIR)
    log_level: str = "info"
    # liveness
    heartbeat_interval_s: float = 1.0
    node_dead_after_s: float = 4.0
    # HLS
    segment_target_s: float = 2.0
    playlist_window: int = 5
    retired_segments_kept: int = 10  # segments kept fetchable after leaving the window
    # bus
    bus_hwm: int = 20_000  # messages per subscriber queued at the PUB before it drops
    snapshot_segments: int = 6  # complete segments kept for late joiners (>= playlist_window)
    snapshot_max_bytes: int = 64 << 20  # per stream rendition
    stream_heartbeat_interval_s: float = 1.0
    origin_silence_s: float = 4.0  # an edge re-resolves a stream silent for this long
    edge_idle_unsubscribe_s: float = 30.0
    # ingest
    max_publishers: int = 500
    rtmp_max_message_bytes: int = 8 << 20
    # Accepted publishers are read together, at most this far apart (0 = as each socket wakes):
    # fewer wake-ups per packet, at the price of up to this much delay on small messages; a
    # keyframe (which closes a segment) is read as soon as it has arrived.
    rtmp_read_max_interval_s: float = 0.04
    publish_token: str = ""  # when set, RTMP publishers must pass ?token=
    pull_file_root: str = ""  # pull sources may read files only below this directory ("" = none)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- derived ---------------------------------------------------------------------------
    def resolved_node_id(self) -> str:
        if self.node_id:
            return self.node_id
        suffix = self.http_port or os.getpid()  # port 0 is not unique; the pid is, on this host
        return f"{self.role}-{socket.gethostname()}-{suffix}"

    @property
    def embedded_db(self) -> bool:
        return not self.mongo

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> "NodeConfig":
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config field '{name}': {why}")

        if self.role not in ROLES:
            raise bad("role", f"{self.role!r} is not one of {', '.join(ROLES)}")
        if self.node_id and not NAME_RE.match(self.node_id):
            raise bad("node_id", "use 1-128 characters from A-Z a-z 0-9 _ -")
        if not NAME_RE.match(self.app):
            raise bad("app", "use 1-128 characters from A-Z a-z 0-9 _ -")
        for name in ("http_port", "rtmp_port", "bus_port", "snapshot_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise bad(name, f"{value} is not a TCP port (0-65535; 0 picks a free one)")
        for name in ("heartbeat_interval_s", "node_dead_after_s", "segment_target_s",
                     "stream_heartbeat_interval_s", "origin_silence_s", "edge_idle_unsubscribe_s"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be greater than 0")
        if self.node_dead_after_s < 2 * self.heartbeat_interval_s:
            raise bad("node_dead_after_s", "must be at least twice heartbeat_interval_s, "
                      "or live nodes would flap to dead")
        if not 0.5 <= self.segment_target_s <= 30:
            raise bad("segment_target_s", "use 0.5 to 30 seconds")
        if not 2 <= self.playlist_window <= 100:
            raise bad("playlist_window", "use 2 to 100 segments")
        if self.snapshot_segments < self.playlist_window:
            raise bad("snapshot_segments", "must be at least playlist_window, so a cold edge "
                      "can fill its window from the snapshot")
        if not 0 <= self.rtmp_read_max_interval_s <= 0.5:
            raise bad("rtmp_read_max_interval_s", "use 0 to 0.5 seconds")
        for name in ("bus_hwm", "snapshot_max_bytes", "max_publishers", "rtmp_max_message_bytes"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        if self.mongo and not self.mongo.startswith(("mongodb://", "mongodb+srv://")):
            raise bad("mongo", "must be a mongodb:// or mongodb+srv:// URI, "
                      "e.g. mongodb://user:pass@10.0.0.5:27017/")
        if self.role != "standalone" and not self.mongo:
            raise bad("mongo", f"a {self.role} node needs the cluster's database: pass "
                      "--mongo mongodb://USER:PASS@HOST:27017/ (or MESH_MONGO), or run "
                      "`mesh db` for a local one; only standalone starts its own")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise bad("log_level", "use debug, info, warning or error")
        return self


_FIELDS = {f.name: f for f in fields(NodeConfig) if f.name != "extra"}


def _coerce(name: str, raw: Any) -> Any:
    """Convert a TOML/env/flag value to the field's type, naming the field on failure."""
    kind = _FIELDS[name].type
    try:
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind == "str":
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                raise ValueError
            return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"config field '{name}': {raw!r} is not a valid {kind}") from None
    raise AssertionError(f"unhandled config type {kind} for {name}")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                **overrides: Any) -> NodeConfig:
    """Build and validate a :class:`NodeConfig`. ``overrides`` are flags; ``None`` means unset."""
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        node = doc.get("node", doc)
        if not isinstance(node, dict):
            raise ConfigError(f"config file {path}: [node] must be a table")
        for key, raw in node.items():
            if key not in _FIELDS:
                raise ConfigError(f"config file {path}: unknown field '{key}' "
                                  f"(known: {', '.join(sorted(_FIELDS))})")
            values[key] = _coerce(key, raw)
    env = os.environ if env is None else env
    for name in _FIELDS:
        raw = env.get("MESH_" + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
    for name, raw in overrides.items():
        if raw is None:
            continue
        if name not in _FIELDS:
            raise AssertionError(f"unknown config override {name}")
        values[name] = _coerce(name, raw)
    return NodeConfig(**values).validate()


def as_dict(cfg: NodeConfig) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)
    data.pop("extra", None)
    return data


def set_config_values(path: str | Path, values: dict[str, Any]) -> None:
    """Set ``[node]`` fields in a TOML config file, keeping the others (used by `mesh mode`)."""
    path = Path(path)
    node: dict[str, Any] = {}
    if path.exists():
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
        node = dict(doc.get("node", doc))
    node.update(values)
    lines = ["# mesh node configuration (see deploy/mesh.toml for every field)", "[node]"]
    for key in sorted(node):
        if key not in _FIELDS:
            raise ConfigError(f"config file {path}: unknown field '{key}'")
        value = node[key]
        if isinstance(value, str):
            rendered = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif isinstance(value, bool):
            rendered = "true" if value else "false"
        else:
            rendered = repr(value)
        lines.append(f"{key} = {rendered}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)  # it may hold a database password
    tmp.replace(path)
