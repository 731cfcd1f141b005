"""Digest checking of downloaded blobs, against ``sha256sum`` of the same blobs.

    python benchmarks/bench_hash.py [--repeat N] [--scale K] [--json]

Makes three blobs of deterministic incompressible bytes (256 MB in all, K times that with
``--scale K``) in a temporary directory on the disk, and times, each in a new process:

- pyops: for each blob, :class:`pyops.oci.store.BlobWriter` (the loop of ``Store.ensure_blob``
  that writes each downloaded chunk and hashes it in the same pass) fed with the blob's bytes
  in chunks of ``pyops.oci.store.DOWNLOAD_CHUNK``, the size the registry client reads from the
  socket, then ``verify()`` against the digest the manifest would give (here: the one
  ``sha256sum`` printed). Its sink is ``/dev/null``: a write system call per chunk as in a
  download, but no disk. ``ensure_blob`` itself would also write the blob into the store and
  ``fsync`` it, which ``sha256sum`` does not do, so what is timed is the digest checking as it
  runs during a download, on the same bytes ``sha256sum`` hashes;
- baseline: ``sha256sum FILES...``.

Both read the blobs from the page cache (a warm-up run of each reads them first), and both
times include process start-up (for pyops: the Python interpreter and ``import pyops.oci.store``,
about 0.2 s on the development machine; the pyops child also reports its time without it,
shown in the note). The warm-up runs check correctness: pyops must accept each blob with the
digest ``sha256sum`` printed and compute the same hex digest; every timed pyops run verifies
the digests again and fails the benchmark on a mismatch. Best of ``--repeat``, alternating
which tool goes first; peak memory is each process's max RSS. Target: pyops' throughput at
least 0.9 times ``sha256sum``'s, i.e. time ratio pyops / sha256sum at most 1/0.9.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import MB, SKIPPED, Row, emit, measure, pyops_argv

BLOB_MB = (128, 80, 48)  # 256 MB in all at --scale 1
PIECE = 8 << 20

# argv: RESULT_FILE then PATH DIGEST pairs.  Writes the computed digests and the time spent
# checking them (start-up and imports excluded) to RESULT_FILE as JSON.
CHECKER = """
import json, os, sys, time
from pyops.oci.store import DOWNLOAD_CHUNK, BlobWriter
start = time.perf_counter()
result, pairs = sys.argv[1], sys.argv[2:]
actual = []
with open(os.devnull, "wb", buffering=0) as sink:
    for path, digest in zip(pairs[::2], pairs[1::2]):
        with open(path, "rb", buffering=0) as blob:
            writer = BlobWriter(digest, os.fstat(blob.fileno()).st_size, sink)
            writer.write_all(iter(lambda: blob.read(DOWNLOAD_CHUNK), b""))
        writer.verify()
        actual.append(writer.actual)
elapsed = time.perf_counter() - start
with open(result, "w") as out:
    json.dump({"digests": actual, "seconds": elapsed}, out)
"""


def make_blobs(directory: Path, scale: int) -> list[Path]:
    """Deterministic incompressible blobs, written piece by piece (little memory)."""
    paths = []
    for index, size_mb in enumerate(BLOB_MB):
        rng = random.Random(1000 + index)
        path = directory / f"blob{index}"
        remaining = size_mb * MB * scale
        with path.open("wb") as out:
            while remaining:
                piece = min(PIECE, remaining)
                out.write(rng.randbytes(piece))
                remaining -= piece
        paths.append(path)
    return paths


def sha256sum_digests(paths: list[Path]) -> list[str]:
    """Run ``sha256sum`` once (this also puts the blobs in the page cache)."""
    out = subprocess.run(
        ["sha256sum", *map(str, paths)], capture_output=True, text=True, check=True
    ).stdout
    return ["sha256:" + line.split()[0] for line in out.splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("sha256sum") is None:
        print("bench_hash: sha256sum is not installed (GNU coreutils); skipped.")
        sys.exit(SKIPPED)

    with tempfile.TemporaryDirectory(prefix="bench_hash.") as tmp:
        paths = make_blobs(Path(tmp), args.scale)
        total = sum(p.stat().st_size for p in paths)
        result_file = Path(tmp) / "result.json"

        expected = sha256sum_digests(paths)
        pairs = [str(x) for pair in zip(paths, expected, strict=True) for x in pair]
        checker = pyops_argv(CHECKER, str(result_file), *pairs)
        subprocess.run(checker, check=True)  # warm-up; raises DigestMismatch on a mismatch
        got = json.loads(result_file.read_text())["digests"]
        if got != expected:
            raise SystemExit(f"digests differ: pyops {got}, sha256sum {expected}")

        tools = {"pyops": checker, "sha256sum": ["sha256sum", *map(str, paths)]}
        times: dict[str, list[float]] = {name: [] for name in tools}
        peaks: dict[str, int] = dict.fromkeys(tools, 0)
        inner: list[float] = []
        for i in range(args.repeat):
            order = list(tools) if i % 2 == 0 else list(reversed(tools))
            for name in order:
                result_file.unlink(missing_ok=True)
                sample = measure(tools[name])
                times[name].append(sample.seconds)
                peaks[name] = max(peaks[name], sample.peak_bytes)
                if name == "pyops":
                    result = json.loads(result_file.read_text())
                    if result["digests"] != expected:
                        raise SystemExit("pyops computed other digests than sha256sum")
                    inner.append(result["seconds"])

    best = {name: min(values) for name, values in times.items()}
    ratio = best["pyops"] / best["sha256sum"]
    rate = {name: total / MB / seconds for name, seconds in best.items()}
    row = Row(
        name="digest checking",
        size=f"{len(paths)} blobs, {total / MB:.0f} MB",
        baseline="sha256sum",
        pyops_s=best["pyops"],
        baseline_s=best["sha256sum"],
        target="throughput >= 0.9 x sha256sum",
        met=ratio <= 1 / 0.9,
        pyops_peak_mb=peaks["pyops"] / MB,
        baseline_peak_mb=peaks["sha256sum"] / MB,
        note=(
            f"pyops {rate['pyops']:.0f} MB/s, sha256sum {rate['sha256sum']:.0f} MB/s "
            f"(pyops without start-up: {total / MB / min(inner):.0f} MB/s, "
            f"{min(inner):.3f} s)"
        ),
        runs={name: [round(v, 4) for v in values] for name, values in times.items()},
    )
    emit(row, args.json)


if __name__ == "__main__":
    main()
