"""``pyops pkg from-docker`` end to end, against the tools doing the parts it must do.

    python benchmarks/bench_pkg.py [--repeat 3] [--scale K] [--only node,python] [--json]

Starts Debian's ``docker-registry`` on a free loopback port and pushes two images made of
real software (the tests' Debian images, ``tests/debian_images.py``: mmdebstrap root
filesystems, cached between runs):

- **node**: Debian bookworm's ``nodejs`` image (a ``minbase`` layer and the layer that
  installing ``nodejs`` adds), the program ``/usr/bin/node``;
- **python**: the same ``minbase`` layer and a layer holding this Python installation at its
  own path (about 60,000 files and 1 GB; ``--scale K`` puts K copies of it side by side,
  in K layers), the program its ``python3``.

Each tool runs in its own process (``common.measure``), best of ``--repeat``, in alternating
order, and prints one row per job (one JSON line each with ``--json``):

- ``from-docker, cold``: ``pyops pkg from-docker REF -f PROGRAM`` into an empty home
  (download, unpack, resolve, package) against ``skopeo copy docker://REF dir:NEW`` (only the
  download). Target: at most 1.5 times skopeo.
- ``from-docker, blobs cached``: the same with every blob already in the home (but no
  layer tars nor index: the layers are unpacked), against a cold ``pyops pull`` of the image
  (the download alone). Target: at most 0.5 times the pull.
- ``from-docker, layers indexed``: the same again, with the layers' tars and the root's index
  a first from-docker kept (``pyops.oci.rootindex``): nothing is unpacked. Same target.
- ``from-docker --copy, blobs cached``: the whole root kept, against ``tar xzf`` of the same
  layer files, in order, into a new folder on the same disk. Target: at most 1.0.
- ``from-docker --copy, layers indexed``: the same with the index: every entry copied out of
  the layers' tars. Same target.

The homes and folders live in one temporary folder on the disk the benchmark runs from (set
``TMPDIR`` to move it); each run starts from what its job needs and is removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, SKIPPED, Row, Sample, emit, local_registry, measure, summarize, tree_stats

sys.path.insert(0, str(ROOT))

from tests.registry_server import run  # noqa: E402

TARGETS = {"cold": 1.5, "cached": 0.5, "indexed": 0.5, "copy": 1.0, "copy-indexed": 1.0}
PYTHON = Path(sys.base_prefix)


@dataclass(frozen=True)
class Image:
    key: str
    ref: str
    program: str
    layers: int
    size: str  # for the table


def pyops_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyops", *args]


def push_images(work: Path, host: str, chosen: list[str], scale: int) -> list[Image]:
    """Build (cached) and push the chosen images; skip the benchmark if they cannot be made."""
    try:
        from tests.debian_images import IMAGES, build_debian_image, push_debian_image
    except Exception as exc:  # pytest missing: the tests' dependencies are not installed
        print(f"skipped: cannot load the tests' Debian images ({exc})")
        sys.exit(SKIPPED)
    images = []
    try:
        if "node" in chosen:
            ref = push_debian_image(IMAGES["node"], host)
            images.append(Image("node", ref, "/usr/bin/node", 2, "Debian nodejs 18, 2 layers"))
        if "python" in chosen:
            layout, _ = build_debian_image(IMAGES["node"])  # and the base layer with it
            base_tag = next(t for t in _tags(layout) if t.startswith("base-"))
            copy = work / "oci"
            shutil.copytree(layout, copy, symlinks=True)
            tag = "benchpy"
            run("umoci", "config", "--image", f"{copy}:{base_tag}", "--tag", tag,
                "--config.cmd", str(PYTHON / "bin/python3"))  # fmt: skip
            for k in range(scale):
                dest = PYTHON if k == 0 else Path(f"{PYTHON}-copy{k}")
                run("umoci", "insert", "--image", f"{copy}:{tag}", PYTHON, dest)
            ref = f"{host}/benchpy:latest"
            run("skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                f"oci:{copy}:{tag}", f"docker://{ref}")  # fmt: skip
            shutil.rmtree(copy)
            entries, total = tree_stats(PYTHON)
            size = f"minbase + {scale} x {entries:,} files, {scale * total / 1e9:.1f} GB"
            images.append(Image("python", ref, str(PYTHON / "bin/python3"), 1 + scale, size))
    except BaseException as exc:  # pytest.skip from the image builder, or a tool failing
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"skipped: the benchmark images cannot be made: {str(exc).splitlines()[0]}")
        sys.exit(SKIPPED)
    return images


def _tags(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    names = [
        m.get("annotations", {}).get("org.opencontainers.image.ref.name")
        for m in index["manifests"]
    ]
    return [n for n in names if n]


def blobs_of(home: Path, ref: str) -> list[Path]:
    """The layer files of ``ref`` in ``home``'s store, base layer first."""
    code = (
        "import sys; from pyops.oci.pull import pull; from pyops.oci.store import Store\n"
        "p = pull(sys.argv[1], store=Store(sys.argv[2]), insecure=True)\n"
        "print('\\n'.join(map(str, p.layers)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, ref, str(home)], cwd=ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return [Path(line) for line in done.stdout.split()]


class Jobs:
    """The commands of each job, and what each run must start from."""

    def __init__(self, work: Path, image: Image) -> None:
        self.work = work
        self.image = image
        self.cached = work / f"{image.key}-cached"  # a home holding every blob
        self.fresh = work / f"{image.key}-fresh"  # a home or folder made by one run

    def from_docker(self, home: Path, *extra: str) -> list[str]:
        return [
            "env", f"PYOPS_HOME={home}",
            *pyops_cli("pkg", "from-docker", "--insecure", self.image.ref, "-f",
                       self.image.program, "--name", "bench", *extra),
        ]  # fmt: skip

    def skopeo(self) -> list[str]:
        return ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                f"docker://{self.image.ref}", f"dir:{self.fresh}"]  # fmt: skip

    def pull(self) -> list[str]:
        return ["env", f"PYOPS_HOME={self.fresh}",
                *pyops_cli("pull", "--insecure", self.image.ref)]  # fmt: skip

    def tar(self, layers: list[Path]) -> list[str]:
        # umoci's layers end without tar's end-of-archive blocks (umoci #436): GNU tar
        # unpacks every member, then exits with status 2. Any other failure counts.
        script = 'mkdir "$0" && for l; do tar xzf "$l" -C "$0" 2>/dev/null || [ $? = 2 ]; done'
        return ["sh", "-c", script, str(self.fresh), *map(str, layers)]

    def clean(self, keep_index: bool = False) -> None:
        """Remove what a run made; the cached home keeps its blobs, and with ``keep_index``
        also the layers' tars and the root's index (pyops.oci.rootindex)."""
        if self.fresh.exists():
            atomic_rmtree(self.fresh)
        made = ["local_packages"] + ([] if keep_index else ["layers", "roots"])
        for name in made:
            if (self.cached / name).exists():
                atomic_rmtree(self.cached / name)
        os.sync()


