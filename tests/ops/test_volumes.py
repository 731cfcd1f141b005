"""The volume store: making volumes from folders, listing, finding, deleting and reading them,
and the ``--mounts`` forms that name them."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.errors import (
    ConfigError,
    DiskFull,
    FilesystemFull,
    HostFileError,
    InvalidInput,
    VolumeError,
)
from pyops.nanos.disk import open_image
from pyops.nanos.tfs import format_uuid, iter_file_contents, read_identity
from pyops.nanos.tree import Directory, File, ImageData, Symlink, Tree
from pyops.ops.volumes import (
    Volume,
    create_volume,
    delete_volume,
    find_volume,
    list_volumes,
    mount_point,
    mounts_manifest,
    open_volume,
    parse_mounts,
    resolve_mounts,
    volumes_dir,
)

from ..nanos.test_tfs_interop import dump_tree, tool

UUID = bytes(range(16))
UUID_TEXT = "00010203-0405-0607-0809-0a0b0c0d0e0f"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Nested files, an empty file, an empty folder and symlinks (one to a folder)."""
    src = tmp_path / "src"
    (src / "etc" / "app").mkdir(parents=True)
    (src / "var" / "empty").mkdir(parents=True)
    (src / "etc" / "app" / "conf.toml").write_bytes(b"answer = 42\n")
    (src / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    (src / "data.bin").write_bytes(bytes(range(256)) * 4096)
    (src / "empty").write_bytes(b"")
    (src / "conf").symlink_to("etc/app/conf.toml")
    (src / "etc" / "app-link").symlink_to("app")
    return src


def files(home: Path) -> list[str]:
    """What the volume folder holds (the store's lock file aside)."""
    folder = home / "volumes"
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.exists() else []


def read_all(tree: Tree) -> dict[str, object]:
    """Path -> bytes, link target or 'dir', for every entry of a tree read from a volume."""
    out: dict[str, object] = {}
    for path, node in tree.walk():
        if isinstance(node, Directory):
            out[path] = "dir"
        elif isinstance(node, Symlink):
            out[path] = ("link", node.target)
        elif isinstance(node, File):
            assert isinstance(node.source, ImageData)
            out[path] = b"".join(iter_file_contents(node.source))
    return out


def host_all(root: Path) -> dict[str, object]:
    out: dict[str, object] = {"/": "dir"}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = "/" + p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


# --- creating ----------------------------------------------------------------------------------


def test_a_volume_holds_the_folder_at_its_root(home: Path, folder: Path) -> None:
    volume = create_volume("data", folder)
    assert volume.name == "data" and volume.label == "data"
    assert volume.path == home / "volumes" / f"data:{volume.uuid}.raw"
    assert volume.size == volume.path.stat().st_size
    disk = open_image(volume.path)
    assert disk.boot is None and disk.partitions == ()
    assert disk.root.info.label == "data"
    assert format_uuid(disk.root.info.uuid) == volume.uuid
    assert read_all(disk.tree()) == host_all(folder)
    # The root tuple is the folder and nothing else (no program, no environment).
    assert set(disk.root.root) == {"children"}
    assert read_all(open_volume("data").tree()) == host_all(folder)


def test_each_volume_is_a_new_identity_unless_its_uuid_is_given(home: Path, folder: Path) -> None:
    one = create_volume("one", folder)
    two = create_volume("two", folder)
    assert one.uuid != two.uuid
    fixed = create_volume("fixed", folder, uuid=UUID)
    assert fixed.uuid == UUID_TEXT
    assert fixed.path.name == f"fixed:{UUID_TEXT}.raw"
    with open(fixed.path, "rb") as f:
        assert read_identity(f) == (UUID, "fixed")
    with pytest.raises(InvalidInput, match="16 bytes"):
        create_volume("short", folder, uuid=b"x")


def test_an_empty_volume(home: Path) -> None:
    volume = create_volume("scratch", size=8 << 20)
    assert volume.size == 8 << 20
    disk = open_volume("scratch")
    assert disk.tree().root.entries == {}
    assert disk.root.info.label == "scratch"


def test_a_link_to_a_folder_gives_the_folders_content(
    home: Path, folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "via").symlink_to(folder)
    volume = create_volume("linked", tmp_path / "via")
    assert read_all(open_image(volume.path).tree()) == host_all(folder)


def test_a_size_too_small_names_the_size_needed_and_writes_nothing(
    home: Path, folder: Path
) -> None:
    with pytest.raises(FilesystemFull, match=r"'data' does not fit in 4096 bytes") as caught:
        create_volume("data", folder, size=4096)
    needed = caught.value.needed
    assert needed > 4096 and f"at least {needed} bytes" in str(caught.value)
    assert caught.value.hint and "give a size of at least" in caught.value.hint
    assert files(home) == []
    assert [p.name for p in (home / "volumes").iterdir()] == [".lock"]  # no temporary left
    # The size it named is enough.
    assert create_volume("data", folder, size=needed).size == needed


@pytest.mark.parametrize("size", [0, -1, True])
def test_an_invalid_size(home: Path, size: int) -> None:
    with pytest.raises(InvalidInput, match="invalid volume size"):
        create_volume("data", size=size)


def test_a_name_already_taken_is_an_error_and_the_volume_stays(home: Path, folder: Path) -> None:
    first = create_volume("data", folder)
    before = first.path.read_bytes()
    with pytest.raises(VolumeError, match="a volume named 'data' already exists") as caught:
        create_volume("data")
    assert caught.value.hint and "pyops volume delete data" in caught.value.hint
    assert files(home) == [first.path.name] and first.path.read_bytes() == before
    # Even when the file of that name is not a readable volume.
    first.path.write_bytes(b"junk")
    with pytest.raises(VolumeError, match="already exists"):
        create_volume("data", folder)


@pytest.mark.parametrize(
    "name",
    ["", ".hidden", "-x", "_x", "a/b", "a:b", "../up", "x" * 32, "%1", "a b", "ünï", "a\0b"],
)
def test_bad_names_are_refused_first(home: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid volume name") as caught:
        create_volume(name, tmp_path / "does not exist")  # the name is checked first
    assert caught.value.hint and "letters, digits" in caught.value.hint
    assert files(home) == []


@pytest.mark.parametrize("name", ["a", "data", "A.b-c_d", "9lives", "x" * 31])
def test_good_names(home: Path, name: str) -> None:
    assert create_volume(name).label == name


def test_a_missing_folder_or_a_file_is_refused(home: Path, folder: Path) -> None:
    with pytest.raises(HostFileError, match="no such folder"):
        create_volume("data", folder / "nope")
    with pytest.raises(HostFileError, match="is not a folder"):
        create_volume("data", folder / "etc" / "hosts")
    assert files(home) == []


def test_a_folder_that_cannot_be_read_leaves_nothing(
    home: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Permission bits do not stop root, so the failing listing is simulated.
    real_scandir = os.scandir
    unreadable = str(folder / "etc" / "app")

    def scandir(path: str) -> object:
        if os.fspath(path) == unreadable:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(HostFileError, match=r"app: cannot list it \(Permission denied\)"):
        create_volume("data", folder)
    monkeypatch.undo()
    assert files(home) == []


def test_a_full_disk_is_reported_and_leaves_nothing(
    home: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyops.nanos.disk

    def no_room(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pyops.nanos.disk, "write_volume", no_room)
    with pytest.raises(DiskFull, match=rf"disk full at {home / 'volumes'}, needs [\d,]+ "):
        create_volume("data", folder)
    assert files(home) == []


# --- listing, finding, deleting --------------------------------------------------------------


def test_list_find_and_delete_by_name_or_uuid(home: Path, folder: Path) -> None:
    assert list_volumes() == []
    web = create_volume("web", folder)
    db = create_volume("db", uuid=UUID)
    assert list_volumes() == [db, web]
    assert volumes_dir() == home / "volumes"
    assert find_volume("web") == web
    assert find_volume(web.uuid) == web
    assert find_volume(UUID_TEXT.upper()) == db  # Nanos reads either case too
    assert db.to_dict() == {
        "name": "db",
        "uuid": UUID_TEXT,
        "label": "db",
        "path": str(db.path),
        "size": db.size,
    }
    assert delete_volume(UUID_TEXT) == db.path
    assert not db.path.exists()
    assert delete_volume("web") == web.path
    assert list_volumes() == [] and files(home) == []


def test_an_unknown_volume_lists_those_there_are(home: Path) -> None:
    with pytest.raises(VolumeError, match=r"no volume named 'nope' .*\(volumes: none\)"):
        find_volume("nope")
    create_volume("data", uuid=UUID)
    with pytest.raises(VolumeError) as caught:
        find_volume("nope")
    assert f"(volumes: data ({UUID_TEXT}))" in str(caught.value)
    assert caught.value.hint == (
        "pyops volume list shows the volumes; pyops volume create NAME -d DIR makes one"
    )
    with pytest.raises(VolumeError, match="no volume with the UUID"):
        find_volume("ffffffff-ffff-ffff-ffff-ffffffffffff")
    with pytest.raises(VolumeError, match="no volume named 'nope'"):
        delete_volume("nope")
    with pytest.raises(VolumeError, match="no volume named 'nope'"):
        open_volume("nope")


def test_two_volumes_of_one_name_are_told_apart_by_uuid(home: Path) -> None:
    # Ops gives each `volume create` a new UUID, even for a name already used.
    made = create_volume("data", uuid=UUID)
    other = bytes(reversed(UUID))
    copy = made.path.with_name(f"data:{format_uuid(other)}.raw")
    data = bytearray(made.path.read_bytes())
    at = data.index(UUID)
    data[at : at + 16] = other
    copy.write_bytes(bytes(data))
    with pytest.raises(VolumeError, match="2 volumes are named 'data'") as caught:
        find_volume("data")
    assert caught.value.hint == "name the one you mean by its UUID"
    assert find_volume(format_uuid(other)).path == copy
    with pytest.raises(VolumeError, match="2 volumes are named"):
        delete_volume("data")
    assert delete_volume(format_uuid(other)) == copy


def test_hostile_files_in_the_folder_do_not_break_the_listing(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = create_volume("good", uuid=UUID)
    folder = home / "volumes"
    other = "11111111-2222-3333-4444-555555555555"
    (folder / f"junk:{other}.raw").write_bytes(b"\xff" * 4096)  # named well, not TFS
    (folder / f"tiny:{other}.raw").write_bytes(b"NVMTFS")  # shorter than a sector
    (folder / f"empty:{other}.raw").write_bytes(b"")
    # A real volume under a name that gives another UUID cannot be mounted by that UUID.
    (folder / f"liar:{other}.raw").write_bytes(good.path.read_bytes())
    (folder / f"dir:{other}.raw").mkdir()
    (folder / f"link:{other}.raw").symlink_to(good.path)
    os.mkfifo(folder / f"fifo:{other}.raw")
    for name in ["notes.txt", "x.raw", f"bad name:{other}.raw", f"UP:{other.upper()}.raw"]:
        (folder / name).write_bytes(good.path.read_bytes())
    (folder / ".good:tmp.raw.pyops-1-abcdef01.tmp").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="pyops.ops.volumes"):
        assert list_volumes() == [good]
    warned = caplog.text
    for name in ("junk", "tiny", "empty", "liar"):
        assert f"{name}:{other}.raw: not listed" in warned
    assert f"has the UUID {UUID_TEXT}" in warned
    assert "fifo" not in warned and "dir:" not in warned and "link:" not in warned
    assert find_volume("good") == good
    with pytest.raises(VolumeError, match="no volume named 'junk'"):
        find_volume("junk")
    # A spoiled volume can still be deleted, and its name is still taken until then.
    with pytest.raises(VolumeError, match="already exists"):
        create_volume("junk")
    assert delete_volume("junk") == folder / f"junk:{other}.raw"
    assert create_volume("junk").name == "junk"


# --- mounts -----------------------------------------------------------------------------------


def test_parse_mounts_follows_ops() -> None:
    assert parse_mounts([]) == {}
    assert parse_mounts(["vol:/mnt"]) == {"vol": "/mnt"}
    assert parse_mounts(["a:/mnt/a", "b:/mnt/b:ro"]) == {"a": "/mnt/a", "b": "/mnt/b:ro"}
    # The rest is joined back with ':', as Ops does.
    assert parse_mounts(["vol:/odd:name"]) == {"vol": "/odd:name"}
    assert parse_mounts([f"{UUID_TEXT}:/data"]) == {UUID_TEXT: "/data"}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["vol"], r"invalid mount 'vol': missing parts"),
        (["vol:mnt"], r"'vol:mnt': the guest path must be absolute"),
        (["vol:"], r"'vol:': the guest path must be absolute"),
        ([":/mnt"], r"no volume before the ':'"),
        (["vol:/a", "vol:/b"], r"volume 'vol' is already mounted at /a \(mount path occupied\)"),
        (["a:/mnt", "b:/mnt"], r"/mnt is already the mount point of volume 'a'"),
        (["a:/mnt/", "b://mnt:ro"], r"/mnt is already the mount point of volume 'a'"),
        (["vol:/"], r"cannot be mounted at '/'"),
        (["vol:/:ro"], r"cannot be mounted at '/'"),
        (["vol:/data/.."], r"cannot be mounted at '/'"),
        (["vol:/data:rom"], r"':ro' .* may only come last"),
        (["vol:/a:ro/b"], r"':ro' .* may only come last"),
        (["vol:/a\0b"], r"NUL"),
    ],
)
def test_parse_mounts_refuses(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_mounts(items)
    assert caught.value.hint


def test_mount_point() -> None:
    assert mount_point("/data") == "/data"
    assert mount_point("/data:ro") == "/data"
    assert mount_point("/odd:name") == "/odd:name"


def test_mounts_name_volumes_by_uuid(home: Path) -> None:
    data = create_volume("data", uuid=UUID)
    logs = create_volume("logs")
    volumes = resolve_mounts(parse_mounts(["data:/data:ro", f"{logs.uuid}:/var/log"]))
    assert volumes == {"/data:ro": data, "/var/log": logs}
    assert mounts_manifest(volumes) == {UUID_TEXT: "/data:ro", logs.uuid: "/var/log"}
    with pytest.raises(VolumeError, match=r"'data' .* is mounted twice: as 'data' and as"):
        resolve_mounts(parse_mounts(["data:/a", f"{UUID_TEXT}:/b"]))
    with pytest.raises(VolumeError, match="is mounted twice: at /a and at /b"):
        mounts_manifest({"/a": data, "/b": data})
    with pytest.raises(VolumeError, match="no volume named 'nope'"):
        resolve_mounts({"nope": "/x"})
    forged = Volume("x", "not-a-uuid", "x", Path("x"), 0)
    with pytest.raises(VolumeError, match="invalid UUID"):
        mounts_manifest({"/x": forged})


# --- the command line -------------------------------------------------------------------------


def test_cli_create_list_delete(home: Path, folder: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["volume", "create", "data", "-d", str(folder), "-s", "64M"])
    assert made.exit_code == 0, made.output
    volume = find_volume("data")
    assert volume.size == 64 << 20
    assert made.output.startswith(f"created volume data ({volume.uuid}), 64.0 MiB, at ")
    text = runner.invoke(cli, ["volume", "list"]).output.splitlines()
    assert text[0].split() == ["NAME", "UUID", "SIZE", "PATH"]
    assert text[1].split() == ["data", volume.uuid, "64.0", "MiB", str(volume.path)]
    listed = runner.invoke(cli, ["volume", "list", "--json"])
    assert listed.exit_code == 0
    import json

    assert json.loads(listed.output) == [volume.to_dict()]
    deleted = runner.invoke(cli, ["volume", "delete", "data"])
    assert deleted.exit_code == 0 and deleted.output == f"deleted {volume.path}\n"
    assert runner.invoke(cli, ["volume", "list"]).output.startswith("no volumes")


def test_cli_ls_tree_and_cat_read_a_volume_as_image_reads_an_image(
    home: Path, folder: Path
) -> None:
    runner = CliRunner()
    volume = create_volume("data", folder)
    for args in (["ls"], ["ls", "/etc"], ["ls", "/conf"], ["tree"], ["cat", "/etc/hosts"]):
        mine = runner.invoke(cli, ["volume", args[0], "data", *args[1:]])
        theirs = runner.invoke(cli, ["image", args[0], str(volume.path), *args[1:]])
        assert mine.exit_code == 0 and theirs.exit_code == 0, mine.output + theirs.output
        assert mine.output == theirs.output
    listing = runner.invoke(cli, ["volume", "ls", volume.uuid]).output
    assert "conf -> etc/app/conf.toml" in listing and "empty" in listing
    tree = runner.invoke(cli, ["volume", "tree", "data"]).output
    assert "conf.toml (12 bytes)" in tree and "app-link -> app" in tree
    cat = runner.invoke(cli, ["volume", "cat", "data", "/data.bin"])
    assert cat.stdout_bytes == (folder / "data.bin").read_bytes()
    linked = runner.invoke(cli, ["volume", "cat", "data", "/conf"])  # followed in the volume
    assert linked.output == "answer = 42\n"
    empty = runner.invoke(cli, ["volume", "cat", "data", "/empty"])
    assert empty.exit_code == 0 and empty.stdout_bytes == b""


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["ls", "nope"], "error: no volume named 'nope'", "hint: pyops volume list"),
        (["cat", "data", "/etc"], "error: /etc is not a regular file in volume data", ""),
        (["create", "a/b"], "error: invalid volume name 'a/b'", "hint: use up to 31"),
        (["create", "x", "-s", "64MB"], "error: invalid --size '64MB'", "hint: write a number"),
        (["create", "data"], "error: a volume named 'data' already exists", "hint: pick"),
        (["create", "y", "-s", "1k"], "error: volume 'y' does not fit in 1024 bytes", "hint:"),
        (["delete", "nope"], "error: no volume named 'nope'", "hint: pyops volume list"),
    ],
)
def test_cli_errors_are_one_line_and_a_hint(
    home: Path, folder: Path, args: list[str], message: str, hint: str
) -> None:
    create_volume("data", folder)
    result = CliRunner().invoke(cli, ["volume", *args])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith(message), result.output
    assert len(lines) == (2 if hint else 1) and lines[-1].startswith(hint)
    assert "Traceback" not in result.output


