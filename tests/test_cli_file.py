"""The top-level cli.py of the checkout hands over to the installed `mesh` command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("cwd", [ROOT, Path("/")])
def test_cli_file_runs_the_installed_cli(cwd: Path) -> None:
    done = run("node", "--help", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: mesh node") and "--role" in done.stdout
    installed = subprocess.run([str(Path(sys.executable).parent / "mesh"), "node", "--help"],
                               capture_output=True, text=True, timeout=60)
    assert installed.stdout == done.stdout


def test_cli_file_passes_errors_and_exit_codes_through() -> None:
    done = run("node", "--role", "nonsense")
    assert done.returncode == 2 and "nonsense" in done.stderr


def test_cli_is_not_an_installed_module() -> None:
    import importlib.util
    spec = importlib.util.find_spec("cli")
    assert spec is None or Path(spec.origin or "").resolve() == ROOT / "cli.py"