def atomic_rmtree(path: Path) -> None:
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
    shutil.rmtree(path)


def compare(
    jobs: Jobs, tools: dict[str, Callable[[], list[str]]], repeat: int, keep_index: bool = False
) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {name: [] for name in tools}
    names = list(tools)
    for repetition in range(repeat):
        for name in names if repetition % 2 == 0 else reversed(names):
            jobs.clean(keep_index)
            samples[name].append(measure(tools[name]()))
    jobs.clean()
    return samples


def row(job: str, image: Image, baseline: str, samples: dict[str, list[Sample]], note: str) -> Row:
    summary = summarize(samples)
    target = TARGETS[job]
    pyops_s = summary.best["pyops"]
    base_s = summary.best[baseline]
    names = {"cold": "from-docker, cold", "cached": "from-docker, blobs cached",
             "indexed": "from-docker, layers indexed",
             "copy": "from-docker --copy, blobs cached",
             "copy-indexed": "from-docker --copy, layers indexed"}  # fmt: skip
    return Row(
        name=f"{names[job]} ({image.key})",
        size=image.size,
        baseline=baseline,
        pyops_s=pyops_s,
        baseline_s=base_s,
        target=f"ratio <= {target}",
        met=pyops_s <= target * base_s,
        pyops_peak_mb=summary.peak_mb["pyops"],
        baseline_peak_mb=summary.peak_mb[baseline],
        note=note,
        runs=summary.runs,
    )


