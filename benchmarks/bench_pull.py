"""Pulling an image from a local registry, against ``skopeo copy`` of the same image.

    python benchmarks/bench_pull.py [--size-mb 100] [--repeat 5] [--scale K] [--workers 3] [--json]

Starts Debian's ``docker-registry`` on a free loopback port (storage in a temporary
directory), builds an image of three gzip layers with ``umoci`` (the first from files of this
Python installation, the other two from deterministic incompressible bytes, about
``--size-mb`` MB compressed in all) and pushes it with ``skopeo``.  Then, best of
``--repeat``, in alternating order, each in its own process:

- pyops: ``pull`` into a fresh, empty ``Store`` (nothing cached);
- skopeo: ``skopeo copy docker://127.0.0.1:PORT/bench:latest dir:FRESH``.

Wall time, peak memory (max RSS from ``wait4``) and throughput (compressed MB/s) are
printed, with the ratio pyops / skopeo.  Target: at most 1.0.  ``--profile`` adds one pull
under cProfile and prints its top functions.  The registry is always stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    MB,
    ROOT,
    SKIPPED,
    Row,
    Sample,
    emit,
    local_registry,
    measure,
    pyops_argv,
    summarize,
)

sys.path.insert(0, str(ROOT))

from tests.registry_server import run  # noqa: E402

REPOSITORY = "bench"
TAG = "latest"
PULLER = """
import sys
from pathlib import Path
from pyops.oci.pull import pull
from pyops.oci.store import Store
pull(sys.argv[1], store=Store(Path(sys.argv[2])), insecure=True, workers=int(sys.argv[3]),
     use_docker_config=False)
"""
PROFILER = """
import cProfile, pstats, sys, threading
from pathlib import Path
from pyops.oci.pull import pull
from pyops.oci.store import Store
# cProfile sees one thread: give each layer download (a worker thread) its own profiler.
profiles = [cProfile.Profile()]
ensure_blob = Store.ensure_blob
def profiled(*args, **kwargs):
    profile = cProfile.Profile()
    profiles.append(profile)
    return profile.runcall(ensure_blob, *args, **kwargs)
Store.ensure_blob = profiled
profiles[0].enable()
pull(sys.argv[1], store=Store(Path(sys.argv[2])), insecure=True, workers=int(sys.argv[3]),
     use_docker_config=False)
