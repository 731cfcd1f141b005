"""Writing a root volume, against ``tar cf`` of the same tree onto the same disk.

    python benchmarks/bench_tfs.py [--tree DIR] [--repeat N] [--scale K] [--json]

The default tree is this Python installation (about 60,000 entries and 1 GB).  ``--scale``
puts K copies of the tree side by side (made with ``cp -a`` before timing), to see how the
cost grows.  Each tool runs in its
own process (interpreter start-up included), timed wall-clock (best of ``--repeat``, in
alternating order, after one warm-up ``tar`` so both read from the page cache), with its
peak memory (max RSS) read from the kernel.  Target: pyops at most as long as tar, peak
memory under 120 MB at every scale.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Row, Sample, emit, measure, pyops_argv, summarize, tree_stats

# argv: OUTPUT TREE...  (one tree: the volume's root; several: /copy0, /copy1, ...)
WRITER = """
import sys
from pyops.nanos.disk import write_raw_volume
from pyops.nanos.tree import Tree
tree = Tree()
trees = sys.argv[2:]
for i, path in enumerate(trees):
    tree.add_host_path(path, f"/copy{i}" if len(trees) > 1 else "/")
write_raw_volume(sys.argv[1], tree)
"""


def make_copies(tree: str, out_dir: Path, copies: int) -> list[str]:
    """The tree and ``copies - 1`` copies of it on the output disk: distinct files, since
    tar would store files it has seen before as hard links."""
    trees = [tree]
    for i in range(1, copies):
        copy = out_dir / f"copy{i}"
        subprocess.run(["cp", "-a", tree, str(copy)], check=True)
        trees.append(str(copy))
    os.sync()
    return trees


def compare(trees: list[str], out_dir: Path, repeat: int) -> dict[str, list[Sample]]:
    tar_out = out_dir / "tree.tar"
    img_out = out_dir / "tree.img"
    argvs = {
        "tar": ["tar", "cf", str(tar_out)] + [arg for t in trees for arg in ("-C", t, ".")],
        "pyops": pyops_argv(WRITER, str(img_out), *trees),
    }
    measure(argvs["tar"])  # warm the page cache for both
    samples: dict[str, list[Sample]] = {"tar": [], "pyops": []}
    for repetition in range(repeat):
        order = ["tar", "pyops"] if repetition % 2 == 0 else ["pyops", "tar"]
        for tool in order:
            for f in (tar_out, img_out):
                f.unlink(missing_ok=True)
            os.sync()
            samples[tool].append(measure(argvs[tool]))
    for f in (tar_out, img_out):
        f.unlink(missing_ok=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=sys.base_prefix)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1, help="copies of the tree side by side")
    parser.add_argument("--out", default=None, help="directory on the disk to write to")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    entries, total = tree_stats(args.tree)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        trees = make_copies(args.tree, Path(tmp), args.scale)
        samples = compare(trees, Path(tmp), args.repeat)
    summary = summarize(samples)
    best, peak = summary.best, summary.peak_mb
    ratio = best["pyops"] / best["tar"]
    row = Row(
        name="filesystem writing",
        size=f"{entries * args.scale:,} entries, {total * args.scale / 1e9:.2f} GB",
        baseline="tar cf",
        pyops_s=best["pyops"],
        baseline_s=best["tar"],
        # the writer's memory must not grow with the entries: one target for every scale
        target="ratio <= 1.0, peak < 120 MB",
        met=ratio <= 1.0 and peak["pyops"] < 120,
        pyops_peak_mb=peak["pyops"],
        baseline_peak_mb=peak["tar"],
        runs=summary.runs,
    )
    emit(row, args.json)


if __name__ == "__main__":
    main()
