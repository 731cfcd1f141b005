"""Built images: listing, deleting (by name and by age), resizing, and Ops's commands on
what is inside them (ls -l, cp, env), through the library and the CLI."""

from __future__ import annotations

import datetime
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.errors import FilesystemFull, ImageFormatError, InvalidInput
from pyops.nanos.disk import PARTITION_TABLE, open_image, write_disk, write_raw_volume
from pyops.nanos.manifest import Manifest
from pyops.nanos.tfs import SECTOR, read_file_bytes
from pyops.nanos.tree import File, ImageData, Tree
from pyops.ops.images import (
    age_cutoff,
    image_environment,
    least_recently_used,
    list_images,
    parse_age,
    parse_bytes,
    remove_image,
    remove_images,
    resize_image,
)

from ..conftest import compile_c, make_boot_img, tiny_elf


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
    assert removed.exit_code == 0 and removed.output.count("deleted") == 2
    missing = runner.invoke(cli, ["image", "rm", "db"])
    assert missing.exit_code == 1 and missing.output.startswith("error: no image named 'db'")
    assert runner.invoke(cli, ["image", "list"]).output.startswith("no images")


# --- delete, by name and by age (Ops's image delete [--lru AGE]) ----------------------------


def test_remove_images_removes_none_when_one_is_missing(home: Path) -> None:
    with pytest.raises(InvalidInput, match="no image named 'nope'"):
        remove_images(["web", "nope"])
    assert [e.name for e in list_images()] == ["db", "web"]
    assert remove_images(["web", "web", "db"]) == [home / "images/web.img", home / "images/db.img"]


def test_ops_ages() -> None:
    assert parse_age("300d") == (300, "d")
    assert (
        parse_age("3w") == (3, "w") and parse_age("1m") == (1, "m") and parse_age("2y") == (2, "y")
    )
    assert parse_age("12h") == (12, "h") and parse_age(" 2 weeks ") == (2, "w")
    for bad in ("", "1", "d", "1x", "-1d", "1.5d", "1min", "abc3wxyz"):
        with pytest.raises(InvalidInput, match="invalid age"):
            parse_age(bad)
    noon = datetime.datetime(2023, 3, 31, 12, 0, 0).timestamp()
    # as Go's AddDate: 31 March less a month is "31 February", that is 3 March
    assert age_cutoff("1m", noon) == datetime.datetime(2023, 3, 3, 12).timestamp()
    assert age_cutoff("1y", noon) == datetime.datetime(2022, 3, 31, 12).timestamp()
    assert age_cutoff("2w", noon) == datetime.datetime(2023, 3, 17, 12).timestamp()
    assert age_cutoff("12h", noon) == noon - 12 * 3600
    assert age_cutoff("999999999y", noon) == float("-inf")


def test_least_recently_used_counts_builds_runs_and_instances(home: Path) -> None:
    now = time.time()
    day = 86400.0
    images = home / "images"
    for name in ("old", "ran", "instance", "new"):
        (images / f"{name}.img").write_bytes(b"z")
        os.utime(images / f"{name}.img", (now - 30 * day, now - 30 * day))
    os.utime(images / "new.img", (now - day, now - day))
    os.utime(images / "db.img", (now - 30 * day, now - 30 * day))
    os.utime(images / "web.img", (now - 30 * day, now - 30 * day))
    runs = home / "runs"
    runs.mkdir()
    (runs / "ran.img").write_bytes(b"z")  # booted two days ago
    os.utime(runs / "ran.img", (now - 2 * day, now - 2 * day))
    folder = home / "instances" / "inst-1"
    folder.mkdir(parents=True)
    state = {"image": str(images / "instance.img"), "created": now - 3 * day}
    (folder / "instance.json").write_text(json.dumps(state))
    (home / "instances" / "broken").mkdir()
    (home / "instances" / "broken" / "instance.json").write_text("{not json")
    old = [e.name for e in least_recently_used("1w", now=now)]
    assert old == ["db", "old", "web"]
    assert [e.name for e in least_recently_used("36h", now=now)] == [
        "db",
        "instance",
        "old",
        "ran",
        "web",
    ]
    used = {e.name: e.used for e in list_images()}
    assert used["ran"] == pytest.approx(now - 2 * day)
    assert used["instance"] == pytest.approx(now - 3 * day)


