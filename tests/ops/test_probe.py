"""What a probe takes from a boot's console (pyops.ops.probe), on a small image root.

The whole probe, booting Debian's nginx, is in tests/ops/test_servers.py."""

from __future__ import annotations

import os
from pathlib import Path

from pyops.ops.contents import CONTENTS_FILE, Contents, ImageRoot, Part, read_contents
from pyops.ops.probe import _Index, _link_into, _record, _wanted, _with_trees


def put(root: Path, path: str, data: str = "x") -> None:
    host = root / path.lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    host.write_text(data)


def image(root: Path) -> tuple[ImageRoot, _Index]:
    put(root, "/etc/app/app.conf")
    put(root, "/etc/app/mime.types")
    put(root, "/usr/share/doc/app/app.conf")  # documentation never answers a name
    (root / "var/lib/app").mkdir(parents=True)
    put(root, "/var/lib/app/seed")
    for i in range(10):
        put(root, f"/usr/lib/mod{i}/__init__.py")
    return ImageRoot(root), _Index(root)


def test_missing_names_and_paths_the_program_names(tmp_path: Path) -> None:
    root, index = image(tmp_path)
    console = (
        "[0.5] en1: assigned 10.0.2.15\n"
        'app: open() "/var/lib/app/state/now" failed\n'  # not there, nor its folder
        'app: open() "/var/lib/app/lock" failed\n'  # not there: its folder is
        "app: see /etc/app/mime.types\n"
        "missing_files_begin\napp.conf\n__init__.py\nnowhere.conf\nmissing_files_end\n"
    )
    wanted, unresolved = _wanted(root, index, console)
    # A named file, the folder of a file to be made (without what is in it), a named file.
    assert wanted == [("/etc/app/app.conf", True), ("/var/lib/app", False),
                      ("/etc/app/mime.types", True)]  # fmt: skip
    # Ten files answer __init__.py: too vague; nothing answers nowhere.conf.
    assert unresolved == ["__init__.py", "nowhere.conf"]
    assert _wanted(root, index, "no report, no paths\n") == ([], [])


def test_added_paths_are_linked_in_and_recorded(tmp_path: Path) -> None:
    root, _ = image(tmp_path / "root")
    package = tmp_path / "pkg"
    sysroot = package / "sysroot"
    sysroot.mkdir(parents=True)
    (package / CONTENTS_FILE).write_text(Contents((Part("program", "p", ("/bin/app",)),)).to_json())
    paths = _with_trees(root, [("/var/lib/app", True), ("/etc/app/app.conf", True)])
    assert paths == ["/var/lib/app", "/var/lib/app/seed", "/etc/app/app.conf"]
    _link_into(tmp_path / "root", sysroot, paths)
    seed = sysroot / "var/lib/app/seed"
    assert os.path.samefile(seed, tmp_path / "root/var/lib/app/seed")  # a link, not a copy
    _record(package, paths)
    contents = read_contents(package / CONTENTS_FILE)
    assert contents is not None
    assert [p.kind for p in contents.parts] == ["program", "probe"]
    assert contents.parts[1].paths == tuple(sorted(paths))