# --- Nanos's own reader -----------------------------------------------------------------------


def test_nanos_dump_reads_the_volume(home: Path, folder: Path, tmp_path: Path) -> None:
    dump = tool("dump")
    volume = create_volume("data", folder)
    out = tmp_path / "extracted"
    out.mkdir()
    result = subprocess.run(
        [str(dump), "-d", str(out), str(volume.path)], check=True, capture_output=True, text=True
    )
    assert f"Label: data\nUUID: {volume.uuid}\n" in result.stdout
    expected = host_all(folder)
    # dump -d writes files and folders but not symlinks; dump -t shows those.
    assert host_all(out) == {p: v for p, v in expected.items() if not isinstance(v, tuple)}
    shown = dump_tree(dump, volume.path)
    assert "conf -> etc/app/conf.toml" in shown and "app-link -> app" in shown


def test_mounts_from_config_json_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.json's Mounts, then RunConfig.Mounts, then --mounts; the same volume named
    again takes the later folder, and one folder for two volumes is refused."""
    from pyops.ops.config import parse_config
    from pyops.ops.recipes import chosen_mounts

    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    a = create_volume("a")
    b = create_volume("b")
    ops = parse_config({"Mounts": {"a": "/data"}, "RunConfig": {"Mounts": ["b:/logs"]}})
    assert chosen_mounts(ops) == {"/data": a, "/logs": b}
    assert chosen_mounts(ops, ["a:/other"]) == {"/other": a, "/logs": b}
    with pytest.raises(ConfigError, match="/logs"):
        chosen_mounts(ops, ["a:/logs"])
    assert chosen_mounts(parse_config({})) == {}