def test_cli_delete_asks_as_ops_does(home: Path) -> None:
    runner = CliRunner()
    asked = runner.invoke(cli, ["image", "delete", "web", "db"], input="maybe\nno\n")
    assert asked.exit_code == 0
    assert asked.output.splitlines() == [
        "You are about to delete the next images:",
        "web",
        "db",
        "Are you sure? (yes/no)",
        "Please type yes or no and then press enter:",
        "nothing deleted",
    ]
    assert [e.name for e in list_images()] == ["db", "web"]
    silent = runner.invoke(cli, ["image", "delete", "web"])  # no answer: nothing happens
    assert silent.exit_code == 1 and "error: no answer on standard input" in silent.output
    assert "hint: --assume-yes" in silent.output and "Traceback" not in silent.output
    yes = runner.invoke(cli, ["image", "delete", "web"], input="yes\n")
    assert yes.exit_code == 0 and yes.output.endswith(f"deleted {home / 'images/web.img'}\n")
    unknown = runner.invoke(cli, ["image", "delete", "db", "nope"], input="yes\n")
    assert unknown.exit_code == 1
    assert unknown.output.startswith("error: no image named 'nope' (images: db)")
    assert [e.name for e in list_images()] == ["db"]
    none = runner.invoke(cli, ["image", "delete"])
    assert none.exit_code == 2 and "give --lru AGE" in none.output


def test_cli_delete_lru(home: Path) -> None:
    old = time.time() - 10 * 86400
    os.utime(home / "images" / "db.img", (old, old))
    runner = CliRunner()
    bad = runner.invoke(cli, ["image", "delete", "--lru", "1fortnight", "--assume-yes"])
    assert bad.exit_code == 1 and bad.output.startswith("error: invalid age '1fortnight'")
    result = runner.invoke(cli, ["image", "delete", "--lru", "1w", "--assume-yes", "--force"])
    assert result.exit_code == 0 and result.output == f"deleted {home / 'images/db.img'}\n"
    nothing = runner.invoke(cli, ["image", "rm", "--lru", "1w"])
    assert nothing.exit_code == 0 and nothing.output == "no images to delete\n"
    assert [e.name for e in list_images()] == ["web"]


# --- images with content: ls -l, env, cp, resize -------------------------------------------


def disk_image(
    path: Path,
    tree: Tree | None = None,
    environment: dict[str, str] | None = None,
    size: int | None = None,
) -> Path:
    """A real disk as pyops writes it, with a stand-in kernel (nothing boots it)."""
    parts = path.parent / f"{path.name}.parts"
    parts.mkdir(exist_ok=True)
    make_boot_img(parts / "boot.img")
    (parts / "kernel.img").write_bytes(tiny_elf(62, b"kernel\n" * 64))
    if tree is None:
        tree = Tree()
        tree.add_file("/hello", b"hi\n")
    write_disk(
        path,
        tree,
        Manifest(program="/hello", environment=environment or {}),
        boot_img=parts / "boot.img",
        kernel=parts / "kernel.img",
        size=size,
    )
    return path


def content_tree() -> Tree:
    tree = Tree()
    tree.add_file("/hello", b"hi\n")
    tree.add_file("/etc/hosts", b"127.0.0.1 localhost\n", mtime=str(1_700_000_000 << 32))
    tree.add_symlink("/etc/link", "hosts")
    tree.add_directory("/var/log")
    tree.add_file("/bin/prog", bytes(3000))
    return tree


def ansic(seconds: int) -> str:
    t = datetime.datetime.fromtimestamp(seconds)
    return t.strftime("%a %b ") + f"{t.day:2d}" + t.strftime(" %H:%M:%S %Y")


