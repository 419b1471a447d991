"""A node's CURVE key pair for the bus: made on first start, kept in the node's state directory.

The file ``{data_dir}/bus-{node_id}.key`` holds two lines, ``public = <Z85>`` and
``secret = <Z85>`` (40 characters each), mode 0600. The public half goes into the node's registry
document; origins admit a subscriber only if its public key is one of an alive node's (see
:mod:`.zap`). The secret half never leaves the file and this process.

A file with looser permissions is tightened (and the change logged); a file that does not parse
or whose halves do not belong together is refused with a message that says to delete it.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq

log = logging.getLogger("mesh.bus")

SECURITY_MODES = ("curve", "none")
Z85_KEY_LEN = 40
_Z85_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class KeyFileError(RuntimeError):
    """The key file cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85, 40 bytes
    secret: bytes = b""

    def __repr__(self) -> str:  # never print the secret half
        return f"KeyPair(public={self.public.decode()!r})"


def is_z85_key(value: object) -> bool:
    """True for a 40-character Z85 CURVE key (bytes or str)."""
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    return isinstance(value, bytes) and len(value) == Z85_KEY_LEN and set(value) <= _Z85_CHARS


def key_path(data_dir: str | Path, node_id: str) -> Path:
    return Path(data_dir) / f"bus-{node_id}.key"


def generate() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


def load_or_create(path: str | Path) -> KeyPair:
    """The key pair in ``path``, created (0600, atomically) if the file does not exist yet."""
    path = Path(path)
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    pair = generate()
    text = f"# mesh bus CURVE key pair; keep secret\npublic = {pair.public.decode()}\n" \
           f"secret = {pair.secret.decode()}\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made one meanwhile: then use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    pair = _load(path)
    log.info("bus key pair made in %s (public key %s)", path, pair.public.decode())
    return pair


def _load(path: Path) -> KeyPair:
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)
        log.warning("bus key file %s was readable by others; its mode is now 0600", path)
    values: dict[str, bytes] = {}
    with open(path, "rb") as fh:
        data = fh.read(4096)
    for line in data.splitlines():
        line = line.strip()
        if not line or line.startswith(b"#") or b"=" not in line:
            continue
        name, _, value = line.partition(b"=")
        values[name.strip().decode("ascii", "replace")] = value.strip()
    public, secret = values.get("public", b""), values.get("secret", b"")
    if not (is_z85_key(public) and is_z85_key(secret)):
        raise KeyFileError(f"bus key file {path} is damaged (it needs 'public = ' and 'secret = ' "
                           f"lines of {Z85_KEY_LEN} Z85 characters); delete it to make a new pair")
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"bus key file {path}: the public key does not belong to the secret key; "
                           f"delete the file to make a new pair")
    return KeyPair(public, secret)


def node_keys(security: str, data_dir: str | Path, node_id: str) -> KeyPair | None:
    """The node's key pair for ``bus_security = "curve"``, None for ``"none"`` (said loudly)."""
    if security == "none":
        log.warning("BUS SECURITY IS OFF (bus_security = \"none\"): anyone who can reach this "
                    "node's bus ports can read every stream and ask for snapshots; use it only "
                    "on a private network or for benchmarks")
        return None
    if security != "curve":
        raise ValueError(f"bus_security {security!r} is not one of {', '.join(SECURITY_MODES)}")
    if not zmq.has("curve"):
        raise KeyFileError("this libzmq was built without CURVE; install pyzmq's wheel (it has "
                           "CURVE) or set bus_security = \"none\" on a private network")
    return load_or_create(key_path(data_dir, node_id))