def bench_image(work: Path, image: Image, repeat: int) -> list[Row]:
    jobs = Jobs(work, image)
    home = jobs.fresh

    # Warm-up and checks: every tool works, the registry's blobs are in the page cache.
    measure(jobs.skopeo())
    jobs.clean()
    measure(jobs.from_docker(home))
    kept_entries, kept_bytes = tree_stats(home / "local_packages/amd64/bench/sysroot")
    jobs.clean()
    layers = blobs_of(jobs.cached, image.ref)
    measure(jobs.tar(layers))
    tar_entries, _ = tree_stats(jobs.fresh)
    jobs.clean()
    measure(jobs.from_docker(jobs.cached, "--copy"))
    copy_entries, copy_bytes = tree_stats(jobs.cached / "local_packages/amd64/bench/sysroot")
    jobs.clean()
    if abs(copy_entries - tar_entries) > max(10, tar_entries // 100):
        raise SystemExit(f"tar unpacked {tar_entries} entries, pyops --copy {copy_entries}")

    rows = []
    cold = compare(jobs, {"pyops": lambda: jobs.from_docker(home), "skopeo copy": jobs.skopeo},
                   repeat)  # fmt: skip
    kept = f"the package keeps {kept_entries:,} entries, {kept_bytes / 1e6:.0f} MB"
    rows.append(row("cold", image, "skopeo copy", cold, kept))
    cached = compare(
        jobs, {"pyops": lambda: jobs.from_docker(jobs.cached), "pyops pull": jobs.pull}, repeat
    )
    rows.append(row("cached", image, "pyops pull", cached, kept))
    measure(jobs.from_docker(jobs.cached))  # the layers' tars and the root's index
    indexed = compare(
        jobs,
        {"pyops": lambda: jobs.from_docker(jobs.cached), "pyops pull": jobs.pull},
        repeat,
        keep_index=True,
    )
    rows.append(row("indexed", image, "pyops pull", indexed, kept))
    copy = compare(
        jobs,
        {
            "pyops": lambda: jobs.from_docker(jobs.cached, "--copy"),
            "tar xzf": lambda: jobs.tar(layers),
        },
        repeat,
    )
    whole = (
        f"{copy_entries:,} entries, {copy_bytes / 1e6:.0f} MB unpacked from {len(layers)} layers"
    )
    rows.append(row("copy", image, "tar xzf", copy, whole))
    measure(jobs.from_docker(jobs.cached, "--copy"))
    copy_indexed = compare(
        jobs,
        {
            "pyops": lambda: jobs.from_docker(jobs.cached, "--copy"),
            "tar xzf": lambda: jobs.tar(layers),
        },
        repeat,
        keep_index=True,
    )
    rows.append(row("copy-indexed", image, "tar xzf", copy_indexed, whole))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="copies of the Python tree")
    parser.add_argument("--only", default="node,python", help="node, python or both")
    parser.add_argument("--json", action="store_true", help="print one JSON line per row")
    args = parser.parse_args()
    missing = [t for t in ("docker-registry", "skopeo", "umoci", "tar") if shutil.which(t) is None]
    if missing:
        print(f"skipped: needs {', '.join(missing)} (apt-get install docker-registry skopeo umoci)")
        sys.exit(SKIPPED)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-pkg-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        registry = local_registry(work)
        rows: list[Row] = []
        try:
            registry.start()
            for image in push_images(work, registry.host, chosen, args.scale):
                rows += bench_image(work, image, args.repeat)
        finally:
            registry.stop()
            subprocess.run(["chmod", "-R", "u+rwx", tmp], check=False)
    for r in rows:
        emit(r, args.json)


if __name__ == "__main__":
    main()
