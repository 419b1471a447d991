"""One typed configuration object for a node, from TOML, ``MESH_*`` environment and flags.

Precedence (lowest to highest): built-in defaults, the TOML file (``--config``), ``MESH_<FIELD>``
environment variables, command-line flags. Validation happens once, at start, and every error
names the field and says what would be accepted. Units are in the field names.

A commented sample lives in ``deploy/mesh.toml``.

Secrets (``mongo`` when it holds a password, ``cluster_secret``, ``cluster_secret_previous``)
never need to be on the command line: each can come from the TOML file, from its environment
variable, or from a file named by ``<field>_file`` (``--mongo-file``, ``--cluster-secret-file``,
``MESH_MONGO_FILE``...). When both a field and its ``_file`` are given, the higher-precedence
source wins; both at the same level is an error. Secrets are left out of ``repr`` and
:func:`as_dict`.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .credentials import SecretFileError, mask_uri, read_secret_file, write_private_file
from .ladder import parse_ladder
from .names import NAME_RULE, is_name

ROLES = ("origin", "edge", "standalone")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
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
    mongo: str = field(default="", repr=False)  # mongodb:// URI; empty = embedded database (standalone only)
    mongo_file: str = ""  # a file holding the mongo URI (so its password is not in argv)
    db_name: str = "mesh"
    data_dir: str = str(DEFAULT_DATA_DIR)
    log_level: str = "info"
    # the node's event loop: "uvloop" (libuv; under half asyncio's CPU per connection event) or
    # "asyncio" (the standard library's selector loop)
    event_loop: str = "uvloop"
    # liveness
    heartbeat_interval_s: float = 1.0
    node_dead_after_s: float = 4.0
    # dead nodes leave the REST node list and the cluster page after this long unseen (their
    # documents stay in the database: `mesh cluster nodes --all` lists them)
    node_forget_after_s: float = 600.0
    # HLS
    segment_target_s: float = 2.0
    playlist_window: int = 5
    retired_segments_kept: int = 10  # segments kept fetchable after leaving the window
    ll_part_target_s: float = 0.2  # LL-HLS part target: the origin cuts parts this long (at most)
    ll_block_s: float = 0.0  # longest wait of a blocking LL-HLS playlist request (0: 3 target durations)
    # bus
    bus_hwm: int = 20_000  # messages per subscriber queued at the PUB before it drops
    snapshot_segments: int = 6  # complete segments kept for late joiners (>= playlist_window)
    snapshot_max_bytes: int = 64 << 20  # per stream rendition
    stream_heartbeat_interval_s: float = 1.0
    origin_silence_s: float = 4.0  # an edge re-resolves a stream silent for this long
    edge_idle_unsubscribe_s: float = 30.0
    edge_packetise_workers: int = 2  # threads cutting segments off the event loop (0 = on the loop)
    # "curve": the bus is encrypted and origins admit only registered, alive nodes (ZAP);
    # "none": plaintext and open to anyone who reaches the ports (benchmarks, private networks).
    bus_security: str = "curve"
    # ZeroMQ I/O threads of the node's bus: with CURVE each subscriber's copy is encrypted on one
    # of them, so a second thread spreads an origin's fan-out encryption over two cores.
    bus_io_threads: int = 1
    # ingest
    max_publishers: int = 500
    rtmp_max_message_bytes: int = 8 << 20
    # What a stranger's RTMP connection may cost (README "Resource budget"):
    rtmp_max_connections: int = 1000  # open RTMP connections per node, publishing or not
    rtmp_max_connections_per_ip: int = 128  # per source address (behind a balancer: the balancer's)
    rtmp_handshake_timeout_s: float = 10.0  # handshake + connect + publish must finish within this
    rtmp_idle_timeout_s: float = 30.0  # a connection that sends nothing for this long is closed
    rtmp_max_setup_bytes: int = 64 << 10  # input a connection may hold before its publish is accepted
    # Accepted publishers are read when their LL part's last frame should have come, at least
    # this often (0 = as each socket wakes): fewer wake-ups per packet, at the price of up to this
    # much delay on messages inside a part; a keyframe that closes a segment is read as it arrives.
    rtmp_read_max_interval_s: float = 0.25
    publish_token: str = field(default="", repr=False)  # when set, RTMP publishers must pass ?token=
    # stream and REST tokens (mesh/tokens.py): JWT HS256 signed with the cluster secret; during a
    # rotation tokens signed with the previous secret are accepted too
    cluster_secret: str = field(default="", repr=False)
    cluster_secret_file: str = ""
    cluster_secret_previous: str = field(default="", repr=False)
    cluster_secret_previous_file: str = ""
    require_play_token: bool = False  # HLS playlists and segments need ?token= (act play)
    require_publish_token: bool = False  # RTMP publish and REST create need a publish token
    pull_file_root: str = ""  # pull sources may read files only below this directory ("" = none)
    # MP4 recording (mesh/ingest/record.py): every stream of the app, unless a stream says otherwise
    # (PUT /{app}/rest/v2/broadcasts/{id}/recording/true|false); files below record_dir
    record_mp4: bool = False
    # with recording on, also record each rung of the ABR ladder, one file per rendition (a
    # stream can say otherwise: PUT …/recording/true?rungs=true|false)
    record_rungs: bool = False
    record_dir: str = ""  # "" = {data_dir}/records
    # ABR ladder (mesh/ladder.py): e.g. ["720p2500k", "480p1000k", "360p600k"]; empty = off
    abr: list[str] = field(default_factory=list)
    abr_preset: str = "veryfast"  # libx264 preset of the ladder's encoders
    abr_encoder_threads: int = 1  # threads per rung encoder (x264 thread_count)
    # hosts pull sources may reach besides global ones (names, *.suffix, addresses, networks; see
    # mesh/ingest/source_policy.py); loopback, link-local and private addresses need listing
    pull_allowed_hosts: list[str] = field(default_factory=list)
    # REST calls that change state need a Bearer token (cluster_secret) unless they come from here
    rest_allowed_cidrs: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # peers whose X-Forwarded-For names the real client (the load balancer); loopback by default
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # HTTP bounds (see the README's resource budget)
    http_header_timeout_s: float = 10.0  # a request head must be complete this long after it starts
    http_keepalive_s: float = 75.0  # idle keep-alive connections are closed after this
    http_body_timeout_s: float = 20.0  # a request body must arrive this long after its head
    http_max_head_bytes: int = 16 << 10
    http_max_connections: int = 0  # 0: the open-files limit minus http_fd_reserve, at most 16384
    http_max_connections_per_ip: int = 512
    http_fd_reserve: int = 1024  # descriptors HTTP leaves for the bus, the database and files
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- derived ---------------------------------------------------------------------------
    def resolved_record_dir(self) -> Path:
        return Path(self.record_dir) if self.record_dir else Path(self.data_dir) / "records"

    def resolved_node_id(self) -> str:
        if self.node_id:
            return self.node_id
        suffix = self.http_port or os.getpid()  # port 0 is not unique; the pid is, on this host
        return f"{self.role}-{socket.gethostname()}-{suffix}"

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> "NodeConfig":
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config field '{name}': {why}")

        if self.role not in ROLES:
            raise bad("role", f"{self.role!r} is not one of {', '.join(ROLES)}")
        if self.node_id and not is_name(self.node_id):
            raise bad("node_id", f"use {NAME_RULE}")
        if not is_name(self.app):
            raise bad("app", f"use {NAME_RULE}")
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
        if self.node_forget_after_s < self.node_dead_after_s:
            raise bad("node_forget_after_s", "must be at least node_dead_after_s (a node is "
                      "forgotten only after it is dead)")
        if not 0.5 <= self.segment_target_s <= 30:
            raise bad("segment_target_s", "use 0.5 to 30 seconds")
        if not 0.05 <= self.ll_part_target_s <= self.segment_target_s:
            raise bad("ll_part_target_s", "use 0.05 seconds up to segment_target_s")
        if not 0 <= self.ll_block_s <= 30:
            raise bad("ll_block_s", "use 0 (three target durations) to 30 seconds (balancers wait 45 s)")
        if not 2 <= self.playlist_window <= 100:
            raise bad("playlist_window", "use 2 to 100 segments")
        if self.snapshot_segments < self.playlist_window:
            raise bad("snapshot_segments", "must be at least playlist_window, so a cold edge "
                      "can fill its window from the snapshot")
        if not 0 <= self.edge_packetise_workers <= 64:
            raise bad("edge_packetise_workers", "use 0 (packetise on the event loop) to 64 threads")
        for name in ("rtmp_handshake_timeout_s", "rtmp_idle_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise bad(name, "use more than 0 and at most 3600 seconds")
        if not 4096 <= self.rtmp_max_setup_bytes <= self.rtmp_max_message_bytes:
            raise bad("rtmp_max_setup_bytes", "use 4096 bytes (room for a connect command) up to "
                      "rtmp_max_message_bytes")
        if not 0 <= self.rtmp_read_max_interval_s <= 0.5:
            raise bad("rtmp_read_max_interval_s", "use 0 to 0.5 seconds")
        for name in ("bus_hwm", "snapshot_max_bytes", "max_publishers", "rtmp_max_message_bytes",
                     "rtmp_max_connections", "rtmp_max_connections_per_ip"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        if not 1 <= self.bus_io_threads <= 16:
            raise bad("bus_io_threads", "use 1 to 16 threads")
        if self.rtmp_max_connections_per_ip > self.rtmp_max_connections:
            raise bad("rtmp_max_connections_per_ip", "must not be more than rtmp_max_connections")
        for name in ("http_header_timeout_s", "http_keepalive_s", "http_body_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise bad(name, "use more than 0 and at most 3600 seconds")
        if not 1024 <= self.http_max_head_bytes <= 1 << 20:
            raise bad("http_max_head_bytes", "use 1024 to 1048576 bytes")
        for name in ("http_max_connections", "http_fd_reserve"):
            if getattr(self, name) < 0:
                raise bad(name, "must be 0 or more")
        if self.http_max_connections_per_ip <= 0:
            raise bad("http_max_connections_per_ip", "must be a positive integer")
        if self.mongo and not self.mongo.startswith(("mongodb://", "mongodb+srv://")):
            raise bad("mongo", "must be a mongodb:// or mongodb+srv:// URI, "
                      "e.g. mongodb://user:pass@10.0.0.5:27017/")
        if self.role != "standalone" and not self.mongo:
            raise bad("mongo", f"a {self.role} node needs the cluster's database: pass "
                      "--mongo-file FILE holding mongodb://USER:PASS@HOST:27017/ (or MESH_MONGO, "
                      "--mongo), or run "
                      "`mesh db` for a local one; only standalone starts its own")
        for name in ("cluster_secret", "cluster_secret_previous"):
            value = getattr(self, name)
            if value and len(value.encode("utf-8")) < MIN_SECRET_BYTES:
                raise bad(name, f"use at least {MIN_SECRET_BYTES} characters, e.g. the output of "
                          "`openssl rand -hex 32`")
        if self.cluster_secret_previous and not self.cluster_secret:
            raise bad("cluster_secret_previous", "is only used next to cluster_secret (rotation); "
                      "set cluster_secret to the new secret")
        try:
            parse_ladder(self.abr)
        except ValueError as exc:
            raise bad("abr", f"{exc}; write rungs as 720p2500k,480p1000k,360p600k") from None
        if self.abr_preset not in X264_PRESETS:
            raise bad("abr_preset", f"use one of {', '.join(X264_PRESETS)}")
        if not 0 <= self.abr_encoder_threads <= 16:
            raise bad("abr_encoder_threads", "use 0 (x264 decides) to 16")
        for name in ("rest_allowed_cidrs", "trusted_proxies"):
            for entry in getattr(self, name):
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise bad(name, f"{entry!r} is not an address or network such as 10.0.0.0/8") from None
        for name in ("require_play_token", "require_publish_token"):
            if getattr(self, name) and not self.cluster_secret:
                raise bad(name, "needs cluster_secret to check tokens with: set it in the config "
                          "file, MESH_CLUSTER_SECRET or --cluster-secret-file")
        if self.bus_security not in ("curve", "none"):
            raise bad("bus_security", f"{self.bus_security!r} is not one of curve, none")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise bad("event_loop", "use uvloop or asyncio")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise bad("log_level", "use debug, info, warning or error")
        return self


_FIELDS = {f.name: f for f in fields(NodeConfig) if f.name != "extra"}
MIN_SECRET_BYTES = 16
#: Fields that hold secrets; each has a ``<name>_file`` companion.
SECRET_FIELDS = ("mongo", "cluster_secret", "cluster_secret_previous")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


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
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
                return raw.strip().lower() in _TRUE
            raise ValueError
        if kind == "str":
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                raise ValueError
            return str(raw)
        if kind == "list[str]":  # a TOML array of strings, or "a,b,c" from the environment or a flag
            if isinstance(raw, str):
                return [part.strip() for part in raw.split(",") if part.strip()]
            if isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw):
                return [x.strip() for x in raw if x.strip()]
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"config field '{name}': {raw!r} is not a valid {kind}") from None
    raise AssertionError(f"unhandled config type {kind} for {name}")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                **overrides: Any) -> NodeConfig:
    """Build and validate a :class:`NodeConfig`. ``overrides`` are flags; ``None`` means unset."""
    values: dict[str, Any] = {}
    level: dict[str, int] = {}  # 1 file, 2 environment, 3 flag: which source set each field
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
            values[key], level[key] = _coerce(key, raw), 1
    env = os.environ if env is None else env
    for name in _FIELDS:
        raw = env.get("MESH_" + name.upper())
        if raw is not None and raw != "":
            values[name], level[name] = _coerce(name, raw), 2
    for name, raw in overrides.items():
        if raw is None:
            continue
        if name not in _FIELDS:
            raise AssertionError(f"unknown config override {name}")
        values[name], level[name] = _coerce(name, raw), 3
    _read_secret_files(values, level)
    return NodeConfig(**values).validate()


def _read_secret_files(values: dict[str, Any], level: dict[str, int]) -> None:
    """Fill each secret field from its ``_file`` companion, unless a higher source set it directly."""
    for name in SECRET_FIELDS:
        companion = name + "_file"
        if not values.get(companion):
            continue
        if values.get(name):
            if level[name] == level[companion]:
                raise ConfigError(f"config field '{name}': give {name} or {companion}, not both")
            if level[name] > level[companion]:
                continue
        try:
            values[name] = read_secret_file(values[companion], name.replace("_", " "))
        except SecretFileError as exc:
            raise ConfigError(f"config field '{companion}': {exc}") from None


def as_dict(cfg: NodeConfig) -> dict[str, Any]:
    """The config as plain data, secrets shown as ``***`` (safe to print or serve)."""
    data = dataclasses.asdict(cfg)
    data.pop("extra", None)
    data["mongo"] = mask_uri(cfg.mongo)
    for name in ("cluster_secret", "cluster_secret_previous", "publish_token"):
        if data[name]:
            data[name] = "***"
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
    # It may hold a database password or the cluster secret: 0640, group mesh (or root).
    write_private_file(path, "\n".join(lines) + "\n")
