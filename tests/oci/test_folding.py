"""Host folders that fold names (pyops.oci.folding) and the layer applier in them.

This machine's filesystems hold names apart, so the folding ones are made two ways: the
``folds=True`` argument of the Unpacker alone (the applier's own bookkeeping, which finds
the collisions on any host), and :func:`tests.folding_host.fold_names`, which makes the
folder fold names for real as APFS does (the probe then finds it out, and an applier that
ignored it would merge entries).
"""

from __future__ import annotations

import errno
import os
import time
import unicodedata
from pathlib import Path

import pytest

from pyops.oci import folding, layers
from pyops.oci.layers import Unpacker, _Applier, _FoldingApplier, unpack_layers

from ..folding_host import fold_names
from ..layer_fixtures import D, Entry, F, H, S, write_layer

HEADERS = "usr/include/linux/netfilter"
UPPER = f"/{HEADERS}/xt_CONNMARK.h"
LOWER = f"/{HEADERS}/xt_connmark.h"
NFC = unicodedata.normalize("NFC", "caf\u00e9")
NFD = unicodedata.normalize("NFD", "caf\u00e9")


def _unpack(tmp_path: Path, *layers: list[Entry], folds: bool | None = None) -> Unpacker:
    tmp_path.mkdir(exist_ok=True)
    paths = []
    for i, entries in enumerate(layers):
        paths.append(write_layer(tmp_path / f"l{i}.tar", entries)[0])
    unpacker = Unpacker(tmp_path / "root", len(paths), folds=folds)
    for number, path in enumerate(paths, start=1):
        unpacker.apply(number, path)
    unpacker.finish()
    return unpacker


