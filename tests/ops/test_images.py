"""Built images: listing and removing them, through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.errors import InvalidInput
from pyops.ops.images import list_images, remove_image


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path))
    images = tmp_path / "images"
    images.mkdir()
    (images / "web.img").write_bytes(b"x" * 1024)
    (images / "web.img.key").write_text("k")
    (images / "db.img").write_bytes(b"y")
    (images / ".db.img.tmp").write_bytes(b"partial")
    return tmp_path


def test_list_and_remove(home: Path) -> None:
    assert [(e.name, e.size) for e in list_images()] == [("db", 1), ("web", 1024)]
    assert remove_image("web") == home / "images" / "web.img"
    assert not (home / "images" / "web.img.key").exists()
    assert [e.name for e in list_images()] == ["db"]
    with pytest.raises(InvalidInput, match="no image named 'web' \\(images: db\\)"):
        remove_image("web")
    with pytest.raises(InvalidInput):
        remove_image("../images/db")


def test_cli(home: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["image", "list", "--json"])
    assert listed.exit_code == 0
    assert [e["name"] for e in json.loads(listed.output)] == ["db", "web"]
    text = runner.invoke(cli, ["image", "list"]).output
    assert "db" in text and "web" in text
    removed = runner.invoke(cli, ["image", "rm", "db", "web"])
    assert removed.exit_code == 0 and removed.output.count("removed") == 2
    missing = runner.invoke(cli, ["image", "rm", "db"])
    assert missing.exit_code == 1 and missing.output.startswith("error: no image named 'db'")
    assert runner.invoke(cli, ["image", "list"]).output.startswith("no images")
