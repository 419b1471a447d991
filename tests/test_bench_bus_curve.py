"""`mesh bench throughput|fanout --curve`: the bus with CURVE on, plaintext mesh, raw pyzmq and raw
pyzmq with CURVE in one run (tiny runs: shape, not speed). The commands are the README's, exactly as written there."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_THROUGHPUT = "mesh bench throughput --payload 1500 --duration 0.5 --repeats 1 --curve"
README_FANOUT = "mesh bench fanout --edges 2 --size 160x96 --seconds 1 --bitrate-kbps 300 --duration 0.5 --curve"
README_FANOUT_IO = README_FANOUT + " --io-threads 2"


def _run(command: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as fh:
        assert command in fh.read(), "the README shows this command"
    args = shlex.split(command)[1:]
    proc = subprocess.run([sys.executable, "-m", "mesh", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_throughput_curve_runs_all_three_in_one_run() -> None:
    out = _run(README_THROUGHPUT)
    rows = {m.group(1): float(m.group(2).replace(",", ""))
            for m in re.finditer(r"^\s+1500 (mesh|curve|rawcurve|raw)\s+([\d,]+)", out, re.M)}
    assert set(rows) == {"mesh", "curve", "raw", "rawcurve"} and all(v > 0 for v in rows.values()), out
    m = re.search(r"ratio curve/raw ([\d.]+), curve/mesh ([\d.]+) .*rawcurve/raw [\d.]+", out)
    assert m and abs(float(m.group(2)) - rows["curve"] / rows["mesh"]) < 0.01, out


def test_fanout_curve_reports_the_cost() -> None:
    out = _run(README_FANOUT)
    impls = re.findall(r"^\s+2 (mesh|curve|rawcurve|raw)\s+[\d.]+", out, re.M)
    assert sorted(impls) == ["curve", "mesh", "raw", "rawcurve"], out
    assert re.search(r"ratio curve/raw [\d.]+, curve/mesh [\d.]+, edge CPU per unit curve/mesh [\d.]+", out)
    assert re.search(r"^curve: largest N without loss", out, re.M), out


def test_fanout_with_two_publisher_io_threads_says_so() -> None:
    out = _run(README_FANOUT_IO)
    assert "publisher ZeroMQ I/O threads 2" in out, out
    assert sorted(re.findall(r"^\s+2 (mesh|curve|rawcurve|raw)\s+[\d.]+", out, re.M)) == [
        "curve", "mesh", "raw", "rawcurve"], out
