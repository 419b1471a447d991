"""The Numba decorators every mesh kernel is compiled with, and where their machine code is cached.

Kernels are compiled ``nogil=True`` (edges packetise in worker threads) and ``cache=True``, so a
process start loads the machine code (about 0.1 s) instead of compiling it (seconds per kernel).
Numba caches next to the source (``__pycache__``), else in the user cache directory
(``$NUMBA_CACHE_DIR`` if set, else ``~/.cache/numba``). With neither writable -- a read-only
install run by a user without a home, as under systemd ``DynamicUser=`` -- decorating with
``cache=True`` raises at import; then the cache goes to a per-user directory under the system
temp dir. ``NUMBA_CACHE_DIR`` wins over all of these.
"""
from __future__ import annotations

import os
import tempfile

import numba


def _probe() -> int:
    return 0


def _ensure_cache_dir() -> None:
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError:
        numba.config.CACHE_DIR = os.path.join(tempfile.gettempdir(), f"mesh-numba-cache-{os.getuid()}")


_ensure_cache_dir()

jit = numba.njit(nogil=True, cache=True)
# Helpers are inlined at Numba-IR level: as separate calls each one passes its array structs by
# value and increfs/decrefs them, which costs more than the work a helper does per TS packet.
inline = numba.njit(nogil=True, cache=True, inline="always")
