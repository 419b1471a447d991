"""Regenerate deploy/nginx/mesh.conf and deploy/haproxy/haproxy.cfg, the example load-balancer configs
(for a cluster of two origins and three edges), from the same code `mesh lb` uses, and the systemd
units in deploy/systemd/ from the code `mesh install systemd` uses:

    .venv/bin/python deploy/render_examples.py

tests/test_lb.py fails when the committed examples drift from the renderer.
"""
from __future__ import annotations

from pathlib import Path

from mesh.install import DB_UNIT, NODE_UNIT, render_unit
from mesh.lb import Backend, Backends, render_haproxy, render_nginx

HERE = Path(__file__).parent

EXAMPLE = Backends(
    rtmp=[Backend("origin-1", "10.0.0.11", 1935), Backend("origin-2", "10.0.0.12", 1935)],
    http_edges=[Backend(f"edge-{i}", f"10.0.0.2{i}", 5080) for i in (1, 2, 3)],
    http_origins=[Backend("origin-1", "10.0.0.11", 5080), Backend("origin-2", "10.0.0.12", 5080)],
)


def examples() -> dict[Path, str]:
    return {
        HERE / "nginx" / "mesh.conf": render_nginx(EXAMPLE, listen="0.0.0.0"),
        HERE / "haproxy" / "haproxy.cfg": render_haproxy(EXAMPLE, listen="0.0.0.0", fd_limit=65536),
        HERE / "systemd" / NODE_UNIT: render_unit("origin"),
        HERE / "systemd" / DB_UNIT: render_unit("db"),
    }


if __name__ == "__main__":
    for path, text in examples().items():
        path.write_text(text)
        print(f"wrote {path}")