def test_cli_ls_long_format_as_ops(home: Path) -> None:
    disk_image(home / "images" / "app.img", content_tree())
    runner = CliRunner()
    result = runner.invoke(cli, ["image", "ls", "-l", "app", "/etc"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"      20 {ansic(1_700_000_000)} hosts",
        f"       5 {ansic(0)} link -> hosts",
    ]
    root = runner.invoke(cli, ["image", "ls", "--long-format", "app"]).output.splitlines()
    assert root[0] == f"\t {ansic(0)} bin/" and f"       3 {ansic(0)} hello" in root
    one = runner.invoke(cli, ["image", "ls", "--long", "app", "/hello"]).output
    assert one == f"       3 {ansic(0)} /hello\n"
    short = runner.invoke(cli, ["image", "ls", "app", "/etc"]).output
    assert "l            5 link -> hosts" in short
    boot = runner.invoke(cli, ["image", "ls", "--bootfs", "app"]).output
    assert "kernel" in boot and "klib" not in boot
    missing = runner.invoke(cli, ["image", "ls"])
    assert missing.exit_code == 2 and "pyops image list lists images" in missing.output


def test_env(home: Path) -> None:
    env = {"PATH": "/bin", "A": "1", "TRICK": "line\n\x1b[2Jfake"}
    disk_image(home / "images" / "app.img", environment=env)
    assert image_environment(home / "images" / "app.img") == dict(sorted(env.items()))
    runner = CliRunner()
    result = runner.invoke(cli, ["image", "env", "app"])
    assert result.exit_code == 0
    assert result.output == "A: 1\nPATH: /bin\nTRICK: line\\n\\x1b[2Jfake\n"
    disk_image(home / "images" / "bare.img")
    assert runner.invoke(cli, ["image", "env", "bare"]).output == "(none)\n"
    missing = runner.invoke(cli, ["image", "env", "nope"])
    assert missing.exit_code == 1 and missing.output.startswith("error: no image file or built")
    assert "Traceback" not in missing.output


def test_cli_cp(home: Path, tmp_path: Path) -> None:
    disk_image(home / "images" / "app.img", content_tree())
    runner = CliRunner()
    dest = tmp_path / "out"
    dest.mkdir()
    result = runner.invoke(cli, ["image", "cp", "app", "/etc/hosts", "/etc/link", str(dest)])
    assert result.exit_code == 0 and result.output == ""
    assert (dest / "hosts").read_bytes() == (dest / "link").read_bytes()
    tree = runner.invoke(cli, ["image", "cp", "-r", "app", "/", str(tmp_path / "all")])
    assert tree.exit_code == 0
    assert os.readlink(tmp_path / "all" / "etc" / "link") == "hosts"
    assert (tmp_path / "all" / "var" / "log").is_dir()
    follow = runner.invoke(cli, ["image", "cp", "-rL", "app", "/etc", str(tmp_path / "etc")])
    assert follow.exit_code == 0 and not (tmp_path / "etc" / "link").is_symlink()
    boot = runner.invoke(cli, ["image", "cp", "--bootfs", "app", "/kernel", str(tmp_path / "k")])
    assert boot.exit_code == 0 and (tmp_path / "k").read_bytes()[:4] == b"\x7fELF"
    # errors: each failed source on its own line, the others copied, exit status 1
    partly = runner.invoke(cli, ["image", "cp", "app", "/etc", "/nope", "/hello", str(dest)])
    assert partly.exit_code == 1 and "Traceback" not in partly.output
    assert partly.output.splitlines() == [
        "error: /etc is a folder: not copied without -r",
        "error: /nope: not in the image",
    ]
    assert (dest / "hello").read_bytes() == b"hi\n"
    many = runner.invoke(cli, ["image", "cp", "app", "/hello", "/bin/prog", str(dest / "hello")])
    assert many.exit_code == 1
    assert many.output.startswith(f"error: the destination {dest / 'hello'} is not a folder")
    short = runner.invoke(cli, ["image", "cp", "app", "/hello"])
    assert short.exit_code == 2 and "SRC" in short.output


def test_cli_cp_of_a_hostile_image(home: Path, tmp_path: Path) -> None:
    """A link in the image pointing out of DEST, then an image with a folder of that name,
    and names that are not file names: nothing lands outside DEST."""
    outside = tmp_path / "outside"
    outside.mkdir()
    first = Tree()
    first.add_symlink("/data", str(outside))
    first.add_symlink("/rel", "../outside")
    write_raw_volume(tmp_path / "first.raw", first)
    second = Tree()
    second.add_file("/data/planted", b"owned\n")
    second.add_file("/rel/planted", b"owned\n")
    write_raw_volume(tmp_path / "second.raw", second)
    dest = tmp_path / "dest"
    dest.mkdir()
    runner = CliRunner()
    ok = runner.invoke(cli, ["image", "cp", "-r", str(tmp_path / "first.raw"), "/", str(dest)])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli, ["image", "cp", "-r", str(tmp_path / "second.raw"), "/", str(dest)])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert bad.output.startswith(f"error: cannot copy a folder to {dest / 'data'}: ")
    both = runner.invoke(
        cli, ["image", "cp", "-r", str(tmp_path / "second.raw"), "/data", "/rel", str(dest)]
    )
    assert both.exit_code == 1 and both.output.count("error: cannot copy a folder") == 2
    assert list(outside.iterdir()) == []
    # a name with ".." in the image: the image is refused as corrupt
    from pyops.nanos.tfs import FileEntry, write_volume
    from pyops.nanos.tree import Contents

    fd = os.open(tmp_path / "dots.raw", os.O_RDWR | os.O_CREAT, 0o644)
    info = write_volume(fd, 0, {"children": {"..": FileEntry(Contents(b"escape\n"))}})
    os.ftruncate(fd, info.size)
    os.close(fd)
    dots = runner.invoke(cli, ["image", "cp", "-r", str(tmp_path / "dots.raw"), "/", str(dest)])
    assert dots.exit_code == 1 and "invalid name '..' in directory /" in dots.output
    assert not (tmp_path / "escape").exists() and sorted(os.listdir(dest)) == ["data", "rel"]
    user = runner.invoke(cli, ["image", "cp", str(tmp_path / "first.raw"), "/../x", str(dest)])
    assert user.exit_code == 1 and "invalid file name '..'" in user.output


