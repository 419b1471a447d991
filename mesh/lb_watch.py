"""`mesh lb nginx|haproxy --watch`: keep the balancer's config equal to the cluster's alive nodes.

Every poll renders the config files from the registry's alive nodes. When the text differs from
what was last applied, :func:`apply_files` puts it in place so that a config failing the
balancer's own check is never left there:

- each file is written to a temporary file beside it (same directory: the replace is atomic);
- with one file and a check command naming ``{conf}`` (``haproxy -c -f {conf}``, ``nginx -t -c
  {conf}``), the temporary file is checked *before* it replaces the old one;
- otherwise (files included from a main config, checked as a whole with ``nginx -t``) the new
  files replace the old ones, the check runs, and on failure the old bytes go back at once;
- only a config that passed is reloaded (``nginx -s reload``, ``systemctl reload haproxy``).

A failed check or reload is logged with the balancer's message and not retried until the
rendering changes again; the old config keeps serving.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .lb import Backends

log = logging.getLogger("mesh.lb")

Files = dict[Path, str]


@dataclass(frozen=True)
class Applied:
    ok: bool  # the files on disk are the ones asked for (or were already)
    changed: bool  # something was written and reloaded
    message: str


def run_shell(command: str, timeout_s: float = 60.0) -> tuple[int, str]:
    """Run an operator's command line (check or reload); (exit code, its output)."""
    try:
        out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout_s:.0f} s"
    return out.returncode, (out.stderr + out.stdout).strip()


def _write_temp(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    return tmp


def apply_files(files: Files, check_cmd: str | None, reload_cmd: str | None,
                run: Callable[[str], tuple[int, str]] = run_shell) -> Applied:
    """Put ``files`` in place if they pass ``check_cmd``, then run ``reload_cmd``."""
    old = {p: (p.read_text() if p.exists() else None) for p in files}
    if all(old[p] == text for p, text in files.items()):
        return Applied(True, False, "unchanged")
    temps = {p: _write_temp(p, text) for p, text in files.items()}
    try:
        if check_cmd and "{conf}" in check_cmd:
            if len(files) != 1:
                raise ValueError("a check command with {conf} checks one file; use one without it")
            (path, tmp), = temps.items()
            code, output = run(check_cmd.replace("{conf}", shlex.quote(str(tmp))))
            if code != 0:
                return Applied(False, False, f"the new config fails `{check_cmd}`; kept the old one: {output}")
            os.replace(tmp, path)
        else:
            for path, tmp in temps.items():
                os.replace(tmp, path)
            if check_cmd:
                code, output = run(check_cmd)
                if code != 0:
                    for path, text in old.items():
                        if text is None:
                            path.unlink(missing_ok=True)
                        else:
                            os.replace(_write_temp(path, text), path)
                    return Applied(False, False, f"the new config fails `{check_cmd}`; put the old one "
                                                 f"back: {output}")
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    if reload_cmd:
        code, output = run(reload_cmd)
        if code != 0:
            return Applied(True, True, f"wrote the new config but `{reload_cmd}` failed: {output}")
    return Applied(True, True, "applied" + (f" and ran `{reload_cmd}`" if reload_cmd else ""))


def describe(b: Backends) -> str:
    return (f"{len(b.rtmp)} origin(s) {', '.join(x.node_id for x in b.rtmp) or '-'}; "
            f"{len(b.http_edges)} edge(s) {', '.join(x.node_id for x in b.http_edges) or '-'}")


async def watch(registry: Any, render: Callable[[Backends], Files], *, check_cmd: str | None,
                reload_cmd: str | None, interval_s: float, stop: asyncio.Event) -> None:
    """Poll the registry every ``interval_s`` until ``stop``; apply each new rendering."""
    applied: Files | None = None
    failed: Files | None = None
    last_problem = ""
    while not stop.is_set():
        problem = ""
        try:
            views = await registry.list_nodes()
        except Exception as exc:  # the database may be away for a while: keep the old config
            problem = f"cannot read the registry ({exc}); the balancer keeps its config"
        else:
            backends = Backends.from_nodes([v.doc for v in views if v.alive])
            try:
                files = render(backends)
            except ValueError as exc:
                problem = f"{exc}; the balancer keeps its config"
            else:
                if files != applied and files != failed:
                    result = await asyncio.to_thread(apply_files, files, check_cmd, reload_cmd)
                    if result.ok:
                        applied, failed = files, None
                        if result.changed:
                            log.info("balancer now has %s: %s", describe(backends), result.message)
                    else:
                        failed = files
                        log.error("%s", result.message)
        if problem and problem != last_problem:
            log.error("%s", problem)
        last_problem = problem
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass
