"""Writing a root volume, against ``tar cf`` of the same tree onto the same disk.

    python benchmarks/bench_tfs.py [--tree DIR] [--repeat N] [--copies K]

The default tree is this Python installation (about 60,000 entries and 1 GB).  ``--copies``
puts K copies of the tree side by side, to see how the cost grows.  Each tool runs in its
own process, timed wall-clock (best of ``--repeat``), with its peak memory (max RSS) read
from the kernel.  Target: pyops at most 1.3 times tar, peak memory under 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = """
import sys
from pyops.disk import write_raw_volume
from pyops.tree import Tree
tree = Tree()
copies = int(sys.argv[3])
for i in range(copies):
    tree.add_host_path(sys.argv[1], f"/copy{i}" if copies > 1 else "/")
write_raw_volume(sys.argv[2], tree)
"""


def run(argv: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {argv}")
    return elapsed, usage.ru_maxrss * 1024


def tree_size(root: str) -> tuple[int, int]:
    entries = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return entries, total


def measure(tree: str, out_dir: Path, repeat: int, copies: int) -> dict[str, float]:
    tar_out = out_dir / "tree.tar"
    img_out = out_dir / "tree.img"
    tar_argv = ["tar", "cf", str(tar_out)] + ["-C", tree, "."] * copies
    pyops_argv = [sys.executable, "-c", WRITER, tree, str(img_out), str(copies)]
    run(tar_argv)  # warm the page cache for both
    tar_times, pyops_times, tar_rss, pyops_rss = [], [], 0, 0
    for _ in range(repeat):
        for argv, times, which in ((tar_argv, tar_times, "tar"), (pyops_argv, pyops_times, "py")):
            for f in (tar_out, img_out):
                f.unlink(missing_ok=True)
            os.sync()
            t, rss = run(argv)
            times.append(t)
            if which == "tar":
                tar_rss = max(tar_rss, rss)
            else:
                pyops_rss = max(pyops_rss, rss)
    for f in (tar_out, img_out):
        f.unlink(missing_ok=True)
    return {
        "tar_s": min(tar_times),
        "pyops_s": min(pyops_times),
        "ratio": min(pyops_times) / min(tar_times),
        "pyops_peak_mb": pyops_rss / 1e6,
        "tar_peak_mb": tar_rss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", default=sys.base_prefix)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--out", default=None, help="directory on the disk to write to")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    entries, total = tree_size(args.tree)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        result = measure(args.tree, Path(tmp), args.repeat, args.copies)
    result["entries"] = entries * args.copies
    result["bytes"] = total * args.copies
    if args.json:
        print(json.dumps(result))
        return
    size_gb = total * args.copies / 1e9
    print(f"tree: {args.tree} x{args.copies}: {result['entries']} entries, {size_gb:.2f} GB")
    print(f"tar cf:        {result['tar_s']:.2f} s   peak {result['tar_peak_mb']:.0f} MB")
    print(f"pyops volume:  {result['pyops_s']:.2f} s   peak {result['pyops_peak_mb']:.0f} MB")
    print(f"ratio pyops/tar: {result['ratio']:.2f}  (target <= 1.30; peak memory target < 200 MB)")


if __name__ == "__main__":
    main()
