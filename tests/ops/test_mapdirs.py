"""config.json's MapDirs, walked as Ops's ``lepton/image.go: addMappedFiles`` walks them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pyops.errors import HostFileError
from pyops.nanos.tree import File, HostFile, Symlink, Tree
from pyops.ops.build import _add_user_files, merge_config
from pyops.ops.config import parse_config
from pyops.ops.mapdirs import go_match, map_dir


@pytest.mark.parametrize(
    ("pattern", "name", "matched"),
    [
        ("*", "", True),
        ("*", "a.css", True),
        ("*.css", "a.css", True),
        ("*.css", "a.cs", False),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "aXbY", False),
        ("?", "é", True),  # one character, not one byte
        ("?", "ab", False),
        ("[a-c]", "b", True),
        ("[c-a]", "b", False),  # an empty range is valid and matches nothing
        ("[^a-c]", "d", True),  # Go negates with ^ ...
        ("[^a-c]", "a", False),
        ("[!a]", "!", True),  # ... and ! is a plain character
        ("[!a]", "b", False),
        ("[\\]]", "]", True),
        ("a\\*", "a*", True),  # \ escapes
        ("a\\*", "ab", False),
        ("[", "[", False),  # malformed patterns match nothing (Ops ignores the error)
        ("a[", "a[", False),
        ("[]a]", "a", False),
        ("[a-]", "a", False),
        ("a\\", "a", False),
        ("Static", "static", False),  # case matters
    ],
)
def test_patterns_follow_gos_filepath_match(pattern: str, name: str, matched: bool) -> None:
    assert go_match(pattern, name) is matched


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """conf/ with a config's folder: static/{index.html, css/a.css, css/b.txt, img/}, a.css
    beside static/, and a symlink."""
    conf = tmp_path / "conf"
    (conf / "static" / "css").mkdir(parents=True)
    (conf / "static" / "img").mkdir()
    (conf / "static" / "index.html").write_text("index")
    (conf / "static" / "css" / "a.css").write_text("a")
    (conf / "static" / "css" / "b.txt").write_text("b")
    (conf / "a.css").write_text("top")
    os.symlink("index.html", conf / "static" / "home.html")
    return conf


def test_a_star_maps_the_whole_folder(site: Path) -> None:
    mapped = map_dir("static/*", "/srv", base_dir=str(site))
    static = site / "static"
    assert mapped.paths == tuple(
        (str(static / name), f"/srv/{name}") for name in ("css", "home.html", "img", "index.html")
    )
    assert mapped.folders == ("/srv",)  # the walk matches the folder itself too
    tree = Tree()
    for host, path in mapped.paths:
        tree.add_host_path(host, path)
    assert tree.exists("/srv/css/a.css") and tree.exists("/srv/img")
    assert tree.get("/srv/home.html") == Symlink("index.html")


def test_a_pattern_is_matched_at_every_depth_keeping_the_folders(site: Path) -> None:
    """Ops walks the folder recursively and matches each entry's name: *.css finds the css
    files below static/ too, under their own folders."""
    mapped = map_dir("static/*.css", "/srv", base_dir=str(site))
    assert mapped.paths == ((str(site / "static" / "css" / "a.css"), "/srv/css/a.css"),)
    assert mapped.folders == ()
    # the walked folder is the key's: a.css beside static/ is not in it
    mapped = map_dir("*.css", "assets", base_dir=str(site))
    assert mapped.paths == (
        (str(site / "a.css"), "/assets/a.css"),
        (str(site / "static" / "css" / "a.css"), "/assets/static/css/a.css"),
    )


def test_a_matched_folder_is_made_empty_its_entries_go_in_only_if_they_match(
    site: Path,
) -> None:
    """``{"css": ...}`` in Ops makes the folder, not a copy of it: a.css's name is not
    "css"."""
    mapped = map_dir("static/css", "/srv", base_dir=str(site))
    assert mapped == type(mapped)((), ("/srv/css",))
    mapped = map_dir("static/i*", "/srv", base_dir=str(site))
    assert mapped.paths == ((str(site / "static" / "index.html"), "/srv/index.html"),)
    assert mapped.folders == ("/srv/img",)


def test_keys_with_no_folder_walk_the_config_folder_and_absolute_ones_the_target_root(
    site: Path, tmp_path: Path
) -> None:
    """Ops joins a relative key to LocalFilesParentDirectory and an absolute one to
    TargetRoot. A key with no folder part walks the config's folder in pyops; Ops walks the
    empty path there and fails when the config file is in the current folder."""
    mapped = map_dir("index.html", "/x", base_dir=str(site))
    assert mapped.paths == ((str(site / "static" / "index.html"), "/x/static/index.html"),)
    mapped = map_dir("/conf/static/css/*", "/y", base_dir="/nowhere", target_root=str(tmp_path))
    assert mapped.paths == (
        (str(site / "static" / "css" / "a.css"), "/y/a.css"),
        (str(site / "static" / "css" / "b.txt"), "/y/b.txt"),
    )


def test_a_missing_folder_is_an_error_and_no_match_a_warning(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(HostFileError, match="MapDirs 'nosuch/\\*': cannot walk"):
        map_dir("nosuch/*", "/x", base_dir=str(site))
    with pytest.raises(HostFileError, match="Not a directory"):
        map_dir("a.css/*", "/x", base_dir=str(site))
    with caplog.at_level(logging.WARNING):
        assert map_dir("static/*.png", "/x", base_dir=str(site)).paths == ()
    assert "nothing in" in caplog.text


def test_merge_config_adds_files_then_mapdirs_then_dirs(site: Path) -> None:
    """Ops's setManifestFromConfig order: Files, MapDirs, Dirs; a later one at the same path
    replaces the earlier one."""
    (site / "srv").mkdir()
    (site / "srv" / "index.html").write_text("from Dirs")
    (site / "index.html").write_text("from Files")
    ops = parse_config(
        {"Files": ["index.html"], "MapDirs": {"static/i*": "/srv"}, "Dirs": ["srv"]},
        base_dir=site,
    )
    config = merge_config(ops, "/bin/true", cwd=str(site))
    assert config.extra_paths == (
        (str(site / "index.html"), "/index.html"),
        (str(site / "static" / "index.html"), "/srv/index.html"),
        (str(site / "srv"), "/srv"),
    )
    assert config.directories == ("/srv/img",)
    tree = Tree()
    _add_user_files(tree, config)
    assert tree.exists("/srv/img")
    node = tree.get("/srv/index.html")
    assert isinstance(node, File) and isinstance(node.source, HostFile)
    assert node.source.path == str(site / "srv" / "index.html")
