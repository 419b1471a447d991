"""A multi-host test bed on one machine: network namespaces on a private bridge.

Each :class:`Host` is a network namespace with its own address (``10.199.K.N/24``) and its own
ports, joined by veth pairs to a bridge that lives in a namespace of its own (the machine's own
network is never touched). The runner (the test or benchmark process) is a host too: it gets an
address on the bridge, so it can publish, play and call REST like a client elsewhere. Processes
run in a host with ``ip netns exec``, so "bind address", "advertised address" and "another host"
are different things, as on a real network.

Faults: :meth:`Host.cut` takes a host's link down (a partition) and :meth:`Host.heal` brings it
back. The kernel here has no ``netem`` qdisc, so delay and loss come from :mod:`._lagproxy`, a
user-space TCP proxy a scenario puts between hosts.

Needs root (``CAP_NET_ADMIN``) and ``ip`` from iproute2; :func:`unavailable` says why not when it
cannot run, so tests skip with that reason. Everything is removed by :meth:`Lab.close` (and
namespaces left by a killed run are removed by the next lab with the same tag).
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "mlab"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def unavailable() -> str | None:
    """Why a lab cannot run here, or None when it can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    veth = _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
    bridge = _ip("-n", probe, "link", "add", "b0", "type", "bridge", check=False)
    _ip("netns", "del", probe, check=False)
    if veth.returncode or bridge.returncode:
        return f"veth pairs or bridges are not allowed: {(veth.stderr or bridge.stderr).strip()}"
    return None


@dataclass
class Host:
    lab: "Lab"
    name: str
    index: int
    ns: str
    address: str
    link: str  # our end of the veth, inside the host's namespace
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def popen(self, args: list[str], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.command(args), **kw)
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self.command(args), **kw)

    def cut(self) -> None:
        """Partition this host from everyone (its link goes down)."""
        _ip("-n", self.ns, "link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("-n", self.ns, "link", "set", self.link, "up")


class Lab:
    def __init__(self, tag: str | None = None):
        self.k = random.randint(1, 250)  # the subnet 10.199.K.0/24; concurrent labs rarely collide
        self.tag = tag or f"{os.getpid() % 10000}"
        self.switch = f"{PREFIX}{self.tag}sw"
        self.bridge = "br0"
        self.hosts: dict[str, Host] = {}
        self.runner_link = f"{PREFIX}{self.tag}r"[:15]
        self.runner_address = f"10.199.{self.k}.254"
        self._next = 1

    def start(self) -> "Lab":
        self._clean_leftovers()
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", self.bridge, "type", "bridge")
        _ip("-n", self.switch, "link", "set", self.bridge, "up")
        _ip("-n", self.switch, "link", "set", "lo", "up")
        # The runner's own port on the bridge: it stays in the root namespace, with an address
        # on the lab's subnet only (no route anywhere else is added).
        peer = f"{self.runner_link}p"[:15]
        _ip("link", "add", self.runner_link, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", peer, "master", self.bridge)
        _ip("-n", self.switch, "link", "set", peer, "up")
        _ip("addr", "add", f"{self.runner_address}/24", "dev", self.runner_link)
        _ip("link", "set", self.runner_link, "up")
        return self

    def add(self, name: str) -> Host:
        index = self._next
        self._next += 1
        ns = f"{PREFIX}{self.tag}{name}"[:40]
        inside, outside = "eth0", f"{PREFIX}{self.tag}h{index}"[:15]
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", outside, "type", "veth", "peer", "name", f"{outside}i"[:15])
        _ip("link", "set", f"{outside}i"[:15], "netns", ns)
        _ip("-n", ns, "link", "set", f"{outside}i"[:15], "name", inside)
        _ip("link", "set", outside, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", outside, "master", self.bridge)
        _ip("-n", self.switch, "link", "set", outside, "up")
        address = f"10.199.{self.k}.{index}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        host = self.hosts[name] = Host(self, name, index, ns, address, inside)
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.poll() is None:
                    proc.kill()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        pass
        for host in self.hosts.values():
            _ip("netns", "del", host.ns, check=False)
        _ip("link", "del", self.runner_link, check=False)
        _ip("netns", "del", self.switch, check=False)
        self.hosts.clear()

    def _clean_leftovers(self) -> None:
        listed = _ip("netns", "list", check=False).stdout.split()
        for ns in listed:
            if ns.startswith(f"{PREFIX}{self.tag}"):
                _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.runner_link, check=False)

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def python(module: str, *args: str) -> list[str]:
    """argv to run ``python -m module args`` with this interpreter (inside a host)."""
    return [sys.executable, "-m", module, *args]


def node_args(role: str, host: Host, db: str, workdir: Path, *, node_id: str | None = None) -> list[str]:
    """argv of a node on ``host`` that binds and advertises the host's own address."""
    node_id = node_id or f"{role}-{host.name}"
    return python("mesh", "node", "--role", role, "--node-id", node_id, "--host", host.address,
                  "--bind", host.address, "--http-port", "5080", "--rtmp-port", "1935", "--bus-port", "5560",
                  "--data-dir", str(workdir / f"data-{node_id}"), "--log-level", "info")