def test_ops_byte_sizes() -> None:
    assert parse_bytes("2G") == 2_000_000_000
    assert parse_bytes("2Gi") == parse_bytes("2GiB") == parse_bytes("2 gib") == 2 << 30
    assert parse_bytes("1.5m") == 1_500_000 and parse_bytes("10,000") == 10_000
    assert parse_bytes("512") == parse_bytes("512b") == 512
    for bad in ("", "G", "-1G", "1e3", "1.2.3", "2 gigabytes", "0x10"):
        with pytest.raises(InvalidInput, match="invalid size"):
            parse_bytes(bad)


def root_entry(path: Path) -> tuple[int, int, bytes]:
    with open(path, "rb") as f:
        f.seek(PARTITION_TABLE + 16)
        entry = f.read(16)
    lba, sectors = struct.unpack_from("<II", entry, 8)
    return lba, sectors, entry


def test_resize_grows_the_root_filesystem_sparsely(home: Path) -> None:
    path = disk_image(home / "images" / "app.img", content_tree())
    before = open_image(path)
    used = path.stat().st_blocks
    lba, _sectors, entry = root_entry(path)
    done = resize_image(path, "64Mi")
    assert (done.old_size, done.size) == (before.size, 64 << 20)
    assert path.stat().st_size == 64 << 20
    assert path.stat().st_blocks <= used + 8  # the new room is a hole
    lba2, sectors2, entry2 = root_entry(path)
    assert lba2 == lba and sectors2 * SECTOR == (64 << 20) - done.root_offset
    assert entry2[:5] == entry[:5]  # status, start CHS and type as the writer made them
    after = open_image(path)
    assert after.root.info.size == (64 << 20) - done.root_offset
    assert after.root.info.uuid == before.root.info.uuid
    hosts = after.tree().get("/etc/hosts")
    assert isinstance(hosts, File) and isinstance(hosts.source, ImageData)
    assert read_file_bytes(hosts.source) == b"127.0.0.1 localhost\n"
    # shrinking works down to the content and the kernel's room to write, not below
    assert resize_image(path, 32 << 20).size == 32 << 20
    with pytest.raises(FilesystemFull, match="cannot shrink .* to 1,048,576 bytes"):
        resize_image(path, "1Mi")
    assert path.stat().st_size == 32 << 20
    with pytest.raises(InvalidInput, match="2 TiB at most"):
        resize_image(path, "3Ti")
    assert path.stat().st_size == 32 << 20
    # sizes round up to a sector
    assert resize_image(path, "40001k").size == 40_001_024


def test_resize_of_a_bare_volume_and_of_odd_tables(tmp_path: Path) -> None:
    tree = Tree()
    tree.add_file("/a", b"a")
    write_raw_volume(tmp_path / "v.raw", tree)
    assert resize_image(tmp_path / "v.raw", "8Mi").size == 8 << 20
    assert open_image(tmp_path / "v.raw").root.info.size == 8 << 20
    disk = disk_image(tmp_path / "d.img")
    with open(disk, "r+b") as f:  # a third partition after the root filesystem
        f.seek(PARTITION_TABLE + 32)
        f.write(b"\x00" * 8 + struct.pack("<II", 0x100000, 16))
    with pytest.raises(ImageFormatError, match="partition 3 lies after the root filesystem"):
        resize_image(disk, "64M")