def _tree(root: Path) -> dict[str, bytes | str]:
    seen: dict[str, bytes | str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = "/" + os.path.relpath(path, root)
            if os.path.islink(path):
                seen[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                seen[rel] = "dir"
            else:
                with open(path, "rb") as f:
                    seen[rel] = f.read()
    return seen


@pytest.fixture(params=["bookkeeping", "folding-host"])
def folding_root(request: pytest.FixtureRequest, tmp_path: Path) -> bool | None:
    """The ``folds`` to give the Unpacker: True on this host, or None (ask the folder) in
    a folder made to fold names."""
    if request.param == "bookkeeping":
        return True
    fold_names(tmp_path, request.getfixturevalue("monkeypatch"))
    return None


# -- the probe --------------------------------------------------------------------------------


def test_fold_keys() -> None:
    assert folding.fold("xt_CONNMARK.h") == folding.fold("xt_connmark.h") == "xt_connmark.h"
    assert folding.fold(NFC) == folding.fold(NFD) == folding.fold(NFD.upper())
    assert folding.fold("Stra\u00dfe") == folding.fold("STRASSE")
    assert folding.fold("a") != folding.fold("b")


def test_the_probe_tells_folding_folders_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert folding.folds(plain) is False
    assert os.listdir(plain) == []
    folded = tmp_path / "folded"
    folded.mkdir()
    fold_names(folded, monkeypatch)
    assert folding.folds(folded) is True
    assert os.listdir(folded) == []


def test_the_probe_finds_a_folder_that_folds_normalisation_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_lstat = os.lstat

    def lstat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        # The decomposed spelling finds the precomposed name; the case matters.
        return real_lstat(unicodedata.normalize("NFC", os.fspath(path)))

    monkeypatch.setattr(os, "lstat", lstat)
    assert folding.folds(tmp_path) is True
    assert os.listdir(tmp_path) == []


def test_the_probe_leaves_nothing_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_lstat = os.lstat

    def lstat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path).startswith(os.fspath(tmp_path)):
            raise OSError(errno.EIO, "I/O error")
        return real_lstat(path)

    monkeypatch.setattr(os, "lstat", lstat)
    with pytest.raises(OSError, match="I/O error"):
        folding.folds(tmp_path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_the_probe_falls_back_to_an_ascii_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    tried: list[str] = []

    def ascii_only(path: str, *args: int, **kwargs: object) -> int:
        tried.append(os.path.basename(path))
        if not os.fspath(path).isascii():
            raise OSError(errno.EILSEQ, "Illegal byte sequence")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", ascii_only)
    assert folding.folds(tmp_path) is False
    assert [name.isascii() for name in tried] == [False, True]
    assert os.listdir(tmp_path) == []


def test_a_folder_that_does_not_fold_keeps_the_plain_applier(tmp_path: Path) -> None:
    unpacker = _unpack(tmp_path, [F("a/Foo", b"1"), F("a/foo", b"2")])
    assert unpacker.folds is False
    assert type(unpacker._applier) is _Applier  # no bookkeeping on this path
    assert unpacker.collisions == [] and unpacker.ambiguity("/a/foo") is None
    assert _tree(tmp_path / "root") == {"/a": "dir", "/a/Foo": b"1", "/a/foo": b"2"}


# -- what folding does without the bookkeeping ------------------------------------------------


def test_a_folding_folder_merges_entries_when_told_it_does_not_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the emulated folder does to an applier that ignores the folding: the very
    merge the bookkeeping prevents."""
    fold_names(tmp_path, monkeypatch)
    unpacker = _unpack(
        tmp_path,
        [F(UPPER, b"upper"), F(LOWER, b"lower")],
        [F("/keep/A", b"kept"), F("/keep/.wh.a")],
        folds=False,
    )
    assert unpacker.collisions == []
    tree = _tree(tmp_path / "root")
    headers = {k: v for k, v in tree.items() if k.startswith(f"/{HEADERS}/")}
    assert list(headers.values()) == [b"lower"]  # one file: the upper-case one is lost
    assert "/keep/A" not in tree  # removed by the whiteout of another name


# -- collisions, with the bookkeeping ---------------------------------------------------------


def test_names_differing_only_in_case_are_never_merged(
    tmp_path: Path, folding_root: bool | None
) -> None:
    unpacker = _unpack(
        tmp_path,
        [D("usr"), F(UPPER, b"upper"), F(LOWER, b"lower"), F(f"/{HEADERS}/other.h", b"o")],
        folds=folding_root,
    )
    assert unpacker.folds is True
    assert isinstance(unpacker._applier, _FoldingApplier)
    assert unpacker.collisions == [(UPPER, LOWER)]
    tree = _tree(tmp_path / "root")
    assert tree[UPPER] == b"upper" and LOWER not in tree
    assert tree[f"/{HEADERS}/other.h"] == b"o"
    assert unpacker.ambiguity(UPPER) == unpacker.ambiguity(LOWER) == (UPPER, LOWER)
    assert unpacker.ambiguity(f"/{HEADERS}/other.h") is None
    assert unpacker.ambiguity(f"/{HEADERS}") is None


def test_names_differing_only_in_normalisation_are_never_merged(
    tmp_path: Path, folding_root: bool | None
) -> None:
    assert NFC != NFD
    unpacker = _unpack(
        tmp_path, [F(f"menu/{NFC}", b"composed")], [F(f"menu/{NFD}", b"decomposed")],
        folds=folding_root,
    )  # fmt: skip
    assert unpacker.collisions == [(f"/menu/{NFC}", f"/menu/{NFD}")]
    assert _tree(tmp_path / "root") == {"/menu": "dir", f"/menu/{NFC}": b"composed"}


def test_a_folder_colliding_leaves_out_everything_under_it(
    tmp_path: Path, folding_root: bool | None
) -> None:
    unpacker = _unpack(
        tmp_path,
        [
            D("perl/File"),
            F("perl/File/Spec.pm", b"spec"),
            F("perl/file/spec.pm", b"other"),  # its folder collides, implicitly made
            D("perl/FILE"),
            F("perl/FILE/x", b"x"),
            S("perl/fiLe", "File"),
            H("perl/linked", "perl/file/spec.pm"),  # a hard link to what was left out
            H("perl/spec", "perl/File/Spec.pm"),
        ],
        folds=folding_root,
    )
    assert unpacker.collisions == [
        ("/perl/File", "/perl/file"),
        ("/perl/File", "/perl/FILE"),
        ("/perl/File", "/perl/fiLe"),
    ]
    assert _tree(tmp_path / "root") == {
        "/perl": "dir",
        "/perl/File": "dir",
        "/perl/File/Spec.pm": b"spec",
        "/perl/spec": b"spec",
    }
    assert unpacker.ambiguity("/perl/file/spec.pm") == ("/perl/File", "/perl/file")
    assert unpacker.ambiguity("/perl/File/Spec.pm") == ("/perl/File", "/perl/file")
    assert unpacker.ambiguity("/perl/linked") == ("/perl/File", "/perl/file")
    assert unpacker.ambiguity("/perl/spec") is None


def test_whiteouts_across_a_collision_remove_only_their_own_name(
    tmp_path: Path, folding_root: bool | None
) -> None:
    pair = ("/etc/Config", "/etc/config")
    unpacker = _unpack(
        tmp_path,
        [F("etc/Config", b"kept"), F("etc/config", b"left out"), F("etc/other", b"o")],
        # Whiteouts of the name left out must not remove the entry unpacked.
        [F("etc/.wh.config"), Entry("etc/CONFIG", "chr", dev=(0, 0))],
        folds=folding_root,
    )
    assert _tree(tmp_path / "root") == {
        "/etc": "dir",
        "/etc/Config": b"kept",
        "/etc/other": b"o",
    }
    # The image has no /etc/config any more: the host holds all of it.
    assert unpacker.collisions == []
    assert unpacker.ambiguity("/etc/Config") is None and unpacker.ambiguity("/etc/config") is None

    # The whiteout of the unpacked entry's own name removes it, and only it; what was left
    # out is still in the image.
    unpacker = _unpack(
        tmp_path / "survivor",
        [F("etc/Config", b"kept"), F("etc/config", b"left out")],
        [F("etc/.wh.Config")],
        folds=folding_root,
    )
    assert _tree(tmp_path / "survivor/root") == {"/etc": "dir"}
    assert unpacker.collisions == [pair]
    assert unpacker.ambiguity("/etc/config") == pair

    # A whiteout removes only what lower layers made: not what its own layer left out.
    unpacker = _unpack(
        tmp_path / "same-layer",
        [F("etc/Config", b"kept"), F("etc/config", b"left out"), F("etc/.wh.config")],
        folds=folding_root,
    )
    assert _tree(tmp_path / "same-layer/root") == {"/etc": "dir", "/etc/Config": b"kept"}
    assert unpacker.collisions == [pair]


def test_the_name_left_out_made_again_once_the_other_is_gone(
    tmp_path: Path, folding_root: bool | None
) -> None:
    unpacker = _unpack(
        tmp_path,
        [F("etc/Config", b"kept"), F("etc/config", b"left out")],
        [F("etc/.wh.Config"), F("etc/config", b"new")],
        folds=folding_root,
    )
    assert _tree(tmp_path / "root") == {"/etc": "dir", "/etc/config": b"new"}
    assert unpacker.collisions == [] and unpacker.ambiguity("/etc/config") is None
    # Made again while the other is still there: left out again, then the other removed.
    unpacker = _unpack(
        tmp_path / "late",
        [F("etc/Config", b"kept"), F("etc/config", b"left out")],
        [F("etc/config", b"new"), F("etc/.wh.Config")],
        folds=folding_root,
    )
    assert _tree(tmp_path / "late/root") == {"/etc": "dir"}
    assert unpacker.collisions == [("/etc/Config", "/etc/config")]
    assert unpacker.ambiguity("/etc/config") == ("/etc/Config", "/etc/config")


def test_a_whiteout_of_a_folder_holding_a_collision(
    tmp_path: Path, folding_root: bool | None
) -> None:
    """``rm -rf /usr/include`` in a later layer: no collision is left in the image."""
    unpacker = _unpack(
        tmp_path,
        [F(UPPER, b"upper"), F(LOWER, b"lower"), F("usr/include/Linux/x.h", b"x")],
        [F("usr/.wh.include"), F("usr/lib/keep", b"k")],
        folds=folding_root,
    )
    assert unpacker.collisions == []
    assert _tree(tmp_path / "root") == {"/usr": "dir", "/usr/lib": "dir", "/usr/lib/keep": b"k"}


def test_an_opaque_folder_across_a_collision(tmp_path: Path, folding_root: bool | None) -> None:
    unpacker = _unpack(
        tmp_path,
        [F("opt/app/Readme", b"lower"), F("opt/app/README", b"left out"), F("opt/Top", b"t")],
        [F("opt/app/.wh..wh..opq"), F("opt/app/readme", b"upper")],
        folds=folding_root,
    )
    # The opaque marker removed both lower entries; the upper layer's name then takes the key.
    assert _tree(tmp_path / "root") == {
        "/opt": "dir",
        "/opt/Top": b"t",
        "/opt/app": "dir",
        "/opt/app/readme": b"upper",
    }
    assert unpacker.collisions == []
    # An opaque marker in the folder holding it removes only what is below it.
    unpacker = _unpack(
        tmp_path / "above",
        [F("opt/Top", b"t"), F("opt/top", b"left out")],
        [F("opt/app/.wh..wh..opq"), F("opt/.wh..wh..opq"), F("opt/new", b"n")],
        folds=folding_root,
    )
    assert _tree(tmp_path / "above/root") == {"/opt": "dir", "/opt/new": b"n"}
    assert unpacker.collisions == []


def test_a_name_removed_in_a_lower_layer_frees_its_spelling(
    tmp_path: Path, folding_root: bool | None
) -> None:
    unpacker = _unpack(
        tmp_path,
        [F("lib/Foo.so", b"old"), D("share/Doc"), F("share/Doc/a", b"a")],
        [F("lib/.wh.Foo.so"), F("lib/foo.so", b"new"), F("share/.wh.Doc"), F("share/doc/b", b"b")],
        folds=folding_root,
    )
    assert unpacker.collisions == []
    assert _tree(tmp_path / "root") == {
        "/lib": "dir",
        "/lib/foo.so": b"new",
        "/share": "dir",
        "/share/doc": "dir",
        "/share/doc/b": b"b",
    }


def test_replacing_an_entry_by_its_own_name_is_no_collision(
    tmp_path: Path, folding_root: bool | None
) -> None:
    many = [F(f"bin/tool{i}", b"%d" % i) for i in range(100)]  # through the writer thread
    unpacker = _unpack(
        tmp_path,
        [*many, F("bin/Tool", b"1"), S("bin/Link", "Tool")],
        [F("bin/Tool", b"2"), D("bin/Link"), F("bin/TOOL0", b"left out")],
        folds=folding_root,
    )
    assert unpacker.collisions == [("/bin/tool0", "/bin/TOOL0")]
    tree = _tree(tmp_path / "root")
    assert tree["/bin/Tool"] == b"2" and tree["/bin/Link"] == "dir" and tree["/bin/tool0"] == b"0"
    assert len(tree) == 1 + 100 + 2


def test_a_collision_with_a_file_the_writer_has_not_made_yet(
    tmp_path: Path, folding_root: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = layers._Writer._write

    def slow_write(self: layers._Writer, job: layers._Job) -> None:
        time.sleep(0.002)
        real_write(self, job)

    monkeypatch.setattr(layers._Writer, "_write", slow_write)
    many = [F(f"bin/tool{i}", b"%d" % i) for i in range(20)]
    unpacker = _unpack(tmp_path, [*many, F("bin/TOOL19", b"left out")], folds=folding_root)
    assert unpacker.collisions == [("/bin/tool19", "/bin/TOOL19")]
    tree = _tree(tmp_path / "root")
    assert tree["/bin/tool19"] == b"19" and len(tree) == 21


def test_extracting_warns_about_what_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fold_names(tmp_path, monkeypatch)
    path, _ = write_layer(tmp_path / "l.tar", [F("a/X", b"1"), F("a/x", b"2")])
    unpack_layers([path], tmp_path / "root")
    assert "/a/x is not unpacked: /a/X holds its name" in caplog.text
