"""Random hostile layers: whatever they hold, nothing outside the image root changes, and the
only errors are pyops's own."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyops.errors import PyopsError
from pyops.oci import rootindex
from pyops.oci.layers import Unpacker, unpack_layers

from ..layer_fixtures import Entry, make_canary, tar_bytes, tree_state

HOST = "@HOST"  # replaced by the canary's host folder (an absolute host path)
UP = "@UP"  # replaced by enough ../ to leave the root, then the host folder

NAMES = ["a", "b", "a/b", "a/c", "b/a", "a/b/c", "x", "./a/", "/b", "a/./b", "l", "l/x", "l/victim"]
SPECIAL = [
    ".wh.a",
    ".wh.b",
    ".wh...",
    ".wh..",
    ".wh.",
    "a/.wh...",
    "a/.wh..",
    "l/.wh.victim",
    "l/.wh..wh..opq",
    ".wh..wh..opq",
    "a/.wh..wh..opq",
    "a/.wh.b",
    ".wh..wh.plnk",
    "../a",
    "a/../../x",
]
LINK_TARGETS = [
    "a",
    "b",
    "../a",
    "../../..",
    "/",
    "/a",
    "a/..",
    "",
    HOST,
    HOST + "/victim",
    UP,
    UP + "/victim",
    "l",
]
HARD_TARGETS = ["a", "a/b", "/a", "../a", "l", "l/file", "l/victim/secret", HOST + "/file", "x"]
MODES = [0o777, 0o4755, 0o2755, 0o1777, 0o700, 0o644, 0o000, 0o555]

member = st.one_of(
    st.builds(
        lambda n, d, m: Entry(n, "file", d, mode=m),
        st.sampled_from(NAMES + SPECIAL),
        st.binary(max_size=64),
        st.sampled_from(MODES),
    ),
    st.builds(
        lambda n, m: Entry(n, "dir", mode=m),
        st.sampled_from(NAMES + SPECIAL),
        st.sampled_from(MODES),
    ),
    st.builds(
        lambda n, t: Entry(n, "symlink", link=t, mode=0o777),
        st.sampled_from(NAMES),
        st.sampled_from(LINK_TARGETS),
    ),
    st.builds(
        lambda n, t: Entry(n, "hardlink", link=t),
        st.sampled_from(NAMES),
        st.sampled_from(HARD_TARGETS),
    ),
    st.builds(lambda n: Entry(n, "chr", dev=(0, 0)), st.sampled_from(NAMES + SPECIAL)),
    st.builds(lambda n: Entry(n, "fifo"), st.sampled_from(NAMES)),
)
layer = st.tuples(st.lists(member, min_size=1, max_size=12), st.booleans())


def _place(entry: Entry, host: Path) -> Entry:
    up = "../" * 12 + os.path.relpath(host, "/")
    link = entry.link.replace(HOST, str(host)).replace(UP, up)
    return Entry(entry.name, entry.kind, entry.data, link, entry.mode, entry.dev)


def _random_layers(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A test run on ``examples`` lists of one to three random layers."""

    def wrap(test: Callable[..., None]) -> Callable[..., None]:
        run = settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        return run(given(st.lists(layer, min_size=1, max_size=3))(test))

    return wrap


def _layer_files(
    layers: list[tuple[list[Entry], bool]], folder: Path, host: Path
) -> tuple[list[Path], list[str]]:
    """The layers written in ``folder`` (gzip or not, as each says), and their diff_ids."""
    paths, diff_ids = [], []
    for number, (entries, compress) in enumerate(layers):
        raw = tar_bytes([_place(e, host) for e in entries])
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        path = folder / f"layer{number}"
        path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
        paths.append(path)
    return paths, diff_ids


@_random_layers(150)
def test_random_layers_change_nothing_outside_the_root(
    layers: list[tuple[list[Entry], bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "canary"
        root = make_canary(top)
        before = tree_state(top, root)
        paths, _ = _layer_files(layers, Path(tmp), top / "host")
        try:
            unpack_layers(paths, root)
        except PyopsError:
            pass  # refused: fine, as long as nothing outside changed
        assert tree_state(top, root) == before


def _outcome(paths: list[Path], root: Path) -> tuple[str, object]:
    try:
        unpack_layers(paths, root)
    except PyopsError as exc:
        return ("error", type(exc).__name__)
    state = tree_state(root, root / "-")
    del state["."]  # the root's own time is when it was filled
    # A folder no member names (made on the way to a file) has the time it was made.
    state = {k: (v[0], v[1], 0, v[3]) if stat.S_ISDIR(v[0]) else v for k, v in state.items()}
    # Which entries are hard links of each other, by the first name of each file.
    first: dict[tuple[int, int], str] = {}
    links = {}
    for name in sorted(state):
        st = os.lstat(root / name)
        if stat.S_ISREG(st.st_mode):
            links[name] = first.setdefault((st.st_dev, st.st_ino), name)
    return ("tree", (state, links))


@_random_layers(300)
def test_the_writer_thread_changes_nothing_but_the_speed(
    layers: list[tuple[list[Entry], bool]],
) -> None:
    """Small files are created by a thread while later members are read; the result must be
    the one of applying each member in turn (the writer turned off: no file is small)."""
    import pyops.oci.layers as layers_module

    with tempfile.TemporaryDirectory() as tmp:
        paths, _ = _layer_files(layers, Path(tmp), Path(tmp) / "host")
        threaded = _outcome(paths, Path(tmp) / "threaded")
        writer_bytes = layers_module._WRITER_BYTES
        layers_module._WRITER_BYTES = -1
        try:
            in_turn = _outcome(paths, Path(tmp) / "in-turn")
        finally:
            layers_module._WRITER_BYTES = writer_bytes
        assert threaded == in_turn


def _rows(paths: list[Path], diff_ids: list[str], root: Path | None) -> tuple[str, object]:
    """The index of the root the layers make: unpacked in ``root``, or in memory (None)."""
    keep = [root.parent / f"{root.name}-tar{n}" for n in range(len(paths))] if root else None
    unpacker = Unpacker(root, len(paths), diff_ids=diff_ids, keep_tars=keep)
    try:
        for number, path in enumerate(paths, start=1):
            unpacker.apply(number, path)
        unpacker.finish()
    except PyopsError as exc:
        return ("error", type(exc).__name__)
    if root is None:
        rows = unpacker.rows()
    else:
        assert unpacker.contents is not None
        found = rootindex.host_rows(root, unpacker.contents)
        assert found is not None, "every file's bytes are known"
        rows = found
    assert rows[0][:2] == ["/", "d"]
    return ("tree", rows[1:])  # the root folder's own mode and time are the caller's


@_random_layers(300)
def test_the_root_made_in_memory_is_the_one_made_on_the_host(
    layers: list[tuple[list[Entry], bool]],
) -> None:
    """Both hold the same rules: the same entries, modes, times, link targets, hard links,
    and each file's bytes at the same place in the same layer; or the same error."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, diff_ids = _layer_files(layers, Path(tmp), Path(tmp) / "host")
        assert _rows(paths, diff_ids, None) == _rows(paths, diff_ids, Path(tmp) / "root")