profiles[0].disable()
stats = pstats.Stats(*profiles)
stats.sort_stats("tottime").print_stats(20)
"""


def python_files(budget: int) -> list[Path]:
    """Files of this Python installation, in a stable order, up to ``budget`` bytes."""
    chosen: list[Path] = []
    total = 0
    lib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for dirpath, dirnames, filenames in os.walk(lib):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            chosen.append(path)
            total += path.stat().st_size
            if total >= budget:
                return chosen
    return chosen


def write_random(directory: Path, size: int, seed: int, files: int = 4) -> None:
    """``size`` incompressible bytes in ``files`` files, the same for the same seed."""
    directory.mkdir(parents=True)
    rng = random.Random(seed)
    for number in range(files):
        part = size // files + (size % files if number == files - 1 else 0)
        with open(directory / f"blob{number}.bin", "wb") as handle:
            while part:
                step = min(part, 1 << 22)
                handle.write(rng.randbytes(step))
                part -= step


def layer_sizes(layout: Path, tag: str) -> list[int]:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            algorithm, _, digest = entry["digest"].partition(":")
            manifest = json.loads((layout / "blobs" / algorithm / digest).read_text())
            return [layer["size"] for layer in manifest["layers"]]
    raise SystemExit(f"no {tag} in {layout}")


def build_image(work: Path, push_host: str, size_mb: int) -> list[int]:
    """Build the three-layer image with umoci, push it with skopeo; the layer sizes."""
    layout = work / "oci"
    image = f"{layout}:{TAG}"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", image)
    # Layer 1: real files (text and shared objects) from this Python installation.
    real = work / "layer1"
    prefix = Path(sys.base_prefix)
    for path in python_files(budget=size_mb * MB * 3 // 5):
        target = real / path.relative_to(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    run("umoci", "insert", "--image", image, real, "/usr/local")
    first = layer_sizes(layout, TAG)[0]
    # Layers 2 and 3: incompressible data, topping the image up to size_mb compressed.
    rest = max(size_mb * MB - first, 2 * MB)
    write_random(work / "layer2", rest * 3 // 5, seed=2)
    run("umoci", "insert", "--image", image, work / "layer2", "/srv/data2")
    write_random(work / "layer3", rest - rest * 3 // 5, seed=3)
    run("umoci", "insert", "--image", image, work / "layer3", "/srv/data3")
    run("umoci", "config", "--image", image, "--architecture", "amd64", "--os", "linux",
        "--config.cmd", "/usr/local/bin/python3")  # fmt: skip
    run("skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
        f"oci:{image}", f"docker://{push_host}/{REPOSITORY}:{TAG}")  # fmt: skip
    for name in ("layer1", "layer2", "layer3"):
        shutil.rmtree(work / name)
    return layer_sizes(layout, TAG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100, help="compressed image size")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1, help="an image K times larger")
    parser.add_argument("--workers", type=int, default=3, help="pyops parallel layer downloads")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--profile", action="store_true", help="also profile one pull")
    args = parser.parse_args()
    missing = [t for t in ("docker-registry", "skopeo", "umoci") if shutil.which(t) is None]
    if missing:
        print(f"skipped: needs {', '.join(missing)} (apt-get install docker-registry skopeo umoci)")
        sys.exit(SKIPPED)

    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        work = Path(tmp)
        registry = local_registry(work)
        try:
            registry.start()
            sizes = build_image(work, registry.host, args.size_mb * args.scale)
            samples = compare(work, registry.host, args)
        finally:
            registry.stop()
    total = sum(sizes)
    summary = summarize(samples)
    best, peak = summary.best, summary.peak_mb
    layers = ", ".join(f"{size / MB:.1f}" for size in sizes)
    row = Row(
        name="pulling an image",
        size=f"{total / MB:.0f} MB compressed in {len(sizes)} layers",
        baseline="skopeo copy",
        pyops_s=best["pyops"],
        baseline_s=best["skopeo"],
        target="ratio <= 1.0",
        met=best["pyops"] <= best["skopeo"],
        pyops_peak_mb=peak["pyops"],
        baseline_peak_mb=peak["skopeo"],
        note=(
            f"layers {layers} MB; pyops {total / MB / best['pyops']:.0f} MB/s with "
            f"{args.workers} workers, skopeo {total / MB / best['skopeo']:.0f} MB/s"
        ),
        runs=summary.runs,
    )
    emit(row, args.json)


def compare(work: Path, host: str, args: argparse.Namespace) -> dict[str, list[Sample]]:
    ref = f"{host}/{REPOSITORY}:{TAG}"
    out = work / "out"

    def skopeo_argv(dest: Path) -> list[str]:
        return ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                f"docker://{ref}", f"dir:{dest}"]  # fmt: skip

    def puller_argv(dest: Path) -> list[str]:
        return pyops_argv(PULLER, ref, str(dest), str(args.workers))

    # Warm-up: the registry's blobs into the page cache, and a check that both tools work.
    measure(skopeo_argv(out))
    shutil.rmtree(out)
    measure(puller_argv(out))
    shutil.rmtree(out)
    samples: dict[str, list[Sample]] = {"pyops": [], "skopeo": []}
    for repetition in range(args.repeat):
        order = ["pyops", "skopeo"] if repetition % 2 == 0 else ["skopeo", "pyops"]
        for tool in order:
            argv = puller_argv(out) if tool == "pyops" else skopeo_argv(out)
            samples[tool].append(measure(argv))
            shutil.rmtree(out)
    if args.profile:
        subprocess.run(
            [sys.executable, "-c", PROFILER, ref, str(out), str(args.workers)], check=True, cwd=ROOT
        )
        shutil.rmtree(out)
    return samples


if __name__ == "__main__":
    main()
