"""labelwise benchmarks (issue 6): run the scenarios, print the table, write benchmarks/RESULTS.md.

How to run (from the repository root, with the project's venv; `make bench` runs exactly the first line):

    .venv/bin/python -m benchmarks                  # all 11 scenarios, full size (~16 min on 2 busy cores, + scenario 11)
    .venv/bin/python -m benchmarks --quick          # small sizes, for development (a few minutes)
    .venv/bin/python -m benchmarks --only 1,5,6     # some scenarios; --out PATH writes the table elsewhere

Scenarios: 1 throughput at 100 ms latency, 2 a 600 rpm server limit, 3 faults (5% 500s + 5% garbage),
4 items per request, 5 cache-hit rerun of the corpus, 6 start-up, 7 the embedded model at K=0/4/8,
8 peak memory and KB per row over 100,000 and 1,000,000 rows, 9 the fake server's own cost per request,
10 bootstrap CIs on 6,000 items, 11 finding injected label noise in the eval split with the embedded model (`--only 11`).
Every figure is set against a limit or target measured or fixed in the same run.
The fake OpenAI-compatible server is `benchmarks/fake_openai.py`; it needs no network and no API key.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from benchmarks.scenarios import ROOT, SCENARIOS, Ctx, Row

COLUMNS = ("scenario", "setting", "achieved", "limit/target", "ratio", "result", "notes")


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def busy() -> str:
    """Load average and CPU pressure (share of the last minute that runnable tasks waited for a core)."""
    psi = Path("/proc/pressure/cpu")
    some = psi.read_text().split()[2].split("=")[1] if psi.exists() else "?"
    return f"load average {os.getloadavg()[0]:.2f}, CPU pressure {some}%"


def machine_facts() -> list[str]:
    """Cores, CPU, Python, library versions, commit, date and load: what the figures depend on."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True).stdout
    return [
        f"cores: {len(os.sched_getaffinity(0))} ({cpu}); at start: {busy()}",
        f"python {platform.python_version()} on {platform.platform()}",
        f"labelwise {_version('labelwise')} (commit {commit or '?'}{', src/ modified' if dirty else ''}), "
        f"openai {_version('openai')}, llama-cpp-python {_version('llama_cpp_python')}",
        f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    cells = [(r.scenario, r.setting, r.achieved, r.limit, r.ratio, r.verdict, r.notes) for r in rows]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells])


def write_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the scenarios, print and write the results; exit 1 only if a scenario crashed."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated scenario numbers, e.g. 1,5")
    p.add_argument("--quick", action="store_true", help="small sizes, for development")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="results file")
    args = p.parse_args(argv)
    chosen = sorted({int(x) for x in args.only.split(",")}) if args.only else sorted(SCENARIOS)
    if unknown := [n for n in chosen if n not in SCENARIOS]:
        p.error(f"no scenario {unknown}; choose from {sorted(SCENARIOS)}")
    facts = machine_facts()
    rows: list[Row] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labelwise-bench-") as tmp:
        ctx = Ctx(quick=args.quick, tmp=Path(tmp))
        for n in chosen:
            t0 = time.perf_counter()
            print(f"[{n}] {SCENARIOS[n].__doc__}", file=sys.stderr, flush=True)
            try:
                got = SCENARIOS[n](ctx)
            except Exception as err:  # one broken scenario still leaves the others' results
                traceback.print_exc()
                got = [Row(f"{n} {SCENARIOS[n].__name__}", "", "error", "", "", "MISS", f"{type(err).__name__}: {err}"[:300])]
            rows += got
            print(table(got).split("\n", 2)[2], f"\n    ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    mode = ("quick" if args.quick else "full") + (f", only {','.join(map(str, chosen))}" if args.only else "")
    text = "\n".join([
        "# labelwise benchmarks", "",
        f"`python -m benchmarks{' --quick' if args.quick else ''}{f' --only {args.only}' if args.only else ''}` "
        f"({mode}; {time.perf_counter() - t_all:.0f} s). Ratio = achieved / limit (for tokens: relative to 1 per request).",
        "", *[f"- {f}" for f in facts], f"- at end: {busy()} (other work shares these cores)", "", table(rows), "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, text)
    print(text)
    return 1 if any(r.achieved == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
