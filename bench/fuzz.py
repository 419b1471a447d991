"""`mesh bench fuzz`: every parser a stranger reaches, fed generated inputs, in one run.

Each target is a module ``mesh_bench.fuzz_<target>`` exposing ``fuzz(count, seed)`` (see one of
them for its inputs: table cases of the tests mutated by bit flips, truncations, insertions, huge
declared lengths, plus random bytes). A crash is any exception other than the parser's documented
rejection; a target also reports how much the process grew while it ran. The command fails
(exit 1) when any target crashed, so it can gate a release.

Run: ``mesh bench fuzz [--count 100000] [--seed 0] [--target rtmp --target jwt ...] [--json]``
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import time
from typing import Any

import click

PACKAGE = "mesh_bench"


def targets() -> list[str]:
    import mesh_bench

    return sorted(m.name[len("fuzz_"):] for m in pkgutil.iter_modules(mesh_bench.__path__)
                  if m.name.startswith("fuzz_"))


def run(names: list[str], count: int, seed: int, say: Any = None) -> dict[str, Any]:
    results = []
    for name in names:
        if say:
            say(f"fuzzing {name} with {count:,} inputs (seed {seed})")
        module = importlib.import_module(f"{PACKAGE}.fuzz_{name}")
        result = dict(module.fuzz(count, seed))
        result.setdefault("target", name)
        results.append(result)
        if say:
            say(f"  {name}: {result['crashes']} crashes, {result['rejected']:,} rejected, "
                f"{result['accepted']:,} accepted in {result['seconds']:.1f} s")
    return {"benchmark": "fuzz", "count": count, "seed": seed, "results": results,
            "crashes": sum(r["crashes"] for r in results), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'target':<8}{'inputs':>10}{'accepted':>10}{'rejected':>10}{'crashes':>9}{'seconds':>9}"
             f"{'RSS growth':>12}"]
    for r in report["results"]:
        lines.append(f"{r['target']:<8}{r['inputs']:>10,}{r['accepted']:>10,}{r['rejected']:>10,}"
                     f"{r['crashes']:>9}{r['seconds']:>9.1f}{r.get('max_rss_growth_bytes', 0) / 1e6:>10.1f} MB")
    return "\n".join(lines)


@click.command("fuzz")
@click.option("--count", default=100_000, show_default=True, help="inputs per target")
@click.option("--seed", default=0, show_default=True, help="the same seed gives the same inputs")
@click.option("--target", "chosen", multiple=True, help="only these targets (repeatable) [all]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def command(count: int, seed: int, chosen: tuple[str, ...], as_json: bool) -> None:
    """Fuzz every parser a stranger reaches (RTMP, bus frames, HTTP, tokens); fails on a crash."""
    known = targets()
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise click.BadParameter(f"no fuzz target {', '.join(unknown)}; known: {', '.join(known)}")
    report = run(list(chosen) or known, count, seed, say=lambda m: click.echo(f"fuzz: {m}", err=True))
    click.echo(json.dumps(report) if as_json else format_table(report))
    if report["crashes"]:
        raise SystemExit(1)
