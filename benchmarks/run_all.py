"""Run every benchmark and print one table: pyops beside its baseline, measured in the same run.

    python benchmarks/run_all.py [--scale 1 4] [--only tfs,hash] [--repeat N] [--save FILE]

Each ``bench_*.py`` runs in its own process with ``--json`` and prints one row (see
``common.py``).  ``--scale 1 4`` runs everything at both sizes and adds a table of how each
cost grows from one to the other (linear growth: the time grows by the same factor as the
input).  A benchmark whose tools are missing is listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SKIPPED = 77
BENCHMARKS = {
    "tfs": "bench_tfs.py",
    "hash": "bench_hash.py",
    "pull": "bench_pull.py",
    "ldd": "bench_ldd.py",
    "boot": "bench_boot.py",
    "pkg": "bench_pkg.py",
    "arch": "bench_arch.py",
}


def run_one(script: str, scale: int, repeat: int | None) -> list[dict[str, Any]]:
    """The rows a benchmark prints (one JSON line each), or one row saying why it skipped."""
    argv = [sys.executable, str(HERE / script), "--json", "--scale", str(scale)]
    if repeat is not None:
        argv += ["--repeat", str(repeat)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode == SKIPPED:
        return [{"skipped": lines[-1] if lines else "skipped"}]
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    if done.returncode != 0 or not rows:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"skipped": f"failed (exit status {done.returncode}): {tail}"}]
    return rows


def mb(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} MB"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_results(scale: int, results: dict[str, dict[str, Any]]) -> None:
    head = ["benchmark", "input", "pyops", "baseline", "baseline time", "ratio", "target"]
    rows = [[*head, "pyops peak", "baseline peak", "met"]]
    notes = []
    for key, r in results.items():
        if "skipped" in r:
            rows.append([key, "", "", "", "", "", "", "", "", "skipped"])
            notes.append(f"- {key}: {r['skipped']}")
            continue
        rows.append(
            [
                r["name"],
                r["size"],
                f"{r['pyops_s']:.3f} s",
                r["baseline"],
                f"{r['baseline_s']:.3f} s",
                f"{r['ratio']:.2f}",
                r["target"],
                mb(r.get("pyops_peak_mb")),
                mb(r.get("baseline_peak_mb")),
                "yes" if r["met"] else "NO",
            ]
        )
        if r.get("note"):
            notes.append(f"- {r['name']}: {r['note']}")
    print(f"\nscale {scale}\n")
    print(table(rows))
    if notes:
        print()
        print("\n".join(notes))


def print_growth(scales: list[int], results: dict[int, dict[str, dict[str, Any]]]) -> None:
    low, high = scales[0], scales[-1]
    rows = [["benchmark", f"input x{high // low}", "pyops time x", "baseline time x"]]
    for key in results[low]:
        a, b = results[low].get(key), results[high].get(key)
        if not a or not b or "skipped" in a or "skipped" in b:
            continue
        rows.append(
            [
                a["name"],
                f"{a['size']} -> {b['size']}",
                f"{b['pyops_s'] / a['pyops_s']:.2f}",
                f"{b['baseline_s'] / a['baseline_s']:.2f}",
            ]
        )
    print(f"\nhow the cost grows from scale {low} to scale {high}\n")
    print(table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, nargs="+", default=[1])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each tool")
    parser.add_argument("--save", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for scale in args.scale:
        results[scale] = {}
        for name in chosen:
            start = time.perf_counter()
            print(f"running {name} at scale {scale} ...", file=sys.stderr, flush=True)
            rows = run_one(BENCHMARKS[name], scale, args.repeat)
            for number, found in enumerate(rows, start=1):
                results[scale][name if len(rows) == 1 else f"{name}:{number}"] = found
            print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        print_results(scale, results[scale])
    if len(args.scale) > 1:
        print_growth(sorted(args.scale), results)
    if args.save:
        args.save.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
