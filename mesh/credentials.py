"""Secrets at the edges of the process: read them from files, mask them in output, write them privately.

A password or secret must never be in argv (``ps`` and ``/proc/*/cmdline`` show it to every
local user), in logs or in printed URIs. So mesh takes secrets from a file (``--password-file``,
``--mongo-file``, ``--cluster-secret-file``) or from the environment, prints
``mongodb://user:***@host:port/``, and writes config files that hold secrets as 0640 owned by
the ``mesh`` group when that group exists (so a service account can read them), else root's
(or, for a user who cannot give a file to another group, 0600).
"""
from __future__ import annotations

import grp
import os
import stat
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

MAX_SECRET_FILE_BYTES = 64 * 1024
MESH_GROUP = "mesh"
_SECRET_QUERY_KEYS = ("password", "secret", "token", "authmechanismproperties")


class SecretFileError(ValueError):
    """A secret file cannot be used; the message names the file and what to do."""


def read_secret_file(path: str | Path, what: str) -> str:
    """The content of ``path`` without its trailing newline; ``what`` names it in errors."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SecretFileError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise SecretFileError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretFileError(f"{what} file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes; "
                              f"it should hold just the {what}")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretFileError(f"{what} file {path} is not UTF-8 text") from None
    if not text.strip():
        raise SecretFileError(f"{what} file {path} is empty; write the {what} into it")
    if "\n" in text:
        raise SecretFileError(f"{what} file {path} has more than one line; it should hold just the {what}")
    return text


def file_is_open_to_others(path: str | Path) -> bool:
    """True if users other than the owner and group may read ``path`` (worth a warning)."""
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def mask_uri(uri: str) -> str:
    """``mongodb://user:pass@host/`` → ``mongodb://user:***@host/``; secret-looking query values too.

    Errs on the side of hiding: everything between ``://`` and the last ``@`` counts as user
    information, so an unescaped ``@`` in a password is hidden as well.
    """
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    if "@" in rest:
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            rest = f"{creds.split(':', 1)[0]}:***@{host}"
    if "?" in rest:
        base, query = rest.split("?", 1)
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(any(word in key.lower() for word in _SECRET_QUERY_KEYS) for key, _ in pairs):
            masked = [(k, "***" if any(w in k.lower() for w in _SECRET_QUERY_KEYS) else v) for k, v in pairs]
            rest = base + "?" + urlencode(masked, safe="*:/,")
    return f"{scheme}://{rest}"


def uri_has_password(uri: str) -> bool:
    return mask_uri(uri) != uri


SECRET_ENV = ("MESH_DB_PASSWORD", "MESH_MONGO", "MESH_CLUSTER_SECRET", "MESH_CLUSTER_SECRET_PREVIOUS")


def env_without_secrets(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment (default ``os.environ``) for a child that needs none of our secrets."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k not in SECRET_ENV}


def mesh_gid() -> int | None:
    try:
        return grp.getgrnam(MESH_GROUP).gr_gid
    except KeyError:
        return None


def write_private_file(path: str | Path, text: str) -> int:
    """Write ``text`` to ``path`` atomically, readable only by its owner and the ``mesh`` group.

    0640 with group ``mesh`` if that group exists, else group root (gid 0) when we are root;
    a user who can give the file neither group gets 0600. The mode is set on the temporary file
    before any byte is written, so the secret is never readable by others. Returns the mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        gid = mesh_gid()
        if gid is None and os.geteuid() == 0:
            gid = 0
        mode = 0o600
        if gid is not None:
            try:
                os.fchown(fd, -1, gid)
                mode = 0o640
            except PermissionError:
                pass
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()
    return mode