def test_cli_resize(home: Path) -> None:
    disk_image(home / "images" / "app.img")
    runner = CliRunner()
    result = runner.invoke(cli, ["image", "resize", "app", "100M"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"resized {home / 'images/app.img'}: 15,257,088 -> 100,000,256 bytes (95.4 MiB)\n"
    )
    same = runner.invoke(cli, ["image", "resize", "app", "100000256"])
    assert same.output.endswith("is 100,000,256 bytes already\n")
    small = runner.invoke(cli, ["image", "resize", "app", "1k"])
    assert small.exit_code == 1 and small.output.startswith("error: cannot shrink")
    assert "hint: the smallest size it can have is" in small.output
    bad = runner.invoke(cli, ["image", "resize", "app", "lots"])
    assert bad.exit_code == 1 and bad.output.startswith("error: invalid size 'lots'")
    assert "Traceback" not in small.output + bad.output


def test_a_resized_image_reads_with_nanos_dump(home: Path, tmp_path: Path) -> None:
    dump = os.environ.get("PYOPS_NANOS_DUMP")
    if not dump or not Path(dump).is_file():
        pytest.skip("set PYOPS_NANOS_DUMP to Nanos's dump tool to run this test")
    path = disk_image(tmp_path / "app.img", content_tree())
    resize_image(path, "256Mi")
    out = tmp_path / "dumped"
    subprocess.run([dump, "-d", str(out), str(path)], check=True, capture_output=True)
    assert (out / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    listing = subprocess.run([dump, "-t", str(path)], check=True, capture_output=True, text=True)
    assert "link" in listing.stdout and "hosts" in listing.stdout


WRITER = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    static char block[1 << 20];
    memset(block, 'x', sizeof block);
    int fd = open("/big", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror("open"); return 2; }
    for (int i = 0; i < 24; i++)
        if (write(fd, block, sizeof block) != sizeof block) { perror("write"); return 3; }
    if (fsync(fd) < 0) { perror("fsync"); return 4; }
    close(fd);
    printf("wrote 24 MiB\n");
    return 0;
}
"""


@pytest.mark.boot
def test_the_guest_uses_the_room_a_resize_gave(
    tmp_path: Path, nanos_release: Path, cc: str
) -> None:
    """An image with about 1 MiB free, grown to 64 MiB: the guest writes 24 MiB."""
    from pyops.vm.qemu import VmConfig, run_vm

    try:
        writer = compile_c(cc, WRITER, tmp_path / "writer", "-static")
    except subprocess.CalledProcessError:
        pytest.skip("gcc cannot link static programs here")
    tree = Tree()
    tree.add_file("/writer", str(writer))
    disk = tmp_path / "grow.img"
    write_disk(
        disk,
        tree,
        Manifest(program="/writer", arguments=("writer",), extra={"debug_exit": "t"}),
        boot_img=nanos_release / "boot.img",
        kernel=nanos_release / "kernel.img",
    )
    old_size = disk.stat().st_size
    resize_image(disk, "64Mi")
    log = tmp_path / "console"
    with open(log, "wb") as out:
        code = run_vm(disk, VmConfig(memory="256M"), stdout=out.fileno(), timeout=240)
    text = log.read_text(errors="replace")
    assert code == 0 and "wrote 24 MiB" in text, text[-2000:]
    big = open_image(disk).tree().get("/big")
    assert isinstance(big, File) and isinstance(big.source, ImageData)
    assert big.size == 24 << 20
    assert max(e.disk_offset + e.length for e in big.source.extents) > old_size


def test_names_from_an_image_cannot_drive_the_terminal(home: Path) -> None:
    tree = Tree()
    tree.add_file("/hello", b"hi\n")
    tree.add_file("/clear\x1b[2J", b"")
    tree.add_symlink("/forged", "x\nerror: forged line")
    tree.add_file("/\udcff-undecodable", b"")
    disk_image(home / "images" / "odd.img", tree)
    runner = CliRunner()
    for args in (["ls"], ["ls", "-l"], ["tree"]):
        out = runner.invoke(cli, ["image", *args, "odd"]).output
        assert "\x1b" not in out and "\nerror: forged" not in out, args
        assert "clear\\x1b[2J" in out and "x\\nerror: forged line" in out
        assert "\\xff-undecodable" in out
