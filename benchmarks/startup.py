"""Start-up time of ``import tenantry`` and of the ``tenantry`` command.

    .venv/bin/python benchmarks/startup.py [--runs 15] [--top 8] [--src DIR] [--compare DIR]

Each case runs in a fresh interpreter, ``--runs`` times, and the table shows
the median wall time (and the fastest run) of the whole process, interpreter
start-up included; ``python -c pass`` is the floor every case pays. A second
table lists, for each case, the packages whose imports cost the most (from
``python -X importtime``), which is where to look when a case gets slower.

``--src DIR`` puts ``DIR`` first on ``PYTHONPATH`` so the same commands measure
another checkout of the package (``--src /path/to/checkout/src``);
``--compare DIR`` times that checkout alongside this one, run for run in turns,
so a before/after comparison is not skewed by what else the machine is doing.

Only the standard library is imported here, so the benchmark itself adds
nothing to what it measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    label: str
    argv: tuple[str, ...]


def _tenantry_command() -> tuple[str, ...]:
    """The console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("tenantry")
    if script.exists():
        return (sys.executable, str(script))
    return (sys.executable, "-m", "tenantry.cli.main")


def cases() -> list[Case]:
    py = sys.executable
    tenantry = _tenantry_command()
    return [
        Case("python -c pass", (py, "-c", "pass")),
        Case("import tenantry", (py, "-c", "import tenantry")),
        Case("tenantry --version", (*tenantry, "--version")),
        Case("tenantry --help", (*tenantry, "--help")),
        Case("from tenantry import Tenantry", (py, "-c", "from tenantry import Tenantry")),
    ]


def _environment(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def wall_times(case: Case, runs: int, envs: list[dict[str, str]]) -> list[list[float]]:
    """*runs* timings of *case* in each environment, taken in turns.

    Alternating run by run means a busy moment on the machine slows every
    environment alike, so their medians stay comparable.
    """
    times: list[list[float]] = [[] for _ in envs]
    for _ in range(runs):
        for env, taken in zip(envs, times, strict=True):
            started = time.perf_counter()
            subprocess.run(case.argv, env=env, stdout=subprocess.DEVNULL, check=True)
            taken.append(time.perf_counter() - started)
    return times


def top_imports(case: Case, top: int, env: dict[str, str]) -> list[tuple[str, int]]:
    """Where one run's import time goes: each top-level package's modules, in µs.

    ``-X importtime`` reports per module its own time and its cumulative time
    (nested imports included). Summing the own time of every module by its
    top-level package (``sqlalchemy.orm.session`` counts for ``sqlalchemy``)
    gives each package's whole cost without counting any module twice.
    """
    argv = (case.argv[0], "-X", "importtime", *case.argv[1:])
    done = subprocess.run(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True
    )
    costs: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line[len("import time:") :].split("|")
        package = name.strip().split(".")[0]
        costs[package] = costs.get(package, 0) + int(own)
    return sorted(costs.items(), key=lambda item: item[1], reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per case (median shown)")
    parser.add_argument("--top", type=int, default=8, help="packages listed per case")
    parser.add_argument("--src", default=None, help="a checkout's src/ to measure instead")
    parser.add_argument(
        "--compare", default=None, metavar="SRC", help="another checkout's src/ to time alongside"
    )
    args = parser.parse_args()
    env = _environment(args.src)
    envs = [env] if args.compare is None else [_environment(args.compare), env]
    labels = ["this"] if args.compare is None else ["compared", "this"]

    header = "".join(f" {label + ' median':>16} {label + ' min':>13}" for label in labels)
    print(f"{'case (ms)':<32}{header}")
    for case in cases():
        row = "".join(
            f" {statistics.median(t) * 1000:>16.0f} {min(t) * 1000:>13.0f}"
            for t in wall_times(case, args.runs, envs)
        )
        print(f"{case.label:<32}{row}")

    for case in cases()[1:]:
        print(f"\nimport time of `{case.label}` by package (ms, python -X importtime)")
        for name, micros in top_imports(case, args.top, env):
            print(f"  {name:<40} {micros / 1000:>8.1f}")


if __name__ == "__main__":
    main()
